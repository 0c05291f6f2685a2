"""Issue 16: no command overwrites an input, untrusted sizes are bounded, every bad input is a
one-line error (exit 2), Ctrl-C exits 130 with a resume hint. Each test runs the command as a
user types it and checks that the inputs are untouched and that the message names the problem.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rloss import _io
from rloss.cli import main
from rloss.data.io import read_image, read_label, write_image, write_label

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def photo(tmp_path):
    """A 48x32 two-colour image with a two-class text scribble."""
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, 24:] = 200
    image = tmp_path / "img.png"
    write_image(image, img)
    scr = tmp_path / "s.txt"
    scr.write_text("0,2,2,10,10\n1,30,20,40,25\n")
    return image, scr


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_optimisation(monkeypatch):
    """segment_image must not run: every check happens before the long work."""
    import rloss.segment

    def fail(*a, **k):
        raise AssertionError("the optimisation ran before the arguments were checked")

    monkeypatch.setattr(rloss.segment, "segment_image", fail)


# --------------------------------------------------------------------------- the shared rules


def test_output_file_rule_resolves_symlinks_and_dotdot(tmp_path):
    src = tmp_path / "a.png"
    src.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.png"
    link.symlink_to(src)
    for alias in (link, tmp_path / "sub" / ".." / "a.png"):
        with pytest.raises(_io.UnsafeOutputError, match="is the input"):
            _io.check_output_file(alias, inputs=[src], overwrite=True)
    with pytest.raises(_io.UnsafeOutputError, match="pass --overwrite"):
        _io.check_output_file(src, inputs=[])
    assert _io.check_output_file(src, overwrite=True) == src.resolve()
    # a missing parent that can be created is fine
    assert _io.check_output_file(tmp_path / "new" / "b.png").name == "b.png"
    with pytest.raises(_io.UnsafeOutputError, match=r"want a file name ending in \.png"):
        _io.check_output_file(tmp_path / "b.bmp", suffixes=(".png",))
    with pytest.raises(_io.UnsafeOutputError, match="kernel file system"):
        _io.check_output_file("/proc/x.png")
    with pytest.raises(_io.UnsafeOutputError, match="is a folder"):
        _io.check_output_file(tmp_path / "sub")
    with pytest.raises(_io.UnsafeOutputError, match="is a file, not a folder"):
        _io.check_output_file(src / "x.png")
    assert src.read_bytes() == b"x"


def test_output_dir_rule(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(b"x")
    with pytest.raises(_io.UnsafeOutputError, match="is the input folder"):
        _io.check_output_dir(tmp_path / "in" / "." , inputs=[inp])
    link = tmp_path / "alias"
    link.symlink_to(inp)
    with pytest.raises(_io.UnsafeOutputError, match="is the input folder"):
        _io.check_output_dir(link, inputs=[inp])
    # inside an input folder only when no output replaces an input file
    _io.check_output_dir(inp / "out", inputs=[inp, inp / "a.png"], outputs=[inp / "out/a.png"])
    with pytest.raises(_io.UnsafeOutputError, match="would replace the input"):
        _io.check_output_dir(link, inputs=[inp / "a.png"], outputs=[link / "a.png"])
    with pytest.raises(_io.UnsafeOutputError, match="is a file; want a folder"):
        _io.check_output_dir(inp / "a.png")


def test_atomic_write_json_and_plain_data(tmp_path):
    import torch

    path = _io.write_json_atomic(
        {"a": torch.tensor(1.5), "b": np.float32(2), "c": float("nan"), "d": (1, Path("p")),
         "e": torch.arange(3)}, tmp_path / "m.json")
    assert path.read_text() == (
        '{\n  "a": 1.5,\n  "b": 2.0,\n  "c": null,\n  "d": [\n    1,\n    "p"\n  ],\n'
        '  "e": [\n    0,\n    1,\n    2\n  ]\n}\n')
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the old names are the same objects
    from rloss.data import io

    assert io.atomic_path is _io.atomic_path and io.atomic_write_text is _io.atomic_write_text


def test_size_limits(tmp_path):
    with pytest.raises(_io.InputTooLargeError, match="more than the limit"):
        _io.check_image_size(100_000, 100_000, "x.xml")
    assert _io.check_image_size(4, 3, "x", max_pixels=12) == (3, 4)
    with pytest.raises(_io.InputTooLargeError, match="x"):
        _io.check_image_size(4, 3, "x", max_pixels=11)
    with pytest.raises(_io.InputTooLargeError, match="limit"):
        _io.check_archive_size([2**40, 2**40], "a.zip", max_bytes=2**41 - 1)
    with pytest.raises(_io.InputTooLargeError, match="elements"):
        _io.check_array_size((2000, 1000, 1000), "a.h5:image")


def test_archive_extraction_is_bounded(tmp_path):
    import zipfile

    from rloss.data.download import UnsafeArchiveError, extract_archive

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * 100_000)
    with pytest.raises(UnsafeArchiveError, match="limit"):
        extract_archive(archive, tmp_path / "x", progress=False, max_bytes=50_000)
    assert not (tmp_path / "x" / "zeros.bin").exists()
    extract_archive(archive, tmp_path / "y", progress=False)
    assert (tmp_path / "y" / "zeros.bin").stat().st_size == 100_000


def test_image_reader_checks_the_header_size_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    write_image(path, np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(_io, "MAX_IMAGE_PIXELS", 64 * 63)
    from rloss.data.io import DataError

    with pytest.raises(DataError, match=r"big\.png: image size 64x64"):
        read_image(path)


def test_missing_command_module_is_an_error_not_skipped(monkeypatch):
    import rloss.cli

    monkeypatch.setattr(rloss.cli, "COMMAND_MODULES", ("rloss.commands.nonexistent",))
    with pytest.raises(ModuleNotFoundError):
        rloss.cli.build_parser()


def test_old_command_modules_still_import():
    import importlib

    for old, new in (("rloss.data.commands", "rloss.commands.data"),
                     ("rloss.train.commands", "rloss.commands.train"),
                     ("rloss.viz_commands", "rloss.commands.viz")):
        with pytest.warns(DeprecationWarning):
            module = importlib.reload(importlib.import_module(old)) if old in sys.modules \
                else importlib.import_module(old)
        assert module is importlib.import_module(new)


def test_help_shows_defaults(capsys):
    for argv in (["segment", "--help"], ["scribbles", "synth", "--help"], ["eval", "--help"],
                 ["visualize-gradient", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "(default: " in out, argv
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    from rloss.segment import DEFAULT_BACKEND, DEFAULTS

    assert f"--steps STEPS optimisation steps (default: {DEFAULTS['steps']})" in out
    assert f"(default: {DEFAULT_BACKEND})" in out and "other work) (default: 2)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, rloss.cli; rloss.cli.build_parser(); "
            "print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- issue 16, by row


def test_row1_convert_refuses_to_replace_the_images(tmp_path, photo, capsys):
    same = tmp_path / "same"
    same.mkdir()
    write_image(same / "a.png", read_image(photo[0]))
    (same / "a.txt").write_text("0,2,2,10,10\n")
    before = snapshot(same)
    for extra in ([], ["--overwrite"]):
        rc = main(["scribbles", "convert", str(same), "--images", str(same), "--out", str(same),
                   "--no-progress", *extra])
        assert rc == 2
        line = error_line(capsys)
        assert "is the input folder" in line and "--overwrite" not in line
    assert snapshot(same) == before


def test_row2_synth_refuses_to_replace_the_masks(tmp_path, capsys):
    masks = tmp_path / "masks"
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 1
    write_label(masks / "m.png", mask)
    before = snapshot(masks)
    for extra in ([], ["--overwrite"]):
        assert main(["scribbles", "synth", str(masks), "--out", str(masks), "--no-progress",
                     *extra]) == 2
        assert "is the input folder" in error_line(capsys)
    assert snapshot(masks) == before


def test_row3_eval_refuses_to_replace_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run1"
    run.mkdir()
    ckpt = run / "model.pt"
    ckpt.write_bytes(b"weights")
    for extra in ([], ["--overwrite"]):
        assert main(["eval", "--checkpoint", str(ckpt), "--out", str(ckpt), *extra]) == 2
        assert "is the input" in error_line(capsys)
    assert ckpt.read_bytes() == b"weights"
    # any other existing file needs --overwrite
    other = run / "metrics.json"
    other.write_text("{}")
    assert main(["eval", "--checkpoint", str(ckpt), "--out", str(other)]) == 2
    assert "pass --overwrite" in error_line(capsys) and other.read_text() == "{}"


def test_row4_predict_refuses_to_replace_the_photos(tmp_path, photo, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", read_image(photo[0]))
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    before = snapshot(photos)
    assert main(["predict", "--checkpoint", str(ckpt), str(photos), "--out", str(photos)]) == 2
    assert "is the input folder" in error_line(capsys)
    # a single file as input, the output folder its folder: the prediction a.png would replace it
    assert main(["predict", "--checkpoint", str(ckpt), str(photos / "a.png"), "--out",
                 str(photos), "--overwrite", "--crf"]) == 2
    assert "would replace the input" in error_line(capsys)
    assert snapshot(photos) == before


def test_row5_xml_size_is_bounded(tmp_path, capsys):
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "huge.xml").write_text(
        "<annotation><size><width>100000</width><height>100000</height></size>"
        "<polygon><tag>cat</tag><point><X>1</X><Y>1</Y></point></polygon></annotation>")
    start = time.perf_counter()
    rc = main(["scribbles", "convert", str(xml), "--out", str(tmp_path / "out"), "--workers",
               "1", "--no-progress"])
    assert rc == 1 and time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "huge.xml: <size>: image size 100000x100000" in err and "limit" in err
    assert "nothing was written" in err
    assert not list((tmp_path / "out").iterdir())


def test_row6_segment_refuses_overlay_equal_to_out(tmp_path, photo, capsys, no_optimisation):
    image, scr = photo
    out = tmp_path / "same.png"
    assert main(["segment", str(image), "--scribbles", str(scr), "--out", str(out),
                 "--overlay", str(out)]) == 2
    assert "--overlay" in error_line(capsys) and not out.exists()
    # and the overlay may not be an input either
    before = digest(image)
    assert main(["segment", str(image), "--scribbles", str(scr), "--out", str(tmp_path / "m.png"),
                 "--overlay", str(image), "--overwrite"]) == 2
    assert "is the input" in error_line(capsys) and digest(image) == before


def test_row7_scribblesup_suffix_and_ids(tmp_path, capsys):
    from rloss.data.scribbles import scribble_id

    ann, imgs, out = tmp_path / "ann", tmp_path / "JPEGImages", tmp_path / "out"
    ann.mkdir()
    write_image(imgs / "2007_000032.jpg", np.zeros((20, 30, 3), np.uint8))
    (ann / "2007_000032_scribble.txt").write_text("aeroplane,1,1,20,10\n")
    (ann / "2007_000033_scribbles.txt").write_text("3,1,1,5,5\n")
    write_image(imgs / "2007_000033.jpg", np.zeros((20, 30, 3), np.uint8))
    assert main(["scribbles", "convert", str(ann), "--images", str(imgs), "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["2007_000032.png", "2007_000033.png"]
    assert read_label(out / "2007_000032.png").shape == (20, 30)
    assert scribble_id("x_Scribble.xml") == "x" and scribble_id("scribble.txt") == "scribble"


def test_row8_lossy_scribbles_are_refused(tmp_path, photo, capsys, no_optimisation):
    image, _ = photo
    jpg = tmp_path / "s.jpg"
    Image.fromarray(np.full((32, 48), 255, np.uint8)).convert("RGB").save(jpg)
    assert main(["segment", str(image), "--scribbles", str(jpg), "--out",
                 str(tmp_path / "m.png")]) == 2
    line = error_line(capsys)
    assert "s.jpg" in line and "lossy" in line
    from rloss.segment import read_scribbles

    with pytest.raises(ValueError, match="lossy"):
        read_scribbles(jpg, (32, 48))


@pytest.fixture
def folder_dataset(tmp_path):
    root = tmp_path / "fold"
    for i in range(2):
        write_image(root / "images" / f"s{i}.png", np.zeros((32, 32, 3), np.uint8))
        write_label(root / "labels" / f"s{i}.png", np.zeros((32, 32), np.uint8))
        s = np.full((32, 32), 255, np.uint8)
        s[3:6, 3:6] = 9 if i == 0 else 1
        write_label(root / "scribbles" / f"s{i}.png", s)
    (root / "classes.txt").write_text("\ufeffa\nb\nc\nd\ne\n", encoding="utf-8")
    (root / "splits").mkdir()
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("s0\ns1\n")
    return root


def test_row10_folder_dataset_bad_value_names_the_file(folder_dataset):
    from rloss.data.folder import SegmentationFolder
    from rloss.data.io import DataError

    ds = SegmentationFolder(folder_dataset, "train")
    assert ds.classes[0] == "a"  # BOM skipped
    with pytest.raises(DataError, match=r"s0\.png: scribble holds value\(s\) 9, but there are 5"):
        ds[0]
    ds[1]
    assert SegmentationFolder(folder_dataset, "train", num_classes=10)[0]["scribble"].max() == 255


def test_row10_train_on_a_folder_dataset_reports_the_file(folder_dataset, tmp_path, capsys):
    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"
    (folder_dataset / "scribbles" / "s1.png").unlink()
    argv = ["train", str(recipe), "data.kind=folder", f"data.root={folder_dataset}",
            "--run-dir", str(tmp_path / "run"), "--no-progress", "trainer.max_steps=1",
            "trainer.threads=1"]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("rloss train: error: ") and "scribbles" in line and "s1" in line


def test_row12_output_locations_checked_up_front(tmp_path, photo, capsys, no_optimisation):
    image, scr = photo
    (tmp_path / "DIR.png").mkdir()
    base = ["segment", str(image), "--scribbles", str(scr), "--out"]
    for out, words in (("/proc/x.png", "kernel file system"),
                       (str(tmp_path / "DIR.png"), "is a folder"),
                       (str(image / "x.png"), "is a file, not a folder")):
        assert main([*base, out]) == 2
        assert words in error_line(capsys)
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "a.txt").write_text("0,1,1\n")
    assert main(["scribbles", "convert", str(xml), "--out", str(image), "--no-progress"]) == 2
    assert "is a file; want a folder" in error_line(capsys)


def test_row13_devices(tmp_path, photo, capsys, no_optimisation):
    import torch

    image, scr = photo
    base = ["segment", str(image), "--scribbles", str(scr), "--out", str(tmp_path / "m.png")]
    assert main([*base, "--device", "banana"]) == 2
    assert "--device banana: not a device" in error_line(capsys)
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in error_line(capsys)


def test_row13_device_error_as_a_module_prints_one_line(tmp_path, photo):
    """``python -m rloss.cli``: the error class is the same whether cli is __main__ or not."""
    image, scr = photo
    res = subprocess.run(
        [sys.executable, "-m", "rloss.cli", "segment", str(image), "--scribbles", str(scr),
         "--out", str(tmp_path / "m.png"), "--device", "banana"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "rloss segment: error: --device banana: not a device; want " \
        "cpu, cuda, cuda:N or mps"


def test_row14_16bit_grey_images_are_rescaled(tmp_path):
    arr = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 100, 255, 0]
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # a label image of 16 bits with small values is still read as labels
    lab = tmp_path / "l16.png"
    Image.fromarray(np.array([[0, 3, 255]], dtype=np.uint16)).save(lab)
    assert read_label(lab).tolist() == [[0, 3, 255]]


def test_row15_utf8_bom_in_scribble_text(tmp_path):
    from rloss.data.scribbles import parse_polyline_text
    from rloss.segment import read_scribble_text

    path = tmp_path / "s.txt"
    path.write_bytes("\ufeff0,1,1,3,3\n".encode())
    assert parse_polyline_text(path).strokes[0].tag == "0"
    assert (read_scribble_text(path, (5, 5)) == 0).any()


_KILL_SCRIPT = """
import sys, time
from rloss.data._parallel import map_files

def slow(i):
    import os
    os.write(1, f"{os.getpid()}\\n".encode())  # one atomic write: the two workers share the pipe
    time.sleep(60)
    return i

if __name__ == "__main__":
    map_files(slow, list(range(8)), workers=2, desc="x", progress=False)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_row16_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "kill_me.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    pids: set[int] = set()
    while len(pids) < 2:
        line = proc.stdout.readline()
        assert line, "the script ended before both workers reported"
        if line.strip():
            pids.add(int(line))
    proc.kill()
    proc.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie waiting for its reaper is gone for our purpose
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    deadline = time.monotonic() + 30  # a liveness bound for a loaded machine, not a speed claim
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)]


def test_row17_ctrl_c_during_train_prints_the_resume_command(tmp_path, capsys, monkeypatch,
                                                             ctrl_c_ready):
    import rloss.train.api

    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"

    def lightning_like_train(*a, **k):
        # Lightning catches the KeyboardInterrupt, shuts down, then calls exit(1)
        try:
            signal.raise_signal(signal.SIGINT)  # to this thread, not any of the process
            time.sleep(5)
        except KeyboardInterrupt:
            sys.exit(1)
        raise AssertionError("no SIGINT")

    monkeypatch.setattr(rloss.train.api, "train", lightning_like_train)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run), "optim.lr=0.1"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; resume with: rloss train" in err
    assert f"--run-dir {run}" in err and "optim.lr=0.1" in err and err.rstrip().endswith(
        "--resume")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_row18_segment_scale_and_lr(tmp_path, photo, capsys):
    image, scr = photo
    base = ["segment", str(image), "--scribbles", str(scr), "--out", str(tmp_path / "m.png"),
            "--quiet"]
    assert main([*base, "--scale", "0.01"]) == 2
    line = error_line(capsys)
    assert "--scale 0.01: too small for this 48x32 image" in line
    assert main([*base, "--scale", "1.5"]) == 2
    assert "--scale 1.5: want a number in (0, 1]" in error_line(capsys)
    assert main([*base, "--lr", "1e9", "--steps", "20"]) == 2
    line = error_line(capsys)
    assert "diverged" in line and "--lr" in line and not (tmp_path / "m.png").exists()


def test_row20_messages(tmp_path, photo, capsys, no_optimisation):
    image, scr = photo
    base = ["segment", str(image), "--out", str(tmp_path / "m.png")]
    assert main([*base, "--scribbles", str(scr), "--overlay", str(tmp_path / "x.bmp")]) == 2
    assert ".png or .jpg or .jpeg" in error_line(capsys)
    assert main([*base, "--scribbles", str(tmp_path)]) == 2  # a folder means batch mode
    assert "is a folder (batch mode), so --out names a folder" in error_line(capsys)
    run = tmp_path / "run1"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert "is a folder, want a checkpoint file" in error_line(capsys)


# --------------------------------------------------------------------------- commands not probed


def test_visualize_gradient_refuses_its_input(tmp_path, photo, capsys):
    image, scr = photo
    before = digest(image)
    assert main(["visualize-gradient", "--image", str(image), "--scribbles", str(scr), "--out",
                 str(image), "--overwrite"]) == 2
    assert "is the input" in error_line(capsys) and digest(image) == before
    assert main(["visualize-gradient", "--image", str(image), "--scribbles", str(scr), "--out",
                 str(tmp_path / "g.png"), "--device", "banana"]) == 2
    assert "banana" in error_line(capsys)


def test_demo_and_data_commands_check_their_folders(tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("keep")
    assert main(["demo", "--out", str(afile), "--quick"]) == 2
    assert "is a file; want a folder" in error_line(capsys)
    assert main(["data", "synthetic", "--out", str(afile)]) == 2
    assert "is a file; want a folder" in error_line(capsys)
    assert main(["data", "voc", "--root", str(afile)]) == 2
    assert "is a file" in error_line(capsys)
    assert afile.read_text() == "keep"


def test_predict_checks_its_inputs_up_front(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"w")
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(g16)
    assert main(["predict", "--checkpoint", str(ckpt), str(g16), "--out",
                 str(tmp_path / "out")]) == 2
    assert "convert it to 8 bits" in error_line(capsys)
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "nope.png"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "nope.png: file or folder not found" in error_line(capsys)


def test_convert_file_never_replaces_its_inputs(tmp_path):
    from rloss.data.scribbles import convert_file

    image = tmp_path / "a.png"
    write_image(image, np.zeros((8, 8, 3), np.uint8))
    src = tmp_path / "a.txt"
    src.write_text("0,1,1,5,5\n")
    before = digest(image)
    res = convert_file(src, image, image=image, overwrite=True)
    assert res.status == "failed" and "refusing to overwrite an input" in res.message
    assert digest(image) == before


def test_segment_crf_weight_must_be_non_negative(tmp_path, photo, capsys):
    image, scr = photo
    with pytest.raises(SystemExit):
        main(["segment", str(image), "--scribbles", str(scr), "--out", str(tmp_path / "m.png"),
              "--crf-weight", "-1"])
    assert "--crf-weight: want a number >= 0" in capsys.readouterr().err


def test_segment_says_a_16bit_image_was_rescaled(tmp_path, photo, capsys):
    _, scr = photo
    g16 = tmp_path / "g16.png"
    Image.fromarray((np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)).save(g16)
    assert main(["segment", str(g16), "--scribbles", str(scr), "--out", str(tmp_path / "m.png"),
                 "--steps", "2", "--quiet"]) == 0
    assert "16-bit grey image" in capsys.readouterr().err


def test_ctrl_c_during_convert_says_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    import rloss.data.scribbles

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rloss.data.scribbles, "convert_directory", interrupted)
    argv = ["scribbles", "convert", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "rloss scribbles convert: interrupted; resume with: rloss scribbles convert" in err


def test_ctrl_c_during_demo_prints_the_resume_command(tmp_path, capsys, monkeypatch):
    import rloss.demo

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rloss.demo, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick"]) == 130
    assert f"resume with: rloss demo --out {tmp_path / 'd'} --quick" in capsys.readouterr().err


def test_train_eval_predict_check_their_paths(tmp_path, capsys):
    recipe = REPO / "configs" / "synthetic" / "deeplabv3plus_mobilenet_pce.yaml"
    afile = tmp_path / "f"
    afile.write_text("keep")
    assert main(["train", str(recipe), "--run-dir", str(afile)]) == 2
    assert "--run-dir" in error_line(capsys) and afile.read_text() == "keep"
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"w")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(afile)]) == 2
    assert "--data" in error_line(capsys)
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt: file not found" in error_line(capsys)
    img = tmp_path / "a.png"
    write_image(img, np.zeros((4, 4, 3), np.uint8))
    assert main(["predict", "--checkpoint", str(ckpt), str(img), "--out", str(afile)]) == 2
    assert "is a file; want a folder" in error_line(capsys)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"old")
    assert main(["predict", "--checkpoint", str(ckpt), str(img), "--out",
                 str(tmp_path / "out")]) == 2
    assert "pass --overwrite" in error_line(capsys)
    assert (tmp_path / "out" / "a.png").read_bytes() == b"old"


def test_one_line_keeps_the_message_of_a_dataloader_worker_error():
    from rloss.commands._common import one_line
    from rloss.data.io import DataError

    err = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                    "(most recent call last):\n  File \"x.py\", line 1\n"
                    "rloss.data.io.DataError: s0.png: scribble holds value(s) 9\n")
    assert one_line(err) == "s0.png: scribble holds value(s) 9"
    assert one_line(ValueError("a\nb")) == "a; b"

