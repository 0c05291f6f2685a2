"""Training, two phases, resume, evaluation, prediction and the commands, on generated data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("segmentation_models_pytorch")

import lightning.pytorch as pl
from PIL import Image

from rloss.cli import main as cli_main
from rloss.constants import voc_palette
from rloss.train.api import evaluate, load_model, predict, read_checkpoint, train
from rloss.train.config import load_config
from rloss.train.module import poly_factor

pytestmark = pytest.mark.xdist_group("rloss-train")

REPO = Path(__file__).resolve().parents[2]


def tiny(*overrides: str, num_train: int = 4, num_val: int = 2, size: int = 32) -> dict:
    """A seconds-long recipe: DeepLabV3+/MobileNet-v2, no pretrained weights, tiny scenes."""
    base = {
        "model": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2", "encoder_weights": None},
        "data": {
            "kind": "synthetic",
            "crop_size": size,
            "scale_range": [1.0, 1.0],
            "flip": False,
            "batch_size": 2,
            "num_workers": 0,
            "synthetic": {
                "num_train": num_train,
                "num_val": num_val,
                "size": [size, size],
                "seed": 0,
            },
        },
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "log_every_n_steps": 1, "threads": 1},
    }
    return load_config(base, list(overrides))


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    """One tiny phase-1 (pCE) run shared by the tests of this module."""
    run = tmp_path_factory.mktemp("phase1")
    return train(tiny("trainer.max_epochs=2", num_val=3), run_dir=run, progress=False)


# ------------------------------------------------------------------------------ training
def test_phase1_run_folder(phase1):
    run = phase1.run_dir
    assert phase1.checkpoint == run / "checkpoints" / "last.ckpt" and phase1.checkpoint.is_file()
    assert (run / "model.pt").is_file() and (run / "config.yaml").is_file()
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    csv = (run / "logs" / "csv" / "metrics.csv").read_text()
    for column in (
        "train/loss",
        "train/pce",
        "lr",
        "train/sec_per_iter",
        "train/images_per_sec",
        "val/miou",
    ):
        assert column in csv
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["global_step"] == 4
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["sec_per_iter"] > 0
    assert list(metrics["per_class_iou"]) == [
        "background",
        "stripes",
        "dots",
        "checker",
        "grain",
    ]
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert math.isclose(metrics["miou"], phase1.metrics["miou"])
    # checkpoints hold no pickled code: weights_only loading works
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.densecrf.weight=2e-9"],
        ["loss.densecrf.weight=1e-8", "loss.densecrf.scale_factor=1.0"],
        ["loss.ncut.weight=0.5"],
        ["loss.size.weight=1e-6"],
        ["data.supervision=full"],
        ["model.msc=[1.0, 0.5]"],
        ["loss.pce.weight=0.5", "loss.densecrf.weight=2e-9", "loss.ncut.weight=0.1"],
    ],
    ids=["densecrf", "densecrf_fullscale", "ncut", "size", "full", "msc", "pce_crf_ncut"],
)
def test_each_loss_combination_trains(tmp_path, overrides):
    result = train(tiny("trainer.max_steps=1", *overrides), run_dir=tmp_path, progress=False)
    assert result.checkpoint.is_file() and (tmp_path / "metrics.json").is_file()
    assert result.metrics["global_step"] == 1
    names = {o.split(".")[1] for o in overrides if o.startswith("loss.")} | {"pce"}
    if "model.msc=[1.0, 0.5]" in overrides:
        names.add("pce_scales")  # every MSC scale is supervised too
    csv = (tmp_path / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in names:
        assert f"train/{name}" in csv
    assert all(math.isfinite(v) for k, v in result.history[-1].items() if k.startswith("train/"))


def test_phase2_initialises_from_phase1(tmp_path, phase1):
    expected = read_checkpoint(phase1.model_file)[0]
    seen = {}

    class Check(pl.Callback):
        def on_train_start(self, trainer, module):
            own = module.model.state_dict()
            seen["equal"] = all(torch.equal(own[k], v) for k, v in expected.items())

    cfg = tiny("loss.densecrf.weight=2e-9", "trainer.max_steps=1", f"init_from={phase1.checkpoint}")
    result = train(cfg, run_dir=tmp_path, progress=False, callbacks=[Check()])
    assert seen["equal"] and result.checkpoint.is_file()


def test_init_from_mismatch_is_clear(tmp_path, phase1):
    cfg = tiny("model.num_classes=7", f"init_from={phase1.model_file}")
    with pytest.raises(ValueError, match=r"init_from: .*does not fit this model"):
        train(cfg, run_dir=tmp_path, progress=False)


def test_resume_after_kill_continues_the_schedule(tmp_path):
    cfg = tiny("trainer.max_epochs=3")  # 2 steps per epoch, 6 in all
    total = 6

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, run_dir=tmp_path, progress=False, callbacks=[Kill()])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2  # saved at the end of epoch 0

    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run_dir=tmp_path, progress=False)

    steps: list[tuple[int, float]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            opt = trainer.optimizers[0]
            steps.append((trainer.global_step, opt.param_groups[0]["lr"]))

    result = train(cfg, run_dir=tmp_path, progress=False, resume=True, callbacks=[Record()])
    assert [s for s, _ in steps] == [2, 3, 4, 5]
    for step, lr in steps:
        assert lr == pytest.approx(0.007 * poly_factor(step, total, 0.9))
    assert result.metrics["global_step"] == total
    assert [h["epoch"] for h in result.history] == [0, 1, 2]


def test_trains_on_a_segmentation_folder(tmp_path):
    from rloss.data.demo_scenes import generate_synthetic

    root = generate_synthetic(
        tmp_path / "data", num_train=2, num_val=1, size=(40, 36), progress=False
    )
    base = tiny("trainer.max_steps=1")
    cfg = load_config(
        {**base, "data": {**base["data"], "kind": "folder", "root": str(root)}},
    )
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.metrics["global_step"] == 1
    assert next(iter(result.metrics["per_class_iou"])) == "background"
    metrics = evaluate(result.model_file, progress=False)  # the recipe's folder val split
    assert metrics["num_images"] == 1


def test_unpadded_sampler_splits_without_repeats():
    from rloss.train.datamodule import UnpaddedDistributedSampler

    data = list(range(7))
    parts = [list(UnpaddedDistributedSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for part in parts for i in part) == data
    assert [len(UnpaddedDistributedSampler(data, num_replicas=3, rank=r)) for r in range(3)] == [
        3,
        2,
        2,
    ]


def test_pad_collate_pads_labels_with_ignore_and_roi_with_zero():
    from rloss.train.datamodule import pad_collate

    def sample(h, w):
        return {
            "image": torch.ones(3, h, w),
            "image_raw": torch.ones(3, h, w),
            "scribble": torch.zeros(h, w, dtype=torch.long),
            "mask": torch.zeros(h, w, dtype=torch.long),
            "roi": torch.ones(h, w),
            "name": f"{h}x{w}",
        }

    from rloss.constants import IMAGENET_MEAN_255
    from rloss.data import transforms
    from rloss.data.transforms import normalize_image

    assert pad_collate is transforms.pad_collate  # one collate for the sample contract
    batch = pad_collate([sample(4, 6), sample(5, 3)])
    assert batch["image"].shape == (2, 3, 5, 6) and batch["name"] == ["4x6", "5x3"]
    assert batch["mask"][0, 4].tolist() == [255] * 6 and batch["roi"][1, :, 3:].sum() == 0
    assert batch["image"][1, :, :, 3:].abs().sum() == 0
    # the raw image is padded with the mean colour, so image == normalize(image_raw) there too
    pad = batch["image_raw"][1, :, :, 3:]
    assert torch.equal(pad, torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1).expand_as(pad))
    torch.testing.assert_close(normalize_image(pad), batch["image"][1, :, :, 3:])


def test_threads_follow_processes(tmp_path):
    from rloss.train.module import default_threads

    assert default_threads(1) >= default_threads(2) >= 1
    assert default_threads(10**6) == 1


# ------------------------------------------------------------------- evaluation, prediction
def test_load_model_and_evaluate_match_training_val(phase1, tmp_path):
    model, cfg = load_model(phase1.model_file)
    assert cfg["model"]["num_classes"] == 5 and cfg["classes"][0] == "background"
    out = tmp_path / "eval.json"
    metrics = evaluate(phase1.model_file, out=out, progress=False)
    # full-resolution val of the training loop == stand-alone evaluation
    assert metrics["miou"] == pytest.approx(phase1.metrics["miou"], abs=1e-6)
    assert metrics["num_images"] == 3
    assert json.loads(out.read_text())["miou"] == pytest.approx(metrics["miou"])
    ms = evaluate(model, config=cfg, scales=(1.0, 0.75, 1.25), flip=True, progress=False)
    assert 0.0 <= ms["miou"] <= 1.0 and ms["scales"] == [1.0, 0.75, 1.25] and ms["flip"]


def _write_images(folder: Path, sizes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_predict_writes_palette_pngs_of_input_size(phase1, tmp_path):
    images = _write_images(tmp_path / "in", [(37, 50), (64, 48)])
    out = tmp_path / "out"
    written = predict(phase1.model_file, [tmp_path / "in"], out, progress=False)
    assert [p.name for p in written] == ["img0.png", "img1.png"]
    for src, dst in zip(images, written):
        with Image.open(src) as a, Image.open(dst) as b:
            assert b.mode == "P" and b.size == a.size
            assert b.getpalette()[:48] == voc_palette()[:48]
            assert max(np.asarray(b).ravel()) < 5
        with Image.open(out / f"{src.stem}_overlay.png") as ov:
            assert ov.mode == "RGB" and ov.size == a.size
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    predict(phase1.model_file, images, out, progress=False)  # idempotent
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_weights_only_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_model(path)


# ------------------------------------------------------------------------------ commands
def test_cli_eval_and_predict(phase1, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(phase1.model_file),
                "--out",
                str(out),
                "--scales",
                "1,0.75",
                "--flip",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "background" in printed and out.is_file()
    images = _write_images(tmp_path / "in", [(40, 40)])
    assert (
        cli_main(
            [
                "predict",
                "--checkpoint",
                str(phase1.checkpoint),
                str(images[0]),
                "--out",
                str(tmp_path / "pred"),
                "--no-progress",
                "--no-overlay",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["img0.png"]


def test_eval_with_crf_post_processing(phase1, tmp_path, capsys):
    try:
        import rloss.crf  # noqa: F401
    except ImportError:
        code = cli_main(
            [
                "eval",
                "--checkpoint",
                str(phase1.model_file),
                "--crf",
                "--no-progress",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        assert code == 2 and "rloss.crf" in capsys.readouterr().err
        return
    plain = evaluate(phase1.model_file, progress=False)
    refined = evaluate(phase1.model_file, crf={"num_iterations": 2}, progress=False)
    assert refined["crf"] == {"num_iterations": 2} and 0.0 <= refined["miou"] <= 1.0
    assert plain["crf"] is None
    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(phase1.model_file),
                "--crf",
                "--no-progress",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )


def test_cli_train_config_errors(tmp_path, capsys):
    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"
    assert cli_main(["train", str(recipe), "optim.lrr=1", "--run-dir", str(tmp_path)]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "--set", "model.encoder=resnet9000"]) == 2
    assert "unknown encoder 'resnet9000'" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "data.kind=folder", "data.root=/no/such/dir"]) == 2
    assert "data.root: directory '/no/such/dir' does not exist" in capsys.readouterr().err


def test_cli_train_runs_a_recipe(tmp_path, capsys):
    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"
    code = cli_main(
        [
            "train",
            str(recipe),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "trainer.max_steps=1",
            "data.synthetic.num_val=1",
            "trainer.threads=1",
        ]
    )
    assert code == 0 and (tmp_path / "run" / "model.pt").is_file()
    assert "mIoU" in capsys.readouterr().out


# ------------------------------------------------------------------------------ slow ones
@pytest.mark.slow
def test_overfits_a_handful_of_images(tmp_path):
    """The loop learns: a small U-Net fits two generated scenes (val = train) in 60 steps."""
    from rloss.train.datamodule import SegmentationDataModule, build_dataset

    cfg = tiny(
        "data.supervision=full",
        "model.arch=unet",
        "model.encoder=resnet18",
        "model.kwargs={encoder_depth: 3, decoder_channels: [64, 32, 16]}",
        "optim.name=adamw",
        "optim.lr=3e-3",
        "optim.weight_decay=0",
        "trainer.max_epochs=60",
        "trainer.check_val_every_n_epoch=60",
        "trainer.threads=2",
        num_train=2,
        size=48,
    )
    train_set = build_dataset(cfg["data"], "train")
    dm = SegmentationDataModule(cfg["data"], train_dataset=train_set, val_dataset=train_set)
    result = train(cfg, run_dir=tmp_path, progress=False, datamodule=dm)
    assert result.metrics["global_step"] == 60
    assert result.metrics["miou"] > 0.8, result.metrics


@pytest.mark.slow
def test_ddp_two_processes_report_the_single_process_miou(tmp_path):
    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "rloss.cli",
        "train",
        str(recipe),
        "--run-dir",
        str(run),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--no-progress",
        "trainer.max_epochs=1",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=3",
        "data.synthetic.size=[32,32]",
        "data.crop_size=32",
        "data.batch_size=2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1  # 4 images, 2 processes, batch 2
    assert metrics["val_pixels"] == 3 * 32 * 32  # each val image counted once, none repeated
    single = evaluate(run / "model.pt", progress=False)
    assert single["num_images"] == 3
    assert metrics["miou"] == pytest.approx(single["miou"], abs=1e-6)
    # the Lightning checkpoint of a DDP run loads into a plain model
    load_model(run / "checkpoints" / "last.ckpt")
