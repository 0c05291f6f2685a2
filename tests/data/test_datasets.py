"""SegmentationFolder, VOCScribble, the generated demo data, and label I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rloss.cli import main as cli_main
from rloss.data import SegmentationFolder, SyntheticScenes, VOCScribble, generate_synthetic
from rloss.data.demo_scenes import SYNTHETIC_CLASSES
from rloss.data.io import DataError, read_image, read_label, write_image, write_label
from rloss.data.transforms import SAMPLE_KEYS, TrainTransform
from rloss.data.voc import check_voc_tree, write_id_lists


# --------------------------------------------------------------------------- io
def test_label_round_trip_palette_and_index(tmp_path):
    lab = np.arange(256, dtype=np.uint8).reshape(16, 16)
    write_label(tmp_path / "a.png", lab)
    assert Image.open(tmp_path / "a.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "a.png"), lab)
    Image.fromarray(lab).save(tmp_path / "l.png")  # plain index PNG
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), lab)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left


def test_label_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.png.*not found"):
        read_label(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"bad.png"):
        read_label(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb.png.*mode 'RGB'"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"label"):
        write_label(tmp_path / "x.png", np.full((2, 2), 300))


def test_corrupt_jpeg_named(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    write_image(tmp_path / "a.jpg", img)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t.jpg"):
        read_image(tmp_path / "t.jpg")


# --------------------------------------------------------------------------- folder
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 30), (24, 24), (18, 40)]):
        write_image(root / "images" / f"s{i}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
        write_label(root / "labels" / f"s{i}.png", rng.integers(0, 3, (h, w)).astype(np.uint8))
        sc = np.full((h, w), 255, np.uint8)
        sc[5, 2:8] = 1
        write_label(root / "scribbles" / f"s{i}.png", sc)
    (root / "classes.txt").write_text("background\na\nb\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("s0\ns2\n")
    (root / "splits" / "val.txt").write_text("s1\n")
    return root


def test_segmentation_folder(folder):
    ds = SegmentationFolder(folder)
    assert len(ds) == 3 and ds.ids == ["s0", "s1", "s2"] and ds.num_classes == 3
    s = ds[2]
    assert tuple(s) == SAMPLE_KEYS and s["name"] == "s2"
    assert s["image"].shape == (3, 18, 40)
    np.testing.assert_array_equal(s["mask"].numpy(), read_label(folder / "labels" / "s2.png"))
    assert s["scribble"][5, 2] == 1 and s["scribble"][0, 0] == 255
    train = SegmentationFolder(folder, "train", transform=TrainTransform(16))
    assert train.ids == ["s0", "s2"]
    batch = next(iter(DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert SegmentationFolder(folder, "val").ids == ["s1"]


def test_segmentation_folder_optional_and_missing(folder):
    import shutil

    shutil.rmtree(folder / "scribbles")
    s = SegmentationFolder(folder)[0]
    assert torch.all(s["scribble"] == 255)
    (folder / "labels" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"labels: 1 of 3 labels files missing \(s1\)"):
        SegmentationFolder(folder)
    with pytest.raises(DataError, match=r"test.txt"):
        SegmentationFolder(folder, "test")
    with pytest.raises(DataError, match=r"images"):
        SegmentationFolder(folder / "nothing")


def test_segmentation_folder_size_mismatch(folder):
    write_label(folder / "labels" / "s0.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"s0.png.*mask is 5x5"):
        SegmentationFolder(folder)[0]


# --------------------------------------------------------------------------- VOC
@pytest.fixture
def voc_tree(tmp_path):
    """A tiny rloss-layout VOC tree: JPEGs, PNG masks, scribbles, VOC and SBD id lists."""
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    ids = [f"2007_00000{i}" for i in range(6)]
    for k, i in enumerate(ids):
        h, w = 30 + k, 40
        write_image(root / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (h, w, 3), np.uint8))
        m = rng.integers(0, 21, (h, w)).astype(np.uint8)
        m[0] = 255
        write_label(root / "SegmentationClassAug" / f"{i}.png", m)
        if k < 4:
            sc = np.full((h, w), 255, np.uint8)
            sc[10, 5:20] = m[10, 5]
            write_label(root / "pascal_2012_scribble" / f"{i}.png", sc)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000000\n2007_000001\n")
    (lists / "val.txt").write_text("2007_000004\n2007_000005\n")
    (root / "SBD").mkdir()
    (root / "SBD" / "train.txt").write_text("2007_000002\n2007_000004\n")
    (root / "SBD" / "val.txt").write_text("2007_000003\n")
    return root


def test_voc_id_lists_and_dataset(voc_tree):
    assert not check_voc_tree(voc_tree).ok
    written = write_id_lists(voc_tree)
    assert written == {"val": 2, "train_aug": 4}  # SBD ∪ VOC train − VOC val
    report = check_voc_tree(voc_tree)
    assert report.ok, report.format()
    assert "official list has 10582" in report.format()
    train = VOCScribble(voc_tree, "train")
    assert train.ids == ["2007_000000", "2007_000001", "2007_000002", "2007_000003"]
    s = train[1]
    assert tuple(s) == SAMPLE_KEYS and s["image"].shape == (3, 31, 40)
    assert torch.all(s["mask"][0] == 255) and torch.any(s["scribble"] != 255)
    val = VOCScribble(voc_tree, "val")
    v = val[0]
    assert val.ids == ["2007_000004", "2007_000005"]
    assert torch.all(v["scribble"] == 255) and torch.any(v["mask"] != 255)
    assert val.num_classes == 21


def test_voc_rejects_values_outside_the_classes(voc_tree):
    write_id_lists(voc_tree)
    bad = np.full((31, 40), 255, np.uint8)
    bad[0, 0] = 21
    write_label(voc_tree / "pascal_2012_scribble" / "2007_000001.png", bad)
    train = VOCScribble(voc_tree, "train")
    with pytest.raises(DataError, match=r"2007_000001\.png: scribble holds value\(s\) 21"):
        train[1]


def test_voc_reports_missing(voc_tree):
    write_id_lists(voc_tree)
    (voc_tree / "pascal_2012_scribble" / "2007_000002.png").unlink()
    (voc_tree / "JPEGImages" / "2007_000005.jpg").unlink()
    report = check_voc_tree(voc_tree)
    assert not report.ok
    assert report.missing_files["pascal_2012_scribble"] == (1, ["2007_000002"])
    assert report.missing_files["JPEGImages"] == (1, ["2007_000005"])
    with pytest.raises(DataError, match=r"pascal_2012_scribble: 1 of 4 train files missing"):
        VOCScribble(voc_tree, "train")
    with pytest.raises(DataError, match=r"JPEGImages: 1 of 2 val files missing"):
        VOCScribble(voc_tree, "val")


def test_voc_train_aug_from_segmentation_class_aug(voc_tree, capsys):
    import shutil

    shutil.rmtree(voc_tree / "SBD")
    assert write_id_lists(voc_tree)["train_aug"] == 4
    rc = cli_main(["data", "voc", "--root", str(voc_tree)])
    assert rc == 0 and "complete" in capsys.readouterr().out
    shutil.rmtree(voc_tree / "pascal_2012_scribble")
    assert cli_main(["data", "voc", "--root", str(voc_tree)]) == 1
    assert "missing folder: pascal_2012_scribble/" in capsys.readouterr().out


# --------------------------------------------------------------------------- synthetic
def test_synthetic_scenes_deterministic_and_contract():
    ds = SyntheticScenes(4, (64, 80), seed=1)
    a, b = ds[2], SyntheticScenes(4, (64, 80), seed=1)[2]
    assert tuple(a) == SAMPLE_KEYS
    assert a["image"].shape == (3, 64, 80)
    for k in ("image_raw", "mask", "scribble"):
        torch.testing.assert_close(a[k], b[k])
    c = SyntheticScenes(4, (64, 80), seed=2)[2]
    assert not torch.equal(a["image_raw"], c["image_raw"])
    assert ds.num_classes == len(SYNTHETIC_CLASSES) == 5
    lab = a["scribble"] != 255
    assert torch.equal(a["scribble"][lab], a["mask"][lab])
    assert int(a["mask"].max()) < 5 and not torch.any(a["mask"] == 255)
    with pytest.raises(IndexError):
        ds[4]


def test_synthetic_is_hard_in_the_intended_ways():
    ds = SyntheticScenes(40, (128, 128), seed=0)
    fractions, colour_means = [], {c: [] for c in range(5)}
    edge_contrast = []
    for i in range(len(ds)):
        r = ds.load_raw(i)
        img, m, s = r["image"].astype(float), r["mask"], r["scribble"]
        fractions.append(np.mean(s != 255))
        for c in np.unique(m):
            colour_means[int(c)].append(img[m == c].mean(0))
        # colour edge at class boundaries: horizontal neighbours of different class
        diff = m[:, 1:] != m[:, :-1]
        if diff.any():
            edge_contrast.append(np.abs(img[:, 1:] - img[:, :-1]).sum(-1)[diff].mean())
    assert np.mean(fractions) == pytest.approx(0.03, rel=0.2)
    # boundaries are colour edges
    assert np.median(edge_contrast) > 60
    # classes are not separable by mean colour: every class spans a wide colour range
    for c in range(5):
        cm = np.asarray(colour_means[c])
        assert len(cm) >= 3, c
        assert np.ptp(cm, axis=0).max() > 80, c
    # scribbles mostly stay off class boundaries (thin parts may touch them)
    on_edge = labelled = 0
    for i in range(10):
        r = ds.load_raw(i)
        m = r["mask"]
        edge = np.zeros_like(m, bool)
        edge[:, 1:] |= m[:, 1:] != m[:, :-1]
        edge[:, :-1] |= m[:, 1:] != m[:, :-1]
        edge[1:] |= m[1:] != m[:-1]
        edge[:-1] |= m[1:] != m[:-1]
        on_edge += np.count_nonzero(r["scribble"][edge] != 255)
        labelled += np.count_nonzero(r["scribble"] != 255)
    assert on_edge < 0.05 * labelled


def test_generate_synthetic_layout_idempotent_atomic(tmp_path):
    root = tmp_path / "demo"
    out = generate_synthetic(root, num_train=6, num_val=3, size=(48, 64), seed=5, progress=False)
    assert out == root
    assert (root / "classes.txt").read_text().split() == list(SYNTHETIC_CLASSES)
    assert (root / "splits" / "train.txt").read_text().split() == [
        f"train_{i:05d}" for i in range(6)]
    assert len((root / "splits" / "val.txt").read_text().split()) == 3
    assert len(list((root / "images").glob("*.png"))) == 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the files equal the in-memory scenes
    ds = SegmentationFolder(root, "val")
    mem = SyntheticScenes(3, (48, 64), seed=5, split="val")
    for i in range(3):
        for k in ("image_raw", "mask", "scribble"):
            torch.testing.assert_close(ds[i][k], mem[i][k])
    # idempotent: same parameters -> nothing rewritten
    mtime = (root / "images" / "train_00000.png").stat().st_mtime_ns
    generate_synthetic(root, num_train=6, num_val=3, size=(48, 64), seed=5, progress=False)
    assert (root / "images" / "train_00000.png").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match=r"other parameters"):
        generate_synthetic(root, num_train=2, num_val=1, size=(48, 64), seed=5, progress=False)
    generate_synthetic(root, num_train=2, num_val=1, size=(48, 64), seed=5, overwrite=True,
                       progress=False)
    assert len(list((root / "images").glob("*.png"))) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"not a generated"):
        generate_synthetic(foreign, num_train=1, num_val=0, progress=False)
    assert (foreign / "precious.txt").read_text() == "keep"


def test_generate_synthetic_cli(tmp_path, capsys):
    # speed is a benchmark's business, not a test's (the machines are shared and noisy)
    rc = cli_main(["data", "synthetic", "--out", str(tmp_path / "d"), "--num-train", "40",
                   "--num-val", "0", "--no-progress"])
    assert rc == 0 and "ready" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 40


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    import os
    import stat

    from rloss.data.io import atomic_write_text

    old = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert out.read_text() == "{}\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["a.json"]  # no temporary left
