"""Model factory: smp networks, DeepLab-LargeFOV, DeepLab-v2, MSC, weights handling."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("torchvision")

from rloss.train import models
from rloss.train.models import (
    MSC,
    DeepLabLargeFOV,
    DeepLabV2,
    WeightsUnavailableError,
    build_model,
    head_parameters,
)

MOBILENET = {"arch": "deeplabv3plus", "encoder": "mobilenet_v2", "encoder_weights": None}


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (65, 50)])
def test_smp_deeplabv3plus_output_at_input_size(size):
    net = build_model(MOBILENET, 3).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert out.shape == (1, 3, *size)


@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_any_smp_arch_by_name(arch):
    net = build_model({"arch": arch, "encoder": "resnet18", "encoder_weights": None}, 4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 40, 36)).shape == (1, 4, 40, 36)


def test_resnet101_encoder_builds():
    net = build_model({**MOBILENET, "encoder": "resnet101"}, 21)
    assert any(p.numel() > 2_000_000 for p in net.parameters())


def test_largefov_structure_and_shape():
    net = DeepLabLargeFOV(5).eval()
    convs = [m for m in net.backbone if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs[-3:]] == [(2, 2)] * 3  # conv5 dilated
    pools = [m for m in net.backbone if isinstance(m, torch.nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    fc6 = net.head[0]
    assert fc6.dilation == (12, 12) and fc6.out_channels == 1024 and fc6.kernel_size == (3, 3)
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, 64, 64))
        out = net(torch.randn(2, 3, 41, 45))
    assert feats.shape[-2:] == (8, 8)  # output stride 8
    assert out.shape == (2, 5, 41, 45)


def test_deeplabv2_aspp_and_shape():
    net = DeepLabV2(4).eval()
    assert [c.dilation[0] for c in net.head] == [6, 12, 18, 24]
    with torch.no_grad():
        assert net.backbone(torch.randn(1, 3, 64, 64)).shape[-2:] == (8, 8)
        assert net(torch.randn(1, 3, 37, 50)).shape == (1, 4, 37, 50)


def test_msc_max_fuses_scales():
    base = build_model(MOBILENET, 3).eval()
    msc = MSC(base, (1.0, 0.75, 0.5)).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        fused = msc(x)
        single = base(x)
    assert fused.shape == (1, 3, 48, 40)
    assert torch.all(fused >= single - 1e-5)
    msc.train()
    out = msc.forward_all(torch.randn(2, 3, 32, 32))
    assert len(out.per_scale) == 3 and all(o.shape == (2, 3, 32, 32) for o in out.per_scale)
    torch.testing.assert_close(out.fused, torch.stack(out.per_scale).amax(0))
    assert not hasattr(msc, "last_outputs")  # nothing of the last call stays on the module


def test_msc_from_spec_on_largefov():
    net = build_model({"arch": "deeplab_largefov", "encoder_weights": None, "msc": [1, 0.5]}, 3)
    assert isinstance(net, MSC) and net.scales == (1.0, 0.5)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 33, 35)).shape == (1, 3, 33, 35)


def test_unknown_arch_and_encoder():
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        build_model({**MOBILENET, "encoder": "nope"}, 3)
    with pytest.raises(ValueError, match="unknown architecture 'segnet'"):
        build_model({**MOBILENET, "arch": "segnet"}, 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(MOBILENET, 0)


def test_local_encoder_weights_file(tmp_path):
    src = build_model(MOBILENET, 3)
    state = src.net.encoder.state_dict()
    # an ImageNet classifier in the file is ignored
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({**state, "classifier.1.weight": torch.zeros(10, 1280)}, path)
    net = build_model({**MOBILENET, "encoder_weights": str(path)}, 3)
    for key, value in net.net.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_model({**MOBILENET, "encoder_weights": str(tmp_path / "bad.pth")}, 3)


def test_offline_imagenet_error_tells_how_to_fix(monkeypatch):
    import segmentation_models_pytorch as smp

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(
        WeightsUnavailableError, match=r"encoder_weights=/path/to/file\.pth"
    ) as info:
        build_model({**MOBILENET, "encoder_weights": "imagenet"}, 3)
    assert "encoder_weights=null" in str(info.value)


def test_head_parameters_split():
    net = DeepLabV2(3)
    backbone, head = head_parameters(net)
    assert len(head) == 8 and len(backbone) + len(head) == len(list(net.parameters()))
    smp_net = build_model(MOBILENET, 3)
    b, h = head_parameters(smp_net)
    enc = {id(p) for p in smp_net.net.encoder.parameters()}
    assert {id(p) for p in b} == enc and h


def test_known_archs_include_ours():
    assert {"deeplabv3plus", "deeplab_largefov", "deeplabv2"} <= set(models.known_archs())


def test_deeplabv2_vgg16_is_deeplab_aspp_on_vgg16():
    from rloss.train.models import DeepLabV2VGG16

    net = build_model({"arch": "deeplabv2_vgg16", "encoder_weights": None}, 21)
    assert isinstance(net, DeepLabV2VGG16)
    # DeepLab's VGG16: pool1-3 stride 2, pool4/pool5 stride 1, conv5 dilated by 2
    pools = [m for m in net.backbone if isinstance(m, torch.nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    convs = [m for m in net.backbone if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    # ASPP-L: four fc6 (3x3, 1024, dilation 6/12/18/24) -> fc7 (1x1) -> fc8 (1x1, K), summed
    assert len(net.head) == 4
    fc6 = [b[0] for b in net.head]
    assert [c.dilation[0] for c in fc6] == [6, 12, 18, 24]
    assert all(c.kernel_size == (3, 3) and c.out_channels == 1024 for c in fc6)
    assert all(b[-1].out_channels == 21 for b in net.head)
    net.eval()
    with torch.no_grad():
        assert net.backbone(torch.randn(1, 3, 64, 64)).shape == (1, 512, 8, 8)  # stride 8
        x = torch.randn(2, 3, 37, 50)
        out = net(x)
        assert out.shape == (2, 21, 37, 50)
        # the logits are the sum of the branches (upsampled)
        feats = net.backbone(x)
        summed = sum(b(feats) for b in net.head)
        ref = torch.nn.functional.interpolate(summed, size=(37, 50), mode="bilinear")
        torch.testing.assert_close(out, ref)
    backbone, head = head_parameters(net)
    assert len(head) == 4 * 6 and len(backbone) == 26


def test_deeplabv2_vgg16_training_step_updates_head_and_backbone():
    from rloss.losses import CompositeLoss, PartialCrossEntropy
    from rloss.train.config import OptimSpec
    from rloss.train.module import SegmentationModule

    torch.manual_seed(0)
    net = build_model({"arch": "deeplabv2_vgg16", "encoder_weights": None}, 3)
    module = SegmentationModule(
        net,
        CompositeLoss({"pce": PartialCrossEntropy()}),
        OptimSpec(lr=0.01, head_lr_mult=10.0, schedule="constant"),
        class_names=["a", "b", "c"],
    )
    opt = torch.optim.SGD(
        [
            {"params": head_parameters(net)[0], "lr": 0.01},
            {"params": head_parameters(net)[1], "lr": 0.1},
        ]
    )
    image = torch.randn(2, 3, 24, 24)
    scribble = torch.full((2, 24, 24), 255, dtype=torch.long)
    scribble[:, 4:8, 4:8] = 1
    scribble[:, 14:18, 10:20] = 2
    batch = {
        "image": image,
        "image_raw": image * 50 + 120,
        "scribble": scribble,
        "roi": torch.ones(2, 24, 24),
    }
    module.log = lambda *a, **k: None  # outside a Trainer
    module.optimizers = lambda use_pl_optimizer=False: opt  # type: ignore[assignment]
    first = net.backbone[0].weight.detach().clone()
    fc8 = net.head[0][-1].weight.detach().clone()
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(net.backbone[0].weight, first)
    assert not torch.equal(net.head[0][-1].weight, fc8)


def test_register_model_adds_an_architecture(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))

    class Tiny(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.head = torch.nn.Conv2d(3, k, 1)

        def forward(self, x):
            return self.head(x)

    @models.register_model("tiny_net")
    def _build(spec, k):
        return Tiny(k)

    net = build_model({"arch": "Tiny_Net", "msc": [1.0, 0.5]}, 4)
    assert isinstance(net, MSC) and isinstance(net.net, Tiny)
    assert net.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    assert "tiny_net" in models.known_archs()
    assert head_parameters(net)[1]  # a `head` attribute gets the head learning rate
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("tiny_net", _build)
    with pytest.raises(ValueError, match="name"):
        models.register_model("bad name", _build)
    with pytest.raises(ValueError, match=r"did you mean \['tiny_net'"):
        build_model({"arch": "tiny_nett"}, 3)
