"""Segmentation models: a registry of builders that all return ``SegOutput(logits, features)``."""

from diga.models import deeplabv2, tiny  # noqa: F401  (registers the builders)
from diga.models.registry import (
    SegmentationModel,
    SegOutput,
    available_models,
    build_model,
    register_model,
)

__all__ = ["SegOutput", "SegmentationModel", "available_models", "build_model", "register_model"]
