"""Fourier domain adaptation (FDA): a training-free source-to-target translator."""

from __future__ import annotations

import math

import torch


def low_frequency_band(
    height: int, width: int, beta: float, device: torch.device | None = None
) -> torch.Tensor:
    """Mask of the low-frequency band in ``rfft2`` layout, (H, W // 2 + 1) bool.

    With ``b = floor(min(H, W) * beta)``, the band holds the integer frequencies
    ``(k_y, k_x)`` with ``|k_y| < b`` and ``|k_x| < b``: a ``(2b-1) x (2b-1)`` square centred
    on zero frequency in the fftshift-ed spectrum (empty for ``b = 0``, DC only for ``b = 1``).
    The band is symmetric under ``k -> -k``, so the swapped spectrum stays Hermitian and the
    image stays real.
    """
    b = math.floor(min(height, width) * beta)
    k_y = (torch.fft.fftfreq(height, device=device) * height).abs()  # (H,) integer frequencies
    k_x = torch.fft.rfftfreq(width, device=device) * width  # (W // 2 + 1,)
    return (k_y < b)[:, None] & (k_x < b)[None, :]


def fda(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Give ``source`` images the low-frequency amplitude spectrum of ``target`` images.

    Per image and channel, the amplitude of the 2-D FFT inside the band of
    :func:`low_frequency_band` (band ratio ``beta``, the method's ``L``) is taken from the
    paired target image; the source phase, and the amplitude outside the band, are kept.

    Args:
        source: (B, 3, H, W) float images in [0, 1].
        target: (B, 3, H, W) float images in [0, 1], paired with ``source`` by index.
        beta: band ratio, >= 0.

    Returns:
        (B, 3, H, W) images, clamped to [0, 1], in ``source``'s dtype.
    """
    if source.dim() != 4 or source.shape != target.shape:
        raise ValueError(
            f"fda needs source and target of the same shape (B, C, H, W), got "
            f"{tuple(source.shape)} and {tuple(target.shape)}; pair and crop them first"
        )
    if beta < 0:
        raise ValueError(f"the FDA band ratio beta must be >= 0, got {beta}")
    h, w = source.shape[-2:]
    if math.floor(min(h, w) * beta) == 0:  # an empty band: nothing to swap
        return source.clone()
    band = low_frequency_band(h, w, beta, device=source.device)  # (H, W // 2 + 1)
    dtype = torch.promote_types(source.dtype, torch.float32)  # no half-precision FFTs
    spec_s = torch.fft.rfft2(source.to(dtype))  # (B, C, H, W // 2 + 1) complex
    amp_t = torch.fft.rfft2(target.to(dtype)).abs()
    amp = torch.where(band, amp_t, spec_s.abs())
    out = torch.fft.irfft2(torch.polar(amp, spec_s.angle()), s=(h, w))
    return out.clamp_(0.0, 1.0).to(source.dtype)
