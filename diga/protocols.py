"""Which classes a model predicts, and how it is scored on a class protocol: the one place.

Every command where a model meets data, an override or another tool asks here: ``diga eval``,
``diga bench``, ``diga predict --classes``, ``diga export`` (its metadata and its evaluation),
``diga pseudo``, ``diga centroids`` and ``diga train selftrain --init``.

A model's classes are its checkpoint config's protocol (``data.classes``: 19, 16 or 13), or the
class names in an exported file's metadata. Labels are read in the finest protocol the data
holds (``label_protocol``): all 19 classes from Cityscapes / GTA5 label ids, SYNTHIA class ids,
BDD100K's train ids, Mapillary Vistas' classes (mapped by name) and the built-in benchmark; the
configured protocol's train ids from a folder layout.

Scoring goes by class name (``plan_scoring``):

- The protocol's classes are a subset of the model's (a 19-class model on the 16- or 13-class
  protocol): labels of the classes outside the protocol are ignored, and a prediction of a
  class outside it is no class of the protocol: a miss for the pixel's labelled class, a false
  positive for none. This is what cityscapesscripts' evaluator computes with those classes set
  to ``ignoreInEval``; dropping those pixels instead would reward a model for predicting
  classes the protocol does not have.
- The model's classes are a subset of the protocol's (a 16-class model on 19-class data): it
  is scored on its own protocol, the labels of the classes it does not know ignored.
- Anything else (other names, another class count): refused with one line.

Training on a model's outputs (pseudo-labels, centroids, self-training from a warm-up) needs
the same classes, in the same order: ``require_same_classes``, no mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from diga.data.classes import IGNORE_INDEX, PROTOCOLS, ClassProtocol, class_protocol, protocol_named
from diga.errors import UserError
from diga.metrics import SegMetrics, confusion_matrix, metrics_from_confusion

NONE_HINT = "use 19, 16 or 13"


def _names(names: Sequence[str], most: int = 4) -> str:
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])}, ... ({len(names)})"


def model_classes(saved_classes: int) -> tuple[str, ...]:
    """The classes a checkpoint's model predicts: its own config's ``data.classes``."""
    return class_protocol(saved_classes).names


def label_protocol(kind: str, data_classes: int) -> ClassProtocol:
    """The finest protocol labels of a layout ``kind`` can be read in: 19 from label / class
    ids (and BDD100K's 19 train ids, Mapillary's classes), the configured ``data.classes`` from
    a folder layout's train ids."""
    return class_protocol(data_classes if kind == "folder" else 19)


def parse_protocols(values: Sequence[str] | None, option: str = "--classes") -> list[int]:
    """``["16,13"]`` or ``["16", "13"]`` -> ``[16, 13]``; one clear error for anything else."""
    out: list[int] = []
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or int(part) not in PROTOCOLS:
                raise UserError(f"{option}: '{part}' is not a class protocol",
                                f"{NONE_HINT}, e.g. {option} 16,13")
            if int(part) not in out:
                out.append(int(part))
    return out


@dataclass(frozen=True)
class Scoring:
    """How a model's predictions are counted against labels, for one or more protocols.

    Confusion matrices are counted once, in the largest scored protocol (``common``) plus one
    column for predictions of no class of it; every protocol's metrics come from that matrix.
    """

    model_names: tuple[str, ...]
    labels: ClassProtocol  # the protocol the labels are read in
    protocols: tuple[ClassProtocol, ...]  # scored; the first is the main result
    data_classes: int  # the config's data.classes
    notes: tuple[str, ...] = ()

    @property
    def common(self) -> ClassProtocol:
        return max(self.protocols, key=lambda p: p.num_classes)

    @property
    def size(self) -> int:
        """Side of the confusion matrix: the common protocol's classes and 'none of them'."""
        return self.common.num_classes + 1

    @cached_property
    def pred_lut(self) -> np.ndarray:
        """(M,) int64: model class id -> common protocol id, or ``common.num_classes``."""
        names = self.common.names
        return np.array([names.index(c) if c in names else len(names) for c in self.model_names],
                        np.int64)

    @cached_property
    def label_lut(self) -> np.ndarray:
        """(256,) int64: label train id -> common protocol id, or 255."""
        names = self.common.names
        lut = np.full(256, IGNORE_INDEX, np.int64)
        lut[: self.labels.num_classes] = [names.index(c) if c in names else IGNORE_INDEX
                                          for c in self.labels.names]
        return lut

    def confusion(self, pred: Any, label: Any) -> Any:
        """(size, size) counts of predictions (model ids) against labels (label ids): numpy
        arrays, or torch tensors (counted on their device)."""
        if isinstance(pred, np.ndarray):
            return confusion_matrix(self.pred_lut[pred], self.label_lut[label], self.size)
        import torch  # the torch evaluation path only

        pred_lut = torch.as_tensor(self.pred_lut, device=pred.device)
        label_lut = torch.as_tensor(self.label_lut, device=label.device)
        return confusion_matrix(pred_lut[pred.long()], label_lut[label.long()], self.size)

    def metrics(self, conf: Any, conf_single: Any | None = None) -> SegMetrics:
        """The first protocol's metrics, the others in ``also``; ``conf_single`` (a multi-scale
        test's single-scale matrix) fills each one's ``single_scale``."""
        results = [self._metrics(p, conf) for p in self.protocols]
        if conf_single is not None:
            for result, p in zip(results, self.protocols, strict=True):
                result.single_scale = self._metrics(p, conf_single)
        first = results[0]
        first.also = tuple(results[1:])
        return first

    def _metrics(self, protocol: ClassProtocol, conf: Any) -> SegMetrics:
        conf = np.asarray(conf.cpu() if hasattr(conf, "cpu") else conf, np.int64)
        idx = [self.common.names.index(c) for c in protocol.names]
        rows = conf[idx]  # pixels labelled with one of the protocol's classes
        sub = np.zeros((protocol.num_classes + 1,) * 2, np.int64)
        sub[:-1, :-1] = rows[:, idx]
        sub[:-1, -1] = rows.sum(1) - rows[:, idx].sum(1)  # predicted as no class of it: a miss
        result = metrics_from_confusion(sub, protocol.names)
        if self.model_names != protocol.names:
            result.mapped_from = len(self.model_names)
        if self.data_classes != protocol.num_classes:
            result.data_classes = self.data_classes
        return result


def same_protocol(num_classes: int) -> Scoring:
    """A model scored on its own protocol, labels read in it: no mapping."""
    p = class_protocol(num_classes)
    return Scoring(p.names, p, (p,), num_classes)


def plan_scoring(model_names: Sequence[str], labels: ClassProtocol, requested: Sequence[int],
                 data_classes: int, where: str) -> Scoring:
    """How to score a model predicting ``model_names`` on the ``requested`` protocols, with
    labels read in ``labels``; see the module docstring for the rules.

    Raises:
        UserError: a protocol the model's classes cannot be mapped to, or one the labels do
            not hold.
    """
    model_names = tuple(model_names)
    own = protocol_named(model_names)
    chosen: list[ClassProtocol] = []
    notes: list[str] = []
    for n in requested or (data_classes,):
        if n not in PROTOCOLS:
            raise UserError(f"unknown class protocol {n}", NONE_HINT)
        protocol = class_protocol(n)
        missing = [c for c in protocol.names if c not in model_names]
        if missing and own is not None and own.num_classes < n:
            notes.append(f"{where} predicts {own.num_classes} classes, the data {n}: scored on its "
                         f"{own.num_classes} (labels of {_names(missing)} ignored)")
            protocol = own
        elif missing:
            raise UserError(
                f"{where} predicts {len(model_names)} classes ({_names(model_names)}), which are "
                f"not the {n}-class protocol's: it has no {_names(missing)}",
                "score it on a protocol whose classes it predicts (data.classes or --classes "
                "19, 16, 13), or on data labelled in its own classes")
        elif model_names != protocol.names:
            extra = [c for c in model_names if c not in protocol.names]
            notes.append(f"{where}: its {len(model_names)} classes scored on the {n}-class "
                         "protocol by name" + (f" ({_names(extra)} predicted: a miss; labelled: "
                                               "ignored)" if extra else " (another order)"))
        if protocol.num_classes not in [p.num_classes for p in chosen]:
            chosen.append(protocol)
    common = max(chosen, key=lambda p: p.num_classes)
    lacking = [c for c in common.names if c not in labels.names]
    if lacking:
        raise UserError(f"the labels are {labels.num_classes}-class train ids (data.classes="
                        f"{labels.num_classes}) with no {_names(lacking)}: the "
                        f"{common.num_classes}-class protocol cannot be scored on them",
                        f"score on the {labels.num_classes}-class protocol or a subset of it")
    return Scoring(model_names, labels, tuple(chosen), data_classes, tuple(notes))


def require_same_classes(model_names: Sequence[str], data_classes: int, where: str,
                         what: str) -> None:
    """Training on a model's outputs needs its own classes: refuse another ``data.classes``.

    Raises:
        UserError: the config's protocol is not the model's.
    """
    if tuple(model_names) != class_protocol(data_classes).names:
        raise UserError(f"{where} predicts {len(model_names)} classes but data.classes="
                        f"{data_classes}: {what} need the model's own classes",
                        f"drop the data.classes override (or set data.classes={len(model_names)})")
