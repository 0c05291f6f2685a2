"""Metrics, the run folder, resume safety, Ctrl-C and the framework-noise filter."""

from __future__ import annotations

import json
import logging
import signal
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("segmentation_models_pytorch")

import lightning.pytorch as pl

from rloss.cli import main as cli_main
from rloss.train import evaluation, metrics, module
from rloss.train.config import write_yaml_atomic
from rloss.train.fit import ResumeMismatchError, TrainingInterrupted, quiet_lightning, train
from rloss.train.metrics import ConfusionMatrix, object_iou, summarize
from rloss.train.run_dir import RunDir

from .test_train import tiny

pytestmark = pytest.mark.xdist_group("rloss-train")


# ------------------------------------------------------------------------------ metrics
def test_confusion_matrix_matches_a_bincount_reference():
    g = torch.Generator().manual_seed(0)
    k = 5
    pred = torch.randint(0, k, (3, 17, 19), generator=g)
    target = torch.randint(0, k + 2, (3, 17, 19), generator=g)  # k, k+1: out of range
    target[:, :3] = 255
    roi = (torch.rand(3, 17, 19, generator=g) > 0.2).float()
    cm = ConfusionMatrix(k)
    cm.update(pred[:2], target[:2], roi[:2])
    cm.update(pred[2:], target[2:], roi[2:])
    keep = (target < k) & (roi > 0)
    ref = torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    assert torch.equal(cm.compute(), ref)
    s = summarize(ref, [f"c{i}" for i in range(k)])
    tp = ref.diagonal().double()
    iou = tp / (ref.sum(0) + ref.sum(1) - ref.diagonal()).double()
    assert s["miou"] == pytest.approx(float(iou.mean()))
    assert s["pixel_acc"] == pytest.approx(float(tp.sum() / ref.sum()))
    assert s["pixels"] == int(keep.sum())
    with pytest.raises(ValueError, match="class_names"):
        summarize(ref, ["a"])
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_validation_and_eval_use_the_same_metrics_code():
    assert evaluation.ConfusionMatrix is metrics.ConfusionMatrix
    assert evaluation.summarize is module.summarize is metrics.summarize


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    s = summarize(cm, ["a", "b", "c"])
    assert np.isnan(s["per_class_iou"]["c"]) and s["per_class_iou"]["b"] == 0.0
    assert s["miou"] == pytest.approx((0.75 + 0.0) / 2)


def test_object_iou():
    pred = np.array([[0, 1], [2, 2]])
    truth = np.array([[0, 2], [0, 255]])
    assert object_iou([(pred, truth)]) == pytest.approx(1 / 2)
    assert object_iou([(np.zeros(3), np.zeros(3))]) is None


# ------------------------------------------------------------------------------ run dir
def test_run_dir_knows_its_files_and_status(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status() is None and not run.is_done() and run.load_history() == []
    assert run.csv_version(resuming=True) == "csv"
    run.write_metrics({"miou": float("nan")}, status="running", history=[{"epoch": 0}])
    assert json.loads(run.metrics_json.read_text())["miou"] is None
    assert run.status() == "running" and run.load_history() == [{"epoch": 0}]
    run.metrics_json.write_text("{broken")
    assert run.status() is None and run.load_history() == []
    with pytest.raises(ValueError, match="status"):
        run.write_metrics({}, status="finished")
    (run.logs / "csv").mkdir(parents=True)
    assert run.csv_version(resuming=True) == "csv-resume-1"
    run.write_config({"a": (1, 2)})
    assert run.saved_config() == {"a": [1, 2]}


# ------------------------------------------------------------------------------ resume
def _snapshot(root):
    return {
        p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    run = tmp_path_factory.mktemp("one_epoch")
    train(tiny(), run_dir=run, progress=False)
    return run


def test_resume_with_another_architecture_is_refused_before_touching_the_folder(
    one_epoch, tmp_path, capsys
):
    before = _snapshot(one_epoch)
    other = tiny("model.arch=unet", "trainer.max_epochs=2")
    with pytest.raises(ResumeMismatchError, match=r"model\.arch: deeplabv3plus -> unet") as info:
        train(other, run_dir=one_epoch, progress=False, resume=True)
    assert "\n" not in str(info.value)
    assert _snapshot(one_epoch) == before

    # the command as a user types it: one line, exit 2, nothing rewritten
    recipe = tmp_path / "other.yaml"
    raw = {k: v for k, v in other.items() if k != "classes"}
    write_yaml_atomic(raw, recipe)
    capsys.readouterr()
    code = cli_main(
        ["train", str(recipe), "--run-dir", str(one_epoch), "--resume", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "model.arch" in err and len(err.splitlines()) == 1, err
    assert _snapshot(one_epoch) == before


def test_resume_with_changed_hyper_parameters_warns_in_one_line(tmp_path, caplog):
    train(tiny(), run_dir=tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="rloss.train"):
        result = train(
            tiny("optim.lr=0.01", "trainer.max_epochs=2"),
            run_dir=tmp_path,
            progress=False,
            resume=True,
        )
    records = [r for r in caplog.records if r.name == "rloss.train"]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "optim.lr: 0.007 -> 0.01" in msg and "trainer.max_epochs: 1 -> 2" in msg
    assert "\n" not in msg
    assert result.metrics["epoch"] == 2 and RunDir(tmp_path).is_done()


# ------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_marks_the_run_interrupted_and_resume_validates_the_epoch(tmp_path, ctrl_c_ready):
    cfg = tiny("trainer.max_epochs=3")  # 2 steps per epoch

    class CtrlC(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, to this (the main) thread

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, run_dir=tmp_path, progress=False, callbacks=[CtrlC()])
    assert isinstance(info.value, KeyboardInterrupt) and info.value.run_dir == tmp_path
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning's SIG_IGN is undone
    run = RunDir(tmp_path)
    assert run.status() == "interrupted" and not run.is_done()
    assert [h["epoch"] for h in run.load_history()] == [0]

    result = train(cfg, run_dir=tmp_path, progress=False, resume=True)
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all("val/miou" in h for h in history), history  # epoch 1 validated after resume
    assert run.status() == "done" and result.metrics["global_step"] == 6


def test_cli_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    from rloss.train import api

    def interrupted(*args, run_dir, **kwargs):
        raise TrainingInterrupted(run_dir)

    monkeypatch.setattr(api, "train", interrupted)
    recipe = tmp_path / "r.yaml"
    write_yaml_atomic({"data": {"kind": "synthetic"}, "model": {"encoder_weights": None}}, recipe)
    assert cli_main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 130


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the run folder is a copy
def test_a_failed_checkpoint_write_leaves_last_ckpt_intact(one_epoch, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    real = pl.Trainer.save_checkpoint

    def crash(self, filepath, *args, **kwargs):
        real(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:  # a torn write of the file being saved
            f.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        train(tiny("trainer.max_epochs=2"), run_dir=run, progress=False, resume=True)
    assert last.read_bytes() == good
    torch.load(last, weights_only=False)


# ------------------------------------------------------------------------------ noise
def test_framework_noise_is_filtered_in_our_output_only(tmp_path, capfd):
    before = list(warnings.filters)
    train(tiny(), run_dir=tmp_path, progress=False)
    out = capfd.readouterr()
    assert "litlogger" not in out.err + out.out and "LeafSpec" not in out.err + out.out
    assert warnings.filters == before  # nothing left behind in the user's process
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        assert not logging.getLogger(name).filters
    with quiet_lightning(), pytest.warns(UserWarning, match="kept"):
        warnings.warn("kept", UserWarning, stacklevel=1)  # other warnings still pass


def test_old_module_signature_still_works_with_a_deprecation_warning():
    from rloss.train.module import SegmentationModule

    cfg = tiny()
    with pytest.warns(DeprecationWarning, match="from_recipe"):
        old = SegmentationModule(cfg, 3, ["a", "b", "c"])
    new = SegmentationModule.from_recipe(cfg, ["a", "b", "c"])
    assert old.optim == new.optim and old.target_key == new.target_key == "scribble"
    assert old.config == new.config and old.class_names == ["a", "b", "c"]
    assert set(old.model.state_dict()) == set(new.model.state_dict())


def test_eval_takes_a_run_folder(one_epoch, tmp_path):
    from rloss.train.evaluation import evaluate

    by_folder = evaluate(one_epoch, progress=False, device="cpu")
    by_file = evaluate(one_epoch / "model.pt", progress=False, device="cpu")
    assert by_folder["checkpoint"] == str(one_epoch / "model.pt")
    assert by_folder["miou"] == by_file["miou"]
    with pytest.raises(FileNotFoundError, match=r"holds neither model\.pt"):
        evaluate(tmp_path, progress=False)
