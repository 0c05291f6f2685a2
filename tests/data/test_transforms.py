"""Joint transforms: the sample contract, padding conventions, roi, flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from rloss.constants import IMAGENET_MEAN_255, IMAGENET_STD_255
from rloss.data.transforms import SAMPLE_KEYS, EvalTransform, TrainTransform, pad_collate

MEAN = torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD_255).view(3, 1, 1)


def raw_sample(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (h, w), dtype=np.uint8)
    scribble = np.full((h, w), 255, np.uint8)
    scribble[h // 2, 5:w - 5] = 3
    return {"image": image, "scribble": scribble, "mask": mask, "name": "x"}


def check_contract(s, h, w):
    assert tuple(s) == SAMPLE_KEYS
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
    assert s["image_raw"].shape == (3, h, w) and s["image_raw"].dtype == torch.float32
    assert s["scribble"].shape == (h, w) and s["scribble"].dtype == torch.int64
    assert s["mask"].shape == (h, w) and s["mask"].dtype == torch.int64
    assert s["roi"].shape == (h, w) and s["roi"].dtype == torch.float32
    assert isinstance(s["name"], str)
    assert 0 <= float(s["image_raw"].min()) and float(s["image_raw"].max()) <= 255
    torch.testing.assert_close(s["image"], (s["image_raw"] - MEAN) / STD)


def test_eval_transform_is_exact():
    raw = raw_sample()
    s = EvalTransform()(raw)
    check_contract(s, 40, 60)
    np.testing.assert_array_equal(s["image_raw"].permute(1, 2, 0).numpy(), raw["image"])
    np.testing.assert_array_equal(s["mask"].numpy(), raw["mask"])
    np.testing.assert_array_equal(s["scribble"].numpy(), raw["scribble"])
    assert torch.all(s["roi"] == 1)


def test_missing_labels_become_255():
    raw = raw_sample()
    raw["scribble"] = None
    del raw["mask"]
    s = EvalTransform()(raw)
    assert torch.all(s["scribble"] == 255) and torch.all(s["mask"] == 255)


def test_inputs_not_modified():
    raw = raw_sample()
    copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in raw.items()}
    TrainTransform(32, generator=torch.Generator().manual_seed(0))(raw)
    for k in ("image", "mask", "scribble"):
        np.testing.assert_array_equal(raw[k], copy[k])


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_contract(seed):
    t = TrainTransform(48, scale_range=(0.5, 2.0), generator=torch.Generator().manual_seed(seed))
    check_contract(t(raw_sample()), 48, 48)


def test_padding_conventions():
    # image smaller than the crop at scale 1: padding on the bottom/right
    t = TrainTransform(64, scale_range=(1.0, 1.0), flip=False)
    raw = raw_sample(40, 50)
    s = t(raw)
    check_contract(s, 64, 64)
    real = s["roi"] == 1
    assert int(real.sum()) == 40 * 50
    assert torch.all(s["roi"][:40, :50] == 1) and torch.all(s["roi"][40:] == 0)
    assert torch.all(s["roi"][:, 50:] == 0)
    pad = ~real
    assert torch.all(s["mask"][pad] == 255) and torch.all(s["scribble"][pad] == 255)
    torch.testing.assert_close(s["image_raw"][:, pad], MEAN.view(3, 1).expand(3, int(pad.sum())))
    assert torch.all(s["image"][:, pad] == 0)
    np.testing.assert_array_equal(s["mask"][:40, :50].numpy(), raw["mask"])
    assert not torch.any(s["mask"] == 254) and not torch.any(s["scribble"] == 254)


def test_flip_consistency():
    # the image encodes the column index, the labels encode the column too
    h, w = 30, 30
    cols = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    raw = {"image": np.stack([cols * 5] * 3, -1).astype(np.uint8), "mask": cols,
           "scribble": cols, "name": "c"}
    flipped = 0
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        t = TrainTransform(30, scale_range=(1.0, 1.0), generator=gen)
        s = t(raw)
        img_col = s["image_raw"][0] / 5
        torch.testing.assert_close(img_col, s["mask"].float())
        torch.testing.assert_close(s["scribble"], s["mask"])
        flipped += int(s["mask"][0, 0] == w - 1)
    assert 0 < flipped < 10


def test_scale_and_crop_keep_alignment():
    h, w = 50, 70
    yy, xx = np.mgrid[:h, :w]
    lab = ((yy // 10) * 7 + xx // 10).astype(np.uint8)  # blocks
    img = np.stack([lab * 3] * 3, -1).astype(np.uint8)
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        t = TrainTransform(40, scale_range=(0.7, 1.6), generator=gen)
        s = t({"image": img, "mask": lab, "scribble": None, "name": "b"})
        real = (s["roi"] == 1) & (s["mask"] != 255)
        # away from block edges bilinear image == nearest label * 3
        diff = (s["image_raw"][0][real] - 3 * s["mask"][real].float()).abs()
        assert float((diff < 1).float().mean()) > 0.7
        assert torch.all(s["mask"][s["roi"] == 0] == 255)


def test_generator_reproducible():
    raw = raw_sample(80, 90)
    a = TrainTransform(48, generator=torch.Generator().manual_seed(3))(raw)
    b = TrainTransform(48, generator=torch.Generator().manual_seed(3))(raw)
    for k in ("image", "mask", "scribble", "roi"):
        torch.testing.assert_close(a[k], b[k])


def test_default_collate_and_pad_collate():
    t = TrainTransform(32, generator=torch.Generator().manual_seed(0))
    batch = default_collate([t(raw_sample(seed=i)) for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["roi"].shape == (3, 32, 32)
    e = EvalTransform()
    items = [e(raw_sample(20, 30)), e(raw_sample(25, 18))]
    b = pad_collate(items)
    assert b["image"].shape == (2, 3, 25, 30)
    assert b["roi"][0, 20:].sum() == 0 and b["roi"][1, :, 18:].sum() == 0
    assert torch.all(b["mask"][b["roi"] == 0] == 255)
    torch.testing.assert_close(b["image"][1, :, :25, :18], items[1]["image"])
    assert b["name"] == ["x", "x"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"crop_size": 0}, "crop_size"), ({"crop_size": 8, "scale_range": (2.0, 1.0)},
                                       "scale_range"),
     ({"crop_size": 8, "std": (1.0, 0.0, 1.0)}, "std")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainTransform(**kwargs)


def test_bad_samples():
    raw = raw_sample()
    raw["mask"] = raw["mask"][:-1]
    with pytest.raises(ValueError, match=r"mask.*shape"):
        EvalTransform()(raw)
    with pytest.raises(ValueError, match="image"):
        EvalTransform()({"image": np.zeros((4, 4)), "name": "g"})
