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
from diga.data.classes import CITYSCAPES_CLASSES, class_protocol
from diga.data.datasets import SegDataset, eval_loader, normalize
from diga.data.layouts import sample_stem
from diga.metrics import SegMetrics
from diga.protocols import Scoring, same_protocol
from diga.train.distributed import current


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, out_size: tuple[int, int],
                   mean: tuple[float, ...], std: tuple[float, ...],
                   scales: tuple[float, ...] = (1.0,), flip: bool = False,
                   views: dict[float, torch.Tensor] | None = None,
                   with_single: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, C, H, W) at ``out_size``: max over scales (and flips) of upsampled logits.

    Args:
        images: uint8 (B, 3, h, w) on the model's device: the scale-1 view (the run size).
        views: uint8 images at the other scales, each resized from the full image (the
            dataset's ``views``, ``scale_views``); required for every scale but 1.
        with_single: also return the scale-1 unflipped logits: what the deployed model,
            which runs one scale, predicts.
    """
    single = None
    fused = None
    for scale in scales:
        if scale == 1.0:
            x = normalize(images, mean, std)
        elif views is not None and scale in views:
            x = normalize(views[scale].to(images.device), mean, std)
        else:
            raise ValueError(f"scale {scale} needs its view (build the dataset with scales=...)")
        for flipped in ((False, True) if flip else (False,)):
            logits = model(x.flip(-1) if flipped else x).logits
            logits = F.interpolate(logits.flip(-1) if flipped else logits, size=out_size,
                                   mode="bilinear", align_corners=True)
            if scale == 1.0 and not flipped:
                single = logits
            fused = logits if fused is None else torch.maximum(fused, logits)
    if not with_single:
        return fused
    if single is None:
        single = predict_logits(model, images, out_size, mean, std)
    return fused, single


def batch_views(batch: dict, device: torch.device) -> dict[float, torch.Tensor] | None:
    """A loader batch's multi-scale ``views`` (see ``build_dataset(scales=...)``) on ``device``."""
    views = batch.get("views")
    return {float(s): v.to(device, non_blocking=True) for s, v in views.items()} if views else None


def evaluate(model: torch.nn.Module, dataset: SegDataset, cfg: Config, device: torch.device,
             save_predictions: Path | None = None,
             progress: Callable[[int, int], None] | None = None,
             max_images: int | None = None, scoring: Scoring | None = None) -> SegMetrics:
    """mIoU of ``model`` on a labelled split (target val), from one summed confusion matrix.

    With a multi-scale or flip test (``eval.scales``, ``eval.flip``; build the dataset with
    ``scales=cfg.eval.scales``) the result's ``single_scale`` holds the single-scale metrics
    from the same pass: what the deployed model, which runs one scale, gets.
    ``save_predictions`` writes Cityscapes labelId PNGs named after the input images. Under
    torchrun each rank predicts its share of the images and the matrices are summed over
    ranks, so every rank returns the metrics of the whole split. ``model`` must be the plain
    module (not DDP-wrapped): shards may differ in length, so no collective runs per batch.
    ``scoring`` (``diga.protocols.plan_scoring``; default: the model's own protocol, labels
    read in it) scores the predictions on other protocols by class name, the first one's
    metrics returned with the others in ``also``; saved predictions keep the model's classes.
    """
    scoring = scoring or same_protocol(cfg.num_classes)
    label_ids = _label_ids(scoring.model_names)
    dist = current()
    was_training = model.training
    model.eval()
    count = min(len(dataset), max_images) if max_images else len(dataset)
    indices = dist.shard(count) if max_images or dist.enabled else None
    loader = eval_loader(dataset, cfg.eval.batch_size, cfg.data.num_workers, indices)
    scales = tuple(cfg.eval.scales)
    multi = scales != (1.0,) or cfg.eval.flip
    conf = torch.zeros(scoring.size, scoring.size, dtype=torch.long, device=device)
    conf_single = torch.zeros_like(conf)
    done, total = 0, len(indices) if indices is not None else len(dataset)
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        logits, single = predict_logits(model, images, tuple(labels.shape[-2:]), cfg.data.mean,
                                        cfg.data.std, scales, cfg.eval.flip,
                                        batch_views(batch, device), with_single=True)
        pred = logits.argmax(1)
        conf += scoring.confusion(pred, labels)
        if multi:
            conf_single += scoring.confusion(single.argmax(1), labels)
        if save_predictions is not None:
            _save_label_ids(save_predictions, dataset, batch["index"].tolist(), pred, label_ids)
        done += len(images)
        if progress is not None:
            progress(done, total)
    model.train(was_training)
    return scoring.metrics(dist.all_reduce_sum(conf),
                           dist.all_reduce_sum(conf_single) if multi else None)


def _label_ids(names: tuple[str, ...]) -> np.ndarray:
    """(C,) uint8: a model's class id -> Cityscapes label id (0, unlabelled, for other names)."""
    ids = {name: label_id for label_id, _, name, _ in CITYSCAPES_CLASSES}
    return np.array([ids.get(name, 0) for name in names], np.uint8)


def predicted_label_ids_name(sample_name: str) -> Path:
    """Where ``--save-predictions`` puts a sample's labels, as Cityscapes' evaluation expects
    them: ``aachen/aachen_000000_000019_pred_labelIds.png``."""
    stem = sample_stem(sample_name)
    return stem.with_name(f"{stem.name}_pred_labelIds.png")


def _save_label_ids(out: Path, dataset: SegDataset, indices: list[int], pred: torch.Tensor,
                    train_to_label_id: np.ndarray) -> None:
    from PIL import Image

    from diga.io import atomic_write

    label_ids = train_to_label_id[pred.cpu().numpy()]  # (B, H, W) Cityscapes label ids
    for index, ids in zip(indices, label_ids, strict=True):
        path = out / predicted_label_ids_name(dataset.samples[index].name)
        atomic_write(path, lambda p, ids=ids: Image.fromarray(ids.astype(np.uint8)).save(p, format="PNG"))


class TorchSegmenter:
    """A checkpoint through PyTorch with ``diga.runtime.Segmenter``'s contract: an RGB image of
    any size in, train-id labels at its size out, run at the trained scale.

    The image is resized with the runtime's own function to the size the model was trained and
    evaluated at (``Config.inference_size``), then predicted as ``diga eval`` predicts (logits
    upsampled to the output size before the argmax).

    Args:
        size: ``trained`` (default), ``native`` (the image's own size) or an (H, W).
        scales, flip: the test; default one scale, no flip, as the exported model runs.
    """

    def __init__(self, path: Path, device: torch.device | str = "cpu", size: Any = "trained",
                 scales: tuple[float, ...] = (1.0,), flip: bool = False) -> None:
        from diga.checkpoint import load_model
        from diga.runtime import ModelInfo
        from diga.runtime.preprocess import check_run_size

        self.device = torch.device(device)
        self.model, self.cfg, self.checkpoint = load_model(path, self.device)
        protocol = class_protocol(self.cfg.num_classes)
        self.info = ModelInfo(protocol.names, protocol.palette, tuple(self.cfg.data.mean),
                              tuple(self.cfg.data.std), inference_size=self.cfg.inference_size)
        self.size = check_run_size(self.info, size, str(path))
        self.scales, self.flip = tuple(scales), flip

    @torch.no_grad()
    def logits(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> (C, H, W) float logits at the image's size (or ``out_size``)."""
        from diga.runtime.preprocess import model_input_size, scale_views

        run = model_input_size(self.info, image.shape[:2], self.size)
        views = {s: torch.from_numpy(np.array(v)).permute(2, 0, 1)[None].to(self.device)
                 for s, v in scale_views(image, run, {1.0, *self.scales}).items()}  # (1, 3, h, w)
        return predict_logits(self.model, views.pop(1.0), tuple(out_size or image.shape[:2]),
                              self.cfg.data.mean, self.cfg.data.std, self.scales, self.flip,
                              views)[0]

    def __call__(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> uint8 (H, W) train ids (or at ``out_size``)."""
        return self.logits(image, out_size).argmax(0).to(torch.uint8).cpu().numpy()

    def segment(self, images: list[np.ndarray], out_size: tuple[int, int] | None = None,
                max_batch: int = 8, uncertainty: bool = False) -> list[Any]:
        """``Segmenter.segment``'s contract: a ``Prediction`` per RGB image (one at a time:
        images of a checkpoint's users differ in size)."""
        from diga.runtime.prediction import Prediction, softmax_maps

        out = []
        for image in images:
            logits = self.logits(image, out_size)
            labels = logits.argmax(0).to(torch.uint8).cpu().numpy()
            maps = softmax_maps(logits.float().cpu().numpy()) if uncertainty else (None, None)
            out.append(Prediction(labels, *maps))
        return out

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def val_metrics(metrics: SegMetrics, brief: bool = False) -> dict[str, Any]:
    """Target-val metrics as training logs them: mIoU (and SYNTHIA's 13-class mIoU), pixel
    accuracy, IoUs; ``brief``: the mIoUs only."""
    out = {f"target_val_{k}": v for k, v in metrics.as_dict().items()}
    brief_keys = ("target_val_miou", "target_val_miou13", "target_val_single_scale")
    return {k: v for k, v in out.items() if k in brief_keys} if brief else out
