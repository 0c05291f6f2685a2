"""Input validation shared by the library: one definition and one message per check.

The pattern of kornia's ``core/check.py``: small public functions that raise a
clear ``ValueError`` (``TypeError`` for a wrong type) at the boundary, used by
:mod:`rloss.lattice`, :mod:`rloss.losses`, :mod:`rloss.meanfield` and
:mod:`rloss.segment`. Every check names the argument, what it got and what it
wants.

Structural checks (type, shape, dtype, device) run everywhere. *Value* checks
(NaN/Inf, image in 0..255, roi in 0..1, probs in 0..1 summing to 1) need the
values on the host, so they run only for CPU tensors, where they cost a few
reductions (one ``aminmax`` per tensor, one sum over classes for ``probs``;
the DenseCRF loss gets the ``probs`` statistics from its lattice's own pass
over the values instead, see :func:`check_probs_stats`).
On accelerators (CUDA, MPS, ...) they are skipped: reading a reduction back
would synchronise the device with the host on every training step (the
losses promise none). Validate a batch on the CPU, or run one step on the
CPU, when in doubt.

Probabilities are checked where they count: ``probs`` must be finite
everywhere, but the 0..1 range and the sum to one are required only where
``roi > 0``; outside the region of interest the losses ignore the values, so
anything finite is allowed there.

Example:
    >>> import torch
    >>> from rloss import checks
    >>> checks.check_positive("sigma_xy", 0)
    Traceback (most recent call last):
    ...
    ValueError: sigma_xy must be a finite positive number, got 0
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "IMAGE_RANGE_TOL",
    "IMAGE_UNIT_MAX",
    "PROBS_TOL",
    "PROBS_TOL_HALF",
    "check_finite",
    "check_float_dtype",
    "check_float_tensor",
    "check_image",
    "check_positive",
    "check_probs",
    "check_probs_stats",
    "check_roi",
    "check_same_device",
    "check_same_rank",
    "check_scale_factor",
    "check_spacing",
    "check_spatial_match",
    "check_weight",
    "compute_dtype",
    "host_values",
    "no_autocast",
    "reset_warn_once",
    "warn_once",
]

#: Tolerance on ``|sum_k probs_k - 1|`` (and on the 0..1 range) for float32/float64
#: probs: loose enough for probabilities computed in bf16 and upcast, tight enough
#: to catch logits or unnormalised maps.
PROBS_TOL: float = 1e-2
#: The same tolerance for float16 / bfloat16 probs (bf16 keeps ~3 significant digits).
PROBS_TOL_HALF: float = 5e-2
#: Image values may exceed 0..255 by this much (rounding of resized images).
IMAGE_RANGE_TOL: float = 1e-3
#: Maximum value below which an image "looks like 0..1".
IMAGE_UNIT_MAX: float = 1.0

#: The floating-point dtypes accepted for images, features, values and probabilities.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)
#: Half-precision dtypes (probabilities get the looser tolerance ``PROBS_TOL_HALF``).
HALF_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
_FLOAT_DTYPES = FLOAT_DTYPES  # the names used before this module was public
_HALF_DTYPES = HALF_DTYPES

#: Argument names already warned about (image looks like 0..1): warn once per process.
_WARNED: set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 4) -> None:
    """Emit ``message`` as a ``UserWarning`` the first time ``key`` is seen in this process."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


def reset_warn_once() -> None:
    """Forget which warnings :func:`warn_once` has given (tests; a new session in a notebook)."""
    _WARNED.clear()


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def check_float_tensor(name: str, t: object, ndim: int | tuple[int, ...], want: str) -> Tensor:
    """Check that ``t`` is a non-empty floating tensor with ``ndim`` dimensions
    (one of them when ``ndim`` is a tuple, e.g. ``(4, 5)`` for an image or a volume)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have shape {want}, got {_shape(t)}")
    check_float_dtype(name, t)
    if t.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {_shape(t)}")
    return t


def check_float_dtype(name: str, t: Tensor) -> Tensor:
    """Raise ``ValueError`` unless ``t`` has one of :data:`FLOAT_DTYPES`."""
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_finite(name: str, t: Tensor) -> Tensor:
    """Raise ``ValueError`` if ``t`` holds NaN/Inf; CPU tensors only (see the module docstring).

    One ``aminmax`` pass: NaN propagates into both, an infinity shows in one,
    and no temporary is allocated (a float64 ``sum`` of a float32 tensor
    materialises a float64 copy: 130 MB for a 12×21×256² batch).
    """
    if host_values(t):
        _minmax(name, t)
    return t


def host_values(t: Tensor) -> bool:
    """Whether value checks run for ``t``: only on the CPU (they would sync an accelerator)."""
    return t.device.type == "cpu"


def _minmax(name: str, t: Tensor) -> tuple[float, float]:
    t = t.detach()
    lo, hi = torch.aminmax(t if t.dtype in (torch.float32, torch.float64) else t.float())
    lo_f, hi_f = float(lo), float(hi)
    if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return lo_f, hi_f


def check_image(image: object, name: str = "image") -> Tensor:
    """Validate a guidance image: ``(N, C, H, W)`` (or a volume ``(N, C, D, H, W)``) float,
    finite, values in 0..255.

    Warns once per process (naming ``name``) when all values lie in 0..1,
    which usually means the image was scaled to 0..1: the colour bandwidth
    ``sigma_rgb`` is in 0..255 units, so such an image is effectively one colour.
    The value checks (and the warning) run for CPU tensors only; on an
    accelerator only the shape and dtype are checked (no host sync).
    """
    image = check_float_tensor(name, image, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
    if not host_values(image):
        return image
    lo, hi = _minmax(name, image)
    if lo < -IMAGE_RANGE_TOL or hi > 255.0 + IMAGE_RANGE_TOL:
        raise ValueError(
            f"{name} must hold raw intensities in 0..255 (sigma_rgb is in those units), "
            f"got values in [{lo:.4g}, {hi:.4g}]; pass the unnormalised image "
            "(e.g. the dataset's 'image_raw'), not the network input"
        )
    if hi <= IMAGE_UNIT_MAX and hi > 0.0:
        warn_once(
            name,
            f"{name} has all values in 0..1 (max {hi:.3g}) but the losses expect 0..255: "
            f"multiply {name} by 255, or the colour kernel sees a single colour",
        )
    return image


def check_probs(
    probs: object, roi: Tensor | None = None, name: str = "probs", *, values: bool = True
) -> Tensor:
    """Validate ``(N, K, H, W)`` (or ``(N, K, D, H, W)``) probabilities: finite, in 0..1,
    summing to 1 over K.

    The range and sum-to-one checks are made only where ``roi > 0`` (pixels
    outside the region of interest are ignored by the losses and may hold
    anything finite); NaN/Inf is rejected everywhere.
    The value checks run for CPU tensors only; on an accelerator only the shape
    and dtype are checked (no host sync). ``values=False`` checks shape and
    dtype only: the DenseCRF loss validates the values later from statistics
    its lattice gathers while reading them anyway (see :func:`check_probs_stats`).
    """
    probs = check_float_tensor(name, probs, (4, 5), "(N, K, H, W) or (N, K, D, H, W)")
    if not values or not host_values(probs):
        return probs
    lo, hi = _minmax(name, probs)
    inside = None if roi is None else roi.detach() > 0
    if inside is not None and not (0.0 <= lo and hi <= 1.0):
        # out of 0..1 somewhere: look again, at the pixels inside roi only (rare path)
        lo, hi = _roi_minmax(probs, inside)
    err = (probs.detach().sum(1, dtype=torch.float32) - 1.0).abs()
    if inside is not None:
        err = err * inside
    check_probs_stats(lo, hi, float(err.max()), True, probs.dtype, probs.shape[1], name)
    return probs


def _roi_minmax(probs: Tensor, inside: Tensor) -> tuple[float, float]:
    """Smallest and largest of ``probs`` over the pixels where ``inside`` (0..1 if none)."""
    picked = probs.detach().movedim(1, -1)[inside]
    if picked.numel() == 0:
        return 0.0, 1.0
    lo, hi = torch.aminmax(picked.float())
    return float(lo), float(hi)


def check_probs_stats(
    lo: float,
    hi: float,
    sum_error: float,
    finite: bool,
    dtype: torch.dtype,
    num_classes: int,
    name: str = "probs",
) -> None:
    """The value errors of :func:`check_probs`, from precomputed statistics.

    Args:
        lo: smallest value (over the pixels that count).
        hi: largest value (over the pixels that count).
        sum_error: largest ``|sum_k probs_k - 1|`` over the pixels that count.
        finite: False when some value is NaN or infinite.
        dtype: the caller's dtype (half precision gets a looser tolerance).
        num_classes: K, for the message.
        name: argument name for the message.
    """
    if not finite:
        raise ValueError(f"{name} contains NaN or Inf values")
    tol = PROBS_TOL_HALF if dtype in HALF_DTYPES else PROBS_TOL
    if lo < -tol or hi > 1.0 + tol:
        raise ValueError(
            f"{name} must be probabilities in 0..1 (softmax over dim 1), "
            f"got values in [{lo:.4g}, {hi:.4g}]; did you pass logits?"
        )
    if sum_error > tol:
        raise ValueError(
            f"{name} must sum to 1 over the class dimension (dim 1, K={num_classes}), "
            f"got a pixel whose sum differs from 1 by {sum_error:.3g} (tolerance {tol:g}); "
            "apply softmax(dim=1) first"
        )


def check_roi(roi: object, probs: Tensor, name: str = "roi") -> Tensor:
    """Validate or create the region of interest: ``(N, H, W)`` (``(N, D, H, W)`` for
    a volume: ``probs``'s shape without the class axis), values in 0..1.

    Returns ``roi`` as a floating tensor (bool is converted), or all ones
    (``probs``'s dtype and device) when ``roi`` is None. The 0..1 range is
    checked for CPU tensors only (no host sync on an accelerator).
    """
    n, _, *spatial = _shape(probs)
    want = (n, *spatial)
    if roi is None:
        return torch.ones(want, dtype=probs.dtype, device=probs.device)
    if not isinstance(roi, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(roi).__name__}")
    if _shape(roi) != want:
        letters = "(N, H, W)" if len(spatial) == 2 else "(N, D, H, W)"
        raise ValueError(
            f"{name} must have shape {letters} = {want} to match probs "
            f"{_shape(probs)}, got {_shape(roi)}"
        )
    if roi.dtype == torch.bool:
        roi = roi.to(probs.dtype)
    elif roi.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float or bool tensor, got dtype {roi.dtype}")
    check_same_device((name, roi), ("probs", probs))
    if not host_values(roi):
        return roi
    lo, hi = _minmax(name, roi)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must hold values in 0..1, got values in [{lo:.4g}, {hi:.4g}]")
    return roi


def check_same_device(*named: tuple[str, Tensor]) -> None:
    """Raise ``ValueError`` unless all the named tensors share one device."""
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "move them to the same device"
            )


def check_spatial_match(image: Tensor, probs: Tensor) -> None:
    """``image`` ``(N, C, H, W)`` and ``probs`` ``(N, K, H, W)`` must share N, H and W
    (N, D, H and W for volumes; see :func:`check_same_rank` for mixed ranks)."""
    check_same_rank(image, probs)
    if image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
        n, _, *spatial = _shape(probs)
        names = "N, H, W" if len(spatial) == 2 else "N, D, H, W"
        letters = "(N, C, H, W)" if len(spatial) == 2 else "(N, C, D, H, W)"
        raise ValueError(
            f"image must have shape {letters} with {names} = {(n, *spatial)} from probs "
            f"{_shape(probs)}, got {_shape(image)}"
        )


def check_same_rank(image: Tensor, probs: Tensor, probs_name: str = "probs") -> None:
    """``image`` and ``probs`` must both be images (4-D) or both volumes (5-D).

    Example:
        >>> import torch
        >>> from rloss import checks
        >>> checks.check_same_rank(torch.zeros(1, 1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
        Traceback (most recent call last):
        ...
        ValueError: probs is 4-D (1, 3, 4, 4) but image is 5-D (1, 1, 2, 4, 4): pass both ...
    """
    if image.dim() != probs.dim():
        raise ValueError(
            f"{probs_name} is {probs.dim()}-D {_shape(probs)} but image is {image.dim()}-D "
            f"{_shape(image)}: pass both as images ({probs_name} (N, K, H, W), image "
            f"(N, C, H, W)) or both as volumes ({probs_name} (N, K, D, H, W), image "
            "(N, C, D, H, W))"
        )


def check_spacing(
    spacing: object, ndim: int | None, name: str = "spacing"
) -> tuple[float, ...] | None:
    """``None``, or one finite positive voxel size per spatial axis, as floats.

    ``ndim`` is the number of spatial axes (3 for a volume: ``(sd, sh, sw)``, the
    size of a voxel along D, H and W; 2 for an image: ``(sh, sw)``); ``None``
    accepts either (a module that has not seen its input yet).

    Example:
        >>> from rloss import checks
        >>> checks.check_spacing((10, 1.5, 1.5), 3)
        (10.0, 1.5, 1.5)
        >>> checks.check_spacing((1.5, 1.5), 3)
        Traceback (most recent call last):
        ...
        ValueError: spacing must have 3 values (sd, sh, sw), one voxel size per ... (1.5, 1.5)
    """
    if spacing is None:
        return None
    axes = {3: "(sd, sh, sw)", 2: "(sh, sw)", None: "(sd, sh, sw) or (sh, sw)"}.get(
        ndim, f"({ndim} sizes)"
    )
    count = "2 or 3" if ndim is None else str(ndim)
    if isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__len__"):
        raise ValueError(
            f"{name} must be a sequence of {count} positive voxel sizes {axes}, got {spacing!r}"
        )
    values = tuple(spacing)  # type: ignore[arg-type]
    if len(values) not in ((2, 3) if ndim is None else (ndim,)):
        raise ValueError(
            f"{name} must have {count} values {axes}, one voxel size per spatial axis, "
            f"got {spacing!r}"
        )
    return tuple(check_positive(f"{name}[{i}]", v) for i, v in enumerate(values))


def check_scale_factor(
    value: object, ndim: int | None = None, name: str = "scale_factor"
) -> float | tuple[float, ...]:
    """A finite positive resize factor, or one per spatial axis.

    Returns a float for a number and a tuple of floats for a sequence; with
    ``ndim`` (the number of spatial axes) a sequence must have that length.

    Example:
        >>> from rloss import checks
        >>> checks.check_scale_factor(0.5)
        0.5
        >>> checks.check_scale_factor([1, 0.5, 0.5], 3)
        (1.0, 0.5, 0.5)
    """
    if (
        isinstance(value, (str, bytes))
        or not hasattr(value, "__len__")
        or (isinstance(value, Tensor) and value.dim() == 0)
    ):
        return check_positive(name, value)  # type: ignore[arg-type]
    values = tuple(value)  # type: ignore[arg-type]
    if not values or (ndim is not None and len(values) != ndim):
        want = f"{ndim} values (one per spatial axis)" if ndim is not None else "values"
        raise ValueError(f"{name} must be a number or {want}, got {value!r}")
    return tuple(check_positive(f"{name}[{i}]", v) for i, v in enumerate(values))


def check_positive(name: str, value: float) -> float:
    """A finite number > 0, returned as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def check_weight(name: str, value: float) -> float:
    """A finite number >= 0 (a loss weight), returned as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return v


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 inputs (tests, gradcheck), float32 otherwise (half is upcast)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` inside the block (the lattice computes in float32)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError):  # device type without autocast support
        enabled = False
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield
