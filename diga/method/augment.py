"""Blended photometric augmentation ``aug(x) = beta*A(x) + (1-beta)*x``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PhotometricAugment(nn.Module):
    """Photometric augmentation ``A`` (kornia), blended with the input.

    Colour jitter, random grayscale, Gaussian blur and sharpness, each with per-sample
    random parameters, run on the batch's device.
    """

    def __init__(
        self,
        *,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        jitter_p: float = 0.5,
        grayscale_p: float = 0.3,
        blur_kernel: int = 3,
        blur_sigma: float = 2.0,
        blur_p: float = 0.8,
        sharpness: float = 0.5,
        sharpness_p: float = 0.3,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K  # imported here: kornia is slow to import

        self.transform = nn.Sequential(
            K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p, same_on_batch=False),
            K.RandomGrayscale(p=grayscale_p, same_on_batch=False),
            K.RandomGaussianBlur(
                (blur_kernel, blur_kernel), (blur_sigma, blur_sigma), p=blur_p, same_on_batch=False
            ),
            K.RandomSharpness(sharpness, p=sharpness_p, same_on_batch=False),
        )

    _FIELDS = (
        "brightness", "contrast", "saturation", "hue", "jitter_p", "grayscale_p",
        "blur_kernel", "blur_sigma", "blur_p", "sharpness", "sharpness_p",
    )  # fmt: skip

    @classmethod
    def from_config(cls, cfg: Any) -> PhotometricAugment:
        """Build from any object with the constructor's field names (e.g. ``AugmentConfig``)."""
        return cls(**{name: getattr(cfg, name) for name in cls._FIELDS})

    @torch.no_grad()
    def forward(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """``beta * A(x) + (1 - beta) * x`` for images (B, 3, H, W) in [0, 1]."""
        if beta == 0:
            return x
        augmented = self.transform(x)  # (B, 3, H, W)
        return (beta * augmented + (1 - beta) * x).clamp_(0.0, 1.0)
