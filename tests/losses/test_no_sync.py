"""The pairwise losses and the torch lattice's filtering never synchronise an accelerator.

CPU-only machines cannot observe CUDA syncs, so the loss runs on the ``meta``
device: meta tensors have shapes but no values, and every host read
(``.item()``, ``bool()``, ``float()``, ``.tolist()``, ``.cpu()``, ``.numpy()``)
raises on them. On top of that, the forbidden conversions are patched to fail
with a clear message for any non-CPU tensor. Lattice *construction* on the
torch backend syncs by design (twice, documented in ``rloss.lattice._torch``:
validation/key ranges and the vertex count after its one sort), so these tests
substitute a prebuilt lattice for it. Where CUDA exists, the same loss runs
under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch

from rloss.lattice import _torch
from rloss.losses import _checks, densecrf_loss, ncut_loss

META = torch.device("meta")
#: Tensor methods that read values back to the host.
FORBIDDEN = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Make every host read of a non-CPU tensor fail with the method's name."""
    for name in FORBIDDEN:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if self.device.type != "cpu":
                raise AssertionError(f"host sync: Tensor.{_name}() on a {self.device} tensor")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def _meta_lattice(n: int, p: int, d: int, m: int) -> _torch.TorchLattice:
    """A torch-backend lattice whose tensors live on the meta device (M vertices)."""
    return _torch.TorchLattice(
        batch=n,
        num_pixels=p,
        dim=d,
        vertex=torch.empty(n * p, d + 1, dtype=torch.int32, device=META),
        weight=torch.empty(n * p, d + 1, dtype=torch.float32, device=META),
        neighbours=torch.empty(d + 1, 2, m, dtype=torch.int32, device=META),
        num_vertices=m,
        packed=True,
    )


@pytest.fixture
def meta_build(monkeypatch):
    """Replace the torch backend's (syncing) construction by a meta lattice."""

    def build(features: torch.Tensor, options: object = None) -> _torch.TorchLattice:
        n, p, d = features.shape
        assert features.device == META
        return _meta_lattice(n, p, d, m=3 * p)

    monkeypatch.setattr(_torch, "build", build)



def test_torch_lattice_apply_is_sync_free(forbid_host_reads):
    lat = _meta_lattice(2, 30, 5, m=70)
    for transpose in (False, True):
        out = lat.apply(torch.empty(2, 4, 30, device=META), transpose=transpose)
        assert out.shape == (2, 4, 30) and out.device == META
    for grad_scale in (None, 0.5):
        value, volume, grad, _ = lat.quadratic_form(
            torch.empty(2, 4, 30, device=META), torch.empty(2, 30, device=META), True, grad_scale
        )
        assert value.shape == volume.shape == (2,)
        assert grad is None if grad_scale is None else grad.shape == (2, 4, 30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_value_checks_skipped_off_cpu(forbid_host_reads, dtype):
    probs = torch.empty(2, 3, 8, 9, dtype=dtype, device=META)
    image = torch.empty(2, 3, 8, 9, dtype=dtype, device=META)
    roi = _checks.check_roi(torch.empty(2, 8, 9, dtype=torch.bool, device=META), probs)
    assert roi.dtype == dtype
    assert _checks.check_image(image) is image
    assert _checks.check_probs(probs, roi) is probs
    # structural checks still run everywhere
    with pytest.raises(ValueError, match="probs must have shape"):
        _checks.check_probs(torch.empty(2, 3, 8, device=META))
    with pytest.raises(ValueError, match="roi must have shape"):
        _checks.check_roi(torch.empty(2, 8, 8, device=META), probs)


def test_value_checks_still_run_on_cpu():
    probs = torch.full((1, 2, 4, 4), 0.7)  # sums to 1.4
    with pytest.raises(ValueError, match="sum to 1"):
        _checks.check_probs(probs)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        _checks.check_image(torch.full((1, 3, 4, 4), 300.0))


@pytest.mark.parametrize(
    ("loss", "kwargs"),
    [
        (densecrf_loss, {}),
        (densecrf_loss, {"normalize": True}),
        (densecrf_loss, {"scale_factor": 0.5}),
        (ncut_loss, {}),
    ],
)
@pytest.mark.parametrize("with_roi", [False, True])
def test_pairwise_loss_forward_backward_is_sync_free(
    forbid_host_reads, meta_build, loss, kwargs, with_roi
):
    n, k, h, w = 2, 4, 12, 10
    image = torch.empty(n, 3, h, w, device=META)
    logits = torch.empty(n, k, h, w, device=META, requires_grad=True)
    roi = torch.empty(n, h, w, device=META) if with_roi else None
    probs = logits.softmax(1)
    value = loss(image, probs, roi, sigma_rgb=15.0, sigma_xy=10.0, backend="torch", **kwargs)
    assert value.shape == () and value.device == META
    value.backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe device syncs")
@pytest.mark.parametrize("loss", [densecrf_loss, ncut_loss])
def test_cuda_loss_has_no_sync_beyond_construction(monkeypatch, loss):
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    n, k, h, w = 2, 5, 40, 48
    image = (torch.rand(n, 3, h, w, generator=g) * 255).to(dev)
    logits = torch.randn(n, k, h, w, generator=g).to(dev).requires_grad_()
    roi = torch.ones(n, h, w, device=dev)
    real_build = _torch.build
    built: dict[str, _torch.TorchLattice] = {}

    def prebuilt(features: torch.Tensor, options: object = None) -> _torch.TorchLattice:
        return built["lattice"]

    from rloss.lattice import bilateral_features

    feats = bilateral_features(image, 15.0, 10.0, check_finite=False)
    built["lattice"] = real_build(feats.flatten(2).transpose(1, 2).contiguous())
    monkeypatch.setattr(_torch, "build", prebuilt)
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        probs = logits.softmax(1)
        value = loss(image, probs, roi, sigma_rgb=15.0, sigma_xy=10.0, backend="torch")
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode(before)
    assert torch.isfinite(value) and logits.grad is not None
