"""What a model says about an image: labels, and where it has logits, how sure it is.

``Prediction`` holds the label map and, on request, two per-pixel maps from the softmax of
the logits: ``confidence`` (the top class's probability) and ``uncertainty`` (the entropy
over the classes divided by log C: 0 where one class has all the mass, 1 where the logits
are flat). ``class_report`` turns a prediction into the area share and the mean confidence
of each class: what a JSON report or a dashboard shows. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diga.runtime.metadata import ModelInfo
from diga.runtime.preprocess import resize_labels, resize_logits


@dataclass
class Prediction:
    """One image's labels (H, W) uint8 train ids and, where asked and the model gives logits,
    its confidence and normalised-entropy uncertainty maps (H, W) float32 in [0, 1]."""

    labels: np.ndarray
    confidence: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def softmax_maps(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) logits -> (confidence, uncertainty), each (H, W) float32 in [0, 1]."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=0)
    p = e / total
    confidence = p.max(axis=0)
    # entropy = log(sum e) - sum p * z (z shifted: the max is 0), divided by log C
    entropy = np.log(total) - (p * z).sum(axis=0)
    classes = logits.shape[0]
    uncertainty = entropy / np.float32(np.log(classes)) if classes > 1 else np.zeros_like(entropy)
    return confidence.astype(np.float32), np.clip(uncertainty, 0.0, 1.0).astype(np.float32)


def upsample_align_corners(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (C, H, W), bilinear with align_corners: the frame graph's rule and
    ``diga eval``'s (torch's ``interpolate(..., align_corners=True)``), on the host."""
    logits = logits.astype(np.float32, copy=False)
    if logits.shape[1:] == tuple(size):
        return logits

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ratio = np.float32((n_in - 1) / max(n_out - 1, 1))
        src = np.arange(n_out, dtype=np.float32) * ratio
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo.astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(logits.shape[1], size[0]), axis(logits.shape[2], size[1])
    rows = logits[:, y0] + (logits[:, y1] - logits[:, y0]) * wy[None, :, None]  # (C, H, w)
    return rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * wx  # (C, H, W)


def frame_prediction(labels: np.ndarray, logits: np.ndarray | None,
                     out_size: tuple[int, int] | None = None,
                     uncertainty: bool = False) -> Prediction:
    """One image's frame-graph outputs -> ``Prediction`` at ``out_size``.

    ``labels`` (H, W) come from the graph at the frame's size. Where ``out_size`` is another
    size, or confidence maps are asked for, the feature-grid ``logits`` (C, h, w) are upsampled
    here by the same rule (align_corners bilinear, then argmax).
    """
    size = tuple(out_size) if out_size is not None else labels.shape
    if size == labels.shape and not uncertainty:
        return Prediction(labels)
    if logits is None:
        raise ValueError("the frame graph's logits are needed for another size or confidence")
    full = upsample_align_corners(logits, size)
    labels = labels if size == labels.shape else full.argmax(0).astype(np.uint8)
    if not uncertainty:
        return Prediction(labels)
    return Prediction(labels, *softmax_maps(full))


def prediction_from_output(output: np.ndarray, info: ModelInfo,
                           out_size: tuple[int, int] | None = None,
                           uncertainty: bool = False) -> Prediction:
    """One image's model output -> ``Prediction`` at ``out_size`` (None: the output's size).

    ``output`` is (C, h, w) logits or an (h, w) label map. Logits are resized bilinearly
    before the argmax (sharper borders than resizing labels); label maps by nearest neighbour
    and carry no confidence.
    """
    if info.output_kind != "logits":
        labels = output.astype(np.uint8, copy=False)
        return Prediction(resize_labels(labels, out_size) if out_size is not None else labels)
    logits = output.astype(np.float32, copy=False)
    if out_size is not None:
        logits = resize_logits(logits, out_size)
    labels = logits.argmax(0).astype(np.uint8)
    if not uncertainty:
        return Prediction(labels)
    confidence, entropy = softmax_maps(logits)
    return Prediction(labels, confidence, entropy)


def class_report(prediction: Prediction, names: tuple[str, ...]) -> dict[str, Any]:
    """Per class present: its share of the image's pixels and, where known, the mean
    confidence over its pixels; the image's mean confidence and uncertainty. Classes by area,
    largest first."""
    labels = prediction.labels.ravel()
    total = labels.size
    counts = np.bincount(labels, minlength=256)
    conf_sums = (np.bincount(labels, weights=prediction.confidence.ravel(), minlength=256)
                 if prediction.confidence is not None else None)
    classes: dict[str, dict[str, float]] = {}
    for class_id in np.argsort(-counts, kind="stable"):
        count = int(counts[class_id])
        if count == 0:
            break
        name = names[class_id] if class_id < len(names) else f"id {class_id}"
        entry = {"id": int(class_id), "area": count / total}
        if conf_sums is not None:
            entry["confidence"] = float(conf_sums[class_id] / count)
        classes[name] = entry
    report: dict[str, Any] = {"size": list(prediction.labels.shape), "classes": classes}
    if prediction.confidence is not None:
        report["mean_confidence"] = float(prediction.confidence.mean())
    if prediction.uncertainty is not None:
        report["mean_uncertainty"] = float(prediction.uncertainty.mean())
    return report
