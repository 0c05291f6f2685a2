"""Scribbles synthesised from full masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rloss.cli import main as cli_main
from rloss.data.demo_scenes import render_scene
from rloss.data.io import read_label, write_label
from rloss.data.scribble_synthesis import synthesize_directory, synthesize_scribbles


def blob_mask(h=128, w=160, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    for cls in (1, 2, 3):
        cy, cx, r = rng.uniform(25, h - 25), rng.uniform(25, w - 25), rng.uniform(10, 22)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = cls
    m[h - 30:h - 24, 10:90] = 4      # a thin bar
    m[:4, :] = 255                   # void
    return m


MASKS = [blob_mask(seed=s) for s in range(3)] + [render_scene(0, i)["mask"] for i in range(3)]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", ["scribble", "points"])
def test_every_labelled_pixel_has_mask_class(mask, mode):
    s = synthesize_scribbles(mask, seed=3, mode=mode)
    assert s.shape == mask.shape and s.dtype == np.uint8
    lab = s != 255
    assert lab.any()
    np.testing.assert_array_equal(s[lab], mask[lab])
    assert not np.any(lab & (mask == 255))


@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.08])
def test_fraction_near_target(fraction):
    fr = []
    for mask in MASKS:
        s = synthesize_scribbles(mask, fraction=fraction, seed=0)
        fr.append(np.count_nonzero(s != 255) / np.count_nonzero(mask != 255))
    assert np.mean(fr) == pytest.approx(fraction, rel=0.25)


def test_points_fraction_near_target():
    fr = [np.count_nonzero(synthesize_scribbles(m, seed=0, mode="points") != 255)
          / np.count_nonzero(m != 255) for m in MASKS]
    assert np.mean(fr) == pytest.approx(0.03, rel=0.3)


def test_same_seed_same_output_other_seed_differs():
    m = MASKS[0]
    a = synthesize_scribbles(m, seed=7)
    np.testing.assert_array_equal(a, synthesize_scribbles(m, seed=7))
    assert not np.array_equal(a, synthesize_scribbles(m, seed=8))
    p = synthesize_scribbles(m, seed=7, mode="points")
    np.testing.assert_array_equal(p, synthesize_scribbles(m, seed=7, mode="points"))


def test_every_region_gets_a_stroke_including_background():
    m = MASKS[0]
    s = synthesize_scribbles(m, seed=0)
    for cls in (0, 1, 2, 3, 4):
        assert np.any(s == cls), cls


def test_strokes_stay_away_from_boundaries():
    checked = 0
    for m in MASKS:
        s = synthesize_scribbles(m, seed=0, margin=4.0)
        for cls in np.unique(m[m != 255]):
            comp, n = ndimage.label(m == cls)
            for k in range(1, n + 1):
                region = comp == k
                dist = ndimage.distance_transform_edt(np.pad(region, 1, mode="edge"))[1:-1, 1:-1]
                on = region & (s == cls)
                if dist.max() >= 8 and on.any():
                    # centre line >= 4 px inside, 3x3 brush corners at most sqrt(2) closer
                    assert dist[on].min() >= 4 - np.sqrt(2) - 1e-6
                    checked += 1
    assert checked >= 10


def test_scribbles_are_thin_strokes_not_blobs():
    m = MASKS[0]
    s = synthesize_scribbles(m, seed=0)
    # a width-3 stroke has few pixels with a full 5x5 labelled neighbourhood
    full = ndimage.binary_erosion(s != 255, np.ones((5, 5)))
    assert full.sum() < 0.1 * np.count_nonzero(s != 255)


def test_empty_and_all_void_masks():
    assert np.all(synthesize_scribbles(np.full((10, 10), 255, np.uint8)) == 255)
    tiny = np.zeros((10, 10), np.uint8)
    tiny[:3, :3] = 1  # region below min_region gets nothing
    s = synthesize_scribbles(tiny, seed=0)
    assert not np.any(s == 1) and np.any(s == 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fraction": 0.0}, "fraction"), ({"mode": "boxes"}, "mode"), ({"width": 0}, "width")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthesize_scribbles(MASKS[0], **kwargs)
    with pytest.raises(ValueError, match="mask"):
        synthesize_scribbles(np.zeros((2, 3, 4), np.uint8))


def test_synthesize_directory_and_cli(tmp_path, capsys):
    masks = tmp_path / "masks"
    for i, m in enumerate(MASKS[:3]):
        write_label(masks / f"m{i}.png", m)
    (masks / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    summary = synthesize_directory(masks, out, seed=1, workers=1, progress=False)
    assert summary.count("converted") == 3 and summary.count("failed") == 1
    assert "broken.png" in summary.failed[0].message
    for i, m in enumerate(MASKS[:3]):
        s = read_label(out / f"m{i}.png")
        lab = s != 255
        np.testing.assert_array_equal(s[lab], m[lab])
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    # order/worker independent: a process pool with overwrite gives identical files
    (masks / "broken.png").unlink()
    for i in range(3, 6):
        write_label(masks / f"m{i}.png", MASKS[i])
    again = synthesize_directory(masks, out, seed=1, workers=2, overwrite=True, progress=False)
    assert again.ok and again.count("converted") == 6
    assert all(first[k] == (out / k).read_bytes() for k in first)

    out2 = tmp_path / "out2"
    rc = cli_main(["scribbles", "synth", str(masks), "--out", str(out2), "--seed", "1",
                   "--fraction", "0.05", "--mode", "points", "--workers", "1", "--no-progress"])
    assert rc == 0
    assert "mean labelled-pixel fraction" in capsys.readouterr().out
    assert len(list(out2.glob("*.png"))) == 6
    assert cli_main(["scribbles", "synth", str(tmp_path / "none"), "--out", str(out2)]) == 2
