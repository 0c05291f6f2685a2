"""Joint transforms for image, scribble, mask and roi; they produce the sample contract.

A *raw sample* (what datasets read from disk) is a dict::

    {"image": uint8 (H, W, 3) RGB, "scribble": integer (H, W) or None,
     "mask": integer (H, W) or None, "name": str}

A transform turns it into the *sample* every dataset returns::

    {"image":     float32 (3, H, W), ImageNet-normalised network input,
     "image_raw": float32 (3, H, W), RGB in 0..255 (for the CRF losses),
     "scribble":  int64 (H, W), class on labelled pixels, 255 elsewhere,
     "mask":      int64 (H, W), full ground truth, 255 = void (all 255 when unknown),
     "roi":       float32 (H, W), 1 on real pixels, 0 on crop padding,
     "name":      str}

Crop and batch padding follow one convention (:data:`PAD_VALUES`): ``image_raw`` is padded
with the mean colour, so the normalised ``image`` is 0 there and the two stay consistent
(the CRF losses and the CRF post-processing read ``image_raw``); ``scribble`` and ``mask``
with 255, and ``roi`` is 0 on the padding. Padding is never a label value (the reference's
254 is gone). :func:`normalize_image` is the one image normalisation (transforms, inference
and the demo use it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rloss.constants import IGNORE_INDEX, IMAGENET_MEAN_255, IMAGENET_STD_255

__all__ = [
    "PAD_VALUES",
    "SAMPLE_KEYS",
    "EvalTransform",
    "TrainTransform",
    "normalize_image",
    "pad_collate",
    "to_tensors",
]

#: Keys of every dataset sample, in a fixed order.
SAMPLE_KEYS: tuple[str, ...] = ("image", "image_raw", "scribble", "mask", "roi", "name")

#: Padding value of every padded sample entry; ``"mean"`` = the normalisation mean colour.
PAD_VALUES: dict[str, float | int | str] = {
    "image": 0.0,
    "image_raw": "mean",
    "scribble": IGNORE_INDEX,
    "mask": IGNORE_INDEX,
    "roi": 0.0,
}


def normalize_image(
    image_raw: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN_255,
    std: Sequence[float] = IMAGENET_STD_255,
) -> torch.Tensor:
    """RGB 0..255 ``(3, H, W)`` or ``(N, 3, H, W)`` → float32 ``(image_raw - mean) / std``.

    >>> x = torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1).expand(3, 2, 2)
    >>> normalize_image(x).abs().max().item()
    0.0
    """
    if image_raw.dim() not in (3, 4) or image_raw.shape[-3] != 3:
        raise ValueError(
            f"image_raw: expected shape (3, H, W) or (N, 3, H, W), got {tuple(image_raw.shape)}"
        )
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32, device=image_raw.device)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32, device=image_raw.device)
    return (image_raw.float() - m.view(3, 1, 1)) / s.view(3, 1, 1)


def _as_label(value: Any, shape: tuple[int, int], key: str, name: str) -> torch.Tensor:
    if value is None:
        return torch.full(shape, IGNORE_INDEX, dtype=torch.int64)
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    if t.shape != shape:
        raise ValueError(
            f"{key}: sample {name!r} has {key} of shape {tuple(t.shape)}, want {shape} "
            "(the image size)"
        )
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{key}: sample {name!r}: want an integer label map, got {t.dtype}")
    return t.to(torch.int64).clone()


def to_tensors(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a raw sample to tensors without changing geometry.

    Args:
        raw: ``{"image": uint8 (H, W, 3) or float32 (3, H, W) 0..255, "scribble": (H, W) |
            None, "mask": (H, W) | None, "name": str}``.

    Returns:
        ``{"image_raw": float32 (3, H, W), "scribble": int64 (H, W), "mask": int64 (H, W),
        "roi": float32 (H, W) ones, "name": str}`` (no normalised ``image`` yet). The inputs
        are not modified.
    """
    if "image" not in raw:
        raise ValueError(f"raw: want a dict with an 'image' entry, got keys {sorted(raw)}")
    name = str(raw.get("name", ""))
    img = raw["image"]
    if isinstance(img, torch.Tensor):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image: sample {name!r}: want a (3, H, W) tensor, got "
                             f"{tuple(img.shape)}")
        image_raw = img.to(torch.float32).clone()
    else:
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image: sample {name!r}: want a (H, W, 3) array, got {arr.shape}")
        image_raw = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(torch.float32)
    shape = (int(image_raw.shape[1]), int(image_raw.shape[2]))
    return {
        "image_raw": image_raw,
        "scribble": _as_label(raw.get("scribble"), shape, "scribble", name),
        "mask": _as_label(raw.get("mask"), shape, "mask", name),
        "roi": torch.ones(shape, dtype=torch.float32),
        "name": name,
    }


class _Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean/std: want 3 values each, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std: want positive values, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def finish(self, s: dict[str, Any]) -> dict[str, Any]:
        image = normalize_image(s["image_raw"], self.mean, self.std)
        return {"image": image.contiguous(), "image_raw": s["image_raw"].contiguous(),
                "scribble": s["scribble"].contiguous(), "mask": s["mask"].contiguous(),
                "roi": s["roi"].contiguous(), "name": s["name"]}


class EvalTransform(_Normalize):
    """Full-resolution evaluation transform: tensors + normalisation, ``roi`` all ones.

    Args:
        mean: RGB mean on the 0..255 scale used to normalise ``image``.
        std: RGB standard deviation on the 0..255 scale.
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN_255,
        std: Sequence[float] = IMAGENET_STD_255,
    ) -> None:
        super().__init__(mean, std)

    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Raw sample -> sample dict (see the module docstring)."""
        return self.finish(to_tensors(raw))

    def __repr__(self) -> str:
        return "EvalTransform()"


class TrainTransform(_Normalize):
    """Training augmentation: random scale, random crop with padding, horizontal flip.

    1. Scale by ``s ~ U(scale_range)`` (bilinear for the image, with antialiasing when
       shrinking; nearest for scribble and mask).
    2. Pad bottom/right up to ``crop_size`` where the image is smaller: ``image_raw`` with
       the mean colour, labels with 255, ``roi`` with 0.
    3. Crop ``crop_size`` x ``crop_size`` at a uniformly random position.
    4. Flip horizontally with probability 0.5 (all maps together).
    5. Normalise ``image = (image_raw - mean) / std``.

    Randomness comes from ``generator`` if given, else from torch's global generator
    (which :class:`torch.utils.data.DataLoader` seeds differently in each worker).

    Args:
        crop_size: output height and width, >= 1.
        scale_range: ``(low, high)`` scale factors, ``0 < low <= high``.
        flip: random horizontal flips.
        mean: RGB mean on the 0..255 scale.
        std: RGB standard deviation on the 0..255 scale.
        generator: optional :class:`torch.Generator` for reproducible augmentation.
    """

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN_255,
        std: Sequence[float] = IMAGENET_STD_255,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(mean, std)
        if int(crop_size) != crop_size or crop_size < 1:
            raise ValueError(f"crop_size: want a positive integer, got {crop_size!r}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: want (low, high) with 0 < low <= high, got "
                             f"{tuple(scale_range)}")
        self.crop_size = int(crop_size)
        self.scale_range = (lo, hi)
        self.flip = bool(flip)
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Raw sample -> augmented sample dict of size ``crop_size`` x ``crop_size``."""
        s = to_tensors(raw)
        h, w = s["roi"].shape
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * self._rand()
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            img = F.interpolate(s["image_raw"][None], size=(nh, nw), mode="bilinear",
                                align_corners=False, antialias=scale < 1.0)[0]
            s["image_raw"] = img.clamp_(0.0, 255.0)
            for key in ("scribble", "mask"):
                s[key] = F.interpolate(s[key][None, None].to(torch.float32), size=(nh, nw),
                                       mode="nearest")[0, 0].to(torch.int64)
            s["roi"] = torch.ones((nh, nw), dtype=torch.float32)
        c = self.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        if ph or pw:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
            img = mean.expand(3, nh + ph, nw + pw).clone()
            img[:, :nh, :nw] = s["image_raw"]
            s["image_raw"] = img
            for key, fill in (("scribble", IGNORE_INDEX), ("mask", IGNORE_INDEX), ("roi", 0)):
                padded = torch.full((nh + ph, nw + pw), fill, dtype=s[key].dtype)
                padded[:nh, :nw] = s[key]
                s[key] = padded
        H, W = s["roi"].shape
        top = int(self._rand() * (H - c + 1)) if H > c else 0
        left = int(self._rand() * (W - c + 1)) if W > c else 0
        top, left = min(top, H - c), min(left, W - c)
        s["image_raw"] = s["image_raw"][:, top:top + c, left:left + c]
        for key in ("scribble", "mask", "roi"):
            s[key] = s[key][top:top + c, left:left + c]
        if self.flip and self._rand() < 0.5:
            s["image_raw"] = s["image_raw"].flip(-1)
            for key in ("scribble", "mask", "roi"):
                s[key] = s[key].flip(-1)
        return self.finish(s)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
                f"flip={self.flip})")


def pad_collate(
    batch: Sequence[Mapping[str, Any]],
    mean: Sequence[float] = IMAGENET_MEAN_255,
    std: Sequence[float] = IMAGENET_STD_255,
) -> dict[str, Any]:
    """Collate samples of different sizes by padding bottom/right to the largest one.

    The entries of :data:`PAD_VALUES` are padded with their value (the crop convention:
    ``image`` 0, ``image_raw`` the mean colour, ``scribble``/``mask`` 255, ``roi`` 0);
    other tensors are stacked and anything else (``name``) becomes a list.

    Args:
        batch: sample dicts (see the module docstring).
        mean: the mean used to pad ``image_raw`` (must match the transform's).
        std: unused for padding values; kept for symmetry with the transforms.

    Returns:
        ``{"image": (N, 3, H, W), "image_raw": (N, 3, H, W), "scribble": (N, H, W),
        "mask": (N, H, W), "roi": (N, H, W), "name": list[str]}``.
    """
    del std
    if not batch:
        raise ValueError("batch: want at least one sample, got an empty sequence")
    H = max(int(b["image"].shape[-2]) for b in batch)
    W = max(int(b["image"].shape[-1]) for b in batch)
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1)
    out: dict[str, Any] = {}
    for key, first in batch[0].items():
        if key in PAD_VALUES:
            fill = PAD_VALUES[key]
            shape = (*first.shape[:-2], H, W)
            padded = []
            for b in batch:
                t = b[key]
                if tuple(t.shape[-2:]) == (H, W):
                    padded.append(t)
                    continue
                if fill == "mean":
                    p = mean_t.to(t.dtype).expand(shape).clone()
                else:
                    p = torch.full(shape, fill, dtype=t.dtype)
                p[..., : t.shape[-2], : t.shape[-1]] = t
                padded.append(p)
            out[key] = torch.stack(padded)
        elif isinstance(first, torch.Tensor):
            out[key] = torch.stack([b[key] for b in batch])
        else:
            out[key] = [b[key] for b in batch]
    return out
