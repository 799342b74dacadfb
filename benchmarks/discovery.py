"""Which models and which images a bench runs on.

``expand_models`` turns ``diga bench``'s MODEL arguments into entries: a run directory gives its
checkpoint and the files in ``<run>/export``, a checkpoint folder itself, an ``.onnx`` /
``.engine`` file itself, each with the config it is evaluated under and the fp32 checkpoint it
was exported from (the reference for pixel agreement). ``TargetSet`` reads the first
``bench.max_images`` target val images, as ``diga eval`` reads them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diga.checkpoint import META_FILE, Checkpoint, config_for_model, resolve_checkpoint
from diga.config import Config
from diga.data.samples import build_reader
from diga.errors import UserError
from diga.export.formats import BENCH_BACKENDS, FORMATS, ExportFormat, format_of_file
from diga.protocols import label_protocol
from diga.runtime.segmenter import MODEL_FILE_SUFFIXES as MODEL_SUFFIXES


def check_backends(names: list[str]) -> list[str]:
    """Validate ``--backend`` names against the format table (one error with a did-you-mean)."""
    for name in names:
        if name not in BENCH_BACKENDS:
            close = difflib.get_close_matches(name, list(BENCH_BACKENDS), n=1)
            raise UserError(f"unknown backend '{name}'", f"did you mean '{close[0]}'?" if close
                            else f"choose from: {', '.join(BENCH_BACKENDS)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- which models

@dataclass
class ModelEntry:
    """One model to bench: a checkpoint folder (run by torch) or an exported file."""

    path: Path
    format: ExportFormat
    cfg: Config  # the run's config + overrides: target data, eval batch, bench settings
    reference: Path | None  # checkpoint folder of the fp32 PyTorch model it was exported from
    notes: tuple[str, ...] = ()


@dataclass
class ModelGroup:
    """What one MODEL argument expanded to."""

    argument: Path
    is_run: bool  # a run directory: a missing backend is worth a row saying so
    entries: list[ModelEntry]


def expand_models(models: list[Path], overrides: list[str]) -> list[ModelGroup]:
    """Run dirs -> their checkpoint + ``<run>/export`` files; checkpoint folders; model files.

    Raises:
        UserError: a path that does not exist or is no model.
    """
    from diga.checkpoint import default_export_dir

    seen: set[Path] = set()
    groups = []
    for arg in map(Path, models):
        if arg.suffix.lower() in MODEL_SUFFIXES or arg.is_file():
            if not arg.is_file():
                raise UserError(f"model not found: {arg}", "give a run directory, a checkpoint "
                                "folder, an .onnx, an .xml or an .engine file")
            fmt = format_of_file(arg)
            ckpt = _checkpoint_of_export(arg.parent)
            cfg = config_for_model(arg, overrides)  # the run's config, as diga eval takes it
            # config_for_model falls back to the demo preset where no run config is found
            runless = not any((f / "config.yaml").is_file() for f in (arg.parent, arg.parent.parent))
            notes = (f"no run found for {arg.name}: target data from the demo preset + "
                     "overrides",) if runless else ()
            entries = [ModelEntry(arg, fmt, cfg, ckpt.folder if ckpt else None, notes)]
            is_run = False
        else:
            ckpt = resolve_checkpoint(arg)
            cfg = config_for_model(arg, overrides)
            entries = [ModelEntry(ckpt.folder, FORMATS["torch"], cfg, ckpt.folder)]
            is_run = not (arg / META_FILE).is_file()
            if is_run:
                export_dir = default_export_dir(arg)
                source = _checkpoint_of_export(export_dir) or ckpt
                entries += [ModelEntry(f, format_of_file(f), cfg, source.folder)
                            for f in exported_files(export_dir)]
        fresh = [e for e in entries if e.path.resolve() not in seen]
        seen.update(e.path.resolve() for e in fresh)
        groups.append(ModelGroup(arg, is_run, fresh))
    return groups


def exported_files(folder: Path) -> list[Path]:
    """The model files in an export folder, in the order of the format table."""
    if not folder.is_dir():
        return []
    order = list(FORMATS)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES]
    return sorted(files, key=lambda p: (order.index(format_of_file(p).name), p.name))


def _checkpoint_of_export(folder: Path) -> Checkpoint | None:
    """The checkpoint an export folder was written from: export.json's, else ``<run>/checkpoints``."""
    try:
        recorded = json.loads((folder / "export.json").read_text()).get("checkpoint")
        if recorded and (Path(recorded) / META_FILE).is_file():
            return Checkpoint(Path(recorded))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return resolve_checkpoint(folder.parent) if folder.name == "export" else None
    except UserError:
        return None


# ---------------------------------------------------------------- which images

class TargetSet:
    """The first N target val items at their own size, as a camera gives them to an app.

    Items are kept in memory up to ``cache_bytes`` (the whole demo set) and read again from disk
    beyond that (full-size Cityscapes), so memory stays bounded for any ``max_images``.
    """

    def __init__(self, cfg: Config, cache_bytes: int = 512 * 2**20) -> None:
        # labels in the finest protocol the layout holds: each model is scored by class name
        self.protocol = label_protocol(cfg.data.target.kind, cfg.num_classes)
        self.data_classes = cfg.num_classes
        from diga.export.parity import frames_domain

        domain, split, source_only = frames_domain(cfg, "val")
        self.reader = build_reader(cfg, domain, split, classes=self.protocol.num_classes)
        limit = cfg.bench.max_images
        self.count = len(self.reader) if limit is None else min(limit, len(self.reader))
        self.has_labels = self.reader.has_labels and not source_only
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached = 0

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image (H, W, 3) and uint8 label (H, W), both at their own size."""
        if i in self._cache:
            return self._cache[i]
        from diga.data.classes import IGNORE_INDEX

        image, label = self.reader.load(i)
        if label is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        pair = (np.ascontiguousarray(image), label)
        size = pair[0].nbytes + pair[1].nbytes
        if self._cached + size <= self.cache_bytes:
            self._cache[i] = pair
            self._cached += size
        return pair

    def hwc(self, i: int) -> np.ndarray:
        return self.item(i)[0]  # (H, W, 3) RGB uint8

    def label_size(self, i: int) -> tuple[int, int]:
        return tuple(self.item(i)[1].shape[-2:])  # type: ignore[return-value]

    def batches(self, size: int) -> Iterator[list[int]]:
        """Consecutive index chunks, as ``eval_loader`` batches them."""
        for start in range(0, self.count, size):
            yield list(range(start, min(start + size, self.count)))
