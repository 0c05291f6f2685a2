"""End to end on the real ACDC development subset: `rloss train` a few iterations of the CPU
pCE recipe and of the DenseCRF phase 2 from it, then `rloss eval --kind acdc` on two volumes
(patient 61, both frames)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rloss.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acdc_dev(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "acdc_dev"
    if not (root / "ACDC_training_slices").is_dir():
        pytest.skip(f"{root} is absent: the ACDC development subset ships only with CI")
    return root


@pytest.mark.slow
def test_train_then_eval_two_volumes(acdc_dev, tmp_path, capsys):
    common = ["--no-progress", f"data.root={acdc_dev}", "data.train_patients=21-22",
              "data.val_patients=61", "data.crop_size=64", "data.batch_size=4",
              "trainer.max_steps=3", "optim.total_iters=3", "trainer.threads=1"]
    phase1 = tmp_path / "pce"
    rc = main(["train", str(REPO / "configs/acdc_scribble/unet_pce_warmup_cpu.yaml"),
               "--run-dir", str(phase1), *common])
    assert rc == 0
    run = tmp_path / "run"
    rc = main(["train", str(REPO / "configs/acdc_scribble/unet_densecrf_cpu.yaml"),
               "--run-dir", str(run), *common, f"init_from={phase1 / 'model.pt'}"])
    assert rc == 0
    assert (run / "model.pt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    done = json.loads((run / "metrics.json").read_text())
    assert done["status"] == "done" and done["global_step"] == 3
    out = tmp_path / "eval.json"
    rc = main(["eval", "--kind", "acdc", "--data", str(acdc_dev), "--split", "val",
               "--checkpoint", str(run / "model.pt"), "--out", str(out), "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["volumes"] == 2 and m["patients"] == [61] and m["size"] == 64
    assert all(r["name"].startswith("patient061_frame") for r in m["per_volume"])
    assert all(0.0 <= m["dice"][c] <= 1.0 for c in ("RV", "Myo", "LV"))
    assert "HD95 (voxel)" in capsys.readouterr().out
