"""Checkpoints: safetensors weights + a small state file, written atomically.

A checkpoint is a folder ``checkpoints/<name>/`` with
  ``model.safetensors``   student weights (what eval / export / predict load)
  ``teacher.safetensors`` EMA teacher weights (warm-up and self-training)
  ``extra.safetensors``   other tensors (e.g. class centroids during self-training)
  ``state.pt``            step, optimiser state, RNG states; read with ``weights_only=True``
  ``meta.json``           stage, step, resolved config, metrics: readable without torch
The folder is written as a temp folder, fsynced, read back and renamed (``save_checkpoint``),
so a killed run, a full disk or a power cut leaves the previous checkpoint whole. torch and
safetensors are imported where tensors are read or written: finding checkpoints and reading
their meta (``config_for_model`` for a model file, ``META_FILE``) works in a runtime-only
install.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diga.errors import UserError
from diga.io import file_sha256, fsync_dir, fsync_file, replace_folder, temp_folder, write_error

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.safetensors"
TEACHER_FILE = "teacher.safetensors"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """A safetensors file, serialised in memory and written through Python's file object:
    safetensors' own writer reports a full disk as a ``SafetensorError`` without its errno,
    Python's as the ``OSError`` that ``write_error`` turns into one line."""
    from safetensors.torch import save

    Path(path).write_bytes(save(tensors, metadata=metadata))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (its C++ writer reports a full disk as a RuntimeError)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(
    folder: Path,
    *,
    model: dict[str, torch.Tensor],
    meta: dict[str, Any],
    teacher: dict[str, torch.Tensor] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder so that it cannot be lost.

    The files go to a temp folder; each is fsynced and read back (safetensors headers, the
    state file with ``weights_only=True``, meta.json); then the old folder is renamed to
    ``.<name>.old``, the new one into place, the parent fsynced, and the old one removed. At
    every instant ``resolve_checkpoint`` finds a complete checkpoint: the new one, or the
    previous one (as ``<name>`` or, inside the swap, ``.<name>.old``).

    Raises:
        UserError: a full disk or a read-only / forbidden folder; the previous checkpoint is
            left as it was.
    """
    folder = Path(folder)
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_folder(folder.parent, prefix=f".{folder.name}.")  # not mkdtemp's 0700
        save_file(_contiguous(model), str(tmp / MODEL_FILE))
        if teacher is not None:
            save_file(_contiguous(teacher), str(tmp / TEACHER_FILE))
        if extra:
            save_file(_contiguous(extra), str(tmp / EXTRA_FILE))
        if state is not None:
            (tmp / STATE_FILE).write_bytes(torch_bytes(state))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for path in tmp.iterdir():
            fsync_file(path)
        verify_checkpoint(tmp)
        fsync_dir(tmp)
        replace_folder(tmp, folder)  # .<name>.old is the checkpoint inside the swap
        tmp = None
    except OSError as exc:
        error = write_error(exc, folder.parent, f"checkpoint {folder.name}")
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def verify_checkpoint(folder: Path) -> None:
    """Read back what was written: every safetensors header, the state file, meta.json.

    Raises:
        UserError: a file does not read back (the checkpoint is not swapped in).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        for name in (MODEL_FILE, TEACHER_FILE, EXTRA_FILE):
            if (folder / name).exists():
                with safe_open(str(folder / name), framework="pt") as fh:
                    list(fh.keys())
        if (folder / STATE_FILE).exists():
            torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        json.loads((folder / META_FILE).read_text())
    except (SafetensorError, RuntimeError, ValueError, EOFError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"the checkpoint just written to {folder.parent} does not read back "
                        f"({first})", "check the disk; the previous checkpoint is intact") from None


class Checkpoint:
    """A checkpoint folder, read lazily."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / META_FILE).is_file() or not (self.folder / MODEL_FILE).is_file():
            raise UserError(f"{self.folder} is not a diga checkpoint (no {META_FILE} / {MODEL_FILE})",
                            "give a run directory or one of its checkpoints/<name> folders")
        try:
            self.meta: dict[str, Any] = json.loads((self.folder / META_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"checkpoint metadata {self.folder / META_FILE} is corrupt",
                            "restore the checkpoint folder from a copy, or train the run again "
                            "into a new --out") from None

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def ema_steps(self) -> int:
        """The steps its teacher has averaged: the stage's steps plus those it was carried over
        with (checkpoints before ``ema_steps`` was written restarted the teacher each stage)."""
        return int(self.meta.get("ema_steps", self.step))

    def identity(self) -> dict[str, Any]:
        """Which model this is, for the provenance of what it makes (pseudo-labels, centroids):
        the folder, stage and step, and a hash of the student weights that tells two models
        apart even where folder and step agree."""
        if not hasattr(self, "_weights_sha256"):
            self._weights_sha256 = file_sha256(self.folder / MODEL_FILE)[:16]
        return {"folder": str(self.folder), "stage": self.meta.get("stage"), "step": self.step,
                "config_hash": self.meta.get("config_hash"), "weights": self._weights_sha256}

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def _read(self, path: Path) -> dict[str, torch.Tensor]:
        from diga.models.weights import read_weights

        # diga writes checkpoints whole (save_checkpoint): a damaged one was copied or
        # downloaded in part, or its disk fails
        return read_weights(path, f"checkpoint {self.folder} is damaged: copy the whole folder "
                            "again from where it was trained, or, on that machine, go on from "
                            "its last good checkpoint with 'diga train ... --resume'")

    def model(self) -> dict[str, torch.Tensor]:
        return self._read(self.folder / MODEL_FILE)

    def teacher(self) -> dict[str, torch.Tensor] | None:
        path = self.folder / TEACHER_FILE
        return self._read(path) if path.exists() else None

    def extra(self) -> dict[str, torch.Tensor]:
        path = self.folder / EXTRA_FILE
        return self._read(path) if path.exists() else {}

    def state(self) -> dict[str, Any]:
        import torch

        path = self.folder / STATE_FILE
        if not path.exists():
            raise UserError(f"checkpoint {self.folder} has no training state ({STATE_FILE}), so it "
                            "cannot be resumed", "start a new run without --resume (another --out)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read training state {path} ({type(exc).__name__}): the file is "
                            "corrupt", "start a new run without --resume (another --out); the "
                            "weights still load for eval and export") from None


def _complete(checkpoints: Path, name: str) -> Path | None:
    """``checkpoints/<name>``, or its ``.<name>.old`` (a run killed inside a checkpoint swap),
    whichever holds a complete checkpoint; None when neither does."""
    for folder in (checkpoints / name, checkpoints / f".{name}.old"):
        if (folder / META_FILE).is_file():
            return folder
    return None


def has_checkpoint(run_dir: Path, name: str = "last") -> bool:
    """Whether a run directory holds a complete checkpoint ``name`` (or its ``.old``)."""
    return _complete(Path(run_dir) / "checkpoints", name) is not None


def resolve_checkpoint(path: Path, prefer: str = "last") -> Checkpoint:
    """A run directory (-> its ``checkpoints/<prefer>``), or a checkpoint folder itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model not found: {path}", "give a run directory, a checkpoint folder, "
                        "an .onnx or an .engine file")
    if (path / META_FILE).is_file():
        return Checkpoint(path)
    for name in (prefer, "last"):
        found = _complete(path / "checkpoints", name)
        if found is not None:
            return Checkpoint(found)
    rounds = sorted((p for p in path.glob("round*") if p.name[5:].isdigit()),
                    key=lambda p: int(p.name[5:]))
    for round_dir in reversed(rounds):  # a self-training run: its latest round
        found = _complete(round_dir / "checkpoints", "last")
        if found is not None:
            return Checkpoint(found)
    for stage in ("selftrain", "warmup"):  # a diga run job: its latest trained stage
        if (path / stage).is_dir() and (path / "config.yaml").is_file():
            try:
                return resolve_checkpoint(path / stage, prefer)
            except UserError:
                continue
    raise UserError(f"{path} holds no checkpoint (looked for checkpoints/{prefer})",
                    "train first, or give the checkpoint folder itself")


def load_model(path: Path, device: torch.device | str = "cpu", prefer: str = "last"):
    """Rebuild a trained model from a run directory or checkpoint folder.

    Returns:
        (model in eval mode on ``device``, its resolved ``Config``, the ``Checkpoint``).
    """
    from diga.config import config_from_dict
    from diga.models import build_model

    ckpt = resolve_checkpoint(path, prefer)
    cfg = config_from_dict(ckpt.config)
    model = build_model(cfg.model.name, cfg.num_classes)
    state = ckpt.model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {ckpt.folder} does not fit {cfg.model.name}: "
                        f"{str(exc).splitlines()[0][:160]}",
                        "the weights file was changed or belongs to another model") from None
    return model.to(device).eval(), cfg, ckpt


def config_for_model(path: Path, overrides: list[str] | None = None):
    """The config whose data a model is evaluated, calibrated or benchmarked on.

    A run directory or checkpoint: its saved config. An ``.onnx`` / ``.engine`` file: the
    config of the run it was exported from (``<run>/export/model.onnx`` -> ``<run>``), else the
    ``demo`` preset. ``key=value`` overrides apply on top either way.
    """
    import yaml

    from diga.config import load_config, saved_config_with

    path = Path(path)
    overrides = list(overrides or [])
    from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

    if path.suffix.lower() in MODEL_FILE_SUFFIXES:
        for folder in (path.parent, path.parent.parent):
            saved = folder / "config.yaml"
            if saved.is_file():
                base = yaml.safe_load(saved.read_text())
                return saved_config_with(base, overrides, str(saved))
        return load_config("demo", overrides)
    base = resolve_checkpoint(path).config
    return saved_config_with(base, overrides, "checkpoint config")


def default_export_dir(model_path: Path) -> Path:
    """Where ``diga export`` writes by default: ``<folder>/export`` of the folder given (a run,
    a self-training folder with its rounds, a ``diga run`` job), so ``diga export runs/selftrain``
    writes ``runs/selftrain/export``; for a checkpoint folder, its run's ``export``."""
    model_path = Path(model_path)
    resolve_checkpoint(model_path)  # a clear error when there is nothing to export
    if (model_path / META_FILE).is_file() and model_path.parent.name == "checkpoints":
        return model_path.parent.parent / "export"
    return model_path / "export"
