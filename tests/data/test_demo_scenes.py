"""The built-in demo data (rloss.data.demo_scenes): what the generator promises."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rloss.data.demo_scenes import MIN_CONTRAST, SYNTHETIC_CLASSES, render_scene

SCENES = [render_scene(7, i) for i in range(40)]


def _class_axes() -> np.ndarray:
    from rloss.data.demo_scenes import _CLASS_AXES

    axes = np.stack([_CLASS_AXES[c] for c in range(1, len(SYNTHETIC_CLASSES))])
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


def test_deterministic_per_seed_index_and_split():
    a, b = render_scene(3, 5), render_scene(3, 5)
    for k in ("image", "mask", "scribble"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], render_scene(4, 5)["image"])
    assert not np.array_equal(a["image"], render_scene(3, 6)["image"])
    assert not np.array_equal(a["image"], render_scene(3, 5, split="val")["image"])
    assert a["image"].dtype == np.uint8 and a["image"].shape == (64, 64, 3)
    assert a["mask"].max() < len(SYNTHETIC_CLASSES)


def test_labelled_fraction_is_about_three_percent_and_every_region_is_scribbled():
    fractions = [np.mean(s["scribble"] != 255) for s in SCENES]
    assert np.mean(fractions) == pytest.approx(0.03, rel=0.15)
    for s in SCENES:
        lab = s["scribble"] != 255
        np.testing.assert_array_equal(s["scribble"][lab], s["mask"][lab])
        comp, n = ndimage.label(s["mask"] > 0)
        for i in range(1, n + 1):  # every object carries a stroke of its class
            assert lab[comp == i].any()
        assert lab[s["mask"] == 0].any()


def test_scribbles_keep_away_from_class_boundaries():
    # distance of every labelled pixel to the nearest pixel of another class: never a
    # neighbour (> sqrt(2)), and typically the synthesiser's margin (4 px)
    dists = []
    for s in SCENES:
        m, lab = s["mask"], s["scribble"] != 255
        for c in np.unique(m):
            d = ndimage.distance_transform_edt(m == c)[lab & (m == c)]
            assert d.min() > 1.5, c
            dists.append(d)
    assert np.median(np.concatenate(dists)) >= 4.0


def test_boundaries_are_colour_edges_and_colour_does_not_tell_the_class():
    mean_colour: dict[int, list[np.ndarray]] = {c: [] for c in range(len(SYNTHETIC_CLASSES))}
    for s in SCENES:
        img, m = s["image"].astype(float), s["mask"]
        comp, n = ndimage.label(m > 0)
        for i in range(1, n + 1):
            obj = comp == i
            inner = ndimage.binary_erosion(obj, iterations=2)
            ring = ndimage.binary_dilation(obj, iterations=3) & ~ndimage.binary_dilation(
                obj, iterations=1) & (m == 0)
            if inner.sum() < 10 or ring.sum() < 10:
                continue
            # the object's colour stands out from its surroundings (the colour edge)
            inside = img[inner].mean(0)
            gap = np.linalg.norm(img[ring] - inside, axis=1)
            assert np.median(gap) > 0.6 * MIN_CONTRAST
            mean_colour[int(m[obj][0])].append(inside)
    for c in range(1, len(SYNTHETIC_CLASSES)):
        cm = np.asarray(mean_colour[c])
        assert len(cm) >= 4, c
        assert np.ptp(cm, axis=0).max() > 100, c  # each class takes a wide range of colours


def test_classes_are_told_by_local_texture():
    # a hand-made local feature: the main colour axis of the high-pass residual (the
    # texture's modulation) classifies objects; the mean colour does not
    axes = _class_axes()
    right = total = 0
    for s in SCENES:
        img, m = s["image"].astype(float), s["mask"]
        residual = img - ndimage.gaussian_filter(img, (2.0, 2.0, 0))
        comp, n = ndimage.label(m > 0)
        for i in range(1, n + 1):
            inner = ndimage.binary_erosion(comp == i, iterations=3)
            if inner.sum() < 20:
                continue
            r = residual[inner]
            _, _, vt = np.linalg.svd(r - r.mean(0), full_matrices=False)
            guess = 1 + int(np.argmax(np.abs(axes @ vt[0])))
            right += guess == int(m[inner][0])
            total += 1
    assert total >= 40
    assert right / total > 0.9


def test_stripes_are_nearly_axis_aligned():
    # the dominant gradient direction of every striped object (structure tensor of the
    # texture's brightness along its class axis) lies within the tilt of an image axis
    from rloss.data.demo_scenes import _CLASS_AXES, MAX_TEXTURE_TILT

    axis = _CLASS_AXES[1] / np.linalg.norm(_CLASS_AXES[1])
    tilts = []
    for s in SCENES:
        m = s["mask"]
        comp, n = ndimage.label(m == 1)
        t = s["image"].astype(float) @ axis
        gy, gx = np.gradient(t)
        for i in range(1, n + 1):
            inner = ndimage.binary_erosion(comp == i, iterations=2)
            if inner.sum() < 30:
                continue
            jxx, jyy, jxy = (gx * gx)[inner].sum(), (gy * gy)[inner].sum(), (gx * gy)[inner].sum()
            angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # of the gradient, in (-pi/2, pi/2]
            tilts.append(min(abs(angle), abs(abs(angle) - np.pi / 2)))
    assert len(tilts) >= 5
    assert max(tilts) <= MAX_TEXTURE_TILT / 2 + np.radians(6)  # + estimation error


def test_background_has_clutter_edges():
    # colour edges inside the background (material boundary, distractor blobs)
    with_edges = 0
    for s in SCENES:
        img, m = s["image"].astype(float), s["mask"]
        smooth = ndimage.gaussian_filter(img, (1.0, 1.0, 0))
        grad = np.linalg.norm(np.stack(np.gradient(smooth, axis=(0, 1))), axis=(0, 3))
        bg_inner = ndimage.binary_erosion(m == 0, iterations=3)
        with_edges += (grad[bg_inner] > 15).sum() > 20
    assert with_edges > 0.7 * len(SCENES)
