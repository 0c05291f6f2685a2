"""Per-volume Dice / HD95 (hand-computed cases, a brute-force HD95) and the ACDC eval path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rloss.cli import main
from rloss.data import acdc
from rloss.train import volume_eval as ve


def test_dice_hand_computed():
    p = np.zeros((2, 3, 3), bool)
    g = np.zeros((2, 3, 3), bool)
    p[0, :2, :2] = True  # 4 voxels
    g[0, :2, :] = True  # 6 voxels, overlap 4
    assert ve.dice(p, g) == pytest.approx(2 * 4 / 10)
    assert ve.dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert ve.dice(p, np.zeros_like(g)) == 0.0


def test_hd95_hand_computed():
    a = np.zeros((1, 1, 8), bool)
    b = np.zeros((1, 1, 8), bool)
    a[0, 0, 1] = True
    b[0, 0, 4] = True
    assert ve.hd95(a, b) == 3.0
    # anisotropic voxels: 3 voxels of 2 mm along the last axis
    assert ve.hd95(a, b, spacing=(1.0, 1.0, 2.0)) == 6.0
    # two voxels against one: distances {0, 2} and {0}: percentile 95 of [0, 2, 0]
    c = np.zeros((1, 1, 8), bool)
    c[0, 0, [1, 3]] = True
    assert ve.hd95(c, a) == pytest.approx(np.percentile([0.0, 2.0, 0.0], 95))
    assert math.isnan(ve.hd95(a, np.zeros_like(a)))
    with pytest.raises(ValueError, match="spacing"):
        ve.hd95(a, b, spacing=(1.0, 1.0))


def _brute_hd95(p: np.ndarray, g: np.ndarray) -> float:
    """Independent HD95: surfaces by explicit 6-neighbour test, distances by brute force."""

    def surface(m):
        pad = np.pad(m, 1, constant_values=False)
        inner = pad[1:-1, 1:-1, 1:-1].copy()
        for ax in range(3):
            for sh in (-1, 1):
                inner &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner)

    sp, sg = surface(p), surface(g)
    d = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.hstack([d.min(1), d.min(0)]), 95))


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = rng.random((4, 9, 9)) < 0.4
        g = rng.random((4, 9, 9)) < 0.4
        assert ve.hd95(p, g) == pytest.approx(_brute_hd95(p, g))


class _Oracle(nn.Module):
    """Logits peaked at class round(3 * x): the image encodes the label."""

    def forward(self, x):
        k = torch.arange(4, dtype=x.dtype).view(1, 4, 1, 1)
        return -100.0 * (3.0 * x - k) ** 2


def _volume(d=3, h=20, w=18):
    lab = np.zeros((d, h, w), np.uint8)
    lab[:, 4:12, 3:9] = 1
    lab[:, 8:16, 9:15] = 2
    lab[1:, 12:15, 10:13] = 3
    return lab


def test_predict_volume_resamples_back():
    lab = _volume()
    img = torch.from_numpy(lab.astype(np.float32) / 3.0)
    pred = ve.predict_volume(_Oracle(), img, None)
    assert pred.shape == lab.shape and np.array_equal(pred.numpy(), lab)
    pred2 = ve.predict_volume(_Oracle(), img, 64, batch_size=2)  # up and back down
    assert pred2.shape == lab.shape
    assert (pred2.numpy() == lab).mean() > 0.95


def test_evaluate_volumes_perfect_and_shifted(tmp_path):
    lab = _volume()
    scr = np.full(lab.shape, 4, np.uint16)
    acdc.write_h5(tmp_path / acdc.VOLUMES_DIR / "patient061_frame01.h5",
                  lab.astype(np.float32) / 3.0, lab, scr)
    shifted = np.roll(lab, 2, axis=2)  # image says "shifted by 2 columns"
    acdc.write_h5(tmp_path / acdc.VOLUMES_DIR / "patient062_frame01.h5",
                  shifted.astype(np.float32) / 3.0, lab, scr)
    res = ve.evaluate_volumes(_Oracle(), acdc.AcdcVolumes(tmp_path, "61-62"), None,
                              progress=False)
    rows = {r["name"]: r for r in res["per_volume"]}
    perfect = rows["patient061_frame01"]
    assert perfect["dice"] == {"RV": 1.0, "Myo": 1.0, "LV": 1.0}
    assert perfect["hd95"] == {"RV": 0.0, "Myo": 0.0, "LV": 0.0}
    off = rows["patient062_frame01"]
    for v, n in ve.FOREGROUND:
        assert off["dice"][n] == pytest.approx(ve.dice(shifted == v, lab == v))
        assert off["hd95"][n] == pytest.approx(ve.hd95(shifted == v, lab == v))
    assert res["dice"]["RV"] == pytest.approx((1.0 + off["dice"]["RV"]) / 2)
    assert res["mean_dice"] == pytest.approx(np.mean(list(res["dice"].values())))
    assert res["volumes"] == 2 and res["hd95_unit"] == "voxel"


def _save_run(tmp_path: Path, root: Path) -> Path:
    from rloss.train.models import build_model

    cfg = {"model": {"arch": "unet2d", "encoder_weights": None,
                     "kwargs": {"in_channels": 1, "channels": [4, 8]}},
           "data": {"root": str(root), "crop_size": 16, "val_patients": "61"}}
    net = build_model(cfg["model"], 4)
    path = tmp_path / "run" / "model.pt"
    path.parent.mkdir()
    torch.save({"state_dict": net.state_dict(),
                "rloss": {"config": cfg, "num_classes": 4,
                          "class_names": list(acdc.ACDC_CLASSES)}}, path)
    return path


def test_eval_command_writes_json_and_refuses_overwrite(tmp_path, capsys):
    lab = _volume()
    acdc.write_h5(tmp_path / "data" / acdc.VOLUMES_DIR / "patient061_frame01.h5",
                  lab.astype(np.float32) / 3.0, lab, np.full(lab.shape, 4, np.uint16))
    ckpt = _save_run(tmp_path, tmp_path / "data")
    out = tmp_path / "m.json"
    args = ["eval", "--kind", "acdc", "--data", str(tmp_path / "data"), "--split", "val",
            "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "HD95 (voxel)" in text and "(1 volumes)" in text
    m = json.loads(out.read_text())
    assert set(m) >= {"mean_dice", "dice", "mean_hd95", "hd95", "volumes", "per_volume"}
    assert set(m["dice"]) == {"RV", "Myo", "LV"} and m["volumes"] == 1
    before = out.read_text()
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == before
    assert main([*args, "--overwrite"]) == 0
    # a split without volumes in the folder: one-line error
    test_args = ["eval", "--kind", "acdc", "--data", str(tmp_path / "data"), "--split", "test",
                 "--checkpoint", str(ckpt), "--no-progress", "--device", "cpu"]
    assert main(test_args) == 2
    assert "data.test_patients: none of the patients 1-20" in capsys.readouterr().err


def test_largest_component_removes_distant_false_positives():
    lab = _volume()
    pred = lab.copy()
    pred[:, 0:2, 0:2] = 1  # a far-away blob of RV: a false positive component
    kept = ve.largest_component(pred)
    assert np.array_equal(kept, lab)
    assert ve.dice(pred == 1, lab == 1) < 1.0 == ve.dice(kept == 1, lab == 1)
