"""Tests of rloss.demo: recipes, settings, the gap statistic and the quick end-to-end run."""

from __future__ import annotations

import json
import math

import pytest

from rloss.cli import main
from rloss.demo import DEFAULTS, QUICK, demo_recipes, demo_settings, gap_closed, run_demo


@pytest.mark.parametrize(
    ("a", "b", "c", "want"),
    [
        (0.5, 0.6, 0.7, 0.5),
        (0.5, 0.7, 0.7, 1.0),
        (0.5, 0.4, 0.7, -0.5),
        (0.5, 0.6, 0.5, None),
        (None, 0.6, 0.7, None),
    ],
)
def test_gap_closed(a, b, c, want):
    got = gap_closed(a, b, c)
    assert got == pytest.approx(want) if want is not None else got is None


def test_settings_merge_quick_and_overrides():
    s = demo_settings(quick=True, seed=5, overrides={"densecrf": {"weight": 2.0}})
    assert s["seed"] == 5 and s["quick"] is True
    assert s["data"]["num_train"] == QUICK["data"]["num_train"]
    assert s["densecrf"]["weight"] == 2.0
    assert s["densecrf"]["sigma_rgb"] == DEFAULTS["densecrf"]["sigma_rgb"]
    assert DEFAULTS["densecrf"]["weight"] != 2.0  # DEFAULTS not mutated
    assert demo_settings()["data"] == DEFAULTS["data"]


def test_recipes_share_network_and_validate(tmp_path):
    from rloss.train.config import validate

    s = demo_settings(quick=True)
    recipes = demo_recipes(s, tmp_path / "data", tmp_path / "runs", ncut=True, device="cpu")
    assert list(recipes) == ["pce_phase1", "full_phase1", "pce", "densecrf", "full", "ncut"]
    for name, r in recipes.items():
        cfg = validate(r, check_paths=False)
        assert cfg["model"] == validate(recipes["pce"], check_paths=False)["model"], name
        assert cfg["data"]["batch_size"] == s["batch_size"]
    assert recipes["pce"]["data"]["supervision"] == "scribble"
    assert recipes["full"]["data"]["supervision"] == "full"
    assert recipes["full_phase1"]["data"]["supervision"] == "full"
    assert set(recipes["densecrf"]["loss"]) == {"pce", "densecrf"}
    # (a), (b), (d) continue the same phase-1 model; only the loss differs
    for m in ("pce", "densecrf", "ncut"):
        assert recipes[m]["init_from"].endswith("pce_phase1/model.pt")
        assert recipes[m]["trainer"] == recipes["pce"]["trainer"]
        assert recipes[m]["optim"] == recipes["pce"]["optim"]
    assert recipes["full"]["init_from"].endswith("full_phase1/model.pt")
    assert set(recipes["pce"]["loss"]) == {"pce"}
    assert recipes["ncut"]["loss"]["ncut"]["weight"] == s["ncut"]["weight"]
    assert (
        recipes["pce_phase1"]["init_from"] is None and recipes["full_phase1"]["init_from"] is None
    )


def test_run_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an rloss demo"):
        run_demo(tmp_path, quick=True, progress=False, log=lambda *_: None)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="device"):
        run_demo(tmp_path / "new", quick=True, device="tpu", log=lambda *_: None)


def test_contour_figure_draws_outlines(tmp_path):
    import numpy as np
    from PIL import Image

    from rloss.demo.report import DEMO_PALETTE, plot_contour_grid

    image = np.full((32, 32, 3), 90, np.uint8)
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 8:24] = 1
    pred = np.zeros_like(truth)
    pred[10:20, 10:26] = 1
    scribbles = np.full_like(truth, 255)
    scribbles[15, 12:20] = 1
    row = {"image": image, "scribbles": scribbles, "pce": pred, "ground truth": truth}
    cols = ["image", "scribbles", "pce", "ground truth"]
    out = plot_contour_grid([row], cols, tmp_path / "f.png", class_names=["bg", "thing"])
    assert out == tmp_path / "f.png" and not list(tmp_path.glob(".*"))
    red = np.asarray(DEMO_PALETTE[3:6])

    def count(path, colour):
        px = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(px - colour).sum(-1) < 40).sum()), int((px.min(-1) > 235).sum())

    reds, _ = count(out, red)
    # the same grid without objects: only the legend swatch is in the class colour
    empty = {**row, "pce": np.zeros_like(truth), "ground truth": np.zeros_like(truth)}
    bare = plot_contour_grid([empty], cols, tmp_path / "g.png", class_names=["bg", "thing"])
    bare_reds, bare_whites = count(bare, red)
    assert reds > bare_reds + 100  # the outlines of the class-1 regions
    _, whites = count(out, np.zeros(3))
    assert whites > bare_whites + 30  # the dashed truth outline over the prediction
    with pytest.raises(ValueError):
        plot_contour_grid([], cols, tmp_path / "h.png", class_names=["bg"])


def test_expected_seconds_grows_with_the_work():
    from rloss.demo.runner import expected_seconds

    base = expected_seconds(demo_settings())
    assert expected_seconds(demo_settings(quick=True)) < 90 < base
    assert expected_seconds(demo_settings(overrides={"epochs": 20})) > base
    assert expected_seconds(demo_settings(), ncut=True) > base


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capfd):
    capsys = capfd
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--quick",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "gap closed" in printed.lower() or "Gap closed" in printed
    assert "expected about" in printed
    # our progress lines, not the framework's chatter
    for noise in ("GPU available", "TPU available", "Trainable params", "litlogger",
                  "Trainer.fit` stopped", "FutureWarning"):
        assert noise not in printed + captured.err, noise
    report = out / "report"
    for name in ("results.md", "results.json", "predictions.png", "curves.png", "gradient.png"):
        path = report / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert str(path) in printed
    res = json.loads((report / "results.json").read_text())
    assert [m["method"] for m in res["methods"]] == ["pce", "densecrf", "full"]
    for m in res["methods"]:
        assert m["miou"] is not None and 0.0 <= m["miou"] <= 1.0 and math.isfinite(m["miou"])
        assert m["sec_per_iter"] is not None and m["sec_per_iter"] > 0
        assert m["object_iou"] is None or 0.0 <= m["object_iou"] <= 1.0
    assert 0.0 < res["labelled_fraction"] < 0.2
    md = (report / "results.md").read_text()
    assert "(b) pCE + DenseCRF loss" in md and "s / iteration" in md
    # a second run reuses the finished runs (resumable) and gives the same numbers
    assert main(argv) == 0
    again = json.loads((report / "results.json").read_text())
    assert [m["miou"] for m in again["methods"]] == [m["miou"] for m in res["methods"]]
    # other settings in the same folder are refused without --overwrite
    assert main([*argv, "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_aggregate_results_table(tmp_path):
    from rloss.demo import aggregate_results

    paths = []
    for seed, (a, b, c) in enumerate([(0.5, 0.6, 0.7), (0.4, 0.5, 0.8)]):
        res = {
            "settings": {"seed": seed},
            "labelled_fraction": 0.03,
            "gap_closed": gap_closed(a, b, c),
            "methods": [
                {"name": n, "miou": v, "sec_per_iter": 0.1}
                for n, v in (("(a)", a), ("(b)", b), ("(c)", c))
            ],
        }
        p = tmp_path / f"r{seed}.json"
        p.write_text(json.dumps(res))
        paths.append(p)
    md = aggregate_results(paths)
    assert "| mIoU: (a) | 50.0 | 40.0 | 45.0 ± 7.1 | 0.100 |" in md
    assert "50% | 25%" in md and "37.5 ± 17.7" in md
    assert "3.00%" in md
    with pytest.raises(ValueError):
        aggregate_results([])
