"""The one owner of file-safety rules: atomic writes, plain-data conversion, output checks,
limits on sizes read from untrusted files.

Every command and every writer of the library uses these, so that the rules are the same
everywhere:

* **Atomic writes** (:func:`atomic_path`, :func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`write_json_atomic`): a temporary file in the destination
  folder, renamed onto the destination when complete; readers never see a partial file.
* **Plain data** (:func:`to_plain`): nested mappings/sequences of tensors, NumPy scalars,
  paths and non-finite floats turned into JSON/YAML-safe Python values.
* **Outputs** (:func:`check_output_file`, :func:`check_output_dir`): an output path is
  resolved (``~``, symlinks, ``..``) and compared with every input; an output is never an
  input (not even with ``overwrite``); an existing output is replaced only with
  ``overwrite``; the location is checked up front (its folder exists or can be created, is
  a folder, is writable, is not a kernel file system; a file output is not a folder), so that
  a long computation does not end in a traceback.
* **Untrusted sizes** (:func:`check_image_size`, :func:`check_array_size`): sizes read from
  files (image headers, XML ``<size>``, HDF5 dataset shapes, archive members) are bounded
  before anything of that size is allocated. The limit is :data:`MAX_IMAGE_PIXELS` pixels
  (2**28, about 16384 x 16384), overridable per call.

Errors are :class:`UnsafeOutputError` and :class:`InputTooLargeError`, both ``ValueError``
subclasses whose message names the path and the problem; the ``rloss`` command prints them
as one line and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_IMAGE_PIXELS",
    "InputTooLargeError",
    "UnsafeOutputError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_archive_size",
    "check_array_size",
    "check_image_size",
    "check_output_dir",
    "check_output_file",
    "resolve_path",
    "to_plain",
    "write_json_atomic",
]

#: Largest image (width x height) read or allocated from an untrusted size: 2**28 pixels
#: (a 16384 x 16384 image; 768 MiB as RGB uint8). Pass ``max_pixels=`` to raise it per call.
MAX_IMAGE_PIXELS: int = 2**28

#: Largest total uncompressed size of an archive's members: 64 GiB (the PASCAL VOC
#: archives need under 4 GiB).
MAX_ARCHIVE_BYTES: int = 64 * 2**30

#: Folders of kernel pseudo-files; nothing is ever written there.
_SPECIAL_ROOTS: tuple[str, ...] = ("/proc", "/sys", "/dev")


class InputTooLargeError(ValueError):
    """A size read from a file exceeds the limit; the message names the file and the limit."""


class UnsafeOutputError(ValueError):
    """An output would overwrite an input or an existing file, or cannot be written there."""


# --------------------------------------------------------------------------- sizes


def check_image_size(
    width: int, height: int, source: str | os.PathLike[str], *, max_pixels: int | None = None
) -> tuple[int, int]:
    """Check an image size read from an untrusted file before allocating it.

    Args:
        width, height: the size the file claims.
        source: the file (or ``"file: <size>"``), for the message.
        max_pixels: limit on ``width * height``; ``None`` = :data:`MAX_IMAGE_PIXELS`.

    Returns:
        ``(height, width)`` as ints.

    Raises:
        InputTooLargeError: non-positive sizes or more than ``max_pixels`` pixels.

    >>> check_image_size(500, 281, "a.xml")
    (281, 500)
    >>> check_image_size(100000, 100000, "a.xml")
    Traceback (most recent call last):
    ...
    rloss._io.InputTooLargeError: a.xml: image size 100000x100000 (WxH) is 10000000000 pixels, \
more than the limit of 268435456 (rloss._io.MAX_IMAGE_PIXELS)
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    w, h = int(width), int(height)
    if w < 1 or h < 1:
        raise InputTooLargeError(f"{source}: image size {w}x{h} (WxH) is not positive")
    if w * h > limit:
        raise InputTooLargeError(
            f"{source}: image size {w}x{h} (WxH) is {w * h} pixels, more than the limit of "
            f"{limit} (rloss._io.MAX_IMAGE_PIXELS)"
        )
    return h, w


def check_array_size(
    shape: Sequence[int], source: str | os.PathLike[str], *, max_elements: int | None = None
) -> tuple[int, ...]:
    """Check an array shape read from an untrusted file (e.g. an HDF5 dataset) before reading.

    The limit is ``max_elements`` (``None`` = 4 x :data:`MAX_IMAGE_PIXELS`, room for a volume
    of a few hundred slices).

    Raises:
        InputTooLargeError: a negative dimension or more elements than the limit.

    >>> check_array_size((10, 256, 256), "a.h5:image")
    (10, 256, 256)
    """
    limit = 4 * MAX_IMAGE_PIXELS if max_elements is None else int(max_elements)
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InputTooLargeError(f"{source}: invalid shape {dims}")
    n = math.prod(dims)
    if n > limit:
        raise InputTooLargeError(
            f"{source}: shape {dims} has {n} elements, more than the limit of {limit}"
        )
    return dims


def check_archive_size(
    sizes: Iterable[int], source: str | os.PathLike[str], *, max_bytes: int | None = None
) -> int:
    """Check the uncompressed sizes of an archive's members before extracting any.

    Args:
        sizes: each member's uncompressed size in bytes, as the archive declares it.
        source: the archive, for the message.
        max_bytes: limit on the total; ``None`` = :data:`MAX_ARCHIVE_BYTES`.

    Returns:
        The total in bytes.

    Raises:
        InputTooLargeError: a negative size, or a total above the limit (a "zip bomb").

    >>> check_archive_size([10, 20], "a.zip")
    30
    """
    limit = MAX_ARCHIVE_BYTES if max_bytes is None else int(max_bytes)
    total = 0
    for size in sizes:
        if int(size) < 0:
            raise InputTooLargeError(f"{source}: a member declares a negative size {size}")
        total += int(size)
        if total > limit:
            raise InputTooLargeError(
                f"{source}: members expand to more than {limit} bytes (the limit, "
                "rloss._io.MAX_ARCHIVE_BYTES); refusing to extract"
            )
    return total


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file lives in the same directory (same file system), so the final
    :func:`os.replace` is atomic: readers see either the old file or the complete new one,
    never a partial write. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give the result the permissions of a normal write
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name + rename). Returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (temporary name + rename). Returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_plain(obj: Any) -> Any:
    """JSON/YAML-safe plain data: mappings -> dicts (str keys), tuples/lists -> lists,
    tensors and NumPy values -> Python numbers/lists, paths -> str, NaN/Inf -> ``None``.

    >>> import math
    >>> from pathlib import Path
    >>> to_plain({"a": (1, 2.5), 3: Path("x"), "b": math.nan})
    {'a': [1, 2.5], '3': 'x', 'b': None}
    """
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    module = type(obj).__module__
    if module.startswith(("torch", "numpy")) and hasattr(obj, "tolist"):
        size = getattr(obj, "size", None)
        numel = obj.numel() if hasattr(obj, "numel") else (size if isinstance(size, int) else 2)
        obj = obj.item() if numel == 1 and hasattr(obj, "item") else obj.tolist()
        if isinstance(obj, list):
            return to_plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON (via :func:`to_plain`; NaN as null) atomically."""
    return atomic_write_text(path, json.dumps(to_plain(data), indent=2) + "\n")


# --------------------------------------------------------------------------- outputs


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute, symlinks and ``..`` resolved (it need not
    exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_location(target: Path, shown: str) -> None:
    """The folder that will hold ``target`` exists or can be created and is writable."""
    for root in _SPECIAL_ROOTS:
        if _is_within(target, Path(root)):
            raise UnsafeOutputError(f"{shown}: {root} is a kernel file system; choose another "
                                    "location")
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link
            raise UnsafeOutputError(f"{shown}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UnsafeOutputError(f"{shown}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UnsafeOutputError(f"{shown}: folder {ancestor} is not writable")


def _resolved_inputs(inputs: Iterable[str | os.PathLike[str] | None]) -> list[tuple[Path, str]]:
    return [(resolve_path(p), str(p)) for p in inputs if p is not None]


def check_output_file(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
    what: str = "--out",
) -> Path:
    """Check, before any work, that a file may be written at ``path``.

    Args:
        path: the output file.
        inputs: files and folders the command reads; the output may be none of them, nor a
            file inside an input folder that the command reads (pass such files explicitly).
        overwrite: allow replacing an existing file (never an input).
        suffixes: accepted suffixes (lower case, with the dot), or ``None`` for any.
        what: the option name, for messages.

    Returns:
        The resolved path.

    Raises:
        UnsafeOutputError: the output is an input, exists without ``overwrite``, is a folder,
            has a wrong suffix, or its folder cannot be created or written.
    """
    shown = f"{what} {path}"
    target = resolve_path(path)
    for inp, name in _resolved_inputs(inputs):
        if target == inp:
            raise UnsafeOutputError(
                f"{shown}: is the input {name}; refusing to overwrite an input (choose another "
                "output name)"
            )
    if suffixes is not None and Path(path).suffix.lower() not in suffixes:
        raise UnsafeOutputError(f"{shown}: want a file name ending in {' or '.join(suffixes)}")
    if target.is_dir():
        raise UnsafeOutputError(f"{shown}: is a folder; want a file name")
    _check_location(target, shown)
    if target.exists() and not overwrite:
        raise UnsafeOutputError(f"{shown}: exists; pass --overwrite to replace it")
    return target


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    outputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    what: str = "--out",
) -> Path:
    """Check, before any work, that the folder ``path`` may receive the files ``outputs``.

    Args:
        path: the output folder (created later if missing).
        inputs: files and folders the command reads. The output folder may not be an input
            folder; a planned output file may not be an input file (not even with
            ``overwrite``), so list the input files read from inside input folders too.
        outputs: the files the command plans to write (inside ``path``); each is compared
            with every input file.
        overwrite: whether existing outputs will be replaced (only used for messages: a
            command that skips existing outputs passes ``False``).
        what: the option name, for messages.

    Returns:
        The resolved folder.

    Raises:
        UnsafeOutputError: the folder is an input folder, is a file, cannot be
            created or written, or a planned output is an input file.
    """
    del overwrite  # the rule for inputs does not depend on it
    shown = f"{what} {path}"
    target = resolve_path(path)
    resolved = _resolved_inputs(inputs)
    for inp, name in resolved:
        if inp.is_dir() and inp == target:
            raise UnsafeOutputError(
                f"{shown}: is the input folder {name}; refusing to write outputs there "
                "(choose a separate output folder)"
            )
    if target.exists() and not target.is_dir():
        raise UnsafeOutputError(f"{shown}: is a file; want a folder")
    _check_location(target / "x", shown)
    input_files = {inp: name for inp, name in resolved if not inp.is_dir()}
    for out in outputs:
        r = resolve_path(out)
        if r in input_files:
            raise UnsafeOutputError(
                f"{shown}: would replace the input {input_files[r]} by {Path(out).name}; "
                "refusing to overwrite an input (choose a separate output folder)"
            )
        if r.is_dir():
            raise UnsafeOutputError(f"{shown}: output {out} is a folder")
    return target
