"""DiGA itself: pure tensor functions named after the paper's ideas (no I/O, no optimiser)."""

from diga.method.augment import PhotometricAugment
from diga.method.centroids import (
    CentroidAccumulator,
    centroid_weights,
    class_feature_sums,
    consensus_pseudo_labels,
    per_image_class_means,
    threshold_pseudo_labels,
    update_centroids,
    update_centroids_per_image,
)
from diga.method.ema import EMATeacher, unwrap_model
from diga.method.fda import fda, low_frequency_band
from diga.method.losses import segmentation_ce, soft_ce, symmetric_distillation
from diga.method.mix import class_mix_mask, mix

__all__ = [
    "CentroidAccumulator",
    "EMATeacher",
    "PhotometricAugment",
    "centroid_weights",
    "class_feature_sums",
    "class_mix_mask",
    "consensus_pseudo_labels",
    "fda",
    "low_frequency_band",
    "mix",
    "per_image_class_means",
    "segmentation_ce",
    "soft_ce",
    "symmetric_distillation",
    "threshold_pseudo_labels",
    "unwrap_model",
    "update_centroids",
    "update_centroids_per_image",
]
