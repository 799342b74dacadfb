"""Class-mix masks (DACS-style) and the blend that applies them."""

from __future__ import annotations

import torch


def class_mix_mask(
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
    num_classes: int | None = None,
    draw_ignore: bool = False,
) -> torch.Tensor:
    """Class-mix mask of a label batch.

    For each image, draw ``floor(n / 2)`` of its ``n`` present classes (``ignore_index``
    excluded) uniformly without replacement; the mask is True where the label is a drawn
    class or ``ignore_index``. One scatter and one gather for the whole batch, no loop.
    With ``draw_ignore`` (the reference code's draw), ``ignore_index`` counts among the ``n``
    present classes when an image has it and can be drawn; it is in the mask either way, so
    drawing it pastes one class fewer.

    Args:
        labels: (B, H, W) integer label maps; labels other than ``ignore_index`` must be in
            ``[0, num_classes)``.
        generator: optional seeded generator, on ``labels``' device, for reproducible draws.
        ignore_index: the label value that marks unlabelled pixels.
        num_classes: the number of classes. Give it in a training step: without it the largest
            label is read from the device (a host sync).
        draw_ignore: let ``ignore_index`` take part in the draw (see above).

    Returns:
        (B, H, W) bool mask on ``labels``' device.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    labels = labels.long()
    b, device = labels.shape[0], labels.device
    valid = labels != ignore_index
    k = num_classes
    if k is None:  # read the largest label: a host sync
        k = int(torch.where(valid, labels, -1).max()) + 1 if labels.numel() else 0
    # K real classes plus one dummy bin per image that collects the ignore pixels.
    lab = torch.where(valid, labels, k).reshape(b, -1)  # (B, H*W) in [0, K]
    present = torch.zeros(b, k + 1, dtype=torch.bool, device=device).scatter_(1, lab, True)
    drawn = k + 1 if draw_ignore else k  # the dummy bin takes part in the draw, or not
    present = present[:, :drawn]  # (B, K) or (B, K + 1)

    # A uniform random ranking of the present classes; absent ones sort last.
    scores = torch.rand(b, drawn, generator=generator, device=device)
    scores = torch.where(present, scores, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    n_draw = present.sum(dim=1, keepdim=True) // 2  # (B, 1)
    chosen = torch.cat([(rank < n_draw)[:, :k], present.new_ones(b, 1)], dim=1)  # ignore -> True
    return chosen.gather(1, lab).view_as(labels)


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mask * a + (1 - mask) * b``.

    Args:
        mask: (B, H, W), bool (hard mix) or float in [0, 1] (soft mix).
        a, b: images (B, C, H, W) or label maps (B, H, W) of the same shape.

    Returns:
        The mixed tensor, shaped like ``a``. Bool masks use ``torch.where``, so labels keep
        their integer dtype.
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot mix tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)  # (B, 1, H, W), broadcast over channels
    elif a.dim() != mask.dim():
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit tensors of shape {tuple(a.shape)}"
        )
    if mask.dtype == torch.bool:
        return torch.where(mask, a, b)
    mask = mask.to(a.dtype)
    return mask * a + (1 - mask) * b
