"""Every ACDC recipe resolves; the size and DenseCRF recipes take a training step on tiny files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rloss.data import acdc
from rloss.train.api import train
from rloss.train.config import load_config


def _tiny_root(root: Path) -> Path:
    """Slices of patients 21-22 and the volume of patient 61 (20 x 18 px, random content)."""
    rng = np.random.default_rng(0)

    def arrays(shape):
        label = rng.integers(0, 4, shape).astype(np.uint8)
        scribble = np.where(rng.random(shape) < 0.1, label, 4).astype(np.uint16)
        return rng.random(shape, dtype=np.float32), label, scribble

    for name in ("patient021_frame01_slice_0", "patient021_frame01_slice_1",
                 "patient022_frame01_slice_0", "patient022_frame01_slice_1"):
        acdc.write_h5(root / acdc.SLICES_DIR / f"{name}.h5", *arrays((20, 18)))
    acdc.write_h5(root / acdc.VOLUMES_DIR / "patient061_frame01.h5", *arrays((2, 20, 18)))
    return root


RECIPES = Path(__file__).resolve().parents[2] / "configs" / "acdc_scribble"
NAMES = ["unet_pce", "unet_densecrf", "unet_ncut", "unet_size", "unet_full",
         "unet_pce_cpu", "unet_pce_warmup_cpu", "unet_densecrf_cpu", "unet_full_cpu"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_resolves(name, tmp_path):
    cfg = load_config(RECIPES / f"{name}.yaml", [f"data.root={tmp_path}"], check_paths=False)
    assert cfg["data"]["kind"] == "acdc" and cfg["model"]["arch"] == "unet2d"
    assert cfg["model"]["kwargs"]["in_channels"] == 1
    assert cfg["data"]["intensity_scale"] == 255.0
    assert cfg["classes"] == list(acdc.ACDC_CLASSES)
    gpu = not name.endswith("_cpu")
    assert cfg["data"]["crop_size"] == (256 if gpu else 128)
    if gpu:
        assert cfg["data"]["batch_size"] == 12 and cfg["optim"]["name"] == "sgd"
        assert cfg["optim"]["lr"] in (0.01, 0.005) and cfg["trainer"]["max_steps"] >= 30000


@pytest.mark.filterwarnings("ignore:.*absent from the folder")
@pytest.mark.parametrize("name, term", [("unet_size", "size"), ("unet_pce_cpu", None)])
def test_recipe_trains_a_step(name, term, tmp_path):
    root = _tiny_root(tmp_path / "data")
    cfg = load_config(RECIPES / f"{name}.yaml", [
        f"data.root={root}", "data.train_patients=21-22", "data.val_patients=61",
        "data.crop_size=16", "data.batch_size=4", "data.num_workers=0",
        "model.kwargs.channels=[4,8]", "trainer.max_steps=2", "optim.total_iters=2",
        "trainer.threads=1", "trainer.accelerator=cpu"])
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.metrics["global_step"] == 2
    logged = (tmp_path / "run" / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]
    if term is not None:
        assert f"train/{term}_epoch" in logged.split(",")
