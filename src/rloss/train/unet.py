"""A small 2-D UNet for 1-channel images trained from scratch (the medical scribble papers' kind).

Ronneberger et al., MICCAI 2015, in the form used by the WSL4MIS code base: five levels of
two 3x3 convolutions + BatchNorm + LeakyReLU, 2x2 max pooling down, 2x2 transposed
convolutions up, skip connections by concatenation, a 1x1 classifier. The default
widths ``(8, 16, 32, 64, 128)`` fit a CPU budget; ``(16, 32, 64, 128, 256)`` is
WSL4MIS's UNet.

Measured on 2 CPU cores (Intel Xeon, shared), batch 12 at 128 x 128, forward + backward +
SGD step: this UNet (8-128, 0.49 M parameters) 0.27 s/iteration; (16-256) 0.60 s;
smp ``Unet("resnet18", in_channels=1)`` 0.93 s; smp ``Unet("mobilenet_v2", in_channels=1)``
0.88 s -- hence this module for the CPU recipes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet(nn.Module):
    """UNet mapping ``(N, in_channels, H, W)`` to logits ``(N, num_classes, H, W)``, any H, W.

    Inputs whose size is not a multiple of ``2 ** (levels - 1)`` are zero-padded
    bottom/right and the output cropped back.

    Args:
        num_classes: K >= 1.
        in_channels: input channels (1 for MRI).
        channels: widths of the levels, coarsest last (>= 2 levels).
        dropout: Dropout2d rate inside the blocks (0 = none).

    Example:
        >>> import torch
        >>> net = UNet(4, in_channels=1)
        >>> net(torch.rand(2, 1, 50, 37)).shape
        torch.Size([2, 4, 50, 37])
    """

    def __init__(self, num_classes: int, in_channels: int = 1,
                 channels: Sequence[int] = (8, 16, 32, 64, 128), dropout: float = 0.0) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels: expected >= 1, got {in_channels}")
        if len(chans) < 2 or any(c < 1 for c in chans):
            raise ValueError(f"channels: expected >= 2 positive widths, got {list(channels)}")
        self.in_channels = int(in_channels)
        self.down = nn.ModuleList()
        prev = self.in_channels
        for c in chans:
            self.down.append(_block(prev, c, dropout))
            prev = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, c, 2, stride=2))
            self.dec.append(_block(2 * c, c, dropout))
            prev = c
        self.head = nn.Conv2d(prev, int(num_classes), 1)
        self.multiple = 2 ** (len(chans) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, in_channels, H, W)`` float -> logits ``(N, K, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)[..., :h, :w]
