"""The training loop of the source-only baseline, DiGA warm-up and DiGA self-training.

Read ``train_stage`` top to bottom, as nanoGPT's ``train.py``: the job, data, models,
optimiser, resume; then per step: lr, batch, the stage's step (``diga.train.steps``), backward,
EMA, optimiser step, log, visuals, evaluation, checkpoint. Under ``torchrun`` the same function
runs on every rank (``diga.train.distributed``): each rank takes its share of the global batch,
DDP averages the gradients, rank 0 writes the run.

Nothing between log points waits for the device: a step's logged values stay tensors until a
log point reads them (one reduction over ranks, one copy). The one host sync left per step is
the ranks' agreement on stopping and checkpointing under DDP (none in one process).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from diga.config import Config, check_data_paths, save_config
from diga.data.classes import class_protocol
from diga.data.datasets import build_dataset, infinite_loader
from diga.errors import UserError
from diga.method import EMATeacher, PhotometricAugment
from diga.models import build_model
from diga.train.distributed import (
    buffers_can_differ,
    check_world,
    init_distributed,
    parallelize,
    restore_rng,
    seed_rank_streams,
)
from diga.train.evaluate import evaluate, val_metrics
from diga.train.optim import build_optimizer, poly_lr, set_lr
from diga.train.progress import StepProgress
from diga.train.run import SelftrainInputs, StageResult, TrainState, seed_everything
from diga.train.runlog import RunLog
from diga.train.signals import StopOnSignal, run_stopped
from diga.train.speed import Precision, maybe_compile, to_memory_format, tune_backends
from diga.train.steps import Batch, StepSetup, read_logs, selftrain_step, source_step, warmup_step
from diga.train.translate import build_translator
from diga.train.visuals import save_grid

STAGES = ("source", "warmup", "selftrain")


def train_stage(cfg: Config, stage: str, run_dir: Path, resume: bool = False,
                selftrain: SelftrainInputs | None = None, show_progress: bool = True,
                axis_start: int = 0) -> StageResult:
    """Train one stage into ``run_dir``; returns the final step and target-val metrics.

    Args:
        stage: ``source`` (CE only), ``warmup`` (METHOD stage 1), ``selftrain`` (stage 2).
        resume: continue from ``run_dir/checkpoints/last``.
        selftrain: init checkpoint, pseudo-labels and centroids (stage 2 only).
        axis_start: where this stage's step 0 lies on the job's time axis (TensorBoard): 0 for
            a stage trained from scratch, the steps before it for a self-training round.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    check_data_paths(cfg, source=True, target=True)
    dist, device = init_distributed(cfg.run)  # one process: rank 0 of 1, select_device
    tune_backends(device)
    global_batch, batch_key = cfg.stage_batch_size(stage)
    check_world(dist, cfg.run, global_batch, device, batch_key)
    seed_everything(cfg.run.seed)  # the same on every rank: identical initial weights
    run_dir, steps = Path(run_dir), cfg.stage_steps(stage)
    batch_size = global_batch // dist.world_size  # per rank
    distil = stage == "selftrain" or (stage == "warmup" and cfg.warmup.symkd)  # teacher, 2 views
    mixture = distil and cfg.warmup.mixture
    needs_target = stage == "selftrain" or (mixture and cfg.warmup.translator == "fda")

    no_target = cfg.data.target.kind == "none"  # domain generalisation: the source alone
    if no_target and needs_target:
        what = "self-training" if stage == "selftrain" else "the cross-domain mixture's FDA"
        raise UserError(f"{what} needs target images, and data.target.kind is none",
                        "for domain generalisation train the warm-up with warmup.mixture=false "
                        "(preset gta5-dg-deeplabv2); otherwise set data.target.kind and .root")

    # ---- data: a source stream; target images for FDA and self-training; target val to report
    source = build_dataset(cfg, "source", "train", train=True)
    target_val = (None if no_target else
                  build_dataset(cfg, "target", "val", train=False, scales=cfg.eval.scales))
    target = build_dataset(cfg, "target", "train", train=True) if needs_target else None
    if stage == "selftrain":
        from diga.data.pseudo_labels import PseudoLabelDataset

        target = PseudoLabelDataset(target, selftrain.pseudo_dir)

    # ---- models: student (DDP-wrapped for the training forward), EMA teacher, optimiser
    student = build_model(cfg.model.name, cfg.num_classes, cfg.model.pretrained,
                          cfg.model.freeze_bn).to(device)
    if selftrain is not None:
        student.load_state_dict(selftrain.init.model())
    sync_buffers = buffers_can_differ(dist, cfg.run, cfg.model.freeze_bn)
    student, train_model = parallelize(to_memory_format(student, cfg.run), dist, cfg.run, device,
                                       sync_buffers)
    teacher = EMATeacher(student, cfg.method.ema_max) if distil else None
    ema_start = 0  # steps the teacher has averaged before this stage (METHOD, stage 2's start)
    if teacher is not None and selftrain is not None and cfg.selftrain.teacher_init == "continue":
        carried = selftrain.init.teacher()  # none after a source-only init: the student's copy
        if carried is not None:
            teacher.load_state_dict(carried)
            ema_start = selftrain.init.ema_steps
    if teacher is not None and stage == "selftrain":  # the features the consensus compares
        teacher.model.features_after_dropout = cfg.selftrain.selection_features == "after_dropout"
    forward = Precision.from_config(cfg.run, device)  # autocast / channels_last; float32 out
    mix_generator = torch.Generator(device=device).manual_seed(cfg.run.seed + 1)
    if dist.enabled:  # ranks share the weights, never their augmentation, mask or dropout draws
        seed_rank_streams(dist, mix_generator, cfg.run.seed, 0)
    state = TrainState(student, teacher, build_optimizer(student, cfg.train.optim),
                       forward.grad_scaler(), mix_generator,  # the scaler: fp16 only
                       selftrain.centroids.to(device) if selftrain is not None else None,
                       ema_start)
    setup = StepSetup(
        cfg, maybe_compile(train_model, cfg.run),
        maybe_compile(teacher.model, cfg.run) if teacher is not None else None, forward,
        PhotometricAugment.from_config(cfg.method.augment).to(device),
        build_translator(cfg, device) if mixture else None, mix_generator, dist)
    optimizer, scaler = state.optimizer, state.scaler

    # ---- resume: weights, optimiser, RNG streams; the data streams restart at the same step
    saved = state.load(run_dir, device) if resume else {"step": 0}
    start = int(saved["step"])
    if not resume and dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    # metrics.jsonl and TensorBoard; the steps after the checkpoint are trained again: one history
    log = RunLog(run_dir, start, axis_start, cfg.train.tensorboard) if dist.is_main else None
    if log is not None and not resume:
        log.text("config", f"```yaml\n{cfg.to_yaml()}```")
    # Each rank reads positions rank, rank + W, ... of the global stream: together one batch.
    loader_args = (start, cfg.data.num_workers, dist.rank, dist.world_size, device)
    source_iter = infinite_loader(source, batch_size, cfg.run.seed, *loader_args)
    target_iter = (infinite_loader(target, batch_size, cfg.run.seed + 7, *loader_args)
                   if target is not None else None)
    if resume:  # after the loaders: creating one draws from the global RNG
        restore_rng(saved, dist, mix_generator, device, cfg.run.seed)
    meta = {"stage": stage, "steps": steps, "config": cfg.to_dict(), "config_hash": cfg.hash(),
            "init": str(selftrain.init.folder) if selftrain is not None else None,
            "axis_start": axis_start}

    student.train()
    if teacher is not None:  # the student's mode, dropout as method.teacher_dropout
        bn = (cfg.selftrain.teacher_bn if stage == "selftrain" else None) or cfg.method.teacher_bn
        teacher.train_mode(cfg.method.teacher_dropout, bn)
    progress = StepProgress(stage, steps, start, enabled=show_progress and dist.is_main)
    palette, logged = class_protocol(cfg.num_classes).palette, {}
    tic = last_checkpoint = time.perf_counter()
    with StopOnSignal() as stop, log or contextlib.nullcontext():
        for step in range(start, steps):
            lr = poly_lr(cfg.train.optim.lr, step, steps, cfg.train.optim.poly_power,
                         cfg.train.optim.warmup_steps)
            set_lr(optimizer, lr)
            batch = Batch.from_loaders(next(source_iter),
                                       next(target_iter) if target_iter is not None else None,
                                       device)
            if stage == "selftrain":
                out, state.centroids = selftrain_step(setup, batch, state.centroids)
            else:
                out = warmup_step(setup, batch) if distil else source_step(setup, batch)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()  # DDP: gradients averaged over ranks here
            if teacher is not None:
                teacher.update(student, ema_start + step)  # before the optimiser step (METHOD)
                if sync_buffers:  # per-rank BN statistics: rank 0's everywhere
                    dist.broadcast_buffers(teacher.model)
            scaler.step(optimizer)
            scaler.update()

            done = step + 1
            log_now = done % cfg.train.log_every == 0 or done == steps
            if log_now:  # the global batch's values: one reduction, one copy to the host
                logged = read_logs({**out.logs, "loss": out.loss}, dist)
            progress.update(done, logged)
            if log_now and log is not None:
                log.record({"step": done, "lr": lr, **logged,
                            "sec_per_step": (time.perf_counter() - tic) / (done - start)})
            if (log is not None and cfg.train.visual_every
                    and (done % cfg.train.visual_every == 0 or done == steps)):
                prediction = out.source_logits.detach().argmax(1)
                grid = save_grid(run_dir / "visuals" / f"step_{done:06d}.png",
                                 {**out.visuals, "prediction": prediction,
                                  "label": batch.source_labels}, palette)
                log.image("visuals", grid, done)
            if (cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != steps
                    and target_val is not None):
                metrics = evaluate(student, target_val, cfg, device)  # sharded over the ranks
                if log is not None:  # mIoU and per-class IoU
                    log.record({"step": done, **val_metrics(metrics)})

            # SIGTERM / Ctrl-C, or train.checkpoint_minutes: every rank at the same step
            due = (cfg.train.checkpoint_minutes is not None and
                   time.perf_counter() - last_checkpoint >= 60 * cfg.train.checkpoint_minutes)
            halt, due = dist.any_rank(stop.requested is not None, due)
            if done == steps:
                break
            if halt or due or done % cfg.train.checkpoint_every == 0:
                if log is not None:  # every event before the checkpoint on disk
                    log.flush()
                state.save(run_dir, dist, device, done, {**meta, "metrics": {}})
                last_checkpoint = time.perf_counter()
            if halt:
                progress.close()
                raise run_stopped(stop.requested or "SIGTERM", stage, done, steps, run_dir)
        progress.close()

        # Target-val mIoU is reported, never used to pick a checkpoint: the last one is the model.
        final = (evaluate(student, target_val, cfg, device)
                 if target_val is not None and target_val.has_labels else None)
        metrics = val_metrics(final) if final else {}
        if log is not None:
            log.record({"step": steps, "final": True, **metrics})
            log.flush()
        state.save(run_dir, dist, device, steps, {**meta, "metrics": metrics})
        if dist.any_rank(stop.requested is not None)[0]:  # signalled in the last step: it is
            raise run_stopped(stop.requested or "SIGTERM", stage, steps, steps, run_dir)  # done
    return StageResult(run_dir, steps, metrics)
