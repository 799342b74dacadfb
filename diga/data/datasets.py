"""Datasets, joint transforms and the step-based infinite sampler.

Items are dicts: ``image`` uint8 (3, H, W), ``label`` uint8 (H, W) train ids / 255, ``index``.
Images stay uint8 until they reach the device (a quarter of the bytes through the workers).

Randomness is a function of (seed, position in the stream), never of worker order: the sampler
hands each item a seed, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from diga.config import Config, DomainData
from diga.data.classes import IGNORE_INDEX
from diga.data.samples import SampleReader, builtin_spec, warm_builtin_cache
from diga.runtime.preprocess import resize_rgb, scale_views


@dataclass(frozen=True)
class JointTransform:
    """Resize, random-sized crop, random crop, flip; labels always by nearest neighbour.

    ``train=False``: only the fixed resize of the image, with the deployed runtime's own
    resize function (``diga.runtime.preprocess.resize_rgb``), so evaluation, pseudo-labels and
    an app see the same pixels; the label keeps its size so that evaluation compares with
    full-resolution ground truth.
    """

    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    train: bool = True

    def __call__(self, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        # image uint8 (3, H, W), label uint8 (..., H, W): several label maps may travel together
        if not self.train:
            if self.resize is not None and tuple(image.shape[-2:]) != self.resize:
                hwc = resize_rgb(image.permute(1, 2, 0).numpy(), self.resize)
                image = torch.from_numpy(np.array(hwc)).permute(2, 0, 1)  # a writable copy
            return image, label
        gen = torch.Generator().manual_seed(seed)
        size = self.resize or tuple(image.shape[-2:])
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand((), generator=gen).item()
        size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        if tuple(image.shape[-2:]) != size:
            image = _resize(image, size, "bilinear")
            label = _resize(label.reshape(-1, *label.shape[-2:]), size, "nearest").reshape(
                *label.shape[:-2], *size)
        if self.crop is not None:
            image, label = _random_crop(image, label, self.crop, gen)
        if self.flip and torch.rand((), generator=gen).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    # x uint8 (C, H, W); nearest keeps label ids, bilinear with antialias for images
    out = F.interpolate(x[None].float(), size=size, mode=mode,
                        **({"align_corners": False, "antialias": True} if mode == "bilinear" else {}))
    return out[0].round().clamp_(0, 255).to(torch.uint8)


def _random_crop(image: torch.Tensor, label: torch.Tensor, crop: tuple[int, int],
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ch, cw = crop
    h, w = label.shape[-2:]
    if h < ch or w < cw:  # pad: image with 0, label with IGNORE
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = F.pad(image, (0, pw, 0, ph), value=0)
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
        h, w = label.shape[-2:]
    y = int(torch.randint(0, h - ch + 1, (), generator=gen))
    x = int(torch.randint(0, w - cw + 1, (), generator=gen))
    return image[:, y : y + ch, x : x + cw], label[..., y : y + ch, x : x + cw]


class SegDataset(SampleReader, Dataset):
    """A split of one domain as training and evaluation read it: ``SampleReader``'s images and
    labels through a joint transform, as tensors.

    ``__getitem__`` takes an index, or ``(index, seed)`` pairs from ``InfiniteSampler``.
    """

    def __init__(self, domain: DomainData, split: str, num_classes: int, transform: JointTransform,
                 builtin=None, key: str = "data", with_labels: bool = True,
                 view_scales: tuple[float, ...] = (), stored_classes: int | None = None) -> None:
        super().__init__(domain, split, num_classes, builtin, key, with_labels, stored_classes)
        # evaluation only: items carry "views", the image at these scales of its run size, each
        # resized from the image itself (a 2x view has the detail of the full-size image)
        self.view_scales = tuple(s for s in view_scales if s != 1.0)
        self.transform = transform

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image_np, label_np = self.load(index)
        image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1)
        if label_np is None:
            label = torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8)
        else:
            label = torch.from_numpy(np.ascontiguousarray(label_np))
        out: dict = {"index": index}
        if self.view_scales and not self.transform.train:
            views = scale_views(image_np, self.transform.resize or image_np.shape[:2],
                                self.view_scales)
            out["views"] = {s: torch.from_numpy(np.array(v)).permute(2, 0, 1)
                            for s, v in views.items()}
        out["image"], out["label"] = self.transform(image, label, seed)
        return out


class InfiniteSampler(Sampler):
    """Endless (index, seed) stream: a fresh permutation per epoch, from any start position.

    Position p of the global stream belongs to rank ``p % world_size``; a run resumed at step s
    starts at ``p = s * global_batch`` and sees the same items as an uninterrupted run.
    """

    def __init__(self, size: int, seed: int, start: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.start, self.shuffle = size, seed, start, shuffle
        self.rank, self.world_size = rank, world_size

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start + self.rank
        epoch, perm = pos // self.size, self._perm(pos // self.size).tolist()  # once an epoch
        while True:
            if pos // self.size != epoch:
                epoch, perm = pos // self.size, self._perm(pos // self.size).tolist()
            yield perm[pos % self.size], (self.seed * 1_000_003 + pos) % (2**63)
            pos += self.world_size


def build_dataset(cfg: Config, domain: str, split: str, train: bool, native: bool = False,
                  scales: tuple[float, ...] | list[float] = (),
                  classes: int | None = None) -> SegDataset:
    """The source or target dataset of a config; ``train`` selects the random transforms.

    ``classes``: the protocol to read labels in (default ``data.classes``); for a folder
    layout, whose train ids are in ``data.classes``, a subset of it
    (``diga.protocols.label_protocol``).

    ``native`` (with ``train=False``): images at their own size, not the domain's resize, as a
    camera delivers them to a deployed model (which resizes them itself). ``scales`` (with
    ``train=False``): a multi-scale test's scales of the resize; items carry the other scales'
    images as ``views``.
    """
    dom = cfg.data.source if domain == "source" else cfg.data.target
    split_name = dom.train_split if split == "train" else dom.val_split
    if train:
        transform = JointTransform(resize=dom.resize, crop=cfg.train.crop,
                                   scale_range=cfg.data.scale_range, flip=cfg.data.flip)
    else:
        transform = JointTransform(resize=None if native else dom.resize, train=False)
    return SegDataset(dom, split_name if dom.kind != "builtin" else split,
                      classes or cfg.num_classes, transform, builtin=builtin_spec(cfg),
                      key=f"data.{domain}", view_scales=() if train else tuple(scales),
                      stored_classes=cfg.num_classes)


def infinite_loader(dataset: SegDataset, batch_size: int, seed: int, start_step: int,
                    num_workers: int, rank: int = 0, world_size: int = 1,
                    device: torch.device | None = None) -> Iterator[dict]:
    """Batches forever, resumable at ``start_step``; ``batch_size`` is per rank.

    For a CUDA ``device`` the batches come in pinned memory, so that copies with
    ``non_blocking=True`` overlap with the step instead of waiting for it.
    """
    if num_workers > 0:
        warm_builtin_cache(dataset)
    sampler = InfiniteSampler(len(dataset), seed, start=start_step * batch_size * world_size,
                              rank=rank, world_size=world_size)
    cuda = device is not None and torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=True, persistent_workers=num_workers > 0,
                        prefetch_factor=4 if num_workers > 0 else None, pin_memory=cuda)
    return iter(loader)


def eval_loader(dataset: SegDataset, batch_size: int, num_workers: int,
                indices: list[int] | None = None) -> DataLoader:
    """The items ``indices`` (default all) in batches of images of one size (``size_batches``):
    an evaluation keeps each image's size, and a target of several cameras has several."""
    if num_workers > 0:
        warm_builtin_cache(dataset)
    base = getattr(dataset, "base", dataset)  # PseudoLabelDataset wraps a SegDataset
    order = list(range(len(dataset))) if indices is None else list(indices)
    batches = base.size_batches(order, batch_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)


def normalize(images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor,
              std: tuple[float, ...] | torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float (B, 3, H, W) -> the model's normalised float input.

    ``mean`` / ``std``: numbers, or (3,) tensors already on the images' device (a training
    step passes those: numbers become a host-to-device copy that waits for the device).
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
