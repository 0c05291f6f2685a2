"""ACDC (WSL4MIS layout): patient ranges, folder checks, datasets, the data command, download.

Every file is a tiny HDF5 written by the tests in the published format.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rloss.cli import main
from rloss.constants import IGNORE_INDEX
from rloss.data import acdc
from rloss.data.download import DownloadError
from rloss.data.io import DataError


def _arrays(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random(shape, dtype=np.float32)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    scribble = np.full(shape, 4, np.uint16)
    flat = scribble.reshape(-1)
    flat[::10] = label.reshape(-1)[::10]  # 10% labelled, same classes as the mask
    return image, label, scribble


def make_root(root: Path, slice_patients=(21, 22), volume_patients=(61,), h=12, w=10, depth=3):
    """Two frames per patient, ``depth`` slices per frame; volumes of ``depth`` slices."""
    for p in slice_patients:
        for f in (1, 12):
            for s in range(depth):
                acdc.write_h5(root / acdc.SLICES_DIR / f"patient{p:03d}_frame{f:02d}_slice_{s}.h5",
                              *_arrays((h, w), seed=p * 100 + f * 10 + s))
    for p in volume_patients:
        for f in (1, 12):
            acdc.write_h5(root / acdc.VOLUMES_DIR / f"patient{p:03d}_frame{f:02d}.h5",
                          *_arrays((depth, h, w), seed=p + f))
    return root


# ------------------------------------------------------------------ patient ranges
def test_parse_patients():
    assert acdc.parse_patients("21-23,71, 5") == [5, 21, 22, 23, 71]
    assert acdc.parse_patients([61, "63-64"]) == [61, 63, 64]
    assert acdc.parse_patients(7) == [7]
    for bad in ("3-1", "a-b", "0-3", "", None, True):
        with pytest.raises(ValueError):
            acdc.parse_patients(bad)


def test_select_patients_warns_once_and_refuses_empty():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert acdc.select_patients([21, 22, 23], "21-22,90-92", "data.train_patients") == [21, 22]
    assert len(rec) == 1 and "90-92" in str(rec[0].message)
    with pytest.raises(DataError, match=r"data\.val_patients: none of the patients 61-70"):
        acdc.select_patients([21, 22], "61-70", "data.val_patients")


# ------------------------------------------------------------------ checking
def test_check_root_counts(tmp_path):
    make_root(tmp_path)
    rep = acdc.check_root(tmp_path)
    assert rep.slice_patients == [21, 22] and rep.volume_patients == [61]
    assert rep.slice_frames == 4 and rep.slice_files == 12
    assert rep.volume_frames == 2 and rep.volume_slices == 6
    # every 10th pixel of each file is scribbled: ceil(120 / 10) = 12 per 12 x 10 slice
    assert rep.pixels == 18 * 120 and rep.labelled == 18 * 12
    assert rep.labelled_fraction == pytest.approx(0.1)
    text = rep.format()
    assert "2 patients (21-22), 4 frames, 12 slices" in text and "10.00%" in text


def _write_raw(path: Path, **datasets):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        for k, v in datasets.items():
            fh.create_dataset(k, data=v)


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", r"missing dataset\(s\) \['scribble'\]"),
        ("shape", "shape mismatch between image/label/scribble"),
        ("scribble", r"scribble values outside 0..4: \[7\]"),
        ("nan", r"image has 1 non-finite value"),
        ("label", r"label values outside 0..3: \[9\]"),
        ("garbage", "not a readable HDF5 file"),
    ],
)
def test_malformed_file_named(tmp_path, kind, match, capsys):
    make_root(tmp_path)
    img, lab, scr = _arrays((12, 10))
    bad = tmp_path / acdc.SLICES_DIR / "patient030_frame01_slice_0.h5"
    if kind == "missing":
        _write_raw(bad, image=img, label=lab)
    elif kind == "shape":
        _write_raw(bad, image=img, label=lab, scribble=scr[:, :9])
    elif kind == "scribble":
        scr[3, 3] = 7
        _write_raw(bad, image=img, label=lab, scribble=scr)
    elif kind == "nan":
        img[1, 1] = np.nan
        _write_raw(bad, image=img, label=lab, scribble=scr)
    elif kind == "label":
        lab[0, 0] = 9
        _write_raw(bad, image=img, label=lab, scribble=scr)
    else:
        bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=match) as err:
        acdc.check_root(tmp_path)
    assert str(bad) in str(err.value)
    # the command: exit status 2, one line naming the file
    assert main(["data", "acdc", "--root", str(tmp_path), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert lines[0].startswith("rloss data acdc: error")


def test_huge_declared_shape_is_refused_before_reading(tmp_path, capsys):
    # an untrusted file may declare a huge dataset that costs nothing on disk (chunked,
    # never written): its shape is bounded before any array is read
    make_root(tmp_path)
    bad = tmp_path / acdc.SLICES_DIR / "patient030_frame01_slice_0.h5"
    with h5py.File(bad, "w") as fh:
        for key, dtype in (("image", "f4"), ("label", "u1"), ("scribble", "u2")):
            fh.create_dataset(key, shape=(200_000, 200_000), dtype=dtype, chunks=(64, 64))
    assert bad.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match=r"more than the limit"):
        acdc.check_root(tmp_path)
    assert main(["data", "acdc", "--root", str(tmp_path), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "more than the limit" in lines[0]


def test_volume_must_be_3d(tmp_path):
    _write_raw(tmp_path / acdc.VOLUMES_DIR / "patient061_frame01.h5", *(), **dict(
        zip(("image", "label", "scribble"), _arrays((12, 10)))))
    with pytest.raises(DataError, match="want 3-D"):
        acdc.check_root(tmp_path)


def test_command_ok_and_bad_root(tmp_path, capsys):
    make_root(tmp_path)
    assert main(["data", "acdc", "--root", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "ACDC_training_volumes: 1 patients (61), 2 volumes, 6 slices" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "acdc", "--root", str(empty), "--no-progress"]) == 2
    assert "neither ACDC_training_slices/" in capsys.readouterr().err


# ------------------------------------------------------------------ datasets
def test_slices_dataset_contract(tmp_path):
    make_root(tmp_path)
    ds = acdc.AcdcSlices(tmp_path, "22", size=16, intensity_scale=255.0)
    assert len(ds) == 6 and ds.patients == [22]
    s = ds[0]
    assert list(s) == ["image", "image_raw", "scribble", "mask", "roi", "name"]
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert torch.allclose(s["image_raw"], s["image"] * 255.0)
    assert s["scribble"].dtype == torch.int64 and s["mask"].shape == (16, 16)
    assert set(s["scribble"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert (s["scribble"] == IGNORE_INDEX).any() and not (s["scribble"] == 4).any()
    assert s["name"] == "patient022_frame01_slice_0"
    # native size, exact values: 4 -> 255, others kept
    raw = acdc.AcdcSlices(tmp_path, "21", size=None, intensity_scale=1.0)[0]
    img, lab, scr = _arrays((12, 10), seed=21 * 100 + 10)
    want = np.where(scr == 4, IGNORE_INDEX, scr)
    assert np.array_equal(raw["scribble"].numpy(), want)
    assert np.array_equal(raw["mask"].numpy(), lab)
    assert np.allclose(raw["image_raw"][0].numpy(), img)


def test_slices_lazy_reading(tmp_path):
    """Construction only lists names; a corrupt file is found when its item is read."""
    make_root(tmp_path)
    (tmp_path / acdc.SLICES_DIR / "patient022_frame01_slice_0.h5").write_bytes(b"junk")
    ds = acdc.AcdcSlices(tmp_path, "21-22", size=8)
    ds[len(ds) - 1]  # another file reads fine
    with pytest.raises(DataError, match=r"patient022_frame01_slice_0\.h5"):
        ds[6]


def test_augment_rotation_keeps_labels_and_marks_roi():
    g = torch.Generator().manual_seed(0)
    aug = acdc.AcdcAugment(rot_flip=1.0, rotate=1.0, max_degrees=30.0, generator=g)
    img, lab, scr = _arrays((32, 32))
    s = acdc.make_sample(img, scr, lab, "x", (32, 32), 255.0)
    out = acdc.finish(aug(s))
    assert out["image"].shape == (1, 32, 32)
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert set(out["roi"].unique().tolist()) <= {0.0, 1.0}
    assert (out["roi"] == 0).any()  # corners left the image
    assert bool((out["mask"][out["roi"] == 0] == IGNORE_INDEX).all())
    # rotation off, rot_flip on: a permutation of the pixels
    aug2 = acdc.AcdcAugment(rot_flip=1.0, rotate=0.0, generator=g)
    out2 = aug2(acdc.make_sample(img, scr, lab, "x", None, 1.0))
    assert sorted(out2["mask"].flatten().tolist()) == sorted(lab.flatten().tolist())


def test_volumes_and_volume_slices(tmp_path):
    make_root(tmp_path, volume_patients=(61, 62))
    with pytest.warns(UserWarning, match="8 listed patient.*63-70"):
        vols = acdc.AcdcVolumes(tmp_path, "61-70")
    assert len(vols) == 4
    v = vols[0]
    assert v["image"].shape == (3, 12, 10) and v["label"].dtype == torch.int64
    assert v["spacing"] is None and v["patient"] == 61 and v["frame"] == 1
    vs = acdc.AcdcVolumeSlices(tmp_path, "62", size=16)
    assert len(vs) == 6 and vs[0]["image"].shape == (1, 16, 16)
    assert vs[5]["name"] == "patient062_frame12_slice_2"


def test_build_from_recipe_section(tmp_path):
    make_root(tmp_path)
    data = {"root": str(tmp_path), "train_patients": "21", "val_patients": None,
            "crop_size": 8, "flip": True, "rotate": 0.5, "intensity_scale": 255.0}
    train = acdc.build_acdc_dataset(data, "train")
    assert len(train) == 6 and train[0]["image"].shape == (1, 8, 8)
    with pytest.warns(UserWarning, match="absent from the folder"):
        val = acdc.build_acdc_dataset(data, "val")  # default fold 1: 61-70
    assert len(val) == 6


def test_recipe_dispatch(tmp_path):
    from rloss.train.config import load_config
    from rloss.train.datamodule import SegmentationDataModule

    make_root(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs/acdc_scribble/unet_densecrf_cpu.yaml",
                      [f"data.root={tmp_path}", "data.train_patients=21-22"], check_paths=False)
    dm = SegmentationDataModule(cfg["data"])
    with pytest.warns(UserWarning, match="absent from the folder"):
        assert len(dm.val_dataset) == 6
    assert dm.classes == list(acdc.ACDC_CLASSES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (12, 1, 128, 128)
    assert float(batch["image_raw"].max()) > 1.0  # intensity_scale 255 from the recipe


# ------------------------------------------------------------------ download
def _git_repo(tmp_path: Path, files_root: Path) -> str:
    repo = tmp_path / "wsl4mis"
    shutil.copytree(files_root, repo / "data" / "ACDC")
    (repo / "README.md").write_text("not data\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "data"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)
    return f"file://{repo}"


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_download_from_local_git_repo(tmp_path, capsys):
    url = _git_repo(tmp_path, make_root(tmp_path / "src"))
    dest = tmp_path / "dest"
    assert main(["data", "acdc", "--root", str(dest), "--download", "--url", url,
                 "--no-progress"]) == 0
    assert "2 patients (21-22)" in capsys.readouterr().out
    assert not (dest / ".acdc-download").exists()
    assert sorted(p.name for p in dest.iterdir()) == [acdc.SLICES_DIR, acdc.VOLUMES_DIR]
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*.h5")}
    for p, data in before.items():
        assert (dest / p.relative_to(tmp_path / "src")).read_bytes() == data
    # present already: nothing fetched again, just checked
    assert acdc.download_acdc(dest, url="file:///nonexistent", progress=False).slice_files == 12


@needs_git
def test_download_resumes_and_refuses_bad_files(tmp_path):
    src = make_root(tmp_path / "src")
    (src / acdc.SLICES_DIR / "patient021_frame01_slice_0.h5").write_bytes(b"junk")
    url = _git_repo(tmp_path, src)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"patient021_frame01_slice_0\.h5"):
        acdc.download_acdc(dest, url=url, progress=False)
    assert not (dest / acdc.SLICES_DIR).exists()  # nothing moved into place
    assert (dest / ".acdc-download" / "repo" / ".git").is_dir()  # kept for the next call


def test_download_offline_says_what_to_do(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    with pytest.raises(DownloadError, match="Offline\\? On a machine with internet"):
        acdc.download_acdc(tmp_path / "d", url=f"file://{tmp_path}/no-such-repo",
                           progress=False)
