"""Segmentation models: a registry of builders that all return ``SegOutput(logits, features)``
(and, for heads that have them, auxiliary logits).

DeepLabV2 (ResNet-18/50/101, torchvision) and the tiny CPU model; HRNet + OCR (timm's HRNet)
and SegFormer (segmentation-models-pytorch's MiT) with the ``models`` extra."""

from diga.models import deeplabv2, hrnet_ocr, segformer, tiny  # noqa: F401  (registers them)
from diga.models.registry import (
    SegmentationModel,
    SegOutput,
    available_models,
    build_model,
    register_model,
)

__all__ = ["SegOutput", "SegmentationModel", "available_models", "build_model", "register_model"]
