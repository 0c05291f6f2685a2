"""Downloads against a local HTTP server (resume, checksum, dropped connection), safe
extraction, and `rloss data voc --download` end to end on tiny generated archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rloss.cli import main as cli_main
from rloss.data import voc as voc_module
from rloss.data.download import DownloadError, UnsafeArchiveError, download_file, extract_archive
from rloss.data.io import write_image, write_label


class Server:
    """Serves ``files`` (path -> bytes); honours Range unless ``no_range``; ``drop`` maps a
    path to the number of bytes after which the connection is cut (once per entry in
    ``drops_left``)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.drops_left: dict[str, int] = {}
        self.no_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop.get(self.path)
                if cut is not None and server.drops_left.get(self.path, 0) > 0:
                    server.drops_left[self.path] -= 1
                    self.wfile.write(body[: max(cut - start, 0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with Server() as s:
        yield s


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_verified(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    out = download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, progress=False)
    assert out.read_bytes() == PAYLOAD
    n = len(server.requests)
    download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, progress=False)
    assert len(server.requests) == n  # already there and verified: no request


def test_resume_from_partial_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:123_456])
    download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=123456-")]
    assert not (tmp_path / "f.bin.part").exists()


def test_server_without_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.no_range = True
    (tmp_path / "f.bin.part").write_bytes(b"junk" * 100)
    download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_dropped_connection_resumed_by_retry(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 100_000
    server.drops_left["/f.bin"] = 1
    download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, retries=2, backoff=0,
                  progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests[1] == ("/f.bin", "bytes=100000-")


def test_dropped_connection_no_partial_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 100_000
    server.drops_left["/f.bin"] = 5
    with pytest.raises(DownloadError, match=r"f\.bin: network failure after 2 attempt"):
        download_file(server.url + "/f.bin", tmp_path / "f.bin", md5=MD5, retries=1,
                      backoff=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_removes_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="md5 checksum mismatch"):
        download_file(server.url + "/f.bin", tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match=r"want 5 bytes|downloaded"):
        download_file(server.url + "/f.bin", tmp_path / "f.bin", size=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_unreachable(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP error 404"):
        download_file(server.url + "/missing", tmp_path / "m", progress=False)
    with pytest.raises(DownloadError, match="network failure"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", retries=0, timeout=2,
                      progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- extraction
def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("maker", [make_tar, make_zip])
def test_extract_ok(tmp_path, maker):
    (tmp_path / "a.arc").write_bytes(maker({"d/x.txt": b"x", "d/e/y.txt": b"y"}))
    extract_archive(tmp_path / "a.arc", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "d" / "e" / "y.txt").read_bytes() == b"y"


@pytest.mark.parametrize("maker", [make_tar, make_zip])
@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "d/../../evil.txt"])
def test_extract_rejects_path_traversal(tmp_path, maker, name):
    (tmp_path / "a.arc").write_bytes(maker({"ok.txt": b"1", name: b"evil"}))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(tmp_path / "a.arc", tmp_path / "out" / "in", progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_extract_rejects_symlink_out(tmp_path):
    (tmp_path / "a.tgz").write_bytes(make_tar({"ok.txt": b"1"}, links={"link": "/etc/passwd"}))
    with pytest.raises(UnsafeArchiveError):
        extract_archive(tmp_path / "a.tgz", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "link").exists()


def test_extract_fallback_checks(tmp_path, monkeypatch):
    """The check used on Pythons without tarfile filters rejects the same archives."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    (tmp_path / "ok.tgz").write_bytes(make_tar({"d/x.txt": b"x"}))
    extract_archive(tmp_path / "ok.tgz", tmp_path / "o1", progress=False)
    assert (tmp_path / "o1" / "d" / "x.txt").read_bytes() == b"x"
    (tmp_path / "bad.tgz").write_bytes(make_tar({"ok.txt": b"1"}, links={"l": "../../x"}))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(tmp_path / "bad.tgz", tmp_path / "o2", progress=False)


def test_extract_corrupt(tmp_path):
    (tmp_path / "c.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DownloadError):
        extract_archive(tmp_path / "c.zip", tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- rloss data voc
def _png(write, arr, tmp):
    path = tmp / "x.png"
    write(path, arr)
    return path.read_bytes()


def test_voc_download_end_to_end(server, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    tmp = tmp_path / "scratch"
    tmp.mkdir()
    ids = ["2008_000001", "2008_000002", "2008_000003"]
    voc, aug, scr = {}, {}, {}
    for i in ids:
        img = rng.integers(0, 255, (12, 16, 3), np.uint8)
        write_image(tmp / "x.jpg", img)
        voc[f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"] = (tmp / "x.jpg").read_bytes()
        lab = rng.integers(0, 21, (12, 16)).astype(np.uint8)
        voc[f"VOCdevkit/VOC2012/SegmentationClass/{i}.png"] = _png(write_label, lab, tmp)
        aug[f"SegmentationClassAug/{i}.png"] = _png(write_label, lab, tmp)
        scr[f"pascal_2012_scribble/{i}.png"] = _png(write_label, np.full((12, 16), 255,
                                                                         np.uint8), tmp)
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = b"2008_000001\n"
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = b"2008_000003\n"
    aug["__MACOSX/SegmentationClassAug/._junk"] = b""
    archives = {"/voc.tar": make_tar(voc), "/aug.zip": make_zip(aug), "/scr.zip": make_zip(scr)}
    server.files.update(archives)
    sources = dict(voc_module.VOC_SOURCES)
    for key, path in (("voc2012", "/voc.tar"), ("segmentation_class_aug", "/aug.zip"),
                      ("scribbles", "/scr.zip")):
        md5 = hashlib.md5(archives[path]).hexdigest() if key == "voc2012" else None
        sources[key] = voc_module.Source(key, server.url + path, path[1:], md5,
                                         sources[key].provides, sources[key].description)
    monkeypatch.setattr(voc_module, "VOC_SOURCES", sources)

    root = tmp_path / "VOC"
    assert cli_main(["data", "voc", "--root", str(root), "--download", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "train_aug: 2 ids" in out and "val: 1 ids" in out
    assert (root / "ImageSets" / "SegmentationAug" / "train_aug.txt").read_text().split() == [
        "2008_000001", "2008_000002"]
    assert (root / "JPEGImages" / "2008_000002.jpg").is_file()
    recorded = (root / "downloads" / "checksums.json").read_text()
    assert "aug.zip" in recorded and "voc.tar" not in recorded
    assert not [p for p in (root / "downloads").iterdir() if p.suffix in (".zip", ".tar")]
    ds = voc_module.VOCScribble(root, "train")
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 12, 16)
    n = len(server.requests)
    assert cli_main(["data", "voc", "--root", str(root), "--download", "--no-progress"]) == 0
    assert len(server.requests) == n  # second run: nothing downloaded

    # a corrupt download: clear one-line error, nothing left behind
    root2 = tmp_path / "VOC2"
    sources["voc2012"] = voc_module.Source("voc2012", server.url + "/voc.tar", "voc.tar",
                                           "0" * 32, sources["voc2012"].provides, "")
    rc = cli_main(["data", "voc", "--root", str(root2), "--sources", "voc2012",
                   "--no-progress"])
    assert rc == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (root2 / "JPEGImages").exists()
    assert list((root2 / "downloads").iterdir()) == []
