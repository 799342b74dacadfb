"""The translator's networks: ResNet-style encoder/decoder generators and PatchGAN discriminators.

Images enter and leave every network as float (B, 3, H, W) in [0, 1], the range the warm-up
loop works in; the networks map to [-1, 1] inside. Instance normalisation throughout, so the
output of a generator does not depend on the other images of its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GeneratorSpec:
    """What rebuilds a generator: saved as ``translator.json`` next to its weights."""

    channels: int = 16
    blocks: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorSpec:
        return cls(channels=int(data["channels"]), blocks=int(data["blocks"]))


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    """x + conv-norm-relu-conv-norm(x), reflection-padded so borders are not darkened."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """Encoder (7x7 conv, two stride-2 convs, residual blocks) and decoder (two upsampling
    stages, 7x7 conv, tanh). The decoder upsamples by interpolation + conv rather than
    transposed convs, which avoids checkerboard artefacts.

    Any H, W: the input is reflection-padded to a multiple of 4 and the output cropped back.
    """

    def __init__(self, channels: int = 16, blocks: int = 4) -> None:
        super().__init__()
        self.spec = GeneratorSpec(channels, blocks)
        c = channels
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), _norm(c), nn.ReLU(True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True),  # /2
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _norm(4 * c), nn.ReLU(True),  # /4
            *[ResidualBlock(4 * c) for _ in range(blocks)],
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),  # /2
            nn.Conv2d(4 * c, 2 * c, 3, padding=1), _norm(2 * c), nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),  # /1
            nn.Conv2d(2 * c, c, 3, padding=1), _norm(c), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh(),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        z = F.pad(2 * x - 1, (0, pw, 0, ph), mode="reflect") if ph or pw else 2 * x - 1
        y = self.decoder(self.encoder(z))[..., :h, :w]  # (B, 3, H, W) in [-1, 1]
        return (y + 1) / 2


class PatchDiscriminator(nn.Module):
    """PatchGAN: three stride-2 4x4 convs and two stride-1 ones; one real/fake score per
    overlapping patch (70x70 pixels receptive field), (B, 1, ~H/8, ~W/8)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _norm(2 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), _norm(4 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * c, 8 * c, 4, stride=1, padding=1), _norm(8 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(8 * c, 1, 4, stride=1, padding=1),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> raw LSGAN scores (B, 1, h, w)."""
        return self.layers(2 * x - 1)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, 0.02) convolution weights and zero biases, the usual GAN initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
