"""Mean-field refinement of volumes (N, C, D, H, W) with voxel spacing, and the ACDC
``--crf 2d|3d`` evaluation path built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rloss.meanfield import MeanFieldCRF, meanfield_refine
from rloss.train import volume_eval as ve

BACKENDS = ("exact", "numba", "torch")


def _toy_volume(d=4, h=12, w=12, k=3, seed=0, noise=1.2):
    """Three bands along x with their own intensity, constant along z; noisy unaries."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(1, d, h, w, dtype=torch.long)
    gt[..., w // 3:] = 1
    gt[..., 2 * w // 3:] = 2
    levels = torch.tensor([30.0, 130.0, 230.0])
    image = levels[gt][:, None] + 5 * torch.randn(1, 1, d, h, w, generator=g)
    onehot = torch.nn.functional.one_hot(gt, k).movedim(-1, 1).float()
    probs = (1.5 * onehot + noise * torch.randn(1, k, d, h, w, generator=g)).softmax(1)
    return image.clamp(0, 255), probs, gt


@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_refinement_improves_a_noisy_volume(backend):
    image, probs, gt = _toy_volume()
    before = float((probs.argmax(1) == gt).float().mean())
    q = meanfield_refine(image, probs, num_iterations=5, sigma_xy=6.0, spacing=(2.0, 1.0, 1.0),
                         backend=backend)
    after = float((q.argmax(1) == gt).float().mean())
    assert q.shape == probs.shape
    assert before < 0.85 and after > 0.95
    torch.testing.assert_close(q.sum(1), torch.ones(gt.shape))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_lattice_refinement_close_to_exact(backend):
    image, probs, _ = _toy_volume(seed=1)
    kw = dict(num_iterations=3, sigma_xy=4.0, spacing=(3.0, 1.0, 1.0))
    q = meanfield_refine(image, probs, backend=backend, **kw)
    ex = meanfield_refine(image, probs, backend="exact", **kw)
    assert float((q - ex).abs().max()) < 0.1
    assert float((q.argmax(1) == ex.argmax(1)).float().mean()) > 0.97


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_slice_volume_is_refined_as_its_slice(backend):
    image, probs, _ = _toy_volume(d=1, seed=2)
    q3 = meanfield_refine(image, probs, spacing=(9.0, 1.0, 1.0), backend=backend)
    q2 = meanfield_refine(image[:, :, 0], probs[:, :, 0], backend=backend)
    assert torch.equal(q3[:, :, 0], q2)


def test_far_apart_slices_are_refined_as_2d_slices():
    """With a huge slice spacing the exact 3-D kernel has no mass between slices: 3-D
    refinement equals slice-wise 2-D refinement (slices as a batch)."""
    image, probs, _ = _toy_volume(d=3, seed=3)
    q3 = meanfield_refine(image, probs, spacing=(1e4, 1.0, 1.0), backend="exact")
    q2 = meanfield_refine(image[0].movedim(1, 0), probs[0].movedim(1, 0), backend="exact")
    torch.testing.assert_close(q3[0].movedim(1, 0), q2, rtol=1e-6, atol=1e-7)
    # and with neighbouring slices the volume refinement differs from the slice-wise one
    near = meanfield_refine(image, probs, spacing=(1.0, 1.0, 1.0), backend="exact")
    assert float((near[0].movedim(1, 0) - q2).abs().max()) > 1e-4


def test_spacing_scales_positions():
    """(sd, sh, sw) with sigma s equals voxel units with sigma s/spacing when isotropic."""
    image, probs, _ = _toy_volume(d=3, seed=4)
    a = meanfield_refine(image, probs, sigma_xy=6.0, smoothness_sigma=3.0,
                         spacing=(2.0, 2.0, 2.0), backend="exact")
    b = meanfield_refine(image, probs, sigma_xy=3.0, smoothness_sigma=1.5, backend="exact")
    torch.testing.assert_close(a, b)


def test_module_and_bad_volume_inputs():
    image, probs, _ = _toy_volume(d=2)
    m = MeanFieldCRF(num_iterations=2, spacing=(3.0, 1.0, 1.0), backend="exact")
    torch.testing.assert_close(m(image, probs), meanfield_refine(
        image, probs, num_iterations=2, spacing=(3.0, 1.0, 1.0), backend="exact"))
    with pytest.raises(ValueError, match=r"probs is 4-D .* but image is 5-D"):
        meanfield_refine(image, probs[:, :, 0])
    with pytest.raises(ValueError, match=r"spacing must have 3 values"):
        meanfield_refine(image, probs, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing\[0\] must be a finite positive"):
        meanfield_refine(image, probs, spacing=(math.inf, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing\[1\]"):
        MeanFieldCRF(spacing=(1.0, -1.0, 1.0))
    bad = image.clone()
    bad[0, 0, 1, 1, 1] = math.nan
    with pytest.raises(ValueError, match="image contains NaN"):
        meanfield_refine(bad, probs)


# ----------------------------------------------------------------------------- ACDC path


def test_refine_volume_modes():
    image, probs, _ = _toy_volume(d=3, seed=5)
    img, p = image[0, 0], probs[0]  # (D, H, W), (K, D, H, W)
    q2 = ve.refine_volume(img, p, "2d", {"sigma_xy": 5.0}, backend="exact")
    want2 = meanfield_refine(img[:, None], p.movedim(1, 0).contiguous(), backend="exact",
                             **{**{k: v for k, v in ve.ACDC_CRF.items() if k != "slice_spacing"},
                                "num_iterations": 5, "sigma_xy": 5.0})
    torch.testing.assert_close(q2, want2.movedim(0, 1))
    q3 = ve.refine_volume(img, p, "3d", {"sigma_xy": 5.0, "slice_spacing": 2.0},
                          backend="exact")
    kw = {k: v for k, v in ve.ACDC_CRF.items() if k != "slice_spacing"}
    want3 = meanfield_refine(img[None, None], p[None], backend="exact",
                             spacing=(2.0, 1.0, 1.0), **{**kw, "num_iterations": 5,
                                                         "sigma_xy": 5.0})
    torch.testing.assert_close(q3, want3[0])
    assert ve.crf_spacing({}, (10.0, 1.4, 1.4)) == (10.0, 1.4, 1.4)
    with pytest.raises(ValueError, match="crf: expected one of"):
        ve.refine_volume(img, p, "4d")
    with pytest.raises(ValueError, match="unknown key"):
        ve.refine_volume(img, p, "3d", {"sigma": 1.0})
    with pytest.raises(ValueError, match="must match"):
        ve.refine_volume(img[:2], p, "3d")


class _Noisy(torch.nn.Module):
    """Logits from the image's three intensity levels plus fixed speckle noise."""

    def forward(self, x):
        g = torch.Generator().manual_seed(int(x.shape[-1]))
        k = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
        logits = -40.0 * (x - k) ** 2
        return logits + 1.5 * torch.randn(logits.shape, generator=g)


def test_evaluate_volumes_with_crf(tmp_path):
    from rloss.data import acdc

    lab = np.zeros((3, 16, 16), np.uint8)
    lab[:, 3:13, 2:6] = 1
    lab[:, 3:13, 6:10] = 2
    lab[:, 3:13, 10:14] = 3
    img = np.choose(lab, [0.1, 0.3, 0.6, 0.9]).astype(np.float32)
    acdc.write_h5(tmp_path / acdc.VOLUMES_DIR / "patient061_frame01.h5", img, lab,
                  np.full(lab.shape, 4, np.uint16))

    class FourClass(torch.nn.Module):
        def forward(self, x):
            g = torch.Generator().manual_seed(0)
            k = torch.tensor([0.1, 0.3, 0.6, 0.9]).view(1, 4, 1, 1)
            return -60.0 * (x - k) ** 2 + 2.0 * torch.randn(x.shape[0], 4, *x.shape[2:],
                                                            generator=g)

    vols = acdc.AcdcVolumes(tmp_path, "61")
    plain = ve.evaluate_volumes(FourClass(), vols, None, progress=False)
    params = {"sigma_xy": 3.0, "appearance_weight": 5.0, "slice_spacing": 1.0}
    for mode in ("2d", "3d"):
        res = ve.evaluate_volumes(FourClass(), vols, None, progress=False, crf=mode,
                                  crf_params=params)
        assert res["crf"] == mode and res["crf_params"]["sigma_xy"] == 3.0
        assert res["mean_dice"] > plain["mean_dice"]
    assert "mean-field CRF 3d" in ve.format_table(res)
    with pytest.raises(ValueError, match="crf: expected None or one of"):
        ve.evaluate_volumes(FourClass(), vols, None, progress=False, crf="yes")


def test_eval_command_crf_2d_and_3d(tmp_path, capsys):
    import json

    from tests.train.test_volume_eval import _save_run, _volume

    from rloss.cli import main
    from rloss.data import acdc

    lab = _volume()
    acdc.write_h5(tmp_path / "data" / acdc.VOLUMES_DIR / "patient061_frame01.h5",
                  lab.astype(np.float32) / 3.0, lab, np.full(lab.shape, 4, np.uint16))
    ckpt = _save_run(tmp_path, tmp_path / "data")
    base = ["eval", "--kind", "acdc", "--data", str(tmp_path / "data"), "--split", "val",
            "--checkpoint", str(ckpt), "--no-progress", "--device", "cpu"]
    for mode in ("2d", "3d"):
        out = tmp_path / f"{mode}.json"
        assert main([*base, "--crf", mode, "--crf-param", "sigma_xy=4", "--out", str(out)]) == 0
        assert f"mean-field CRF {mode}" in capsys.readouterr().out
        m = json.loads(out.read_text())
        assert m["crf"] == mode and m["crf_params"]["sigma_xy"] == 4.0
    # a bare --crf is slice-wise
    out = tmp_path / "bare.json"
    assert main([*base, "--crf", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["crf"] == "2d"
    capsys.readouterr()
    assert main([*base, "--crf", "3d", "--crf-param", "sigma=3"]) == 2
    assert "--crf-param 'sigma=3'" in capsys.readouterr().err
    assert main([*base, "--crf-param", "sigma_xy=3"]) == 2
    assert "needs --crf" in capsys.readouterr().err
