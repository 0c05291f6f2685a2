"""Recipes: loading, inheritance, overrides, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("segmentation_models_pytorch")

from rloss.train.config import (
    ConfigError,
    apply_overrides,
    load_config,
    parse_override,
    validate,
    write_yaml_atomic,
    yaml_load,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))
SYN = {"data": {"kind": "synthetic"}, "model": {"encoder_weights": None}}


def test_recipes_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in RECIPES}
    for required in (
        "voc_scribble/deeplabv3plus_mobilenet_pce.yaml",
        "voc_scribble/deeplabv3plus_mobilenet_densecrf.yaml",
        "voc_scribble/deeplabv3plus_mobilenet_densecrf_singlephase.yaml",
        "voc_scribble/deeplabv3plus_mobilenet_ncut.yaml",
        "voc_full/deeplabv3plus_mobilenet.yaml",
        "voc_scribble/deeplabv3plus_resnet101_pce.yaml",
        "voc_scribble/deeplabv3plus_resnet101_densecrf.yaml",
        "voc_full/deeplabv3plus_resnet101.yaml",
        "voc_scribble/deeplab_largefov_pce.yaml",
        "voc_scribble/deeplab_largefov_densecrf.yaml",
        "voc_scribble/deeplabv2_resnet101_pce.yaml",
        "voc_scribble/deeplabv2_resnet101_densecrf.yaml",
    ):
        assert required in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_validates(path):
    cfg = load_config(path, check_paths=False)
    assert "pce" in cfg["loss"]
    assert set(cfg) >= {"model", "data", "loss", "optim", "trainer", "init_from"}


def test_mobilenet_recipes_reproduce_rloss_settings():
    for name in (
        "deeplabv3plus_mobilenet_densecrf",
        "deeplabv3plus_mobilenet_densecrf_singlephase",
    ):
        cfg = load_config(REPO / "configs/voc_scribble" / f"{name}.yaml", check_paths=False)
        o, d = cfg["optim"], cfg["data"]
        assert (o["name"], o["lr"], o["schedule"], o["power"]) == ("sgd", 0.007, "poly", 0.9)
        assert (o["momentum"], o["weight_decay"]) == (0.9, 5e-4)
        assert (cfg["trainer"]["max_epochs"], d["batch_size"], d["crop_size"]) == (60, 12, 513)
        crf = cfg["loss"]["densecrf"]
        assert (crf["weight"], crf["sigma_rgb"], crf["sigma_xy"], crf["scale_factor"]) == (
            2e-9,
            15.0,
            100.0,
            0.5,
        )
        assert (cfg["model"]["arch"], cfg["model"]["encoder"]) == ("deeplabv3plus", "mobilenet_v2")
    two = load_config(
        REPO / "configs/voc_scribble/deeplabv3plus_mobilenet_densecrf.yaml", check_paths=False
    )
    one = load_config(
        REPO / "configs/voc_scribble/deeplabv3plus_mobilenet_densecrf_singlephase.yaml",
        check_paths=False,
    )
    assert two["init_from"] and one["init_from"] is None
    full = load_config(REPO / "configs/voc_full/deeplabv3plus_mobilenet.yaml", check_paths=False)
    assert full["data"]["supervision"] == "full" and set(full["loss"]) == {"pce"}


def test_overrides_are_yaml_typed():
    assert parse_override("optim.lr=0.01") == (["optim", "lr"], 0.01)
    assert parse_override("loss.densecrf.weight=2e-9") == (["loss", "densecrf", "weight"], 2e-9)
    assert parse_override("model.encoder_weights=null") == (["model", "encoder_weights"], None)
    assert parse_override("data.scale_range=[0.5, 1.5]")[1] == [0.5, 1.5]
    assert parse_override("data.flip=false")[1] is False
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override("optim.lr")
    cfg = apply_overrides({"optim": {"lr": 1}}, ["optim.lr=3", "trainer.devices=2"])
    assert cfg == {"optim": {"lr": 3}, "trainer": {"devices": 2}}


def test_yaml_exponent_without_dot_is_a_float():
    assert yaml_load("w: 2e-9\nx: 5e-4") == {"w": 2e-9, "x": 5e-4}


def test_defaults_inheritance_and_override(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data: {kind: synthetic}\noptim: {lr: 0.1, momentum: 0.5}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "defaults: base.yaml\nmodel: {encoder_weights: null}\noptim: {lr: 0.2}\n"
    )
    cfg = load_config(tmp_path / "child.yaml", ["optim.momentum=0.7"])
    assert cfg["optim"]["lr"] == 0.2 and cfg["optim"]["momentum"] == 0.7
    assert cfg["data"]["kind"] == "synthetic" and cfg["trainer"]["max_epochs"] == 60
    (tmp_path / "loop.yaml").write_text("defaults: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'"
    ):
        load_config(SYN, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        validate({**SYN, "modle": {}})
    with pytest.raises(ConfigError, match=r"unknown loss term 'loss\.crf'"):
        load_config(SYN, ["loss.crf.weight=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.densecrf\.sigma'"):
        load_config(SYN, ["loss.densecrf.sigma=3"])


def test_unknown_encoder_and_arch():
    with pytest.raises(
        ConfigError, match=r"model\.encoder: unknown encoder 'mobilenet_v9'.*mobilenet_v2"
    ):
        load_config(SYN, ["model.encoder=mobilenet_v9"])
    with pytest.raises(ConfigError, match=r"model\.arch: unknown architecture 'deeplabv9'"):
        load_config(SYN, ["model.arch=deeplabv9"])


def test_missing_data_root(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root: required"):
        load_config({"data": {"kind": "folder"}})
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"data\.root: directory .*nope.* does not exist"):
        load_config({"data": {"kind": "voc_scribble", "root": str(missing)}})


def test_bad_values():
    with pytest.raises(ConfigError, match=r"data\.supervision"):
        load_config(SYN, ["data.supervision=boxes"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
        load_config(SYN, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"loss\.pce"):
        load_config(SYN, ["loss.pce=null"])
    with pytest.raises(ConfigError, match=r"init_from: checkpoint"):
        load_config(SYN, ["init_from=/no/such/model.pt"])
    with pytest.raises(ConfigError, match=r"model\.encoder_weights"):
        load_config(SYN, ["model.encoder_weights=/no/such/weights.pth"])


def test_loss_terms_get_defaults_and_null_disables():
    cfg = load_config(SYN, ["loss.densecrf.weight=1e-9", "loss.ncut=null"])
    assert cfg["loss"]["densecrf"] == {
        "weight": 1e-9,
        "sigma_rgb": 15.0,
        "sigma_xy": 100.0,
        "scale_factor": 0.5,
        "normalize": False,
        "backend": None,
        "spacing": None,
    }
    assert "ncut" not in cfg["loss"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(SYN, ["loss.densecrf.weight=2e-9"])
    path = write_yaml_atomic(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_deeplabv2_vgg16_recipes_follow_the_resnet101_conventions():
    names = {str(p.relative_to(REPO / "configs")) for p in RECIPES}
    assert {
        "voc_scribble/deeplabv2_vgg16_pce.yaml",
        "voc_scribble/deeplabv2_vgg16_densecrf.yaml",
        "voc_full/deeplabv2_vgg16.yaml",
    } <= names
    pce, crf, full = (
        load_config(REPO / "configs" / name, check_paths=False)
        for name in (
            "voc_scribble/deeplabv2_vgg16_pce.yaml",
            "voc_scribble/deeplabv2_vgg16_densecrf.yaml",
            "voc_full/deeplabv2_vgg16.yaml",
        )
    )
    resnet = load_config(
        REPO / "configs/voc_scribble/deeplabv2_resnet101_pce.yaml", check_paths=False
    )
    for cfg in (pce, crf, full):
        assert cfg["model"]["arch"] == "deeplabv2_vgg16"
        assert cfg["model"]["encoder_weights"] == "imagenet"
        assert cfg["data"] == {**resnet["data"], "supervision": cfg["data"]["supervision"]}
        assert cfg["trainer"] == resnet["trainer"]
        assert (cfg["optim"]["lr"], cfg["optim"]["head_lr_mult"]) == (1e-3, 10.0)
    assert set(pce["loss"]) == {"pce"} and pce["data"]["supervision"] == "scribble"
    assert crf["init_from"] == "runs/deeplabv2_vgg16_pce/model.pt"
    assert crf["loss"]["densecrf"]["weight"] == 2e-9
    assert full["data"]["supervision"] == "full" and set(full["loss"]) == {"pce"}


def test_recipe_is_typed_and_round_trips():
    from rloss.train.config import DataSpec, OptimSpec, Recipe, TrainerSpec

    r = Recipe.from_mapping(SYN, check_paths=False)
    assert isinstance(r.data, DataSpec) and isinstance(r.optim, OptimSpec)
    assert r.to_mapping() == validate(SYN, check_paths=False)
    assert Recipe.from_mapping(r.to_mapping()) == r
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        r.optim.lr = 1.0  # type: ignore[misc]
    # DEFAULTS is derived from the specs
    from rloss.train.config import DEFAULTS

    assert DEFAULTS["optim"]["lr"] == OptimSpec().lr and DEFAULTS["data"]["crop_size"] == 513
    kw = TrainerSpec(max_epochs=3, max_steps=7, accelerator="cpu").as_trainer_kwargs()
    assert (kw["max_epochs"], kw["max_steps"], kw["accelerator"]) == (3, 7, "cpu")
    assert kw["sync_batchnorm"] is False and "threads" not in kw
    assert "checkpoint_every_n_steps" not in kw
    import inspect

    import lightning.pytorch as pl

    assert set(kw) <= set(inspect.signature(pl.Trainer).parameters)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.batch_size=0", r"data\.batch_size: expected a positive int, got 0"),
        ("data.batch_size=true", r"data\.batch_size: expected a positive int, got True"),
        ("optim.lr=-1", r"optim\.lr: expected a non-negative number, got -1"),
        ("trainer.max_steps=0", r"trainer\.max_steps: expected a positive int or -1"),
        ("trainer.threads=0", r"trainer\.threads: expected 'auto' or a positive int"),
        ("model.msc=[0]", r"model\.msc: expected null, true or a list of positive scales"),
        ("eval.scales=[]", r"eval\.scales: expected a list of positive numbers"),
        ("data.scale_range=[2,1]", r"data\.scale_range: expected \[low, high\]"),
        ("data.synthetic.size=[0,4]", r"data\.synthetic\.size"),
        (
            "data.synthetic.sise=[4,4]",
            r"'data\.synthetic\.sise'; did you mean 'data\.synthetic\.size'",
        ),
        ("model.arch=deeplabv2_vgg", r"model\.arch: unknown architecture .*deeplabv2_vgg16"),
        ("loss.densecrf.sigma_xy=0", r"loss\.densecrf\.sigma_xy: expected a positive number"),
    ],
)
def test_typed_field_checks_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(SYN, [override])
