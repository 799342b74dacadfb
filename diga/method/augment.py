"""Blended photometric augmentation ``aug(x) = beta*A(x) + (1-beta)*x``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PhotometricAugment(nn.Module):
    """Photometric augmentation ``A``, blended with the input (METHOD, shared pieces).

    Colour jitter, random grayscale, Gaussian blur and sharpness, each applied to a sample
    with its probability and with per-sample random factors, as kornia's ``ColorJitter``,
    ``RandomGrayscale``, ``RandomGaussianBlur`` and ``RandomSharpness`` draw them. The pixel
    operations are kornia's; the parameters are drawn here, on the batch's device, in one
    ``torch.rand`` call, and each operation is selected per sample with ``torch.where``.
    kornia's modules draw their parameters on the host and check them there, which reads
    tensors back (a dozen host conversions per call, a random application order among them):
    here nothing waits for the device. Colour jitter applies brightness, contrast, saturation
    and hue in that fixed order (kornia shuffles the order once per batch).
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
        sharpness: float | tuple[float, float] = 0.5,
        sharpness_p: float = 0.3,
    ) -> None:
        super().__init__()
        from kornia.filters import get_gaussian_kernel2d  # kornia is slow to import

        # Factor ranges as kornia's ColorJitter / RandomSharpness read these arguments (a
        # sharpness x: [0, x], blurring only below 1, as the reference draws it), and the
        # probabilities: buffers, moved to the device once (a tensor made from numbers in the
        # step would be a host-to-device copy that waits for the device).
        ranges = torch.tensor([
            (max(0.0, 1 - brightness), 1 + brightness),
            (max(0.0, 1 - contrast), 1 + contrast),
            (max(0.0, 1 - saturation), 1 + saturation),
            (-hue, hue),
            (0.0, sharpness) if isinstance(sharpness, (int, float)) else tuple(sharpness),
        ])  # fmt: skip  # (5, 2): brightness, contrast, saturation, hue, sharpness factors
        self.register_buffer("factor_low", ranges[:, 0].clone(), persistent=False)
        self.register_buffer("factor_span", (ranges[:, 1] - ranges[:, 0]).clone(), persistent=False)
        self.register_buffer("probs", torch.tensor([jitter_p, grayscale_p, blur_p, sharpness_p]),
                             persistent=False)
        kernel = get_gaussian_kernel2d((blur_kernel, blur_kernel),
                                       torch.tensor([[blur_sigma, blur_sigma]]))  # (1, k, k)
        self.register_buffer("blur_weight", kernel.expand(3, 1, -1, -1).clone(), persistent=False)

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

    @torch.no_grad()
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x)``: every operation on the whole batch, kept per sample where its draw says."""
        from kornia.color import rgb_to_grayscale
        from kornia.enhance import (
            adjust_brightness_accumulative,
            adjust_contrast_with_mean_subtraction,
            adjust_hue,
            adjust_saturation_with_gray_subtraction,
            sharpness,
        )

        b = x.shape[0]
        draws = torch.rand(b, 9, device=x.device)  # (B, 9): 4 gates, 5 factors
        apply = draws[:, :4] < self.probs  # (B, 4): jitter, grayscale, blur, sharpness
        factors = (self.factor_low + self.factor_span * draws[:, 4:]).to(x.dtype)  # (B, 5)
        bright, contrast, saturation, hue, sharp = factors.unbind(1)

        def keep(i: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return torch.where(apply[:, i].view(b, 1, 1, 1), new, old)

        x = x.clamp(0.0, 1.0)
        jitter = adjust_brightness_accumulative(x, bright)
        jitter = adjust_contrast_with_mean_subtraction(jitter, contrast)
        jitter = adjust_saturation_with_gray_subtraction(jitter, saturation)
        jitter = adjust_hue(jitter, hue * 2 * math.pi)
        x = keep(0, jitter.clamp(0.0, 1.0), x)
        x = keep(1, rgb_to_grayscale(x).expand_as(x), x)
        pad = self.blur_weight.shape[-1] // 2
        blurred = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"),
                           self.blur_weight.to(x.dtype), groups=3)
        x = keep(2, blurred, x)
        return keep(3, sharpness(x, sharp), x)
