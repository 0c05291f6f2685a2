"""Image and label file I/O with atomic writes and errors that name the file.

Labels are stored as single-channel PNGs: either plain 8-bit index PNGs (mode
``L``) or palette PNGs (mode ``P``) whose pixel values are the class indices
(the PASCAL VOC convention). ``255`` (:data:`rloss.constants.IGNORE_INDEX`)
marks unlabelled / void pixels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from rloss._io import (
    InputTooLargeError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_image_size,
)
from rloss.constants import voc_palette

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "find_image",
    "read_image",
    "read_label",
    "write_image",
    "write_label",
]

#: Image file extensions searched for, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data file is missing, unreadable or has unexpected content; the message names it."""


def find_image(directory: str | os.PathLike[str], stem: str) -> Path | None:
    """The image file ``directory/stem.<ext>`` for the first extension of :data:`IMAGE_EXTENSIONS`
    that exists (upper-case extensions too), or ``None``."""
    directory = Path(directory)
    for ext in IMAGE_EXTENSIONS:
        for candidate in (directory / f"{stem}{ext}", directory / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _open(path: Path):
    """Open and decode an image file; its header's size is checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a folder?)")
    try:
        img = Image.open(path)
        check_image_size(img.width, img.height, path)
        img.load()
    except InputTooLargeError as err:
        raise DataError(str(err)) from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large to read safely ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from err
    return img


def _grey16_to_uint8(img, path: Path) -> np.ndarray:
    """16-bit grey -> 8-bit grey by ``round(v / 257)`` (65535 -> 255); other ranges refused."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        raise DataError(
            f"{path}: floating-point image (mode {img.mode!r}) has no defined 0..255 range; "
            "save it as 8-bit or 16-bit"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(
            f"{path}: {img.mode!r} image values {arr.min()}..{arr.max()} are outside the "
            "16-bit range 0..65535; save it as 8-bit or 16-bit"
        )
    return np.floor(arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: JPEG/PNG/... file. Grey, palette and RGBA images are converted to RGB.
            16-bit grey images (PNG/TIFF) are rescaled to 8 bits, ``round(v / 257)``, so
            65535 becomes 255 (not clipped); 32-bit integer images with values beyond
            0..65535 and floating-point images are refused.

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``, values 0..255.

    Raises:
        DataError: the file is missing, truncated, not an image, larger than
            :data:`rloss._io.MAX_IMAGE_PIXELS`, or of an unsupported depth (the message
            names it).
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _grey16_to_uint8(img, path)
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot convert image to RGB ({err})") from err
    return np.asarray(rgb, dtype=np.uint8).copy()


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map stored as an index PNG (mode ``L``) or a palette PNG (mode ``P``).

    For palette PNGs the stored indices are returned (not the colours), as in PASCAL VOC.
    16/32-bit single-channel images are accepted when every value is below 256.

    Args:
        path: label image file.

    Returns:
        ``uint8`` array of shape ``(H, W)``; 255 = void / unlabelled.

    Raises:
        DataError: the file is missing or corrupt, has colour channels (an RGB rendering of
            labels, which is ambiguous), or holds values above 255.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F", "1"):
        arr = np.asarray(img)
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: label image holds non-integer values")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                f"{path}: label values must lie in 0..255, got {arr.min()}..{arr.max()}"
            )
        return arr.astype(np.uint8)
    raise DataError(
        f"{path}: label image has mode {img.mode!r}; want a single-channel index or palette "
        "PNG (mode 'L' or 'P'); colour-rendered label images are not accepted"
    )


@functools.lru_cache(maxsize=1)
def _voc_palette() -> tuple[int, ...]:
    return tuple(voc_palette())


def write_label(
    path: str | os.PathLike[str],
    label: np.ndarray,
    palette: list[int] | None = None,
    atomic: bool = True,
) -> Path:
    """Write a label map atomically as a palette PNG (VOC palette by default).

    Args:
        path: destination ``.png``.
        label: integer array ``(H, W)`` with values 0..255 (255 = unlabelled).
        palette: flat list of 768 ints; ``None`` uses :func:`rloss.constants.voc_palette`.
        atomic: write to a temporary name and rename (set False only inside a folder that is
            itself renamed into place when complete).

    Returns:
        ``path``.
    """
    from PIL import Image

    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label: want a (H, W) array, got shape {label.shape}")
    if label.dtype.kind not in "iub":
        raise ValueError(f"label: want an integer array, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label: values must lie in 0..255, got {label.min()}..{label.max()}")
    arr = np.ascontiguousarray(label, dtype=np.uint8)
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette(list(_voc_palette()) if palette is None else palette)
    if not atomic:
        img.save(path, format="PNG")
        return Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def write_image(
    path: str | os.PathLike[str], image: np.ndarray, quality: int = 95, atomic: bool = True
) -> Path:
    """Write an RGB ``uint8`` image ``(H, W, 3)`` atomically; format from the suffix (png/jpg).

    ``atomic=False`` writes in place (only inside a folder renamed into place afterwards).
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: want a uint8 (H, W, 3) array, got {image.dtype} of shape {image.shape}"
        )
    suffix = Path(path).suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix)
    if fmt is None:
        raise ValueError(f"path: want a .png or .jpg file name, got {path}")
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    if not atomic:
        Image.fromarray(np.ascontiguousarray(image)).save(path, format=fmt, **kwargs)
        return Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt, **kwargs)
    return Path(path)
