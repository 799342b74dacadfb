"""Segmentation metrics from one confusion matrix summed over the whole split.

``confusion_matrix`` works on torch tensors (on the device) and on numpy arrays, so the
torch-free benchmark harness computes mIoU the same way ``diga eval`` does. A class absent from
both ground truth and prediction gets IoU NaN and is left out of the mean (Cityscapes
convention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = 255) -> Any:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; one bincount.

    Works with torch tensors (stays on their device) or numpy arrays.
    """
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid] * num_classes + pred[valid]
    if isinstance(index, np.ndarray):
        counts = np.bincount(index.astype(np.int64), minlength=num_classes**2)
        return counts[: num_classes**2].reshape(num_classes, num_classes)
    index = index.long().clamp_(0, num_classes**2 - 1)
    import torch  # only on the torch path

    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class SegMetrics:
    iou: np.ndarray  # (C,), NaN for classes absent from ground truth and prediction
    miou: float
    pixel_acc: float
    class_names: tuple[str, ...]
    # a multi-scale / flip test's single-scale result from the same pass (the deployed model's)
    single_scale: SegMetrics | None = None
    # scored on another protocol than the model's own (``diga.protocols``): the model's class
    # count where its predictions were mapped by name, the data's where its labels were
    mapped_from: int | None = None
    data_classes: int | None = None
    # more protocols from the same pass (``diga eval --classes 16,13``)
    also: tuple[SegMetrics, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def miou_over(self, names: tuple[str, ...]) -> float:
        """Mean IoU over the named classes (NaN ones left out), from this result's IoUs."""
        values = [v for n, v in zip(self.class_names, self.iou, strict=True)
                  if n in names and not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def miou13(self) -> float | None:
        """SYNTHIA -> Cityscapes also reports the mean over 13 of its 16 classes (wall, fence
        and pole left out) of the 16-class IoUs; None for other protocols."""
        from diga.data.classes import class_protocol  # numpy only

        if self.class_names != class_protocol(16).names:
            return None
        return self.miou_over(class_protocol(13).names)

    def as_dict(self) -> dict[str, Any]:
        """JSON: ``classes`` (and ``mapped_from`` / ``data_classes`` where mapped), the mIoU, the
        per-class IoUs; with ``also``, ``class_protocols`` holds every protocol by class count."""
        out: dict[str, Any] = {"classes": self.num_classes}
        if self.mapped_from is not None:
            out["mapped_from"] = self.mapped_from
        if self.data_classes is not None:
            out["data_classes"] = self.data_classes
        out["miou"] = self.miou
        if self.miou13 is not None:
            out["miou13"] = self.miou13
        out["pixel_acc"] = self.pixel_acc
        out["iou"] = {n: (None if np.isnan(v) else float(v))
                      for n, v in zip(self.class_names, self.iou, strict=True)}
        if self.single_scale is not None:
            out["single_scale"] = {k: v for k, v in self.single_scale.as_dict().items()
                                   if k in ("miou", "miou13", "pixel_acc")}
        if self.also:
            out["class_protocols"] = {str(m.num_classes): m.as_dict()
                                for m in (replace(self, also=()), *self.also)}
        return out


def metrics_from_confusion(conf: Any, class_names: tuple[str, ...]) -> SegMetrics:
    """Per-class IoU, mIoU (in %) and pixel accuracy (in %).

    ``conf`` is (C, C) for C ``class_names``, or (C + 1, C + 1) whose last column counts
    predictions of no class of the protocol (a model scored on a subset of its classes,
    ``diga.protocols``): a miss for the labelled class, a false positive for none. Its last
    row must be empty (no label is outside the protocol).
    """
    conf = np.asarray(conf.cpu() if hasattr(conf, "cpu") else conf, dtype=np.float64)
    c = len(class_names)
    if conf.shape not in ((c, c), (c + 1, c + 1)):
        raise ValueError(f"a confusion matrix of {conf.shape} for {c} classes")
    tp = np.diag(conf)[:c]
    union = conf[:c, :c].sum(0) + conf[:c].sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100.0
    total = conf[:c].sum()
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    pixel_acc = float(tp.sum() / total * 100.0) if total > 0 else float("nan")
    return SegMetrics(iou=iou, miou=miou, pixel_acc=pixel_acc, class_names=tuple(class_names))
