"""Running stages end to end: run directories, self-training inputs and rounds."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from diga.checkpoint import Checkpoint, has_checkpoint, load_model, resolve_checkpoint
from diga.config import Config, config_from_dict
from diga.data.datasets import build_dataset
from diga.data.pseudo_labels import MANIFEST, StaleInputError, check_manifest, inputs_provenance
from diga.errors import UserError
from diga.protocols import model_classes, require_same_classes
from diga.train.distributed import current, init_distributed
from diga.train.loop import train_stage
from diga.train.pseudo import (
    CENTROIDS_FILE,
    centroids_provenance,
    load_centroids,
    make_centroids,
    make_pseudo_labels,
)
from diga.train.run import SelftrainInputs, StageResult, check_resumable
from diga.train.runlog import EVENTS

console = Console(stderr=True)


def default_run_dir(stage: str, root: Path = Path("runs")) -> Path:
    """``runs/<stage>``, or ``runs/<stage>-2``, ... when taken (never overwrites a run)."""
    path, n = root / stage, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = root / f"{stage}-{n}"
    return path


# what a run killed before its first checkpoint leaves: ``--auto-resume`` starts it afresh
BEFORE_FIRST_CHECKPOINT = {"config.yaml", "metrics.jsonl", "visuals", "checkpoints",
                           "status.json"}


def _before_first_checkpoint(path: Path) -> bool:
    """Only what a run killed before its first checkpoint writes (TensorBoard events too)."""
    return all(p.name in BEFORE_FIRST_CHECKPOINT or p.name.startswith(EVENTS)
               for p in path.iterdir()) and not has_checkpoint(path)


def prepare_run_dir(path: Path, resume: bool, stage: str, fresh_ok: bool = False) -> None:
    """Check the run directory: a resumable run of ``stage``, or empty / new (``fresh_ok``:
    also the remains of a run of this stage killed before its first checkpoint)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {path} exists and is a file", "choose a folder with --out")
    if resume:
        check_resumable(path, stage)
    elif fresh_ok and path.is_dir() and _before_first_checkpoint(path):
        return
    elif path.is_dir() and any(p.name != "status.json" for p in path.iterdir()):
        # status.json alone: the job's, written by the process that launched this one
        raise UserError(f"run directory {path} already exists and is not empty",
                        "pass --resume to continue it, or choose another --out")


@contextlib.contextmanager
def undo_failed_start(path: Path, enabled: bool = True) -> Iterator[None]:
    """A command that fails on a user error before its first checkpoint leaves its run
    folder as it found it, absent or empty: the corrected command then starts afresh instead of
    being refused as "already exists". A folder with a checkpoint anywhere is never touched."""
    existed = path.is_dir()
    empty = not existed or not any(p.name != "status.json" for p in path.iterdir())
    try:
        yield
    except UserError:  # a crash keeps its folder: status.json says why, --auto-resume goes on
        if enabled and empty and path.is_dir() and not any(path.rglob("meta.json")):
            if existed:
                for child in path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(path)
        raise


def run_config(run_dir: Path) -> Config:
    """The resolved config saved in a run directory."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"nothing to resume in {run_dir} (no config.yaml)",
                        "give the run directory of an earlier 'diga train', or drop --resume")
    return config_from_dict(yaml.safe_load(path.read_text()))


def ensure_pseudo_labels(cfg: Config, init_dir: Path, device, quiet: bool = False,
                         regenerate: bool = False) -> Path:
    """``init_dir/pseudo`` made by the init run's student: made when absent, checked when it
    exists (same model weights, dataset, scale and format), made again when stale and
    ``regenerate``.

    Raises:
        StaleInputError: the folder was made by another model, for other data or scale, or by
            an older diga, and ``regenerate`` is False.
    """
    folder = init_dir / "pseudo"
    ckpt = resolve_checkpoint(init_dir)
    dataset = build_dataset(cfg, "target", "train", train=False)
    expected = {**inputs_provenance(cfg, dataset, ckpt.identity()),
                "scales": list(cfg.pseudo.scales)}
    if (folder / MANIFEST).is_file():
        try:
            check_manifest(folder, expected)
            return folder
        except StaleInputError as exc:
            if not regenerate:
                raise
            _say(quiet, f"making pseudo-labels again ({exc.message})")
    current().barrier()  # every rank has read the old manifest before rank 0 removes it
    model, _, ckpt = load_model(init_dir, device)
    _check_same_model(cfg, ckpt)
    _say(quiet, f"pseudo-labels: {folder}")
    make_pseudo_labels(model, cfg, ckpt, folder, device)
    return folder


def ensure_centroids(cfg: Config, init_dir: Path, device, quiet: bool = False,
                     regenerate: bool = False):
    """``init_dir/centroids.safetensors`` of the init run's student, as the pseudo-labels."""
    path = init_dir / CENTROIDS_FILE
    model, _, ckpt = load_model(init_dir, device)
    _check_same_model(cfg, ckpt)
    dataset = build_dataset(cfg, "target", "train", train=False)
    expected = centroids_provenance(cfg, dataset, ckpt.identity())
    if path.exists():  # every rank sees the same answer: the file is written after a collective
        try:
            return load_centroids(path, cfg.num_classes, model.feature_dim, expected)
        except StaleInputError as exc:
            if not regenerate:
                raise
            _say(quiet, f"making centroids again ({exc.message})")
    _say(quiet, f"centroids: {path}")
    make_centroids(model, cfg, ckpt, path, device)
    return load_centroids(path, cfg.num_classes, model.feature_dim, expected)


def _say(quiet: bool, message: str) -> None:
    if not quiet and current().is_main:
        console.print(message, highlight=False)


def _check_same_model(cfg: Config, ckpt: Checkpoint) -> None:
    init_cfg = config_from_dict(ckpt.config)
    if init_cfg.model.name != cfg.model.name:
        raise UserError(f"{ckpt.folder} is a {init_cfg.model.name}, this config trains "
                        f"{cfg.model.name}", "use the same model.name as the warm-up run")
    require_same_classes(model_classes(init_cfg.num_classes), cfg.num_classes, str(ckpt.folder),
                         "self-training's pseudo-labels and centroids")


def finished_metrics(run_dir: Path, steps: int) -> dict[str, Any] | None:
    """The final metrics of a run that reached ``steps`` (to skip it when rerun), else None."""
    if not has_checkpoint(run_dir):
        return None
    ckpt = resolve_checkpoint(run_dir)
    return ckpt.meta.get("metrics", {}) if ckpt.step >= steps else None


def run_selftrain(cfg: Config, init: Path, out: Path, resume: bool = False,
                  show_progress: bool = True, regenerate: bool = False,
                  on_round: Callable[[int, bool], None] | None = None) -> list[StageResult]:
    """Self-training rounds ``out/round1``, ``out/round2``, ...; round r starts from round r-1.

    Each round's pseudo-labels and centroids are those of the model it starts from (made when
    absent; ``regenerate``: made again where another model, data or scale made them). Under
    torchrun every rank runs this; pseudo-labelling and centroids are sharded over them.
    ``on_round(r, done)`` is called as round r begins (``done``: finished earlier, skipped).
    """
    _, device = init_distributed(cfg.run)
    init_ckpt = resolve_checkpoint(init)  # a clear error when the warm-up run does not exist
    # the job's time axis (TensorBoard): round 1 starts where its init run ended
    axis = int(init_ckpt.meta.get("axis_start", 0)) + init_ckpt.step
    results = []
    for r in range(1, cfg.selftrain.rounds + 1):
        round_dir = out / f"round{r}"
        init_dir = init if r == 1 else out / f"round{r - 1}"
        steps = cfg.stage_steps("selftrain")
        axis_start, axis = axis, axis + steps
        metrics = finished_metrics(round_dir, steps)
        if on_round is not None:
            on_round(r, metrics is not None)
        if metrics is not None:
            results.append(StageResult(round_dir, steps, metrics))
            continue  # finished before an interruption
        if not resume:
            prepare_run_dir(round_dir, False, "selftrain")
        pseudo_dir = ensure_pseudo_labels(cfg, init_dir, device, not show_progress, regenerate)
        centroids = ensure_centroids(cfg, init_dir, device, not show_progress, regenerate)
        inputs = SelftrainInputs(resolve_checkpoint(init_dir), pseudo_dir, centroids)
        resuming = resume and has_checkpoint(round_dir)
        results.append(train_stage(cfg, "selftrain", round_dir, resume=resuming,
                                   selftrain=inputs, show_progress=show_progress,
                                   axis_start=axis_start))
    return results
