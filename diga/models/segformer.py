"""SegFormer: the Mix Transformer encoder (MiT-B0 ... B5) and the all-MLP head.

The reference ships both (``fy-vision/DiGA``, ``networks/MixTransfomer.py``,
``segformer_head.py``) but trains neither. The encoder is segmentation-models-pytorch's
``mit_b*`` (the SegFormer authors' ImageNet weights, through the library's cache); the head is
its ``SegformerDecoder`` (per level a linear projection to ``embed`` channels, all upsampled to
1/4 and concatenated, fused by a 1x1 conv + BN + ReLU), then ``Dropout2d(0.1)`` and a 1x1
classifier, as the reference's head with its embedding of 768. The fused map is the feature
the centroids use. Output stride 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diga.models.registry import SegmentationModel, register_model
from diga.models.timm_backbones import INSTALL, library_model, smp_encoder


class MiTEncoder(nn.Module):
    """The encoder's feature list (the input, for the head's 1/4 size, then 1/4 ... 1/32) and
    the input's size: inputs are padded to a multiple of 32 (MiT's 8x spatial reduction in its
    first stage needs 32 pixels a side) and the head crops its map back."""

    def __init__(self, name: str, pretrained: str | None) -> None:
        super().__init__()
        self.encoder = smp_encoder(name, pretrained)
        self.out_channels = list(self.encoder.out_channels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        h, w = x.shape[-2:]
        return self.encoder(F.pad(x, (0, (-w) % 32, 0, (-h) % 32))), (h, w)


class SegFormerHead(nn.Module):
    def __init__(self, encoder_channels: list[int], num_classes: int, embed: int = 768,
                 dropout: float = 0.1) -> None:
        super().__init__()
        from diga.errors import import_optional

        decoders = import_optional("segmentation_models_pytorch.decoders.segformer.decoder",
                                   "the SegFormer head needs segmentation-models-pytorch",
                                   INSTALL)
        self.mlp = decoders.SegformerDecoder(encoder_channels, len(encoder_channels) - 1, embed)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed, num_classes, 1)

    def features(self, encoded: tuple[list[torch.Tensor], tuple[int, int]]) -> torch.Tensor:
        features, (h, w) = encoded
        return self.mlp(features)[..., : (h + 3) // 4, : (w + 3) // 4]  # (B, embed, H/4, W/4)


def _segformer(encoder: str, num_classes: int, pretrained: str | None, freeze_bn: bool,
               embed: int) -> SegmentationModel:
    return library_model(lambda weights: MiTEncoder(encoder, weights),
                         lambda body: SegFormerHead(body.out_channels, num_classes, embed),
                         pretrained, freeze_bn, output_stride=4)


@register_model
def segformer_mit_b5(num_classes: int, pretrained: str | None = None,
                     freeze_bn: bool = False) -> SegmentationModel:
    """MiT-B5 + the SegFormer head (embedding 768): 82M + 3M parameters."""
    return _segformer("mit_b5", num_classes, pretrained, freeze_bn, 768)


@register_model
def segformer_mit_b1(num_classes: int, pretrained: str | None = None,
                     freeze_bn: bool = False) -> SegmentationModel:
    """MiT-B1 + the SegFormer head (embedding 256, as SegFormer-B1): for edge boxes."""
    return _segformer("mit_b1", num_classes, pretrained, freeze_bn, 256)


@register_model
def segformer_mit_b0(num_classes: int, pretrained: str | None = None,
                     freeze_bn: bool = False) -> SegmentationModel:
    """MiT-B0 + the SegFormer head (embedding 256): the smallest, for tests."""
    return _segformer("mit_b0", num_classes, pretrained, freeze_bn, 256)
