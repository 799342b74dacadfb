"""Model registry: ``@register_model`` on builder functions, one ``build_model(name, ...)``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from diga.errors import UserError


class SegOutput(NamedTuple):
    """What every model returns."""

    logits: torch.Tensor  # (B, C, h, w) at feature resolution
    # (B, F, h, w): the map the 1x1 classifier receives, after the head's dropout (the same map
    # in eval mode); before it where the model's ``features_after_dropout`` is False
    features: torch.Tensor
    # (B, C, h, w) auxiliary logits of heads that have them (OCR's soft object regions), for
    # their own CE term (``model.aux_weight``); None otherwise
    aux: torch.Tensor | None = None


class SegmentationModel(nn.Module):
    """A backbone and a head; the contract every registered model keeps.

    ``freeze_bn`` keeps every BatchNorm in eval mode with frozen affine parameters, as DeepLabV2
    does with small per-GPU batches. ``features_after_dropout`` chooses the feature map a
    training-mode forward returns: the classifier's input, after the head's dropout (True, the
    reference's), or the map before it; in eval mode the two are the same.
    """

    features_after_dropout: bool = True
    output_stride: int = 8  # the logits' and features' grid: 8 (DeepLabV2), 4 (HRNet, SegFormer)

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for p in module.parameters():
                        p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.head.classifier.out_channels

    @property
    def feature_dim(self) -> int:
        return self.head.classifier.in_channels

    def forward(self, x: torch.Tensor) -> SegOutput:
        features = self.head.features(self.backbone(x))  # (B, F, h, w)
        aux = None
        if isinstance(features, tuple):  # a head with auxiliary logits (OCR)
            features, aux = features
        dropped = self.head.dropout(features)
        return SegOutput(self.head.classifier(dropped),
                         dropped if self.features_after_dropout else features, aux)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.freeze_bn and mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, head) trainable parameters: the optimiser's 1x and 10x groups."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return backbone, head


ModelBuilder = Callable[..., SegmentationModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register a builder ``fn(num_classes, pretrained=None, freeze_bn=False)`` by its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(
    name: str, num_classes: int, pretrained: str | None = None, freeze_bn: bool = False
) -> SegmentationModel:
    """Build a registered model; ``pretrained`` is a weights file or ``"imagenet"``."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(_REGISTRY)}"
        raise UserError(f"unknown model '{name}'", hint)
    return _REGISTRY[name](num_classes=num_classes, pretrained=pretrained, freeze_bn=freeze_bn)
