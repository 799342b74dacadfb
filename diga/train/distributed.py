"""Data-parallel training under ``torchrun``: the process group, per-rank streams, collectives.

One process per device. ``torchrun`` (or ``diga train ... --devices N``, which starts it) sets
RANK / WORLD_SIZE / LOCAL_RANK; every rank builds the same model from the same seed, DDP
averages the gradients, and each rank reads its own share of the global sample stream
(``InfiniteSampler``: position p belongs to rank p % world_size). Without those variables
everything here is a no-op and training is the single-process loop, bit for bit.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diga.config import RunConfig
from diga.device import select_device
from diga.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; collectives are no-ops for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the config, logs, visuals, checkpoints and manifests."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a per-image tensor (n, ...), in the global batch's order: row i
        of rank r is row i * W + r, as the sampler deals the stream. Unchanged for one process."""
        if not self.enabled:
            return tensor
        local = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor  # gloo: no bool
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        out = torch.stack(parts, dim=1).flatten(0, 1)  # (n, W, ...) -> (n * W, ...)
        return out.bool() if tensor.dtype == torch.bool else out

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key mean over the ranks that logged the key (logged metrics)."""
        if not self.enabled:
            return values
        gathered = self.all_gather_objects(values)
        keys = dict.fromkeys(k for d in gathered for k in d)
        return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered)
                for k in keys}

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank (one small all-reduce): ranks decide together, e.g. to
        stop or checkpoint at the same step. Unchanged for one process."""
        if not self.enabled:
            return tuple(flags)
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        values = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def shard(self, count: int) -> list[int]:
        """This rank's items of ``range(count)``: every item on exactly one rank."""
        return list(range(self.rank, count, self.world_size))

    def global_mean(self, local_mean: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
        """Rescale a rank's mean over ``local_count`` items (e.g. valid pixels) so that DDP's
        gradient average equals the mean over all ranks' items, as one process would take it.

        ``local_mean * world_size * local_count / global_count``; unchanged for one process.
        """
        if not self.enabled:
            return local_mean
        total = self.all_reduce_sum(local_count.detach().clone().double())
        return local_mean * (self.world_size * local_count.double() / total.clamp_min(1)).to(
            local_mean.dtype)

    @torch.no_grad()
    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) everywhere."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARS)


def current() -> Distributed:
    """The job this process belongs to (single process when no process group is up)."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", 0)))
    return Distributed()


def init_distributed(run: RunConfig) -> tuple[Distributed, torch.device]:
    """Join the torchrun job (idempotent) and pick this rank's device.

    GPUs: ``cuda:LOCAL_RANK`` and NCCL; CPU: gloo. A single process returns
    ``(Distributed(), select_device(run.device))``.
    """
    device = select_device(run.device)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU: this node has "
                            f"{torch.cuda.device_count()}",
                            "start at most one process per GPU (--devices / --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = run.backend if run.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise UserError("run.backend=nccl needs GPUs, but this job trains on the CPU",
                        "use run.backend=auto or run.backend=gloo")
    if backend == "nccl" and not dist.is_nccl_available():
        raise UserError("run.backend=nccl but this PyTorch build has no NCCL",
                        "use run.backend=gloo, or a CUDA build of PyTorch")
    if not dist.is_initialized():
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart:
            dist.init_process_group(backend=backend, store=_restart_store(restart),
                                    rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend=backend)
    return current(), device


def _restart_store(restart: int) -> dist.Store:
    """The rendezvous store of a torchrun restart, under a prefix of its own: the agent's store
    outlives the processes it restarts, and ranks of a restarted job that read the previous
    attempt's addresses (seen with torch 2.14 and gloo) connect to dead processes."""
    from datetime import timedelta

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]),
                          is_master=not agent and int(os.environ["RANK"]) == 0,
                          timeout=timedelta(minutes=10), multi_tenant=not agent)
    return dist.PrefixStore(f"diga/restart_{restart}", store)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_world(ctx: Distributed, run: RunConfig, global_batch: int, device: torch.device,
                key: str = "train.batch_size") -> None:
    """Settings that cannot work at this world size, as user errors before any training."""
    if global_batch % ctx.world_size:
        raise UserError(f"{key}={global_batch} cannot be split over {ctx.world_size} "
                        "processes (it is the global batch)",
                        f"use a multiple of {ctx.world_size}, e.g. "
                        f"{key}={ctx.world_size * max(1, global_batch // ctx.world_size)}")
    if ctx.enabled and run.sync_bn and device.type == "cpu":
        raise UserError("run.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel",
                        "on the CPU use run.sync_bn=false (per-rank statistics) or model.freeze_bn=true")


def buffers_can_differ(ctx: Distributed, run: RunConfig, freeze_bn: bool) -> bool:
    """Whether the ranks' buffers (BN running statistics) can drift apart: only under DDP with
    BatchNorm in train mode and per-rank statistics. Frozen BN never updates them, and
    SyncBatchNorm updates them from the global batch, the same on every rank."""
    return ctx.enabled and not freeze_bn and not run.sync_bn


def parallelize(student: nn.Module, ctx: Distributed, run: RunConfig, device: torch.device,
                broadcast_buffers: bool = True) -> tuple[nn.Module, nn.Module]:
    """``(student, train_model)``: the plain module (checkpoints, EMA, evaluation) and the one
    the training forward runs through (DDP-wrapped under torchrun).

    SyncBatchNorm conversion happens here, before the EMA teacher copies the student, so
    the teacher normalises with the same global statistics. DDP broadcasts rank 0's weights
    and buffers at construction: every rank starts (and builds its teacher) from them;
    ``broadcast_buffers`` (``buffers_can_differ``) broadcasts the buffers again at every forward.
    """
    if not ctx.enabled:
        return student, student
    if run.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    ids = [device.index] if device.type == "cuda" else None
    return student, nn.parallel.DistributedDataParallel(student, device_ids=ids,
                                                        broadcast_buffers=broadcast_buffers)


# ---------------------------------------------------------------- per-rank random streams


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed per (run seed, rank, start step) for a rank's augmentation / mask / dropout draws."""
    return (seed + 1_000_003 * rank + 7_919 * step) % 2**63


def seed_rank_streams(ctx: Distributed, mix_gen: torch.Generator, seed: int, step: int) -> None:
    """Give each rank its own global and class-mix streams (ranks must not share draws)."""
    import random

    import numpy as np

    s = rank_seed(seed, ctx.rank, step)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    mix_gen.manual_seed(rank_seed(seed + 1, ctx.rank, step))


def rng_state(mix_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random streams, as saved in a checkpoint."""
    state = {"torch_rng": torch.get_rng_state(), "mix_rng": mix_gen.get_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], ctx: Distributed, mix_gen: torch.Generator,
                device: torch.device, seed: int) -> None:
    """Continue the random streams of a checkpoint.

    One process: the saved streams (rank 0's for a DDP checkpoint). DDP at the world size
    that saved: each rank its own. DDP at another world size: fresh per-rank streams from
    (seed, rank, step); the data stream is exact either way (its positions are global).
    """
    saved = state.get("rank_rng")
    if not ctx.enabled:
        mine = state
    elif saved is not None and len(saved) == ctx.world_size:
        mine = saved[ctx.rank]
    else:
        seed_rank_streams(ctx, mix_gen, seed, int(state["step"]))
        return
    torch.set_rng_state(mine["torch_rng"])
    mix_gen.set_state(mine["mix_rng"])
    if device.type == "cuda" and "cuda_rng" in mine:
        torch.cuda.set_rng_state(mine["cuda_rng"], device)


# ---------------------------------------------------------------- the launcher


def torchrun_command(nproc: int, args: list[str], max_restarts: int = 0) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N [--max-restarts R]
    -m diga.cli.app ARGS``."""
    restarts = [f"--max-restarts={max_restarts}"] if max_restarts else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *restarts, "-m", "diga.cli.app", *args]


def check_devices(nproc: int, run: RunConfig) -> str:
    """What ``--devices N`` will run on ("N GPUs" / "N CPU processes"), or a user error."""
    if launched_by_torchrun():
        raise UserError("--devices starts torchrun itself, but this process already runs under it",
                        "drop --devices; torchrun's --nproc_per_node sets the process count")
    device = select_device(run.device)
    if device.type == "cuda":
        have = torch.cuda.device_count()
        if nproc > have:
            raise UserError(f"--devices {nproc} but this node has {have} GPU(s)",
                            f"use --devices {have}, or run.device=cpu for CPU processes")
        return f"{nproc} GPUs"
    return f"{nproc} CPU processes (gloo)"
