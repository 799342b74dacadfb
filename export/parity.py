"""Does the exported model compute what PyTorch computes, and how well does it segment?

``check_parity`` feeds the same target-domain images, prepared by the runtime's own
preprocessing, to the PyTorch graph that was exported and to onnxruntime, and reports the
largest logit difference and the share of pixels whose class agrees. ``evaluate_model_file``
measures mIoU on the labelled target split through the runtime (any .onnx / .engine).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diga.config import Config
from diga.data.classes import class_protocol
from diga.data.datasets import build_dataset
from diga.metrics import confusion_matrix, metrics_from_confusion
from diga.runtime import Segmenter


@dataclass
class TargetImage:
    image: np.ndarray  # RGB uint8 (H, W, 3), as the model sees it (after the domain's resize)
    label: np.ndarray  # uint8 (H, W) train ids / 255, at the label's own size
    name: str


def target_images(cfg: Config, split: str, count: int | None) -> list[TargetImage]:
    """``count`` images of the target domain's ``split`` (all when None), spread over it."""
    dataset = build_dataset(cfg, "target", split, train=False)
    n = len(dataset) if count is None else min(count, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, n).round().astype(int) if n else []
    out = []
    for index in indices:
        item = dataset[int(index)]
        out.append(TargetImage(image=item["image"].permute(1, 2, 0).numpy(),
                               label=item["label"].numpy(), name=dataset.samples[int(index)].name))
    return out


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


@torch.no_grad()
def check_parity(reference: torch.nn.Module, model_path: Path, images: list[TargetImage],
                 backend: str = "cpu") -> ParityReport:
    """Compare ``reference`` (the exported wrapper, float32 PyTorch) with an exported model.

    Both get the identical input tensor, the runtime's preprocessing of each image.
    """
    reference = reference.eval()
    agree = total = 0
    max_diff = max_ref = 0.0
    diff_sum = 0.0
    with Segmenter(model_path, backend=backend) as seg:
        logits = seg.info.output_kind == "logits"
        for item in images:
            batch, _ = seg.prepare([item.image])
            got = seg.run(batch)
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


def evaluate_model_file(path: Path, images: list[TargetImage], num_classes: int,
                        backend: str = "cpu") -> dict[str, Any]:
    """mIoU (%) of a model file on labelled images through the runtime, and its time per image.

    The time is a rough figure (first run included); ``diga bench`` measures latency properly.
    """
    conf = np.zeros((num_classes, num_classes), np.int64)
    with Segmenter(path, backend=backend) as seg:
        start = time.perf_counter()
        for item in images:
            pred = seg(item.image, out_size=item.label.shape)
            conf += confusion_matrix(pred.astype(np.int64), item.label.astype(np.int64), num_classes)
        elapsed = time.perf_counter() - start
        provider = seg.provider
    metrics = metrics_from_confusion(conf, class_protocol(num_classes).names)
    return {"file": Path(path).name, "images": len(images), "miou": metrics.miou,
            "pixel_acc": metrics.pixel_acc, "ms_per_image": 1000.0 * elapsed / max(len(images), 1),
            "provider": provider}
