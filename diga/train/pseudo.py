"""Between the stages: offline pseudo-labels and class centroids of the target train split.

Under torchrun the target images are sharded over the ranks (image i on rank i % W): each
rank writes its own pseudo-label files and rank 0 the manifest once all are written;
centroid sums and counts are summed over ranks before the division, so the result is the
single-process one up to floating-point summation order.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from diga.checkpoint import Checkpoint, save_file
from diga.config import Config
from diga.data.datasets import SegDataset, build_dataset, eval_loader, normalize
from diga.data.pseudo_labels import (
    MANIFEST,
    StaleInputError,
    check_made_by,
    inputs_provenance,
    pseudo_label_path,
    write_pseudo_label,
)
from diga.errors import UserError
from diga.io import atomic_write, atomic_write_json, replace_folder
from diga.method import CentroidAccumulator
from diga.train.distributed import current
from diga.train.evaluate import batch_views, predict_logits

CENTROIDS_FILE = "centroids.safetensors"


def _target_train(cfg: Config, scales: tuple[float, ...] = ()) -> SegDataset:
    return build_dataset(cfg, "target", "train", train=False, scales=scales)


@torch.no_grad()
def make_pseudo_labels(model: torch.nn.Module, cfg: Config, ckpt: Checkpoint, out: Path,
                       device: torch.device,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Multi-scale (``cfg.pseudo.scales``) max-fused argmax labels for every target train image.

    The model sees each image at the target resize (the scale it trains at); the logits of
    every scale are upsampled to the image's own size (its raw label resolution) before the
    max and the argmax, so the labels do not depend on the training resize and the joint
    transform resizes them with the image. No confidence threshold. The labels
    (``<name>.png``, train ids) and ``manifest.json`` (last) go to ``.<out>.partial`` next to
    ``out``, which then takes the place of ``out`` (``replace_folder``): a full disk or a kill
    leaves the previous folder as it was, and a folder without a manifest is never read.
    ``progress`` counts this rank's images.
    """
    dist = current()
    dataset = _target_train(cfg, tuple(cfg.pseudo.scales))
    model.eval()
    indices = dist.shard(len(dataset)) if dist.enabled else None
    loader = eval_loader(dataset, cfg.pseudo.batch_size, cfg.data.num_workers, indices)
    total = len(indices) if indices is not None else len(dataset)
    final, out = out, out.parent / f".{out.name}.partial"
    if dist.is_main:
        shutil.rmtree(out, ignore_errors=True)  # an earlier attempt's
        out.mkdir(parents=True)
    dist.barrier()  # the folder exists for every rank
    try:
        return _label_into(model, cfg, ckpt, dataset, loader, out, final, total, device, progress)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # a failed attempt's (a finished one has moved)


def _label_into(model: torch.nn.Module, cfg: Config, ckpt: Checkpoint, dataset: SegDataset,
                loader: Any, out: Path, final: Path, total: int, device: torch.device,
                progress: Callable[[int, int], None] | None) -> dict:
    """``make_pseudo_labels``' pass: labels into the staging folder ``out``, its manifest, then
    the folder in the place of ``final``."""
    dist = current()
    done, tic = 0, time.perf_counter()
    for batch in loader:
        images = batch["image"].to(device)  # (B, 3, h, w) at the target resize
        raw_size = tuple(batch["label"].shape[-2:])  # each image's own size (labels keep it)
        logits = predict_logits(model, images, raw_size, cfg.data.mean, cfg.data.std,
                                tuple(cfg.pseudo.scales), views=batch_views(batch, device))
        labels = logits.argmax(1).to(torch.uint8).cpu().numpy()  # (B, H, W) train ids
        for index, label in zip(batch["index"].tolist(), labels, strict=True):
            write_pseudo_label(pseudo_label_path(out, dataset.samples[index].name), label)
        done += len(images)
        if progress is not None:
            progress(done, total)
    dist.barrier()  # every shard written before the manifest says the folder is complete
    manifest = {**inputs_provenance(cfg, dataset, ckpt.identity()),
                "label_size": "each image's own size", "scales": list(cfg.pseudo.scales),
                "seconds": time.perf_counter() - tic}
    if dist.is_main:
        atomic_write_json(out / MANIFEST, manifest)
        replace_folder(out, final)
    dist.barrier()  # nobody reads the folder before it is in place, manifest included
    return manifest


@torch.no_grad()
def make_centroids(model: torch.nn.Module, cfg: Config, ckpt: Checkpoint, out_file: Path,
                   device: torch.device,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-class mean of the features at pixels the model predicts as that class.

    Images at the target resize: the scale self-training sees target images at (its random
    scales are centred on it). Classes with fewer than ``selftrain.min_pixels`` pixels in an
    image are skipped for it; ``centroids.weighting`` says whether each image's class mean
    weighs the same (``image``, the reference) or each pixel (``pixel``). The file records the
    model (``ckpt``), the data and the weighting it came from.
    Under torchrun: float64 sums and counts of each rank's shard, summed over ranks, then
    divided; every rank returns the centroids, rank 0 writes the file.
    """
    dist = current()
    dataset = _target_train(cfg)
    model.eval()
    indices = dist.shard(len(dataset)) if dist.enabled else None
    loader = eval_loader(dataset, cfg.pseudo.batch_size, cfg.data.num_workers, indices)
    total = len(indices) if indices is not None else len(dataset)
    acc = CentroidAccumulator(cfg.num_classes, model.feature_dim, cfg.selftrain.min_pixels,
                              cfg.centroids.weighting)
    done = 0
    for batch in loader:
        out = model(normalize(batch["image"].to(device), cfg.data.mean, cfg.data.std))
        acc.add(out.features, out.logits)
        done += len(batch["image"])
        if progress is not None:
            progress(done, total)
    if dist.enabled:  # on the device: NCCL reduces GPU tensors (a rank may have seen no image)
        acc.sums = dist.all_reduce_sum(acc.sums.to(device))
        acc.counts = dist.all_reduce_sum(acc.counts.to(device))
    centroids = acc.centroids().float().cpu()
    tensors = {"centroids": centroids.contiguous(), "counts": acc.counts.cpu().contiguous()}
    provenance = centroids_provenance(cfg, dataset, ckpt.identity())
    metadata = {"classes": str(cfg.num_classes), "provenance": json.dumps(provenance)}
    if dist.is_main:
        atomic_write(out_file, lambda p: save_file(tensors, str(p), metadata=metadata))
    dist.barrier()  # the file exists for every rank from here on
    return centroids


def centroids_provenance(cfg: Config, dataset: SegDataset, model: dict) -> dict:
    """What made a centroids file: ``inputs_provenance`` and ``centroids.weighting``."""
    return {**inputs_provenance(cfg, dataset, model), "weighting": cfg.centroids.weighting}


def load_centroids(path: Path, num_classes: int, feat_dim: int,
                   expected: dict | None = None) -> torch.Tensor:
    """Read a centroids file and check it fits the model and class protocol, and (with
    ``expected``, a ``centroids_provenance``) that this model made it from this data with this
    weighting.

    Raises:
        UserError: missing or corrupt file, wrong shape.
        StaleInputError: made by another model, for other data or scale, with another
            weighting, or by diga 0.1.
    """
    if not path.is_file():
        raise UserError(f"centroids file {path} not found", "make it with 'diga centroids RUN'")
    try:
        with safe_open(str(path), "pt") as fh:
            metadata = fh.metadata() or {}
            centroids = fh.get_tensor("centroids")
    except Exception:
        raise StaleInputError(f"centroids file {path} is corrupt or not a centroids file",
                              f"delete {path}; self-training makes it again") from None
    if tuple(centroids.shape) != (num_classes, feat_dim):
        raise StaleInputError(f"centroids in {path} have shape {tuple(centroids.shape)}, this "
                              f"model needs ({num_classes}, {feat_dim})",
                              f"delete {path}; self-training makes it again for this model")
    if expected is not None:
        try:
            found = json.loads(metadata.get("provenance", "{}"))
        except json.JSONDecodeError:
            found = {}
        found.setdefault("weighting", "pixel")  # what files without it hold
        check_made_by(f"centroids in {path}", path, found, expected, ("weighting",))
    return centroids
