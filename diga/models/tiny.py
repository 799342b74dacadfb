"""A small dilated CNN with the DeepLabV2 contract, for the CPU demo and the tests.

Output stride 8 like DeepLabV2: a strided stem, then dilated residual blocks in place of further
downsampling, and the same ASPP-style head with a narrower feature.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diga.models.deeplabv2 import ASPPHead, load_pretrained
from diga.models.registry import SegmentationModel, register_model


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, dilation=dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(self.conv1(x)))


class TinyBackbone(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (24, 48, 96)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(_conv_bn(3, w1, stride=2), _conv_bn(w1, w1))  # /2
        self.layer1 = nn.Sequential(_conv_bn(w1, w2, stride=2), ResidualBlock(w2, 1))  # /4
        self.layer2 = nn.Sequential(_conv_bn(w2, w3, stride=2), ResidualBlock(w3, 1))  # /8
        self.layer3 = nn.Sequential(ResidualBlock(w3, 2), ResidualBlock(w3, 4))  # dilated, /8
        self.out_channels = w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


@register_model
def deeplabv2_tiny(num_classes: int, pretrained: str | None = None,
                   freeze_bn: bool = False) -> SegmentationModel:
    """About 0.5M parameters; trains on a laptop CPU in minutes at 128x256."""
    backbone = TinyBackbone()
    head = ASPPHead(backbone.out_channels, num_classes, feat_dim=64, rates=(1, 3, 6))
    model = SegmentationModel(backbone, head, freeze_bn)
    if pretrained == "imagenet":
        from diga.errors import UserError

        raise UserError("deeplabv2_tiny has no ImageNet weights", "use model.pretrained=null or a file")
    if pretrained is not None:
        load_pretrained(model, Path(pretrained))
    return model
