"""Evaluation on a labelled split: one confusion matrix, optional multi-scale and flip test;
and ``TorchSegmenter``, a checkpoint behind the runtime's image-in, labels-out contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diga.config import Config
from diga.data.classes import class_protocol
from diga.data.datasets import SegDataset, eval_loader, normalize
from diga.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from diga.train.distributed import current


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, out_size: tuple[int, int],
                   mean: tuple[float, ...], std: tuple[float, ...],
                   scales: tuple[float, ...] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Logits (B, C, H, W) at ``out_size``: max over scales (and flips) of upsampled logits.

    Args:
        images: uint8 (B, 3, h, w) on the model's device.
    """
    x = normalize(images, mean, std)
    fused = None
    for scale in scales:
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                  align_corners=True)
        views = [xs, xs.flip(-1)] if flip else [xs]
        for i, view in enumerate(views):
            logits = model(view).logits
            if i == 1:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=True)
            fused = logits if fused is None else torch.maximum(fused, logits)
    return fused


def evaluate(model: torch.nn.Module, dataset: SegDataset, cfg: Config, device: torch.device,
             save_predictions: Path | None = None,
             progress: Callable[[int, int], None] | None = None,
             max_images: int | None = None) -> SegMetrics:
    """mIoU of ``model`` on a labelled split (target val), from one summed confusion matrix.

    ``save_predictions`` writes Cityscapes labelId PNGs named after the input images. Under
    torchrun each rank predicts its share of the images and the matrices are summed over
    ranks, so every rank returns the metrics of the whole split. ``model`` must be the plain
    module (not DDP-wrapped): shards may differ in length, so no collective runs per batch.
    """
    protocol = class_protocol(cfg.num_classes)
    dist = current()
    was_training = model.training
    model.eval()
    count = min(len(dataset), max_images) if max_images else len(dataset)
    indices = dist.shard(count) if max_images or dist.enabled else None
    loader = eval_loader(dataset, cfg.eval.batch_size, cfg.data.num_workers, indices)
    conf = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.long, device=device)
    done, total = 0, len(indices) if indices is not None else len(dataset)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        logits = predict_logits(model, images, tuple(labels.shape[-2:]), cfg.data.mean,
                                cfg.data.std, tuple(cfg.eval.scales), cfg.eval.flip)
        pred = logits.argmax(1)
        conf += confusion_matrix(pred, labels, cfg.num_classes)
        if save_predictions is not None:
            _save_label_ids(save_predictions, dataset, batch["index"].tolist(), pred,
                            protocol.train_to_label_id)
        done += len(images)
        if progress is not None:
            progress(done, total)
    model.train(was_training)
    return metrics_from_confusion(dist.all_reduce_sum(conf), protocol.names)


def _save_label_ids(out: Path, dataset: SegDataset, indices: list[int], pred: torch.Tensor,
                    train_to_label_id: np.ndarray) -> None:
    from PIL import Image

    from diga.io import atomic_write

    label_ids = train_to_label_id[pred.cpu().numpy()]  # (B, H, W) Cityscapes label ids
    for index, ids in zip(indices, label_ids, strict=True):
        name = Path(dataset.samples[index].name)
        stem = name.name.removesuffix("_leftImg8bit.png").rsplit(".", 1)[0]
        path = out / name.parent / f"{stem}_pred_labelIds.png"
        atomic_write(path, lambda p, ids=ids: Image.fromarray(ids.astype(np.uint8)).save(p, format="PNG"))


class TorchSegmenter:
    """A checkpoint through PyTorch with ``diga.runtime.Segmenter``'s contract: an RGB image of
    any size in, train-id labels at its size out, run at the trained scale.

    The image is resized with the runtime's own function to the size the model was trained and
    evaluated at (``Config.inference_size``), then predicted as ``diga eval`` predicts
    (``eval.scales``, ``eval.flip``, logits upsampled to the output size before the argmax).

    Args:
        size: ``trained`` (default), ``native`` (the image's own size) or an (H, W).
    """

    def __init__(self, path: Path, device: torch.device | str = "cpu", size: Any = "trained") -> None:
        from diga.checkpoint import load_model
        from diga.runtime import ModelInfo
        from diga.runtime.preprocess import check_run_size

        self.device = torch.device(device)
        self.model, self.cfg, self.checkpoint = load_model(path, self.device)
        protocol = class_protocol(self.cfg.num_classes)
        self.info = ModelInfo(protocol.names, protocol.palette, tuple(self.cfg.data.mean),
                              tuple(self.cfg.data.std), inference_size=self.cfg.inference_size)
        self.size = check_run_size(self.info, size, str(path))

    @torch.no_grad()
    def __call__(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> uint8 (H, W) train ids (or at ``out_size``)."""
        from diga.runtime.preprocess import to_model_size

        resized = to_model_size(image, self.info, self.size)  # (h, w, 3) at the run size
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].to(self.device)
        logits = predict_logits(self.model, x, tuple(out_size or image.shape[:2]), self.cfg.data.mean,
                                self.cfg.data.std, tuple(self.cfg.eval.scales), self.cfg.eval.flip)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
