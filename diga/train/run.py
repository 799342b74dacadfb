"""What every training run shares: its inputs and result, seeding, and its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diga.checkpoint import Checkpoint, resolve_checkpoint, save_checkpoint
from diga.errors import UserError
from diga.method import EMATeacher
from diga.train.distributed import Distributed, rng_state


@dataclass
class SelftrainInputs:
    """What self-training needs from the stage before it."""

    init: Checkpoint  # student + teacher to start from
    pseudo_dir: Path  # offline pseudo-labels of the target train split
    centroids: torch.Tensor  # (C, F) class centroids


@dataclass
class StageResult:
    run_dir: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_resumable(run_dir: Path, stage: str) -> None:
    """A clear error when ``--resume`` has nothing to resume or another stage's run."""
    ckpt = resolve_checkpoint(run_dir, "last")
    if ckpt.meta.get("stage") != stage:
        raise UserError(f"{run_dir} is a '{ckpt.meta.get('stage')}' run, not '{stage}'",
                        f"resume it with 'diga train {ckpt.meta.get('stage')}'")


@dataclass
class TrainState:
    """What a stage's checkpoint holds, and what ``--resume`` restores from it."""

    student: nn.Module  # the plain module: a DDP checkpoint loads in one process and back
    teacher: EMATeacher | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mix_generator: torch.Generator
    centroids: torch.Tensor | None = None  # (C, F), self-training
    ema_start: int = 0  # steps the teacher had averaged when the stage began

    def load(self, run_dir: Path, device: torch.device) -> dict[str, Any]:
        """Weights, optimiser, scaler and centroids of ``run_dir``'s last checkpoint (every rank
        reads the same files); returns its state (step, random streams)."""
        ckpt = resolve_checkpoint(run_dir, "last")
        state = ckpt.state()
        self.student.load_state_dict(ckpt.model())
        if self.teacher is not None:
            self.teacher.load_state_dict(ckpt.teacher())
        if self.centroids is not None:
            self.centroids = ckpt.extra()["centroids"].to(device)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state

    def save(self, run_dir: Path, dist: Distributed, device: torch.device, step: int,
             meta: dict[str, Any]) -> None:
        """``run_dir/checkpoints/last`` at ``step``: rank 0 writes, with every rank's random
        streams; no rank goes on (next round, resume) before it is written."""
        rank_rngs = dist.all_gather_objects(rng_state(self.mix_generator, device))
        state = {"step": step, "optimizer": self.optimizer.state_dict(), **rank_rngs[0],
                 **({"rank_rng": rank_rngs} if dist.enabled else {}),
                 **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {})}
        if dist.is_main:
            save_checkpoint(
                run_dir / "checkpoints" / "last", model=self.student.state_dict(), state=state,
                teacher=self.teacher.state_dict() if self.teacher is not None else None,
                extra={"centroids": self.centroids} if self.centroids is not None else None,
                meta={"step": step, "world_size": dist.world_size, **meta,
                      **({"ema_steps": self.ema_start + step} if self.teacher is not None else {})})
        dist.barrier()
