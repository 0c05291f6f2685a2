"""Resumable downloads with checksum verification, and safe archive extraction.

Downloads go to ``<dest>.part`` and are renamed to ``dest`` only when complete and
verified, so ``dest`` is never a partial file. A dropped connection is retried with an
HTTP ``Range`` request that resumes where it stopped; when the retries are exhausted (or
the checksum does not match) the ``.part`` file is deleted and :class:`DownloadError`
says what happened. A ``.part`` file left by a killed process is resumed on the next call.

Archives from the internet are untrusted: :func:`extract_archive` refuses members that
would land outside the destination (absolute paths, ``..``, links pointing out, devices),
using tarfile's ``filter="data"`` where Python has it and an equivalent check otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath

__all__ = [
    "DownloadError",
    "UnsafeArchiveError",
    "download_file",
    "extract_archive",
    "file_digest",
    "move_tree",
]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, size or checksum); the message says which."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the destination folder."""


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """Hex digest of a file (``md5``, ``sha256``, ...), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, url: str, md5: str | None, sha256: str | None, size: int | None):
    if size is not None and path.stat().st_size != size:
        raise DownloadError(
            f"{url}: downloaded {path.stat().st_size} bytes, want {size}; the file was removed"
        )
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                raise DownloadError(
                    f"{url}: {algo} checksum mismatch (got {got}, want {want}); the download "
                    "is corrupt or the file changed upstream; the file was removed"
                )


def _fetch(url: str, part: Path, timeout: float, bar, user_agent: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with Range when it has data)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": user_agent}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range not satisfiable: already complete
            return
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # server ignored Range: start again
            have = 0
            part.unlink(missing_ok=True)
            if bar is not None:
                bar.reset()
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        if bar is not None:
            if expected is not None and (bar.total is None or have == 0):
                bar.total = have + expected
            bar.n = have
            bar.refresh()
        got = 0
        with open(part, "ab" if have else "wb") as fh:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                got += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if expected is not None and got < expected:
            raise ConnectionError(f"connection closed after {got} of {expected} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    backoff: float = 1.0,
    user_agent: str = "rloss-downloader",
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic).

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: destination file; if it already exists and verifies, nothing is downloaded.
        md5: expected MD5 hex digest, or ``None``.
        sha256: expected SHA-256 hex digest, or ``None``.
        size: expected size in bytes, or ``None``.
        retries: extra attempts after a network failure, each resuming with ``Range``.
        timeout: socket timeout in seconds.
        progress: show a tqdm progress bar.
        backoff: seconds to wait before the first retry (doubling).
        user_agent: HTTP ``User-Agent``.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: HTTP error, network failure after the retries, wrong size or
            checksum. No partial or unverified file is left at ``dest`` or ``dest.part``.
    """
    if retries < 0:
        raise ValueError(f"retries: want >= 0, got {retries}")
    dest = Path(dest)
    if dest.exists():
        try:
            _verify(dest, url, md5, sha256, size)
            return dest
        except DownloadError:
            raise DownloadError(
                f"{dest}: exists but does not match the expected size/checksum; delete it "
                "and run again"
            ) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
    try:
        attempt = 0
        while True:
            try:
                _fetch(url, part, timeout, bar, user_agent)
                break
            except urllib.error.HTTPError as err:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: HTTP error {err.code} {err.reason}") from err
            except (HTTPException, OSError) as err:  # URLError, timeouts, resets, ...
                attempt += 1
                if attempt > retries:
                    part.unlink(missing_ok=True)
                    reason = getattr(err, "reason", err)
                    raise DownloadError(
                        f"{url}: network failure after {attempt} attempt(s): {reason}; no "
                        "partial file was kept, run the command again when the network is back"
                    ) from err
                time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _verify(part, url, md5, sha256, size)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
    finally:
        if bar is not None:
            bar.close()
    return dest


def _check_member_path(name: str, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")) or ".." in p.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the "
                                 "destination; refusing to extract")


def _check_size(sizes, archive: Path, max_bytes: int | None) -> None:
    from rloss._io import InputTooLargeError, check_archive_size

    try:
        check_archive_size(sizes, archive, max_bytes=max_bytes)
    except InputTooLargeError as err:
        raise UnsafeArchiveError(str(err)) from None


def _safe_tar_members(tf: tarfile.TarFile, archive: Path, dest: Path):
    """Fallback for Pythons without tarfile filters: yield members after the ``data`` checks."""
    root = dest.resolve()
    for m in tf.getmembers():
        _check_member_path(m.name, archive)
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or fifo")
        target = (root / m.name).resolve()
        if root != target and root not in target.parents:
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} escapes the destination")
        if m.issym() or m.islnk():
            link_base = (root / m.name).parent if m.issym() else root
            link = (link_base / m.linkname).resolve()
            if PurePosixPath(m.linkname).is_absolute() or (
                    root != link and root not in link.parents):
                raise UnsafeArchiveError(
                    f"{archive}: link {m.name!r} -> {m.linkname!r} points outside the destination"
                )
        m.mode &= 0o755  # no setuid/setgid/sticky bits
        yield m


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    progress: bool = True,
    max_bytes: int | None = None,
) -> Path:
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive into ``dest`` safely.

    Args:
        archive: the archive file.
        dest: destination folder (created).
        progress: show a tqdm progress bar over members.
        max_bytes: limit on the members' total uncompressed size
            (:func:`rloss._io.check_archive_size`; ``None`` = 64 GiB).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        UnsafeArchiveError: a member would be written outside ``dest`` (absolute path, ``..``,
            a link pointing outside, a device); nothing is extracted in that case for zips
            and tars checked up front; or the members expand beyond ``max_bytes``.
        DownloadError: the archive is corrupt or of an unknown type.
    """
    from tqdm.auto import tqdm

    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_size((i.file_size for i in infos), archive, max_bytes)
                for info in infos:  # check everything before writing anything
                    _check_member_path(info.filename, archive)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise UnsafeArchiveError(
                            f"{archive}: member {info.filename!r} is a symbolic link; refusing"
                        )
                for info in tqdm(infos, desc=f"extract {archive.name}", unit="file",
                                 disable=not progress):
                    zf.extract(info, dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_size((m.size for m in members if m.isfile()), archive, max_bytes)
                for m in members:
                    _check_member_path(m.name, archive)
                bar = tqdm(members, desc=f"extract {archive.name}", unit="file",
                           disable=not progress)
                if hasattr(tarfile, "data_filter"):
                    try:
                        for m in bar:
                            tf.extract(m, dest, filter="data")
                    except tarfile.FilterError as err:
                        raise UnsafeArchiveError(f"{archive}: {err}; refusing to extract") from err
                else:  # Python < 3.10.12 / 3.11.4
                    for m in _safe_tar_members(tf, archive, dest):
                        tf.extract(m, dest)
                        bar.update()
                bar.close()
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.ReadError, EOFError) as err:
        raise DownloadError(f"{archive}: corrupt archive ({err})") from err
    return dest


def move_tree(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Move a folder to ``dest`` (rename when possible); ``dest`` must not exist."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest}: exists; refusing to overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError:
        shutil.move(str(src), str(dest))
    return dest
