"""Model factory: any segmentation-models-pytorch network, plus the paper's Table 1 networks.

Every network built here maps a normalised image batch ``(N, 3, H, W)`` float32 to
logits ``(N, K, H, W)`` at the input size, for any ``H, W`` (inputs are padded to
the network's stride internally and the output is cropped back).

Networks:

* any smp architecture by name (``deeplabv3plus``, ``unet``, ``fpn``, ... see
  :data:`SMP_ARCHS`) with any smp encoder (``mobilenet_v2``, ``resnet101``, ...);
* ``deeplab_largefov``: DeepLab-LargeFOV (Chen et al., ICLR 2015) on torchvision's
  VGG16: pool4/pool5 with stride 1, conv5 dilated by 2, fc6 a 3×3 convolution with
  dilation 12 and 1024 channels, fc7 1×1 (1024), fc8 1×1 (K); output stride 8;
* ``deeplabv2``: DeepLab-v2 (Chen et al., TPAMI 2017) on torchvision's ResNet-101
  with output stride 8 (layer3/layer4 dilated 2/4) and an ASPP head of four 3×3
  branches with rates 6/12/18/24, summed;
* ``deeplabv2_vgg16``: DeepLab-v2 on torchvision's VGG16 (the paper's
  "DeepLab_VGG16"): the LargeFOV trunk (pool4/pool5 stride 1, conv5 dilated by 2) and
  an ASPP-L head of four fc6–fc8 branches (3×3 with dilation 6/12/18/24 and 1024
  channels, 1×1 1024, 1×1 K), summed; output stride 8;
* the MSC wrapper (``model.msc: [1.0, 0.75, 0.5]``) runs the network on rescaled
  inputs, upsamples every output to the input size and fuses them by element-wise
  max, as in DeepLab's multi-scale training and testing.

Networks are looked up by ``model.arch`` in a registry (:data:`MODELS`): adding one is a
builder function plus :func:`register_model`::

    @register_model("my_net", weights="torchvision vgg16 IMAGENET1K_V1")
    def _build_my_net(spec, num_classes):
        return MyNet(num_classes, spec.get("encoder_weights"))

The builder takes the recipe's ``model`` mapping and K and returns a module mapping
``(N, 3, H, W)`` to logits ``(N, K, H, W)``; a network with a ``head`` attribute gets
``optim.head_lr_mult`` on its head's parameters. The smp architectures are registered
on first use (they need ``model.encoder``).

Pre-trained ImageNet weights (``encoder_weights: imagenet``) are downloaded at run
time (smp from the Hugging Face hub, torchvision from download.pytorch.org). On a
machine without internet pass a local file, ``encoder_weights: /path/to/file.pth``
(a state dict of the backbone, loaded with ``weights_only=True``), or
``encoder_weights: null`` for random initialisation.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rloss.train.unet import UNet

#: Architectures written in this module (not shipped by smp).
#: (unet2d: the small 1-channel UNet of rloss.train.unet, for the medical recipes)
OWN_ARCHS: tuple[str, ...] = ("deeplab_largefov", "deeplabv2", "deeplabv2_vgg16", "unet2d")

#: Default MSC scales of DeepLab (Chen et al.).
MSC_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)

#: ASPP rates of DeepLab-v2 (ASPP-L).
ASPP_RATES: tuple[int, ...] = (6, 12, 18, 24)

#: Keys of a backbone checkpoint that belong to the ImageNet classifier, not the encoder.
_CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "last_linear.", "head.")

_OFFLINE_HINT = (
    "could not download the ImageNet weights{what} ({err}). Without internet, pass a local "
    "state-dict file with `--set model.encoder_weights=/path/to/file.pth` (or "
    "`encoder_weights: /path/to/file.pth` in the recipe), or train from scratch with "
    "`model.encoder_weights=null`."
)


class WeightsUnavailableError(RuntimeError):
    """Pre-trained weights were requested but could not be obtained (e.g. no internet)."""


def smp_archs() -> tuple[str, ...]:
    """Names of the segmentation-models-pytorch architectures (lower case)."""
    import segmentation_models_pytorch as smp

    return tuple(smp.MODEL_ARCHITECTURES_MAPPING.keys())


def smp_encoders() -> tuple[str, ...]:
    """Names of the segmentation-models-pytorch encoders (``tu-*`` timm encoders also work)."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return tuple(get_encoder_names())


#: A builder: ``(model spec mapping, K) -> nn.Module`` (logits at the input size).
ModelBuilder = Callable[[Mapping[str, Any], int], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: the ``model.arch`` value (lower case).
        build: ``(spec, num_classes) -> nn.Module``.
        uses_encoder: reads ``model.encoder`` (smp architectures); validated by the recipe.
        weights: what ``encoder_weights: imagenet`` loads (for documentation).
    """

    name: str
    build: ModelBuilder
    uses_encoder: bool = False
    weights: str = ""


#: Architectures registered with :func:`register_model`, by name. smp's architectures
#: are looked up in smp itself (:func:`get_model_entry`), so importing this module does
#: not import smp.
MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    build: ModelBuilder | None = None,
    *,
    uses_encoder: bool = False,
    weights: str = "",
    replace: bool = False,
) -> Any:
    """Register an architecture under ``name`` (usable as a decorator).

    Args:
        name: the ``model.arch`` value; lower case letters, digits, ``_`` and ``-``.
        build: ``(spec, num_classes) -> nn.Module``; omit to use as a decorator.
        uses_encoder: the builder reads ``model.encoder`` (an smp encoder name).
        weights: description of the ImageNet weights ``encoder_weights: imagenet`` loads.
        replace: allow replacing an existing entry.

    Returns:
        ``build`` (or the decorator).

    Raises:
        ValueError: bad name, or ``name`` is taken and ``replace`` is False.
    """
    key = str(name).lower()
    if not key or not all(c.isalnum() or c in "_-" for c in key):
        raise ValueError(f"name: expected letters, digits, '_' or '-', got {name!r}")

    def add(fn: ModelBuilder) -> ModelBuilder:
        if not callable(fn):
            raise ValueError(f"build: expected a callable, got {fn!r}")
        if key in MODELS and not replace:
            raise ValueError(f"model {key!r} is already registered (pass replace=True)")
        MODELS[key] = ModelEntry(key, fn, uses_encoder=uses_encoder, weights=weights)
        return fn

    return add if build is None else add(build)


def _smp_entry(arch: str) -> ModelEntry:
    return ModelEntry(
        arch, _smp_builder(arch), uses_encoder=True, weights="smp encoder weights 'imagenet'"
    )


def get_model_entry(arch: str) -> ModelEntry:
    """The registry entry of ``arch``.

    Raises:
        ValueError: unknown architecture, with the closest names.
    """
    key = str(arch).lower()
    if key in MODELS:
        return MODELS[key]
    if key in smp_archs():
        return _smp_entry(key)
    names = known_archs()
    close = difflib.get_close_matches(key, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"model.arch: unknown architecture {arch!r}{hint}; known: {sorted(names)}")


def known_archs() -> tuple[str, ...]:
    """All architecture names accepted by :func:`build_model`."""
    return (*MODELS, *(a for a in smp_archs() if a not in MODELS))


def _is_local_weights(weights: Any) -> bool:
    return isinstance(weights, (str, Path)) and (
        Path(str(weights)).suffix in {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}
        or "/" in str(weights)
        or "\\" in str(weights)
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path`` without unpickling code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., weights_only=True)``. A checkpoint that wraps the weights in
    ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no tensor mapping.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(state)


def state_dict_mismatch(own: Mapping[str, Any], state: Mapping[str, Any], limit: int = 5) -> str:
    """Why ``state`` cannot be loaded into a module whose state dict is ``own`` ("" if it can).

    Names up to ``limit`` missing keys, unexpected keys and shape mismatches.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or bad_shape):
        return ""
    return (
        f"missing keys {missing[:limit]}, unexpected keys {unexpected[:limit]}, "
        f"shape mismatches {bad_shape[:limit]}"
    )


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load an ImageNet backbone state dict from ``path`` into ``module``.

    Classifier keys (``fc.*``, ``classifier.*``) present in the file but absent from
    the backbone are ignored; any other mismatch is an error.

    Raises:
        ValueError: keys or shapes do not match, naming the first offenders.
    """
    state = load_state_dict_file(path)
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_CLASSIFIER_PREFIXES)}
    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise ValueError(
            f"weights file {str(path)!r} does not fit the {type(module).__name__} backbone: "
            f"{mismatch}"
        )
    module.load_state_dict(state)


class PadToMultiple(nn.Module):
    """Pad the input to a multiple of ``multiple`` (zeros = mean colour), crop the output back.

    Args:
        net: network mapping ``(N, 3, H', W')`` with ``H', W'`` multiples of ``multiple``
            to ``(N, K, H', W')``.
        multiple: spatial multiple the network needs (its output stride).
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 3, H, W)`` float → logits ``(N, K, H, W)``."""
        h, w = x.shape[-2:]
        ph = (-h) % self.multiple
        pw = (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.net(x)
        return out[..., :h, :w]


def _deeplab_vgg16_trunk(encoder_weights: Any) -> list[nn.Module]:
    """torchvision's VGG16 ``features`` with DeepLab's changes (output stride 8).

    3×3/pad-1 max pooling with stride 2 after conv1–conv3 and stride 1 after conv4 and
    conv5; the conv5 convolutions dilated by 2 (padding 2). Returns the layers.
    """
    from torchvision.models import vgg16

    vgg = vgg16(weights=None)
    _load_torchvision_weights(vgg, "vgg16", encoder_weights)
    layers: list[nn.Module] = []
    pools = 0
    for layer in vgg.features:
        if isinstance(layer, nn.MaxPool2d):
            layers.append(nn.MaxPool2d(3, stride=2 if pools < 3 else 1, padding=1))
            pools += 1
        else:
            if pools == 4 and isinstance(layer, nn.Conv2d):  # conv5_x, after pool4
                layer.dilation = (2, 2)
                layer.padding = (2, 2)
            layers.append(layer)
    return layers


def _init_head(head: nn.Module) -> None:
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


class DeepLabLargeFOV(nn.Module):
    """DeepLab-LargeFOV on VGG16 (Chen et al., ICLR 2015), output stride 8.

    VGG16 conv1–conv5 with 3×3/stride-2/pad-1 max pooling after conv1–conv3,
    3×3/stride-1 pooling after conv4 and conv5, conv5 dilated by 2, a 3×3/stride-1
    average pooling, then fc6 (3×3, dilation 12, 1024 channels), fc7 (1×1, 1024) with
    ReLU and dropout 0.5, and fc8 (1×1, ``num_classes``). Logits are bilinearly
    upsampled to the input size.

    Args:
        num_classes: K, number of output classes (>= 1).
        encoder_weights: ``"imagenet"`` (torchvision download), a local VGG16 state
            dict file, or ``None``.
    """

    def __init__(self, num_classes: int, encoder_weights: str | None = None) -> None:
        super().__init__()
        layers = _deeplab_vgg16_trunk(encoder_weights)
        layers.append(nn.AvgPool2d(3, stride=1, padding=1))
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(512, 1024, 3, padding=12, dilation=12),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(1024, num_classes, 1),
        )
        _init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 3, H, W)`` float → logits ``(N, K, H, W)``."""
        out = self.head(self.backbone(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV2(nn.Module):
    """DeepLab-v2 on ResNet-101 (Chen et al., TPAMI 2017): output stride 8, ASPP-L.

    torchvision's ResNet-101 with layer3/layer4 dilated (2 and 4) so that the feature
    map is 1/8 of the input, followed by four parallel 3×3 convolutions from 2048
    channels to ``num_classes`` with dilation rates 6, 12, 18, 24, summed. Logits
    are bilinearly upsampled to the input size.

    Args:
        num_classes: K, number of output classes (>= 1).
        encoder_weights: ``"imagenet"``, a local ResNet-101 state dict file, or ``None``.
        rates: ASPP dilation rates.
    """

    def __init__(
        self,
        num_classes: int,
        encoder_weights: str | None = None,
        rates: Sequence[int] = ASPP_RATES,
    ) -> None:
        super().__init__()
        from torchvision.models import resnet101

        resnet = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        _load_torchvision_weights(resnet, "resnet101", encoder_weights)
        self.backbone = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.head = nn.ModuleList(
            nn.Conv2d(2048, num_classes, 3, padding=int(r), dilation=int(r)) for r in rates
        )
        for conv in self.head:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 3, H, W)`` float → logits ``(N, K, H, W)``."""
        feats = self.backbone(x)
        out = sum(branch(feats) for branch in self.head)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV2VGG16(nn.Module):
    """DeepLab-v2 on VGG16 (Chen et al., TPAMI 2017, "DeepLab-ASPP-L" on VGG16).

    The VGG16 trunk of :class:`DeepLabLargeFOV` (pool4/pool5 stride 1, conv5 dilated by
    2, output stride 8) followed by four parallel branches, one per rate r in 6, 12,
    18, 24: fc6 (3×3, dilation r, 1024 channels), ReLU, dropout 0.5, fc7 (1×1, 1024),
    ReLU, dropout 0.5, fc8 (1×1, ``num_classes``); the branch logits are summed and
    bilinearly upsampled to the input size.

    Args:
        num_classes: K, number of output classes (>= 1).
        encoder_weights: ``"imagenet"`` (torchvision's VGG16 ``IMAGENET1K_V1``), a local
            VGG16 state dict file, or ``None``.
        rates: ASPP dilation rates.
    """

    def __init__(
        self,
        num_classes: int,
        encoder_weights: str | None = None,
        rates: Sequence[int] = ASPP_RATES,
    ) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*_deeplab_vgg16_trunk(encoder_weights))
        self.head = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(512, 1024, 3, padding=int(r), dilation=int(r)),
                nn.ReLU(inplace=True),
                nn.Dropout2d(0.5),
                nn.Conv2d(1024, 1024, 1),
                nn.ReLU(inplace=True),
                nn.Dropout2d(0.5),
                nn.Conv2d(1024, num_classes, 1),
            )
            for r in rates
        )
        _init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 3, H, W)`` float → logits ``(N, K, H, W)``."""
        feats = self.backbone(x)
        out = sum(branch(feats) for branch in self.head)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MSCOutput(NamedTuple):
    """What :meth:`MSC.forward_all` returns.

    Attributes:
        fused: element-wise max over scales, ``(N, K, H, W)``.
        per_scale: every scale's logits upsampled to the input size, in scale order.
    """

    fused: torch.Tensor
    per_scale: tuple[torch.Tensor, ...]


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLab's MSC).

    For every scale s the input is resized by s (bilinear), passed through ``net``
    and the logits are upsampled back to the input size; the fused output is the
    element-wise maximum over scales. :meth:`forward` returns the fused logits;
    :meth:`forward_all` also returns every scale's logits (for a loss that supervises
    every scale, as DeepLab's MSC training does). Nothing is stored on the module.

    Args:
        net: network mapping ``(N, 3, h, w)`` to ``(N, K, h, w)``.
        scales: positive input scales; 1.0 first by convention.
    """

    def __init__(self, net: nn.Module, scales: Sequence[float] = MSC_SCALES) -> None:
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales: expected positive floats, got {scales}")
        self.net = net
        self.scales = scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 3, H, W)`` float → max-fused logits ``(N, K, H, W)``."""
        return self.forward_all(x).fused

    def forward_all(self, x: torch.Tensor) -> MSCOutput:
        """``x``: ``(N, 3, H, W)`` float → :class:`MSCOutput` (fused and per-scale logits)."""
        size = x.shape[-2:]
        outputs = []
        for s in self.scales:
            if s == 1.0:
                xs = x
            else:
                hs = max(1, math.floor(size[0] * s + 0.5))
                ws = max(1, math.floor(size[1] * s + 0.5))
                xs = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
            out = self.net(xs)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            outputs.append(out)
        return MSCOutput(torch.stack(outputs, 0).amax(0), tuple(outputs))


def _load_torchvision_weights(net: nn.Module, name: str, weights: Any) -> None:
    """Load ImageNet weights into a torchvision backbone (download or local file)."""
    if weights is None:
        return
    if _is_local_weights(weights):
        load_backbone_weights(net, weights)
        return
    if weights != "imagenet":
        raise ValueError(
            f"model.encoder_weights: expected 'imagenet', null or a file path, got {weights!r}"
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    tv_weights = enum.IMAGENET1K_V1
    try:
        state = tv_weights.get_state_dict(progress=True, check_hash=False)
    except Exception as err:  # URLError, OSError, HTTPError...
        raise WeightsUnavailableError(
            _OFFLINE_HINT.format(what=f" of {name} from {tv_weights.url}", err=err)
        ) from err
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _build_smp(arch: str, encoder: str, weights: Any, num_classes: int, **kwargs: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    local = _is_local_weights(weights)
    try:
        net = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None if local else weights,
            classes=num_classes,
            **kwargs,
        )
    except KeyError as err:
        raise ValueError(f"model: {err.args[0] if err.args else err}") from err
    except (OSError, ConnectionError) as err:
        raise WeightsUnavailableError(
            _OFFLINE_HINT.format(what=f" of encoder {encoder!r}", err=err)
        ) from err
    except Exception as err:
        # huggingface_hub raises its own exception types when offline.
        if type(err).__module__.startswith(("huggingface_hub", "requests", "urllib3")):
            raise WeightsUnavailableError(
                _OFFLINE_HINT.format(what=f" of encoder {encoder!r}", err=err)
            ) from err
        raise
    if local:
        load_backbone_weights(net.encoder, weights)
    return net


def _smp_stride(net: nn.Module) -> int:
    """The spatial multiple an smp model needs for its input."""
    fn = getattr(net, "requires_divisible_input_shape", True)
    stride = int(getattr(getattr(net, "encoder", None), "output_stride", 32) or 32)
    return stride if fn else 1


def _smp_builder(arch: str) -> ModelBuilder:
    def build(spec: Mapping[str, Any], k: int) -> nn.Module:
        encoder = str(spec.get("encoder", "mobilenet_v2"))
        if not encoder.startswith("tu-") and encoder not in smp_encoders():
            raise ValueError(
                f"model.encoder: unknown encoder {encoder!r}; see "
                "segmentation_models_pytorch.encoders.get_encoder_names() or use a 'tu-<timm name>'"
            )
        kwargs = dict(spec.get("kwargs") or {})
        if spec.get("output_stride") is not None and arch in ("deeplabv3", "deeplabv3plus"):
            kwargs.setdefault("encoder_output_stride", int(spec["output_stride"]))
        net = _build_smp(arch, encoder, spec.get("encoder_weights"), k, **kwargs)
        return PadToMultiple(net, _smp_stride(net))

    return build


register_model(
    "deeplab_largefov",
    lambda spec, k: DeepLabLargeFOV(k, spec.get("encoder_weights")),
    weights="torchvision vgg16 IMAGENET1K_V1",
)
register_model(
    "deeplabv2",
    lambda spec, k: DeepLabV2(k, spec.get("encoder_weights")),
    weights="torchvision resnet101 IMAGENET1K_V1",
)
register_model(
    "deeplabv2_vgg16",
    lambda spec, k: DeepLabV2VGG16(k, spec.get("encoder_weights")),
    weights="torchvision vgg16 IMAGENET1K_V1",
)
# the small UNet trained from scratch in the medical recipes; kwargs: in_channels, channels
register_model("unet2d", lambda spec, k: UNet(k, **dict(spec.get("kwargs") or {})))


def build_model(spec: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
    """Build a segmentation network from a model spec (the ``model`` section of a recipe).

    Args:
        spec: mapping with ``arch`` (a name registered in :data:`MODELS`: an smp
            architecture or one of :data:`OWN_ARCHS`), ``encoder`` (smp encoder name;
            ignored by the architectures of this module), ``encoder_weights``
            (``"imagenet"``, ``None`` or a local file path), optional ``num_classes``,
            ``output_stride`` (smp DeepLab architectures), ``msc`` (``None`` or a list
            of scales) and ``kwargs`` (extra keyword arguments for the smp constructor).
        num_classes: K; overrides ``spec["num_classes"]`` when given.

    Returns:
        An ``nn.Module`` mapping ``(N, 3, H, W)`` float32 normalised images to logits
        ``(N, K, H, W)`` at the input size.

    Raises:
        ValueError: unknown architecture/encoder or bad ``num_classes``.
        WeightsUnavailableError: ImageNet weights requested but not downloadable.
    """
    entry = get_model_entry(str(spec.get("arch", "deeplabv3plus")))
    k = num_classes if num_classes is not None else spec.get("num_classes")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"model.num_classes: expected a positive int, got {k!r}")
    net = entry.build(spec, k)
    scales = spec.get("msc")
    if scales:
        net = MSC(net, MSC_SCALES if scales is True else scales)
    return net


def head_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (backbone, head) for per-group learning rates.

    The head is ``model.head`` for networks that have one (those of this module) and
    ``segmentation_head`` + ``decoder`` for smp networks (anything not in the encoder).
    """
    net = model
    while isinstance(net, (MSC, PadToMultiple)):
        net = net.net
    if isinstance(getattr(net, "head", None), nn.Module):
        head_ids = {id(p) for p in net.head.parameters()}
    elif hasattr(net, "encoder"):
        enc_ids = {id(p) for p in net.encoder.parameters()}
        head_ids = {id(p) for p in net.parameters() if id(p) not in enc_ids}
    else:
        head_ids = set()
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    return backbone, head
