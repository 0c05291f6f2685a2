"""Tests of rloss.viz: palettes, colouring, overlays, DenseCRF gradient maps and figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rloss.constants import IGNORE_INDEX, voc_palette
from rloss.viz import (
    colorize,
    colorize_rgba,
    densecrf_gradient_maps,
    overlay,
    palette_array,
    plot_curves,
    plot_gradient_figure,
    plot_prediction_grid,
    to_numpy_image,
)


def _two_region_image(h: int = 24, w: int = 32) -> torch.Tensor:
    """(3, H, W) image: dark left half, bright right half (one vertical colour edge)."""
    img = torch.full((3, h, w), 40.0)
    img[:, :, w // 2 :] = 210.0
    return img


def test_palette_array_is_voc():
    pal = palette_array()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[1].tolist() == voc_palette()[3:6] == [128, 0, 0]


def test_palette_array_rejects_bad_length():
    with pytest.raises(ValueError, match="768"):
        palette_array([0, 0, 0])


def test_colorize_ignore_is_black_and_classes_coloured():
    lab = np.array([[0, 1], [15, IGNORE_INDEX]], dtype=np.uint8)
    rgb = colorize(lab)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 1].tolist() == [0, 0, 0]
    assert colorize(torch.from_numpy(lab.astype(np.int64)))[1, 0].tolist() == rgb[1, 0].tolist()


def test_colorize_rgba_ignore_transparent():
    lab = np.array([[1, IGNORE_INDEX]])
    rgba = colorize_rgba(lab, alpha=200)
    assert rgba[0, 0, 3] == 200 and rgba[0, 1, 3] == 0


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 2), int), np.zeros((2, 2), float), np.full((2, 2), 300)]
)
def test_colorize_rejects_bad_labels(bad):
    with pytest.raises(ValueError, match="labels"):
        colorize(bad)


def test_overlay_blends_and_keeps_unlabelled():
    img = np.full((2, 2, 3), 100, np.uint8)
    lab = np.array([[1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]])
    out = overlay(img, lab, alpha=0.5)
    assert out[0, 0].tolist() == [114, 50, 50]  # (100 + 128) / 2, 100 / 2
    assert (out[1:] == 100).all() and (out[0, 1] == 100).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, lab, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        overlay(img, np.zeros((3, 3), int))


def test_to_numpy_image_accepts_chw_tensor():
    t = torch.rand(3, 5, 7) * 255
    arr = to_numpy_image(t)
    assert arr.shape == (5, 7, 3) and arr.dtype == np.uint8
    assert abs(int(arr[2, 3, 1]) - float(t[1, 2, 3])) <= 0.5 + 1e-6


def test_gradient_maps_shapes_and_consistency():
    img = _two_region_image()
    logits = torch.randn(3, 24, 32)
    before = logits.clone()
    maps = densecrf_gradient_maps(img, logits, sigma_rgb=15.0, sigma_xy=8.0, backend="torch")
    assert torch.equal(logits, before)  # caller's tensor untouched
    assert maps["probs"].shape == (3, 24, 32)
    assert torch.allclose(maps["probs"].sum(0), torch.ones(24, 32), atol=1e-5)
    assert maps["grad_logits"].shape == (3, 24, 32)
    assert maps["prediction"].shape == (24, 32)
    assert maps["energy"] > 0
    # gradient w.r.t. logits sums to zero over classes (softmax invariance)
    assert maps["grad_logits"].sum(0).abs().max() < 1e-5 * max(1.0, maps["grad_norm"].max())
    # centred dE/dS has zero mean over classes
    assert maps["grad_probs"].mean(0).abs().max() < 1e-5 * max(1.0, maps["grad_probs"].abs().max())


def _ramp_logits(h: int, w: int, boundary: float, slope: float = 1.0) -> torch.Tensor:
    """Two-class logits whose prediction switches from class 0 to 1 at column ``boundary``."""
    x = torch.arange(w, dtype=torch.float32)
    logits = torch.zeros(2, h, w)
    logits[0] = (-(x - boundary) * slope).expand(h, w)
    return logits


def test_gradient_lights_up_at_the_predicted_boundary():
    """The gradient is concentrated where the prediction changes (uncertain pixels) and
    vanishes inside confident, colour-consistent regions."""
    h, w = 24, 32
    maps = densecrf_gradient_maps(
        _two_region_image(h, w),
        _ramp_logits(h, w, 16.0),
        sigma_rgb=10.0,
        sigma_xy=4.0,
        backend="torch",
    )
    g = maps["grad_norm"].mean(0)
    assert abs(int(g.argmax()) - 16) <= 2
    assert g[26:].mean() < 1e-2 * g.max()


def test_gradient_pulls_a_misplaced_boundary_onto_the_colour_edge():
    """Boundary at column 13, colour edge at 16: the dark pixels 13..15 predicted as class 1
    are told to raise class 0 (negative gradient), the bright ones beyond to keep class 1."""
    h, w = 24, 32
    maps = densecrf_gradient_maps(
        _two_region_image(h, w),
        _ramp_logits(h, w, 13.0),
        sigma_rgb=10.0,
        sigma_xy=4.0,
        backend="torch",
    )
    g0 = maps["grad_logits"][0]
    assert (g0[:, 14:16] < 0).all()
    assert (g0[:, 16:20] > 0).all()


def test_gradient_maps_validate_inputs():
    img = _two_region_image()
    with pytest.raises(ValueError, match="image"):
        densecrf_gradient_maps(img[0], torch.zeros(2, 24, 32))
    with pytest.raises(ValueError, match="logits"):
        densecrf_gradient_maps(img, torch.zeros(1, 24, 32))
    with pytest.raises(ValueError, match="spatial"):
        densecrf_gradient_maps(img, torch.zeros(2, 20, 32))


def test_plot_gradient_figure_writes_png(tmp_path):
    img = _two_region_image()
    maps = densecrf_gradient_maps(img, torch.randn(2, 24, 32), sigma_xy=8.0, backend="torch")
    scr = np.full((24, 32), IGNORE_INDEX)
    scr[5, 2:6] = 0
    out = plot_gradient_figure(
        img, maps, tmp_path / "sub" / "grad.png", class_names=["bg", "fg"], scribbles=scr
    )
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary left behind


def test_plot_prediction_grid_and_curves(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {
            "image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            "scribbles": np.full((16, 16), IGNORE_INDEX),
            "truth": rng.integers(0, 3, (16, 16)),
        }
        for _ in range(2)
    ]
    p = plot_prediction_grid(rows, ["image", "scribbles", "truth"], tmp_path / "grid.png")
    assert p.is_file() and p.stat().st_size > 0
    c = plot_curves({"mIoU": {"a": [0.1, 0.2], "b": []}}, tmp_path / "c.png")
    assert c.is_file()
    with pytest.raises(ValueError):
        plot_curves({}, tmp_path / "d.png")


# ----------------------------------------------------------------- rloss visualize-gradient


def _write_photo(path, h: int = 24, w: int = 32):
    from rloss.data.io import write_image

    img = _two_region_image(h, w).permute(1, 2, 0).numpy().astype(np.uint8)
    write_image(path, img)
    return img


def test_cli_visualize_gradient_from_scribbles(tmp_path, capsys):
    from rloss.cli import main

    _write_photo(tmp_path / "img.png")
    (tmp_path / "s.txt").write_text("0,3,5,3,20\n2,28,5,28,20\n")
    out = tmp_path / "g.png"
    argv = [
        "visualize-gradient", "--image", str(tmp_path / "img.png"),
        "--scribbles", str(tmp_path / "s.txt"), "--out", str(out), "--steps", "5",
        "--sigma-xy", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    assert out.is_file() and "figure:" in capsys.readouterr().out
    assert main(argv) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    rc = main(["visualize-gradient", "--image", str(tmp_path / "img.png"), "--out",
               str(tmp_path / "h.png")])  # fmt: skip
    assert rc == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_cli_visualize_gradient_from_checkpoint(tmp_path):
    """A checkpoint in the format rloss train writes (model.pt: weights + recipe)."""
    from rloss.cli import main
    from rloss.train.models import build_model

    spec = {
        "arch": "unet",
        "encoder": "resnet18",
        "encoder_weights": None,
        "kwargs": {"encoder_depth": 3, "decoder_channels": [16, 16, 8]},
    }
    torch.manual_seed(0)
    net = build_model(spec, 3)
    meta = {"config": {"model": spec}, "num_classes": 3, "class_names": ["a", "b", "c"]}
    torch.save({"state_dict": net.state_dict(), "rloss": meta}, tmp_path / "model.pt")
    _write_photo(tmp_path / "img.png")
    out = tmp_path / "g.png"
    argv = [
        "visualize-gradient", "--checkpoint", str(tmp_path / "model.pt"),
        "--image", str(tmp_path / "img.png"), "--out", str(out), "--sigma-xy", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    assert out.is_file()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv[2] = str(bad)
    assert main([*argv, "--overwrite"]) == 2


def test_label_boundaries_and_contour_overlay():
    from rloss.viz import contour_overlay, label_boundaries, overlay

    lab = np.zeros((6, 8), np.int64)
    lab[2:4, 3:6] = 1
    edge = label_boundaries(lab)
    assert edge[2, 3] and edge[1, 3] and edge[3, 6]  # both sides of the boundary
    assert not edge[0, 0] and not edge[5, 7]
    assert not label_boundaries(np.zeros((4, 4), np.int64)).any()
    img = np.full((6, 8, 3), 100, np.uint8)
    out = contour_overlay(img, lab, color=(1, 2, 3))
    assert (out[edge] == [1, 2, 3]).all()
    assert (out[~edge] == overlay(img, lab, alpha=0.45)[~edge]).all()


def test_plot_segment_figure_writes_png(tmp_path):
    from rloss.viz import plot_segment_figure

    rng = np.random.default_rng(0)
    rows = []
    for h in (20, 30):
        img = rng.integers(0, 255, (h, 24, 3), dtype=np.uint8)
        scr = np.full((h, 24), 255, np.uint8)
        scr[2, 2:10] = 0
        rows.append(
            {
                "name": f"h{h}",
                "image": img,
                "scribbles": scr,
                "pce": rng.integers(0, 2, (h, 24)),
                "crf": np.zeros((h, 24), int),
            }
        )
    out = plot_segment_figure(rows, tmp_path / "f.png", title="t")
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="non-empty"):
        plot_segment_figure([], tmp_path / "g.png")
