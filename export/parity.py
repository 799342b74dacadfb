"""Does the exported model compute what PyTorch computes, and how well does it segment?

``check_frame_parity`` gives a frame graph and PyTorch the same target-domain frames: the
network's logits on the frame resized by the runtime's own function (identical inputs), and the
labels at the frame's size from the raw frame, against ``diga eval``'s rule in PyTorch (Pillow
resize to the run size, logits upsampled with align_corners to the frame, argmax).
``check_parity`` does the same for a model of the network alone (an older export).
``evaluate_model_file`` measures mIoU on the labelled target split through the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diga.config import Config
from diga.data.classes import class_protocol
from diga.data.samples import build_reader
from diga.protocols import label_protocol, plan_scoring
from diga.runtime import Segmenter
from diga.runtime.preprocess import TRAINED, RunSize

if TYPE_CHECKING:  # torch for the PyTorch side of parity only: eval of a file runs without it
    import torch


@dataclass
class TargetImage:
    image: np.ndarray  # RGB uint8 (H, W, 3) at its own size, as a camera delivers it
    label: np.ndarray  # uint8 (H, W) train ids / 255, at the label's own size
    name: str


class TargetImages(Sequence[TargetImage]):
    """Images of a target split, read from disk when indexed: a full-size Cityscapes val split
    does not fit in memory at once."""

    def __init__(self, cfg: Config, split: str, count: int | None, finest: bool = False) -> None:
        # at their own size: the runtime resizes them to the model's inference size itself, as
        # it does in an app; labels in data.classes, or in the finest protocol the layout holds
        # (``finest``: for scoring any model by class name, ``diga.protocols``)
        self.protocol = (label_protocol(cfg.data.target.kind, cfg.num_classes) if finest
                         else class_protocol(cfg.num_classes))
        self.data_classes = cfg.num_classes
        domain, split, self.source_only = frames_domain(cfg, split)
        self.dataset = build_reader(cfg, domain, split, classes=self.protocol.num_classes)
        n = len(self.dataset) if count is None else min(count, len(self.dataset))
        self.indices = [int(i) for i in np.linspace(0, len(self.dataset) - 1, n).round()] if n else []

    @property
    def has_labels(self) -> bool:  # source frames are never scored as the target
        return self.dataset.has_labels and not self.source_only

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> TargetImage:  # type: ignore[override]
        from diga.data.classes import IGNORE_INDEX

        index = self.indices[i]
        image, label = self.dataset.load(index)
        if label is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        return TargetImage(image=image, label=label, name=self.dataset.samples[index].name)


def frames_domain(cfg: Config, split: str) -> tuple[str, str, bool]:
    """(domain, split, source only) of the frames export and bench use: the target's split, or
    with no target (``data.target.kind=none``, domain generalisation) the source's train
    images, for calibration, parity and timing only (they are never scored as the target)."""
    if cfg.data.target.kind == "none":
        return "source", "train", True
    return "target", split, False


def target_images(cfg: Config, split: str, count: int | None,
                  finest: bool = False) -> TargetImages:
    """``count`` images of the target domain's ``split`` (all when None), spread over it, at
    their own size; ``finest``: labels in the finest protocol the layout holds."""
    return TargetImages(cfg, split, count, finest)


@dataclass
class ParityReport:
    file: str
    images: int
    pixel_agreement: float  # % of pixels whose class agrees with PyTorch
    max_abs_logit_diff: float | None  # None for models that output labels
    mean_abs_logit_diff: float | None
    provider: str
    max_abs_logit: float | None = None  # the reference's largest |logit|: the diff's scale

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_frame_labels(model: torch.nn.Module, info: Any, frame: np.ndarray,
                       run_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's labels for an RGB uint8 frame by ``diga eval``'s rule, and its feature-grid
    logits (C, h, w): the frame resized to ``run_size`` with the runtime's function,
    normalised, the model, logits upsampled (align_corners) to the frame's size, argmax."""
    import torch
    import torch.nn.functional as F

    from diga.data.datasets import normalize
    from diga.runtime.preprocess import resize_rgb

    x = torch.from_numpy(np.array(resize_rgb(frame, run_size))).permute(2, 0, 1)[None]  # a copy
    param = next(model.parameters())
    with torch.no_grad():
        logits = model(normalize(x.to(param.device), info.mean, info.std)).logits
        labels = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=True)
    return labels.argmax(1)[0].to(torch.uint8).cpu().numpy(), logits[0].float().cpu().numpy()


def check_frame_parity(model: torch.nn.Module, model_path: Path,
                       images: Sequence[TargetImage], backend: str = "cpu") -> ParityReport:
    """Compare a frame graph with PyTorch on target frames at their own size.

    Logits: the file's feature-grid logits for the frame resized to the run size by the
    runtime's own function, given as the frame (the in-graph resize is then the identity), vs
    PyTorch's on the same pixels. Labels: the file's labels for the raw frame, at its size,
    vs PyTorch by ``diga eval``'s rule.
    """
    from diga.runtime.frames import LOGITS, frame_feeds
    from diga.runtime.preprocess import resize_rgb

    model = model.eval()
    agree = total = 0
    max_diff = max_ref = diff_sum = 0.0
    with Segmenter(model_path, backend=backend) as seg:
        for item in images:
            run = seg.run_size(item.image.shape[:2])
            ref_labels, ref_logits = torch_frame_labels(model, seg.info, item.image, run)
            resized = resize_rgb(item.image, run)
            feeds = frame_feeds(seg.info, [resized], run, run)
            got_logits = seg._model.run_named(feeds, [LOGITS])[0][0]
            diff = np.abs(ref_logits - got_logits.astype(np.float32))
            max_diff, diff_sum = max(max_diff, float(diff.max())), diff_sum + float(diff.mean())
            max_ref = max(max_ref, float(np.abs(ref_logits).max()))
            labels = seg.segment([item.image])[0].labels
            agree += int((labels == ref_labels).sum())
            total += ref_labels.size
        provider = seg.provider
    n = len(images)
    return ParityReport(file=Path(model_path).name, images=n,
                        pixel_agreement=100.0 * agree / max(total, 1), max_abs_logit_diff=max_diff,
                        mean_abs_logit_diff=diff_sum / max(n, 1), provider=provider,
                        max_abs_logit=max_ref)


def check_parity(reference: torch.nn.Module, model_path: Path, images: Sequence[TargetImage],
                 backend: str = "cpu") -> ParityReport:
    """Compare ``reference`` (the exported wrapper, float32 PyTorch) with an exported model of
    the network alone. Both get the identical input tensor, the runtime's preprocessing of each
    image.
    """
    import torch

    reference = reference.eval()
    agree = total = 0
    max_diff = max_ref = 0.0
    diff_sum = 0.0
    with Segmenter(model_path, backend=backend) as seg:
        logits = seg.info.output_kind == "logits"
        for item in images:
            batch, _ = seg.prepare([item.image])
            got = seg.run(batch)
            with torch.no_grad():
                ref = reference(torch.from_numpy(batch)).numpy()
            if logits:
                diff = np.abs(ref.astype(np.float32) - got.astype(np.float32))
                max_diff = max(max_diff, float(diff.max()))
                max_ref = max(max_ref, float(np.abs(ref).max()))
                diff_sum += float(diff.mean())
                ref, got = ref.argmax(1), got.argmax(1)
            agree += int((ref == got).sum())
            total += ref.size
        provider = seg.provider
    n = len(images)
    return ParityReport(
        file=Path(model_path).name, images=n,
        pixel_agreement=100.0 * agree / max(total, 1),
        max_abs_logit_diff=max_diff if logits else None,
        mean_abs_logit_diff=diff_sum / max(n, 1) if logits else None,
        provider=provider, max_abs_logit=max_ref if logits else None)


def evaluate_model_file(path: Path, images: TargetImages, requested: Sequence[int] = (),
                        data_classes: int | None = None, backend: str = "cpu",
                        size: RunSize = TRAINED,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """mIoU (%) of a model file on labelled images through the runtime, and its time per image.

    Images at their own size go in as an app gives them; the runtime runs them at ``size``
    (default: the model's trained scale) and returns labels at the labels' size. The model's
    class names (its metadata) are scored on the ``requested`` protocols (default
    ``data_classes``, the config's) by name (``diga.protocols.plan_scoring``); ``notes`` says
    where they were mapped. The time is a rough figure (first run included); ``diga bench``
    measures latency properly.

    Raises:
        UserError: the model's classes cannot be scored on a requested protocol.
    """
    data_classes = data_classes or images.data_classes
    with Segmenter(path, backend=backend, size=size) as seg:
        scoring = plan_scoring(seg.info.class_names, images.protocol, requested, data_classes,
                               Path(path).name)
        conf = np.zeros((scoring.size, scoring.size), np.int64)
        start = time.perf_counter()
        for done, item in enumerate(images, start=1):
            pred = seg(item.image, out_size=item.label.shape)
            conf += scoring.confusion(pred.astype(np.int64), item.label.astype(np.int64))
            if progress is not None:
                progress(done, len(images))
        elapsed = time.perf_counter() - start
        provider, described = seg.provider, seg.describe()
    return {"file": Path(path).name, "images": len(images), **scoring.metrics(conf).as_dict(),
            "ms_per_image": 1000.0 * elapsed / max(len(images), 1), "provider": provider,
            "runs": described, "notes": list(scoring.notes)}
