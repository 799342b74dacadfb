"""Class centroids and threshold-free pseudo-label selection (bilateral consensus)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centroid_weights(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``softmax_c(-||f - mu_c||_2)`` per pixel.

    Args:
        features: (B, F, h, w).
        centroids: (C, F).

    Returns:
        (B, C, h, w) weights summing to 1 over classes.
    """
    centroids = centroids.to(features.dtype)
    f_sq = features.pow(2).sum(dim=1, keepdim=True)  # (B, 1, h, w)
    mu_sq = centroids.pow(2).sum(dim=1).view(1, -1, 1, 1)  # (1, C, 1, 1)
    dot = torch.einsum("bfhw,cf->bchw", features, centroids)  # (B, C, h, w)
    dist = (f_sq - 2 * dot + mu_sq).clamp_min(0).sqrt()
    return (-dist).softmax(dim=1)


def consensus_pseudo_labels(
    pseudo_labels: torch.Tensor,
    features: torch.Tensor,
    centroids: torch.Tensor,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Keep the pseudo-labels that the nearest centroid agrees with; ignore the rest.

    Args:
        pseudo_labels: (B, H, W) offline pseudo-labels.
        features: (B, F, h, w) teacher features of the same images.
        centroids: (C, F).

    Returns:
        (B, H, W) long: ``pseudo_labels`` where they equal the centroid argmax (weights
        upsampled bilinearly, align_corners=True, to (H, W)), ``ignore_index`` elsewhere.
    """
    weights = centroid_weights(features, centroids)  # (B, C, h, w)
    if weights.shape[-2:] != pseudo_labels.shape[-2:]:
        weights = F.interpolate(
            weights, size=pseudo_labels.shape[-2:], mode="bilinear", align_corners=True
        )
    p_feat = weights.argmax(dim=1)  # (B, H, W)
    pseudo_labels = pseudo_labels.long()
    keep = (pseudo_labels == p_feat) & (pseudo_labels != ignore_index)
    return torch.where(keep, pseudo_labels, torch.full_like(pseudo_labels, ignore_index))


def threshold_pseudo_labels(
    logits: torch.Tensor, threshold: float, ignore_index: int = 255
) -> torch.Tensor:
    """Ablation: argmax of (B, C, H, W) logits where the max softmax >= ``threshold``."""
    confidence, labels = logits.softmax(dim=1).max(dim=1)  # (B, H, W) each
    return torch.where(confidence >= threshold, labels, torch.full_like(labels, ignore_index))


def _per_image_class_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature sums (B, C, F) and pixel counts (B, C) per image and class.

    Labels outside ``[0, num_classes)`` (``ignore_index`` included) are left out. One
    batched matmul with a one-hot map: faster on CPU than ``index_add_`` (5 ms vs 10 ms at
    B=2, F=256, 64x112, C=19).
    """
    if features.shape[0] != labels.shape[0] or features.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match features {tuple(features.shape)}; "
            "downsample the labels (nearest) to the feature resolution first"
        )
    b, f = features.shape[:2]
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    labels = torch.where(valid, labels, num_classes).reshape(b, -1)  # (B, N), dummy class C
    one_hot = F.one_hot(labels, num_classes + 1)[..., :num_classes]  # (B, N, C)
    counts = one_hot.sum(dim=1)  # (B, C)
    sums = torch.bmm(features.reshape(b, f, -1), one_hot.to(features.dtype))  # (B, F, C)
    return sums.transpose(1, 2), counts


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums and pixel counts over a batch.

    Args:
        features: (B, F, h, w).
        labels: (B, h, w) at feature resolution; ``ignore_index`` (and any label outside
            ``[0, num_classes)``) is left out.

    Returns:
        sums (C, F) in the features' dtype, counts (C,) int64.
    """
    sums, counts = _per_image_class_sums(features, labels, num_classes, ignore_index)
    return sums.sum(dim=0), counts.sum(dim=0)


def update_centroids(
    centroids: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    momentum: float,
    min_pixels: int = 5,
) -> torch.Tensor:
    """``mu_c <- (1-m) mu_c + m * sums_c / counts_c`` for classes with >= ``min_pixels``.

    Other classes keep their centroid. Returns a new (C, F) tensor.
    """
    counts = counts.to(centroids.device)
    mean = sums.to(centroids.dtype) / counts.clamp_min(1).unsqueeze(1).to(centroids.dtype)
    updated = (1 - momentum) * centroids + momentum * mean
    return torch.where((counts >= min_pixels).unsqueeze(1), updated, centroids)


def per_image_class_means(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    min_pixels: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's mean feature per class, and which (image, class) pairs count.

    Args:
        features: (N, F, h, w).
        labels: (N, h, w) at feature resolution; ``ignore_index`` and labels outside
            ``[0, num_classes)`` are left out.

    Returns:
        means (N, C, F) in the features' dtype (zeros where a class is absent) and valid
        (N, C) bool: the class has >= ``min_pixels`` pixels in the image and its mean does
        not sum to 0 (the reference skips such a vector: an all-zero feature).
    """
    sums, counts = _per_image_class_sums(features, labels, num_classes, ignore_index)
    means = sums / counts.clamp_min(1).unsqueeze(2).to(sums.dtype)  # (N, C, F)
    valid = (counts >= min_pixels) & (means.sum(dim=2) != 0)
    return means, valid


def update_centroids_per_image(
    centroids: torch.Tensor, means: torch.Tensor, valid: torch.Tensor, momentum: float
) -> torch.Tensor:
    """One ``mu_c <- (1-m) mu_c + m v`` per valid (image, class) pair, images in order.

    The reference loops over the images, and over each image's classes, updating one
    centroid at a time. The updates of a class compose to
    ``(1-m)^k mu_c + m * sum_i (1-m)^(k - r_i) v_i`` (k valid images, r_i the rank of image i
    among them), which is what this computes, with no loop and no host read.

    Args:
        centroids: (C, F).
        means: (N, C, F) per-image class means, in update order.
        valid: (N, C) bool: which pairs update.

    Returns:
        A new (C, F) tensor.
    """
    valid = valid.to(centroids.device)
    keep = 1.0 - momentum
    steps = valid.to(torch.float64)  # (N, C)
    k = steps.sum(dim=0)  # (C,) updates per class
    rank = steps.cumsum(dim=0)  # (N, C): 1 for the first valid image of a class, ...
    weights = momentum * torch.pow(keep, k - rank) * steps  # (N, C)
    new = torch.pow(keep, k).unsqueeze(1) * centroids.double() + torch.einsum(
        "nc,ncf->cf", weights, means.to(centroids.device).double())
    return new.to(centroids.dtype)


class CentroidAccumulator:
    """Per-class feature means over a dataset (the offline centroid pass).

    Each pixel is labelled with the model's own argmax at feature resolution; a class
    with fewer than ``min_pixels`` pixels in an image is skipped for that image.
    ``weighting="image"`` (the reference) averages each image's class mean, every image
    weighing the same; ``"pixel"`` averages over the pixels of all images, so large regions
    weigh more. Sums are kept in float64 so long passes do not lose precision; ``counts`` are
    images (``image``) or pixels (``pixel``) per class.
    """

    def __init__(self, num_classes: int, feat_dim: int, min_pixels: int = 5,
                 weighting: str = "image") -> None:
        if weighting not in ("image", "pixel"):
            raise ValueError(f"weighting must be 'image' or 'pixel', got {weighting!r}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.min_pixels = min_pixels
        self.weighting = weighting
        self.sums = torch.zeros(num_classes, feat_dim, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.int64)

    @torch.no_grad()
    def add(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        """Accumulate a batch: features (B, F, h, w), logits (B, C, h', w')."""
        if features.shape[1] != self.feat_dim or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected {self.feat_dim}-d features and {self.num_classes}-class logits, got "
                f"features {tuple(features.shape)} and logits {tuple(logits.shape)}"
            )
        if logits.shape[-2:] != features.shape[-2:]:
            logits = F.interpolate(
                logits, size=features.shape[-2:], mode="bilinear", align_corners=True
            )
        labels = logits.argmax(dim=1)  # (B, h, w)
        sums, counts = _per_image_class_sums(features, labels, self.num_classes,
                                             ignore_index=-1)  # (B, C, F), (B, C)
        keep = counts >= self.min_pixels  # (B, C)
        if self.weighting == "image":  # each image's class mean counts once (as the reference,
            sums = sums.double() / counts.clamp_min(1).unsqueeze(2)  # which skips zero means)
            keep &= sums.sum(dim=2) != 0
            counts = keep.long()
        sums = (sums * keep.unsqueeze(2)).sum(dim=0)  # (C, F)
        counts = (counts * keep).sum(dim=0)  # (C,)
        if self.sums.device != features.device:
            self.sums = self.sums.to(features.device)
            self.counts = self.counts.to(features.device)
        self.sums += sums.double()
        self.counts += counts

    def centroids(self) -> torch.Tensor:
        """(C, F) float32 means; classes never seen are zeros."""
        mean = self.sums / self.counts.clamp_min(1).unsqueeze(1)
        return mean.float()
