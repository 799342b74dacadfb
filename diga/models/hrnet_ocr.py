"""HRNet + OCR: the reference's high-resolution network (``fy-vision/DiGA``, ``model_hr.py``).

The backbone is timm's HRNet (``hrnet_w48``, ``hrnet_w18``: ImageNet weights through timm's
own cache): its four branches at 1/4, 1/8, 1/16 and 1/32, upsampled to 1/4 and concatenated
(720 channels for W48, 270 for W18). The OCR head (object-contextual representations; no
library has it) is the reference's:

- soft object regions: conv1x1 + BN + ReLU + conv1x1 to the classes: the auxiliary logits,
  trained with their own CE (``model.aux_weight``);
- pixel representation: conv3x3 to 512 + BN + ReLU;
- object region features: each class's softmax over the pixels, times the representation;
- attention of each pixel (query, 512 -> 256 -> 256) over the class features (key, the
  same; value 512 -> 256), scaled by 1/sqrt(256), back up to 512;
- the context and the representation fused (1x1 to 512 + BN + ReLU): the feature map the
  classifier receives after ``Dropout2d(0.05)``, the features the centroids use.

Output stride 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diga.models.registry import SegmentationModel, register_model
from diga.models.timm_backbones import library_model, timm_features


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HRNetBranches(nn.Module):
    """timm's HRNet, its four branches upsampled to the first one's size and concatenated."""

    def __init__(self, name: str, pretrained: str | None) -> None:
        super().__init__()
        self.body = timm_features(name, pretrained, feature_location="")
        self.out_channels = sum(self.body.feature_info.channels()[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's fuse layers upsample by fixed factors: pad to a multiple of 32, crop after
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        branches = self.body(x)[1:]  # the stem's 1/2 map left out: 1/4, 1/8, 1/16, 1/32
        size = branches[0].shape[-2:]
        up = [branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=True)
                              for b in branches[1:]]
        out = torch.cat(up, dim=1)  # (B, sum of widths, H/4, W/4) of the padded input
        return out[..., : (h + 3) // 4, : (w + 3) // 4]


class OCRHead(nn.Module):
    """Object-contextual representations over the backbone's map; ``features`` returns the
    fused map (before the dropout) and the auxiliary logits."""

    def __init__(self, in_channels: int, num_classes: int, mid: int = 512, key: int = 256,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.aux = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels),
                                 nn.ReLU(inplace=True), nn.Conv2d(in_channels, num_classes, 1))
        self.pixels = _conv_bn_relu(in_channels, mid, 3)
        self.query = nn.Sequential(_conv_bn_relu(mid, key), _conv_bn_relu(key, key))
        self.key = nn.Sequential(_conv_bn_relu(mid, key), _conv_bn_relu(key, key))
        self.value = _conv_bn_relu(mid, key)
        self.up = _conv_bn_relu(key, mid)
        self.fuse = _conv_bn_relu(2 * mid, mid)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid, num_classes, 1)
        self.key_channels = key

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aux = self.aux(x)  # (B, K, h, w): soft object regions
        pixels = self.pixels(x)  # (B, 512, h, w)
        b, c = pixels.shape[:2]
        regions = aux.flatten(2).softmax(dim=2)  # (B, K, hw): each class over the pixels
        objects = torch.bmm(regions, pixels.flatten(2).transpose(1, 2))  # (B, K, 512)
        objects = objects.transpose(1, 2).unsqueeze(3)  # (B, 512, K, 1)
        query = self.query(pixels).flatten(2).transpose(1, 2)  # (B, hw, 256)
        keys = self.key(objects).flatten(2)  # (B, 256, K)
        values = self.value(objects).flatten(2).transpose(1, 2)  # (B, K, 256)
        attention = (torch.bmm(query, keys) * self.key_channels**-0.5).softmax(dim=2)  # (B, hw, K)
        context = torch.bmm(attention, values).transpose(1, 2)  # (B, 256, hw)
        context = self.up(context.reshape(b, self.key_channels, *pixels.shape[-2:]))
        return self.fuse(torch.cat([context, pixels], dim=1)), aux  # (B, 512, h, w), aux


def _hrnet_ocr(timm_name: str, num_classes: int, pretrained: str | None,
               freeze_bn: bool) -> SegmentationModel:
    """``pretrained``: None, ``"imagenet"`` (timm's), a backbone file in timm's layout, or a
    whole diga model of this architecture."""
    return library_model(lambda weights: HRNetBranches(timm_name, weights),
                         lambda body: OCRHead(body.out_channels, num_classes),
                         pretrained, freeze_bn, output_stride=4)


@register_model
def hrnet48_ocr(num_classes: int, pretrained: str | None = None,
                freeze_bn: bool = False) -> SegmentationModel:
    """HRNet-W48 + OCR, the reference's high-resolution network (66M + 8M parameters)."""
    return _hrnet_ocr("hrnet_w48", num_classes, pretrained, freeze_bn)


@register_model
def hrnet18_ocr(num_classes: int, pretrained: str | None = None,
                freeze_bn: bool = False) -> SegmentationModel:
    """HRNet-W18 + OCR: the same family for tests and edge boxes."""
    return _hrnet_ocr("hrnet_w18", num_classes, pretrained, freeze_bn)
