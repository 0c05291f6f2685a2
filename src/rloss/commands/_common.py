"""What every ``rloss`` command shares: the error type, argument types, the help format,
output checks, device checks, and the conversion of user errors into one-line messages.

Importing this module is light (standard library only) so that ``rloss --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CLIError",
    "HelpFormatter",
    "add_command",
    "check_device",
    "check_output_dir",
    "check_output_file",
    "fraction",
    "image_files",
    "is_user_error",
    "non_negative_float",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "set_resume_hint",
    "user_errors",
]


class CLIError(Exception):
    """An error to report to the user as one line, with exit status 2."""


#: Exception classes (module, name) raised by the library for bad user input; the ``rloss``
#: command prints them as one line with exit status 2. Looked up only when an error happens,
#: and only in modules already imported.
_USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("rloss._io", "UnsafeOutputError"),
    ("rloss._io", "InputTooLargeError"),
    ("rloss.data.io", "DataError"),
    ("rloss.data.download", "DownloadError"),
    ("rloss.train.config", "ConfigError"),
    ("rloss.train.models", "WeightsUnavailableError"),
)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad user input (a :class:`CLIError` or a library input error)."""
    if isinstance(err, CLIError):
        return True
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    An error re-raised from a DataLoader worker carries the worker's traceback; its last
    line (the original message) is kept.
    """
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if "Original Traceback" in text:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and "." in head and " " not in head else last
    return lines[0] if len(lines) == 1 else "; ".join(lines)


@contextlib.contextmanager
def user_errors(*types: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Turn the given exception types raised in the block into :class:`CLIError`.

    Use around library calls whose ``ValueError``/``FileNotFoundError`` etc. are caused by
    the user's arguments.
    """
    try:
        yield
    except types as err:
        raise CLIError(prefix + one_line(err)) from None


def set_resume_hint(args: argparse.Namespace, command: str) -> None:
    """Record the command line that resumes the work; printed when the user presses Ctrl-C."""
    args.resume_hint = command


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each option's help, except for unset and boolean flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or "default " in text:
            return text
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            if isinstance(default, (list, tuple)):
                return text + " (default: " + " ".join(str(v) for v in default) + ")"
            return text + " (default: %(default)s)"
        return text


def add_command(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` with :class:`HelpFormatter`."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    return subparsers.add_parser(name, **kwargs)


def _number(text: str, cast: type, what: str, ok) -> Any:
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"want {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, "a number >= 0", lambda v: 0 <= v < float("inf"))


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def check_output_file(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
    what: str = "--out",
) -> Path:
    """:func:`rloss._io.check_output_file`, raising :class:`CLIError`."""
    from rloss._io import UnsafeOutputError
    from rloss._io import check_output_file as check

    try:
        return check(path, inputs=inputs, overwrite=overwrite, suffixes=suffixes, what=what)
    except UnsafeOutputError as err:
        raise CLIError(str(err)) from None


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    outputs: Iterable[str | os.PathLike[str]] = (),
    what: str = "--out",
) -> Path:
    """:func:`rloss._io.check_output_dir`, raising :class:`CLIError`."""
    from rloss._io import UnsafeOutputError
    from rloss._io import check_output_dir as check

    try:
        return check(path, inputs=inputs, outputs=outputs, what=what)
    except UnsafeOutputError as err:
        raise CLIError(str(err)) from None


def image_files(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image paths from command-line items: files as given, folders expanded (sorted).

    A folder contributes its files with an image suffix (:data:`rloss.data.io.IMAGE_EXTENSIONS`),
    not its subfolders.

    Raises:
        CLIError: an item is neither a file nor a folder, or no image file is left.
    """
    from rloss.data.io import IMAGE_EXTENSIONS

    items = [str(item) for item in items]
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"{item}: file or folder not found")
    if not files:
        raise CLIError(f"no image files in {' '.join(items)}")
    return files


def check_device(text: str | None, *, what: str = "--device", allow_auto: bool = False) -> str:
    """Check a torch device string before any work: known type, and the device exists.

    ``None`` (and ``"auto"`` where allowed) means CUDA when available, else CPU.

    Raises:
        CLIError: unknown device type, or a CUDA/MPS device this machine does not have.
    """
    import torch

    if text is None or (allow_auto and text == "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(
            f"{what} {text}: not a device; want cpu, cuda, cuda:N or mps"
            + (" or auto" if allow_auto else "")
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{what} {text}: no CUDA GPU is available here; use {what} cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CLIError(f"{what} {text}: there are {count} CUDA device(s) (0..{count - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CLIError(f"{what} {text}: MPS is not available here; use {what} cpu")
    elif dev.type != "cpu":
        raise CLIError(f"{what} {text}: device type {dev.type!r} is not supported; want cpu, "
                       "cuda or mps")
    return text
