"""Segmentation and distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_ce(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Pixel cross-entropy, mean over non-ignored pixels.

    Logits are upsampled (bilinear, align_corners=True) to the label size when they differ.
    A batch without any valid pixel gives 0.0 with the graph intact (never NaN).

    Args:
        logits: (B, C, h, w).
        labels: (B, H, W) integer labels.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    labels = labels.long()
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    n_valid = (labels != ignore_index).sum().clamp_min(1)
    return total / n_valid


def soft_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(T), S)``: mean over pixels of ``-sum_c p_c log_softmax(S)_c``.

    The teacher is detached. Both inputs are (B, C, H, W) of the same shape.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}; upsample both to the crop size first"
        )
    p = teacher_logits.detach().softmax(dim=1)
    return -(p * student_logits.log_softmax(dim=1)).sum(dim=1).mean()


def symmetric_distillation(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, weight: float = 0.5
) -> torch.Tensor:
    """Symmetric cross-view distillation ``L_kd``.

    ``H(softmax(T(a)), S(b)) + weight * H(softmax(T(b)), S(a))``: each view's student is
    taught by the teacher's prediction of the *other* view, never of its own.

    Args:
        teacher_logits, student_logits: (2B, C, H, W), first half the clean view a,
            second half the other view b (mixed or augmented).
        weight: ``w_sym``, the weight of the reverse direction.
    """
    if teacher_logits.shape[0] % 2 or student_logits.shape[0] % 2:
        raise ValueError(
            f"expected stacked views [a; b] with an even batch, got {teacher_logits.shape[0]} "
            f"teacher and {student_logits.shape[0]} student samples"
        )
    t_a, t_b = teacher_logits.chunk(2, dim=0)
    s_a, s_b = student_logits.chunk(2, dim=0)
    return soft_ce(t_a, s_b) + weight * soft_ce(t_b, s_a)
