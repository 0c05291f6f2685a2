"""``rloss segment``: turn scribbles on one photograph into a dense mask.

The segmentation is found by gradient descent on a single image, with the
same objective the library trains networks with: partial cross-entropy on
the scribbled pixels plus the DenseCRF loss over all pixels,

    min_theta  pCE(z_theta, scribbles) + lambda * E_crf(softmax(z_theta)),

where ``z_theta`` are the class scores. Two parameterisations are offered:

* ``method="net"`` (default): a small fully convolutional network (dilated
  3x3 convolutions on RGB + XY inputs) fitted to this one image. pCE alone
  already generalises from the scribbles by colour and position; the
  DenseCRF term pulls the boundaries onto colour edges. ``--no-crf`` shows
  what the regularizer adds.
* ``method="logits"``: free per-pixel scores on a coarse grid. With pCE only
  nothing propagates beyond the scribbles, so this is a pure illustration of
  the DenseCRF loss acting as label propagation.

Scores live on a grid ``scale`` times the image size and are upsampled
bilinearly; the DenseCRF loss is computed at that scale too (its
``scale_factor``). On large images the scale is lowered so that the grid has at most
``max_grid_pixels`` pixels (:func:`working_grid`): the cost per step is proportional to
the grid, so a 500x375 photograph costs what a 330x250 one does.

Scribbles are read from an index/palette PNG (255 = unlabelled) or from the
text polyline format: one stroke per line, ``label,x1,y1,x2,y2,...`` in pixel
coordinates (x = column, y = row), drawn 3 pixels wide; blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULTS",
    "DEFAULT_BACKEND",
    "Adam",
    "EarlyStop",
    "OptimisationDiverged",
    "PottsOnImage",
    "ScribbleCrossEntropy",
    "check_scribble_file",
    "read_scribble_text",
    "read_scribbles",
    "register",
    "segment_image",
    "working_grid",
]

#: Default hyper-parameters of :func:`segment_image` (and of ``rloss segment``).
DEFAULTS: dict[str, Any] = {
    "method": "net",
    "crf_weight": 1.0,
    "sigma_rgb": 15.0,
    "sigma_xy": 40.0,
    "scale": 0.5,
    "max_grid_pixels": 20_000,
    "steps": 160,
    "lr": 0.01,
    "schedule": "constant",
    "tol": 0.0,
    "normalize": True,
    "threads": 2,
}

#: Lattice backend of the DenseCRF loss when ``backend=None``. The score grid is small
#: (at most ``max_grid_pixels``, 20k by default), where the torch lattice costs about 2 ms
#: per step (a 163x122 grid, 3 classes, one thread) and is built in under 0.1 s, while the
#: numba backend would first import numba and load its compiled kernels from the cache
#: (about 1 s of a 5 s budget; a minute of compiling on a fresh install).
DEFAULT_BACKEND: str = "torch"

#: Width in pixels of rasterised polyline strokes (as for ScribbleSup scribbles).
STROKE_WIDTH: int = 3

_METHODS = ("net", "logits")
_SCHEDULES = ("cosine", "constant")

#: Smallest side, in pixels, of the score grid (``scale`` times the image size).
MIN_GRID_SIDE: int = 2

#: :class:`EarlyStop` compares the labels every this many steps ...
EARLY_STOP_EVERY: int = 10
#: ... and stops after this many consecutive quiet checks.
EARLY_STOP_PATIENCE: int = 2


class OptimisationDiverged(ValueError):
    """The scores became NaN or Inf during :func:`segment_image` (learning rate too large).

    Attributes:
        step: the step (1-based) at which it was seen.
        lr: the learning rate used.
    """

    def __init__(self, step: int, steps: int, lr: float) -> None:
        self.step, self.steps, self.lr = int(step), int(steps), float(lr)
        super().__init__(
            f"the optimisation diverged at step {step} of {steps} (the scores became NaN or "
            f"Inf); lower lr (was {lr:g})"
        )


# --------------------------------------------------------------------------- scribble input


def read_scribble_text(
    path: str | os.PathLike[str], size: tuple[int, int], *, width: int = STROKE_WIDTH
) -> np.ndarray:
    """Rasterise a text polyline scribble file.

    Format (parsed by :func:`rloss.data.scribbles.parse_polyline_text`): one
    stroke per line, ``label,x1,y1,x2,y2,...`` with an integer label 0..254
    and pixel coordinates (x = column, y = row; points may lie outside the
    image and are clipped). A stroke with one point is a dot. Blank lines and
    lines starting with ``#`` are skipped; later strokes are drawn over
    earlier ones (:func:`rloss.data.scribbles.rasterize_strokes`).

    Args:
        path: the ``.txt`` file.
        size: ``(H, W)`` of the image the scribbles belong to.
        width: stroke width in pixels.

    Returns:
        ``(H, W)`` ``uint8`` labels, 255 = unlabelled.

    Raises:
        ValueError: a malformed line or a non-integer label (the message names the file).
    """
    from rloss.data.scribbles import parse_polyline_text, rasterize_strokes

    ann = parse_polyline_text(path)
    strokes = []
    for stroke in ann.strokes:
        try:
            label = int(stroke.tag)
        except ValueError:
            raise ValueError(
                f"{path}: stroke label must be an integer class index 0..254, got {stroke.tag!r}"
            ) from None
        if not 0 <= label <= 254:
            raise ValueError(f"{path}: stroke label must lie in 0..254, got {label}")
        strokes.append((label, stroke.points))
    return rasterize_strokes(strokes, (int(size[0]), int(size[1])), width=width)


def check_scribble_file(path: str | os.PathLike[str]) -> Path:
    """Check, without reading it, that ``path`` can hold scribbles: an existing file, not in a
    lossy format (JPEG/WebP compression noise would become labels). Returns it as a Path.

    Raises:
        ValueError: a folder, a missing file or a lossy format (the message names the file).
    """
    from rloss.data.scribbles import LOSSY_SUFFIXES

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; want a .png or .txt scribble file")
    if not path.is_file():
        raise ValueError(f"{path}: scribble file not found")
    if path.suffix.lower() in LOSSY_SUFFIXES:
        raise ValueError(
            f"{path}: {path.suffix} is a lossy format, whose compression noise turns into "
            "spurious labels; save the scribbles as an index/palette .png or a .txt"
        )
    return path


def read_scribbles(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """Read scribbles from an index/palette PNG or a text polyline file.

    Args:
        path: ``.png`` (single-channel index or palette PNG, 255 = unlabelled)
            or ``.txt`` (see :func:`read_scribble_text`).
        size: ``(H, W)`` of the image; a PNG must have exactly this size.

    Returns:
        ``(H, W)`` ``uint8`` labels, 255 = unlabelled.

    Raises:
        ValueError: unreadable file, a folder, a lossy format (JPEG/WebP: compression noise
            would become labels), wrong size or format (the message names the file).
    """
    from rloss.data.io import read_label

    path = check_scribble_file(path)
    if path.suffix.lower() == ".txt":
        return read_scribble_text(path, size)
    arr = read_label(path)
    if arr.shape != tuple(size):
        raise ValueError(
            f"{path}: scribble image is {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is "
            f"{size[1]}x{size[0]}"
        )
    return arr


# --------------------------------------------------------------------------- optimisation


def _image_tensor(image: Any):
    import torch

    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 3 and t.shape[0] == 3:
            out = t.to(torch.float32)
        elif t.dim() == 3 and t.shape[-1] == 3:
            out = t.permute(2, 0, 1).to(torch.float32)
        else:
            raise ValueError(f"image: want (3, H, W) or (H, W, 3), got {tuple(t.shape)}")
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image: want an (H, W, 3) RGB array, got shape {arr.shape}")
        if arr.dtype.kind not in "uif":
            raise ValueError(f"image: want uint8 or float 0..255, got dtype {arr.dtype}")
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("image: contains NaN or Inf")
    if out.numel() and (float(out.min()) < 0 or float(out.max()) > 255):
        raise ValueError(
            f"image: want values in 0..255, got {float(out.min()):.3g}..{float(out.max()):.3g}"
        )
    return out.contiguous()


def _scribble_tensor(scribbles: Any, size: tuple[int, int]):
    import torch

    if isinstance(scribbles, torch.Tensor):
        arr = scribbles.detach().cpu().numpy()
    else:
        arr = np.asarray(scribbles)
    if arr.shape != tuple(size):
        raise ValueError(f"scribbles: want shape {tuple(size)} (the image's), got {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"scribbles: want integer labels, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"scribbles: labels must lie in 0..255, got {arr.min()}..{arr.max()}")
    return torch.from_numpy(arr.astype(np.int64))


class PottsOnImage:
    """The DenseCRF loss of :func:`rloss.losses.densecrf_loss` on one fixed image, lattice cached.

    Iterative per-image optimisation filters many probability maps over the same
    image; building the permutohedral lattice costs several filterings, so it is
    built once here. For ``probs`` of shape ``(1, K, h, w)`` the value equals
    ``densecrf_loss(image, probs, roi=None, weight=weight, sigma_rgb=sigma_rgb,
    sigma_xy=sigma_xy, scale_factor=1, normalize=normalize)``:
    ``weight * sum_k S_k^T W (1 - S_k)``, divided by ``1^T W 1`` when ``normalize``.

    Args:
        image: ``(1, C, h, w)`` float image, 0..255, at the resolution of ``probs``.
        sigma_rgb: colour bandwidth (0..255 units).
        sigma_xy: spatial bandwidth in pixels of ``image``.
        weight: loss weight.
        normalize: divide by ``1^T W 1`` (the loss's normalised form).
        backend: lattice backend or ``None`` for the device default.
    """

    def __init__(
        self,
        image: Any,
        *,
        sigma_rgb: float,
        sigma_xy: float,
        weight: float = 1.0,
        normalize: bool = True,
        backend: str | None = None,
    ) -> None:
        import torch

        from rloss.lattice import Lattice, bilateral_features

        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(
                f"image: want a (1, C, h, w) tensor, got {getattr(image, 'shape', image)}"
            )
        feats = bilateral_features(image.detach().float(), sigma_rgb, sigma_xy)
        self.lattice = Lattice(feats, backend=backend)
        self.shape = tuple(image.shape[2:])
        self.normalize = bool(normalize)
        self.weight = float(weight)

    def __call__(self, probs: Any) -> Any:
        """Weighted energy of ``probs`` ``(1, K, h, w)`` (softmax), differentiable in ``probs``."""
        from rloss.losses import densecrf_loss

        if tuple(probs.shape[2:]) != self.shape or probs.shape[0] != 1:
            raise ValueError(
                f"probs: want shape (1, K, {self.shape[0]}, {self.shape[1]}), "
                f"got {tuple(probs.shape)}"
            )
        return densecrf_loss(
            None, probs, weight=self.weight, normalize=self.normalize, lattice=self.lattice
        )


class ScribbleCrossEntropy:
    """Partial cross-entropy of coarse scores, upsampled bilinearly, on the labelled pixels only.

    Equal to ``partial_cross_entropy(F.interpolate(coarse, size=(H, W), mode="bilinear",
    align_corners=False), labels)`` (checked by a test) without upsampling the whole score
    map: the ``M`` labelled pixels are sampled from the coarse grid with
    ``F.grid_sample`` (bilinear, border padding; the same source coordinates
    ``(i + 1/2) h / H - 1/2``, clamped to the grid, as ``F.interpolate``). Scribbles cover
    a few percent of a photograph, so this costs ``O(M K)`` instead of ``O(H W K)``.

    Args:
        labels: ``(1, H, W)`` int64 class indices, ``IGNORE_INDEX`` where unlabelled.
        grid: ``(h, w)`` of the coarse scores.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from rloss.losses import partial_cross_entropy
        >>> labels = torch.full((1, 9, 12), 255)
        >>> labels[0, 2, 1:11] = 0
        >>> labels[0, 7, 3:6] = 1
        >>> coarse = torch.randn(1, 2, 4, 5)
        >>> full = F.interpolate(coarse, size=(9, 12), mode="bilinear", align_corners=False)
        >>> ours = ScribbleCrossEntropy(labels, (4, 5))(coarse)
        >>> bool(torch.allclose(ours, partial_cross_entropy(full, labels), atol=1e-6))
        True
    """

    def __init__(self, labels: Any, grid: tuple[int, int]) -> None:
        import torch

        from rloss.constants import IGNORE_INDEX

        if labels.dim() != 3 or labels.shape[0] != 1:
            raise ValueError(f"labels: want (1, H, W), got {tuple(labels.shape)}")
        big_h, big_w = int(labels.shape[1]), int(labels.shape[2])
        ys, xs = torch.nonzero(labels[0] != IGNORE_INDEX, as_tuple=True)
        dev = labels.device
        gx = (2.0 * (xs.to(torch.float64) + 0.5) / big_w - 1.0).to(dev)
        gy = (2.0 * (ys.to(torch.float64) + 0.5) / big_h - 1.0).to(dev)
        self.grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2)
        self.labels = labels[0, ys, xs].view(1, 1, -1)
        self.shape = (int(grid[0]), int(grid[1]))

    def __call__(self, coarse: Any) -> Any:
        """Mean cross-entropy over the labelled pixels of ``coarse`` ``(1, K, h, w)``."""
        import torch.nn.functional as F

        from rloss.losses import partial_cross_entropy

        if coarse.shape[0] != 1 or tuple(coarse.shape[2:]) != self.shape:
            raise ValueError(
                f"coarse: want shape (1, K, {self.shape[0]}, {self.shape[1]}), "
                f"got {tuple(coarse.shape)}"
            )
        at = F.grid_sample(
            coarse,
            self.grid.to(coarse.dtype),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return partial_cross_entropy(at, self.labels)


class EarlyStop:
    """Stop the per-image optimisation once its hard labels stop changing.

    Every :data:`EARLY_STOP_EVERY` steps the arg-max labels of the coarse scores are
    compared with those of the previous check; when the fraction of grid pixels whose
    label changed is at most ``tol`` at :data:`EARLY_STOP_PATIENCE` consecutive checks,
    :meth:`update` returns True. ``tol = 0`` never stops early.

    Example:
        >>> import torch
        >>> stop = EarlyStop(0.01)
        >>> scores = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
        >>> [stop.update(step, scores) for step in range(0, 40, 10)]
        [False, False, True, True]
    """

    def __init__(self, tol: float) -> None:
        if not 0.0 <= float(tol) < 1.0:
            raise ValueError(f"tol: want a fraction in [0, 1), got {tol}")
        self.tol = float(tol)
        self.previous: Any = None
        self.quiet = 0
        #: Fraction of labels changed at each check (for reports and tests).
        self.history: list[float] = []

    def update(self, step: int, scores: Any) -> bool:
        """Look at ``scores`` ``(1, K, h, w)`` before step ``step`` (0-based); True = stop."""
        if self.tol <= 0.0 or step % EARLY_STOP_EVERY:
            return False
        labels = scores.detach().argmax(1)
        if self.previous is not None:
            changed = float((labels != self.previous).float().mean())
            self.history.append(changed)
            self.quiet = self.quiet + 1 if changed <= self.tol else 0
        self.previous = labels
        return self.quiet >= EARLY_STOP_PATIENCE


class Adam:
    """Adam (Kingma & Ba) on a list of tensors, the update of ``torch.optim.Adam``'s
    single-tensor path, without ``torch.optim``.

    ``torch.optim.Optimizer`` imports ``torch._dynamo`` when it is built (about a second
    on a 2-core machine, a fifth of ``rloss segment``'s budget), hence this small copy.
    For gradient ``g`` at step ``t``: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr_t / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; ``lr_t`` is ``lr``
    for ``schedule="constant"`` and ``lr (1 + cos(pi (t - 1) / T)) / 2`` for
    ``"cosine"`` over ``T`` steps (``torch.optim.lr_scheduler.CosineAnnealingLR`` with
    ``eta_min = 0``). Equal to torch's within float rounding (a test checks).

    Args:
        params: tensors with ``requires_grad``; updated in place (they are the optimiser's).
        lr: learning rate.
        steps: ``T`` of the cosine schedule.
        schedule: ``"constant"`` or ``"cosine"``.
        betas: ``(b1, b2)``.
        eps: added to the denominator.
    """

    def __init__(
        self,
        params: list[Any],
        lr: float,
        *,
        steps: int = 1,
        schedule: str = "constant",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        import torch

        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule: want one of {_SCHEDULES}, got {schedule!r}")
        self.params = list(params)
        self.lr, self.steps, self.schedule = float(lr), max(1, int(steps)), schedule
        self.b1, self.b2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def current_lr(self) -> float:
        """The learning rate of the next :meth:`step`."""
        import math

        if self.schedule == "constant":
            return self.lr
        return self.lr * (1.0 + math.cos(math.pi * self.t / self.steps)) / 2.0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        lr = self.current_lr()
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = (1.0 - self.b2**self.t) ** 0.5
        live = [(p, m, v) for p, m, v in zip(self.params, self.m, self.v) if p.grad is not None]
        if not live:
            return
        ps, ms, vs = (list(t) for t in zip(*live))
        gs = [p.grad for p in ps]
        # one call per operation for all tensors (the net has 22): the same kernels as a
        # loop over the tensors, bit for bit, without ~100 Python-level dispatches a step
        with torch.no_grad():
            torch._foreach_lerp_(ms, gs, 1.0 - self.b1)
            torch._foreach_mul_(vs, self.b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1.0 - self.b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, c2)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(ps, ms, denom, value=-lr / c1)


class _TinyNet:
    """Factory for the per-image network (kept out of module import time)."""

    @staticmethod
    def build(num_classes: int, width: int = 16):
        from torch import nn

        layers: list[nn.Module] = []
        cin = 5
        for dilation in (1, 2, 4, 8, 1):
            layers += [
                nn.Conv2d(cin, width, 3, padding=dilation, dilation=dilation),
                nn.GroupNorm(4, width),
                nn.ReLU(inplace=True),
            ]
            cin = width
        layers.append(nn.Conv2d(width, num_classes, 1))
        return nn.Sequential(*layers)


def segment_image(
    image: Any,
    scribbles: Any,
    *,
    crf_weight: float = DEFAULTS["crf_weight"],
    sigma_rgb: float = DEFAULTS["sigma_rgb"],
    sigma_xy: float = DEFAULTS["sigma_xy"],
    steps: int = DEFAULTS["steps"],
    scale: float = DEFAULTS["scale"],
    max_grid_pixels: int | None = DEFAULTS["max_grid_pixels"],
    lr: float | None = None,
    schedule: str = DEFAULTS["schedule"],
    tol: float = DEFAULTS["tol"],
    method: str = DEFAULTS["method"],
    normalize: bool = DEFAULTS["normalize"],
    seed: int = 0,
    device: str = "cpu",
    backend: str | None = None,
    threads: int | None = DEFAULTS["threads"],
    progress: bool = False,
    return_probs: bool = False,
) -> Any:
    """Segment one image from scribbles by minimising pCE + DenseCRF on it.

    Args:
        image: ``(H, W, 3)`` RGB array (``uint8`` or float 0..255), or a tensor
            ``(3, H, W)`` / ``(H, W, 3)`` with values 0..255.
        scribbles: ``(H, W)`` integer labels (array or tensor); 255 = unlabelled.
            Label values need not be contiguous (e.g. VOC indices 0 and 15);
            only the values present are predicted.
        crf_weight: weight lambda of the DenseCRF loss; 0 disables it (pCE only).
        sigma_rgb: colour bandwidth of the DenseCRF kernel (0..255 units).
        sigma_xy: spatial bandwidth in pixels of the full-size image.
        steps: Adam iterations, >= 1.
        scale: resolution of the score grid and of the DenseCRF loss, in (0, 1].
        max_grid_pixels: lower ``scale`` on large images so that the grid has at most this
            many pixels (:func:`working_grid`); ``None`` or 0: no cap. The default (20 000)
            leaves images up to ~330x250 at ``scale`` 0.5.
        lr: Adam learning rate; ``None`` for the method's default (0.01 for
            ``"net"``, 0.1 for ``"logits"``).
        schedule: ``"constant"`` learning rate or ``"cosine"`` decay to 0 over ``steps``
            (:class:`Adam`).
        tol: stop early once at most this fraction of the grid's labels changed between
            checks :data:`EARLY_STOP_EVERY` steps apart, :data:`EARLY_STOP_PATIENCE` times
            running (:class:`EarlyStop`); 0 runs all ``steps``.
        method: ``"net"`` (small CNN fitted to the image) or ``"logits"``
            (free per-pixel scores).
        normalize: use the DenseCRF loss's normalised (size-independent) form.
        seed: seeds the network initialisation (results are deterministic on CPU).
        device: torch device string for the optimisation.
        backend: lattice backend of the DenseCRF loss; ``None``: ``"torch"`` (see
            :data:`DEFAULT_BACKEND`).
        threads: torch threads (and numba's, with the numba backend) during the call
            (restored afterwards); ``None`` keeps the current setting. Default 2: a step
            is a chain of ~40 small operations (0.05-1.5 ms each on a 163x122 grid);
            on an idle 2-core AMD EPYC (Zen 4) a second thread made the 500x375 case
            3.3 s instead of 4.8 s (2026-12-02). On a machine whose cores are busy
            with other work, 1 can be faster: a step then waits for the slower thread.
        progress: show a progress bar.
        return_probs: also return the ``(K, H, W)`` softmax and the label values.

    Returns:
        ``(H, W)`` ``int64`` label map (NumPy array, or a tensor when
        ``scribbles`` is a tensor) with the scribbles' label values; with
        ``return_probs`` a tuple ``(labels, probs (K, H, W) float32 tensor,
        label_values list[int])``.

    Raises:
        ValueError: bad shapes, values or hyper-parameters (``scale`` so small that the score
            grid has under 2 pixels on a side), or no labelled pixel.
        OptimisationDiverged: the scores became NaN/Inf (a ``ValueError``; lower ``lr``).
    """
    import torch

    from rloss import _threads

    if method not in _METHODS:
        raise ValueError(f"method: want one of {_METHODS}, got {method!r}")
    if int(steps) < 1:
        raise ValueError(f"steps: want an integer >= 1, got {steps}")
    if not 0.0 < float(scale) <= 1.0:
        raise ValueError(f"scale: want a float in (0, 1], got {scale}")
    if not float(crf_weight) >= 0.0:
        raise ValueError(f"crf_weight: want a float >= 0, got {crf_weight}")
    for name, s in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy)):
        if not float(s) > 0:
            raise ValueError(f"{name}: want a positive float, got {s}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads: want an integer >= 1 or None, got {threads}")
    if lr is None:
        lr = 0.01 if method == "net" else 0.1
    if not float(lr) > 0:
        raise ValueError(f"lr: want a positive float, got {lr}")
    if max_grid_pixels is not None and int(max_grid_pixels) < 0:
        raise ValueError(f"max_grid_pixels: want an integer >= 0 or None, got {max_grid_pixels}")
    if not 0.0 <= float(tol) < 1.0:
        raise ValueError(f"tol: want a fraction in [0, 1), got {tol}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule: want one of {_SCHEDULES}, got {schedule!r}")

    img = _image_tensor(image)
    scr = _scribble_tensor(scribbles, (int(img.shape[1]), int(img.shape[2])))
    short = min(int(img.shape[1]), int(img.shape[2]))
    if round(short * float(scale)) < MIN_GRID_SIDE:
        raise ValueError(
            f"scale: {float(scale):g} gives a score grid under {MIN_GRID_SIDE} pixels on the "
            f"short side of this {img.shape[2]}x{img.shape[1]} image; want scale >= "
            f"{min(1.0, (MIN_GRID_SIDE - 0.5) / short):.3g}"
        )
    backend = DEFAULT_BACKEND if backend is None else backend
    # numba's threads only matter (and numba is only imported) when its lattice is used
    scoped = _threads.threads if backend == "numba" else _threads.torch_threads
    with scoped(threads):
        labels_t, probs, values = _optimise(
            img,
            scr,
            method=method,
            crf_weight=float(crf_weight),
            sigma_rgb=float(sigma_rgb),
            sigma_xy=float(sigma_xy),
            steps=int(steps),
            grid=working_grid(
                (int(img.shape[1]), int(img.shape[2])), float(scale), max_grid_pixels
            ),
            lr=float(lr),
            schedule=schedule,
            tol=float(tol),
            normalize=bool(normalize),
            seed=int(seed),
            device=device,
            backend=backend,
            progress=progress,
        )
    out: Any = labels_t if isinstance(scribbles, torch.Tensor) else labels_t.numpy()
    if return_probs:
        return out, probs, values
    return out


def working_grid(
    size: tuple[int, int], scale: float, max_grid_pixels: int | None = None
) -> tuple[int, int]:
    """``(h, w)`` of the score grid for an image of ``size`` ``(H, W)``.

    ``round(scale * H), round(scale * W)``, with ``scale`` lowered where needed so that
    ``h * w <= max_grid_pixels`` (``None`` or 0: no cap), but never below
    :data:`MIN_GRID_SIDE` pixels on the short side. The per-step cost of
    :func:`segment_image` is proportional to ``h * w``: the cap keeps large photographs
    (a 500x375 VOC image: 0.327 instead of 0.5) to the cost of a 320x213 one at 0.5.

    Example:
        >>> working_grid((213, 320), 0.5, 20_000), working_grid((375, 500), 0.5, 20_000)
        ((106, 160), (122, 163))
        >>> working_grid((375, 500), 0.5, None)
        (188, 250)
    """
    big_h, big_w = int(size[0]), int(size[1])
    s = float(scale)
    if max_grid_pixels:
        s = min(s, (float(max_grid_pixels) / (big_h * big_w)) ** 0.5)
        s = max(s, min(float(scale), MIN_GRID_SIDE / min(big_h, big_w)))
    return max(1, round(big_h * s)), max(1, round(big_w * s))


def _optimise(
    img: Any,
    scr: Any,
    *,
    method: str,
    crf_weight: float,
    sigma_rgb: float,
    sigma_xy: float,
    steps: int,
    grid: tuple[int, int],
    lr: float,
    schedule: str,
    tol: float,
    normalize: bool,
    seed: int,
    device: str,
    backend: str | None,
    progress: bool,
) -> tuple[Any, Any, list[int]]:
    """The body of :func:`segment_image` on validated tensors; returns (labels, probs, values)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from rloss.constants import IGNORE_INDEX

    h, w = int(img.shape[1]), int(img.shape[2])
    values = sorted(int(v) for v in torch.unique(scr) if int(v) != IGNORE_INDEX)
    if not values:
        raise ValueError("scribbles: no labelled pixel (every value is 255)")
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[torch.tensor(values)] = torch.arange(len(values))
    target = lut[scr]
    k = len(values)

    dev = torch.device(device)
    img_d = img.to(dev).unsqueeze(0)
    target_d = target.to(dev).unsqueeze(0)
    hc, wc = grid

    if k == 1:
        probs = torch.ones(1, h, w)
    else:
        if method == "net":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                net = _TinyNet.build(k).to(dev, memory_format=torch.channels_last)
            small = F.interpolate(img_d, size=(hc, wc), mode="bilinear", align_corners=False)
            mean, std = small.mean((2, 3), keepdim=True), small.std((2, 3), keepdim=True)
            yy = torch.linspace(-1.0, 1.0, hc, device=dev).view(1, 1, hc, 1).expand(1, 1, hc, wc)
            xx = torch.linspace(-1.0, 1.0, wc, device=dev).view(1, 1, 1, wc).expand(1, 1, hc, wc)
            net_in = torch.cat([(small - mean) / (std + 1e-6), xx, yy], dim=1).contiguous(
                memory_format=torch.channels_last
            )
            params = list(net.parameters())

            def scores():
                return net(net_in)

        else:
            z = torch.zeros(1, k, hc, wc, device=dev, requires_grad=True)
            params = [z]

            def scores():
                return z

        pce_at = ScribbleCrossEntropy(target_d, (hc, wc))
        crf = None
        if float(crf_weight) > 0:
            small_img = F.interpolate(
                img_d, size=(hc, wc), mode="bilinear", align_corners=False, antialias=True
            )
            crf = PottsOnImage(
                small_img,
                sigma_rgb=float(sigma_rgb),
                sigma_xy=float(sigma_xy) * hc / h,
                weight=float(crf_weight),
                normalize=normalize,
                backend=backend,
            )
        opt = Adam(params, float(lr), steps=int(steps), schedule=schedule)
        stop = EarlyStop(tol)

        bar = tqdm(range(int(steps)), desc="segment", disable=not progress, leave=False)
        for step in bar:
            coarse = scores()
            if not bool(torch.isfinite(coarse).all()):
                raise OptimisationDiverged(step + 1, int(steps), float(lr))
            if stop.update(step, coarse):
                break
            loss = pce_at(coarse)
            if crf is not None:
                loss = loss + crf(torch.softmax(coarse, dim=1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress:
                # refresh=False: the bar redraws at tqdm's own rate (mininterval), not at
                # every step, which would flood a log file with hundreds of updates
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        bar.close()
        with torch.no_grad():
            logits = F.interpolate(scores(), size=(h, w), mode="bilinear", align_corners=False)
            probs = torch.softmax(logits, dim=1)[0].float().cpu()
    index = probs.argmax(0)
    return torch.tensor(values, dtype=torch.int64)[index], probs, values


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Deprecated: ``rloss segment`` is registered by :mod:`rloss.commands.segment`."""
    import warnings

    from rloss.commands.segment import register as _register

    warnings.warn(
        "rloss.segment.register is deprecated; use rloss.commands.segment.register",
        DeprecationWarning,
        stacklevel=2,
    )
    _register(subparsers)
