"""The training loop: source-only, DiGA warm-up and DiGA self-training in one readable function.

Read ``train_stage`` top to bottom: data, model, teacher, optimiser, then per step: lr, batch,
views, losses, backward, EMA, step, log, visuals, checkpoint. The stages differ by ``if``s.
Under ``torchrun`` the same function runs on every rank (``diga.train.distributed``): each
rank takes its share of the global batch, DDP averages the gradients, rank 0 writes the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diga.checkpoint import Checkpoint, resolve_checkpoint, save_checkpoint
from diga.config import Config, check_data_paths, save_config
from diga.data.classes import class_protocol
from diga.data.datasets import build_dataset, infinite_loader, normalize
from diga.errors import UserError
from diga.io import append_jsonl, truncate_jsonl
from diga.method import (
    EMATeacher,
    PhotometricAugment,
    class_feature_sums,
    class_mix_mask,
    consensus_pseudo_labels,
    mix,
    segmentation_ce,
    symmetric_distillation,
    threshold_pseudo_labels,
    update_centroids,
)
from diga.metrics import SegMetrics
from diga.models import build_model
from diga.train.distributed import (
    check_world,
    init_distributed,
    parallelize,
    restore_rng,
    rng_state,
    seed_rank_streams,
)
from diga.train.evaluate import evaluate
from diga.train.optim import build_optimizer, poly_lr, set_lr
from diga.train.progress import StepProgress
from diga.train.signals import StopOnSignal, run_stopped
from diga.train.speed import Precision, maybe_compile, to_memory_format
from diga.train.translate import build_translator
from diga.train.visuals import save_grid

STAGES = ("source", "warmup", "selftrain")


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


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def _downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def train_stage(cfg: Config, stage: str, run_dir: Path, resume: bool = False,
                selftrain: SelftrainInputs | None = None, show_progress: bool = True) -> StageResult:
    """Train one stage into ``run_dir``; returns the final step and target-val metrics.

    Args:
        stage: ``source`` (CE only), ``warmup`` (METHOD stage 1), ``selftrain`` (stage 2).
        resume: continue from ``run_dir/checkpoints/last``.
        selftrain: init checkpoint, pseudo-labels and centroids (stage 2 only).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    check_data_paths(cfg, source=True, target=True)
    dist, device = init_distributed(cfg.run)  # one process: rank 0 of 1, select_device
    global_batch, batch_key = cfg.stage_batch_size(stage)
    check_world(dist, cfg.run, global_batch, device, batch_key)
    seed_everything(cfg.run.seed)  # the same on every rank: identical initial weights
    run_dir = Path(run_dir)
    protocol = class_protocol(cfg.num_classes)
    ignore = cfg.method.ignore_index
    wcfg, scfg = cfg.warmup, cfg.selftrain
    use_kd = stage == "selftrain" or (stage == "warmup" and wcfg.symkd)
    use_mixture = use_kd and wcfg.mixture
    steps, batch = cfg.stage_steps(stage), global_batch // dist.world_size  # per-rank batch

    # ---- data: a source stream; target images when a translator or self-training needs them
    source = build_dataset(cfg, "source", "train", train=True)
    target_val = build_dataset(cfg, "target", "val", train=False,  # reporting only
                               scales=cfg.eval.scales)
    needs_target = stage == "selftrain" or (use_mixture and wcfg.translator == "fda")
    if stage == "selftrain":
        from diga.data.pseudo_labels import PseudoLabelDataset

        target = PseudoLabelDataset(build_dataset(cfg, "target", "train", train=True),
                                    selftrain.pseudo_dir)
    elif needs_target:
        target = build_dataset(cfg, "target", "train", train=True)

    # ---- models: student (DDP-wrapped for the training forward), EMA teacher, frozen translator
    student = build_model(cfg.model.name, cfg.num_classes, cfg.model.pretrained,
                          cfg.model.freeze_bn).to(device)
    if selftrain is not None:
        student.load_state_dict(selftrain.init.model())
    student, train_model = parallelize(to_memory_format(student, cfg.run), dist, cfg.run, device)
    train_model = maybe_compile(train_model, cfg.run)
    teacher = EMATeacher(student, cfg.method.ema_max) if use_kd else None
    if teacher is not None and selftrain is not None and selftrain.init.teacher() is not None:
        teacher.load_state_dict(selftrain.init.teacher())
    teacher_model = maybe_compile(teacher.model, cfg.run) if teacher is not None else None
    run_model = Precision.from_config(cfg.run, device)  # autocast / channels_last; float32 out
    scaler = run_model.grad_scaler()  # fp16 only
    translator = build_translator(cfg, device) if use_mixture else None
    augment = PhotometricAugment.from_config(cfg.method.augment).to(device)
    beta = scfg.beta if stage == "selftrain" else wcfg.beta
    kd_weight = scfg.kd_weight if stage == "selftrain" else wcfg.kd_weight
    centroids = selftrain.centroids.to(device) if selftrain is not None else None
    optimizer = build_optimizer(student, cfg.train.optim)
    mix_gen = torch.Generator(device="cpu").manual_seed(cfg.run.seed + 1)
    if dist.enabled:  # ranks share the weights, never their augmentation, mask or dropout draws
        seed_rank_streams(dist, mix_gen, cfg.run.seed, 0)

    # ---- resume: weights, optimiser, RNG streams; the data streams restart at the same step
    start = 0
    if resume:
        ckpt = resolve_checkpoint(run_dir, "last")  # every rank reads the same files
        state = ckpt.state()
        student.load_state_dict(ckpt.model())
        if teacher is not None:
            teacher.load_state_dict(ckpt.teacher())
        if centroids is not None:
            centroids = ckpt.extra()["centroids"].to(device)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    elif dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    if dist.is_main:  # the steps after the checkpoint are trained again: one history
        truncate_jsonl(run_dir / "metrics.jsonl", start)
    # Each rank reads positions rank, rank + W, ... of the global stream: together one batch.
    source_iter = infinite_loader(source, batch, cfg.run.seed, start, cfg.data.num_workers,
                                  dist.rank, dist.world_size)
    target_iter = (infinite_loader(target, batch, cfg.run.seed + 7, start, cfg.data.num_workers,
                                   dist.rank, dist.world_size)
                   if stage == "selftrain" or needs_target else None)
    if resume:  # after the loaders: creating one draws from the global RNG
        restore_rng(state, dist, mix_gen, device, cfg.run.seed)

    def checkpoint(step: int, metrics: dict[str, Any]) -> None:
        # Weights of the plain module: a DDP checkpoint loads in one process and vice versa.
        rank_rngs = dist.all_gather_objects(rng_state(mix_gen, device))
        state = {"step": step, "optimizer": optimizer.state_dict(), **rank_rngs[0],
                 **({"rank_rng": rank_rngs} if dist.enabled else {}),
                 **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})}
        if dist.is_main:
            save_checkpoint(
                run_dir / "checkpoints" / "last",
                model=student.state_dict(),
                teacher=teacher.state_dict() if teacher is not None else None,
                extra={"centroids": centroids} if centroids is not None else None,
                state=state,
                meta={"stage": stage, "step": step, "steps": steps, "config": cfg.to_dict(),
                      "config_hash": cfg.hash(), "metrics": metrics, "world_size": dist.world_size,
                      "init": str(selftrain.init.folder) if selftrain is not None else None},
            )
        dist.barrier()  # nobody reads the run (next round, resume) before it is written


    def train_step(step: int) -> int:
        """One optimisation step; returns the number of steps done."""
        nonlocal centroids
        lr = poly_lr(cfg.train.optim.lr, step, steps, cfg.train.optim.poly_power)
        set_lr(optimizer, lr)
        sb = next(source_iter)
        x_s = sb["image"].to(device, non_blocking=True).float() / 255.0  # (B, 3, H, W) in [0, 1]
        y_s = sb["label"].to(device, non_blocking=True).long()  # (B, H, W)
        crop = tuple(y_s.shape[-2:])
        log: dict[str, float] = {}
        visuals: dict[str, torch.Tensor] = {"source": x_s}  # + views; prediction, label last
        if target_iter is not None:
            tb = next(target_iter)
            x_t = tb["image"].to(device, non_blocking=True).float() / 255.0

        if not use_kd:
            # Source-only: supervised CE on the clean source view.
            out_s = run_model(train_model, normalize(x_s, cfg.data.mean, cfg.data.std))
            z_s = _upsample(out_s.logits, crop)
            ce = dist.global_mean(segmentation_ce(z_s, y_s, ignore), (y_s != ignore).sum())
            loss = wcfg.ce_weight * ce
            log["ce"] = loss.item()
        else:
            # Views: clean source, and a second view that mixes augmented source classes into a
            # target-looking rendering of the same image (cross-domain mixture), so the student
            # must agree with the teacher across domains, not only across photometric changes.
            x_aug = augment(x_s, beta)
            if use_mixture:
                with torch.no_grad():
                    x_g = translator(x_s, x_t if needs_target else None)
                mask = class_mix_mask(y_s, mix_gen, ignore).to(device)
                x_second = mix(mask, x_aug, x_g)
                visuals.update(augmented=x_aug, translated=x_g, mixed=x_second)
            else:
                x_second = x_aug
                visuals["augmented"] = x_aug
            views = torch.cat([x_s, x_second])  # (2B, 3, H, W): [clean; mixed]

            if stage == "selftrain":
                # Target branch inputs: the selected pseudo-label needs the teacher on x_t, and the
                # DACS-style class mix pastes source classes onto an augmented target image.
                p_t = tb["label"][:, 0].to(device).long()  # offline pseudo-label (B, H, W)
                true_t = tb["label"][:, 1].to(device).long()  # diagnosis only, never trained on
                cm_mask = class_mix_mask(y_s, mix_gen, ignore).to(device)
                x_cm = mix(cm_mask, x_s, augment(x_t, beta))
                student_in = torch.cat([views, x_cm])  # (3B, ...): one student pass
                teacher_in = torch.cat([views, x_t])
            else:
                student_in = teacher_in = views

            out_s = run_model(train_model, normalize(student_in, cfg.data.mean, cfg.data.std))
            with torch.no_grad():
                out_t = run_model(teacher_model, normalize(teacher_in, cfg.data.mean, cfg.data.std))
            z_s = _upsample(out_s.logits, crop)
            z_t = _upsample(out_t.logits, crop)
            two_b = 2 * batch

            # Symmetric distillation: the teacher's view a supervises the student's view b and
            # vice versa (never a view with itself); CE keeps the source labels in the loop. Under
            # DDP a CE mean is over the valid pixels of the global batch, as in one process.
            ce = dist.global_mean(segmentation_ce(z_s[:batch], y_s, ignore), (y_s != ignore).sum())
            kd = symmetric_distillation(z_t[:two_b], z_s[:two_b], cfg.method.sym_weight)
            loss = wcfg.ce_weight * ce + kd_weight * kd
            log.update(ce=ce.item(), kd=kd.item())

            if stage == "selftrain":
                t_logits_t = out_t.logits[two_b:]  # teacher on x_t, feature resolution
                t_feats_t = out_t.features[two_b:]
                # Threshold-free selection: keep a pseudo-label only where the class of the
                # nearest centroid of the teacher's feature agrees (bilateral consensus).
                if scfg.selection == "consensus":
                    p = consensus_pseudo_labels(p_t, t_feats_t, centroids, ignore)
                elif scfg.selection == "threshold":
                    conf_labels = threshold_pseudo_labels(_upsample(t_logits_t, crop),
                                                          scfg.threshold, ignore)
                    p = torch.where(conf_labels == ignore, torch.full_like(p_t, ignore), p_t)
                else:
                    p = p_t

                # Online centroid update from pixels where labels and the teacher agree, on the
                # target view and on the source's mixed view (labels at feature resolution).
                fsize = tuple(t_feats_t.shape[-2:])
                t_pred = out_t.logits.argmax(1)  # (3B, h, w)
                p_small = _downsample_labels(p, fsize)
                y_small = _downsample_labels(y_s, fsize)
                agree_t = torch.where(p_small == t_pred[two_b:], p_small, ignore)
                agree_s = torch.where(y_small == t_pred[batch:two_b], y_small, ignore)
                sums, counts = class_feature_sums(
                    torch.cat([t_feats_t, out_t.features[batch:two_b]]),
                    torch.cat([agree_t, agree_s]), cfg.num_classes, ignore)
                # One update from the global batch, so the centroids stay equal on all ranks.
                sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
                centroids = update_centroids(centroids, sums, counts, scfg.centroid_momentum,
                                             scfg.min_pixels)

                y_cm = mix(cm_mask, y_s, p)  # source label where pasted, selected pseudo-label elsewhere
                ce_mix = dist.global_mean(segmentation_ce(z_s[two_b:], y_cm, ignore),
                                          (y_cm != ignore).sum())
                loss = loss + scfg.mix_weight * ce_mix
                log.update(_pseudo_stats(p_t, p, true_t, ignore))
                log["ce_mix"] = ce_mix.item()
                visuals.update(target=x_t, class_mix=x_cm, pseudo=p_t, selected=p)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # DDP: gradients averaged over ranks here
        if teacher is not None:
            teacher.update(student, step)  # before the optimiser step (METHOD, EMA teacher)
            dist.broadcast_buffers(teacher.model)  # per-rank BN statistics: rank 0's everywhere
        scaler.step(optimizer)
        scaler.update()

        done = step + 1
        log["loss"] = loss.item()
        progress.update(done, log)
        if done % cfg.train.log_every == 0 or done == steps:
            elapsed = time.perf_counter() - tic
            log = dist.mean_over_ranks(log)  # the global batch's losses
            if dist.is_main:
                append_jsonl(run_dir / "metrics.jsonl", {"step": done, "lr": lr, **log,
                                                         "sec_per_step": elapsed / (done - start)})
        if (dist.is_main and cfg.train.visual_every
                and (done % cfg.train.visual_every == 0 or done == steps)):
            prediction = z_s[:batch].detach().argmax(1)  # only here: argmax is not free
            save_grid(run_dir / "visuals" / f"step_{done:06d}.png",
                      {**visuals, "prediction": prediction, "label": y_s}, protocol.palette)
        eval_now = cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != steps
        if eval_now:
            m = evaluate(student, target_val, cfg, device)  # images sharded over the ranks
            if dist.is_main:
                append_jsonl(run_dir / "metrics.jsonl", {"step": done, **_val_metrics(m, brief=True)})
        return done

    student.train()
    if teacher is not None:
        teacher.model.train()  # same mode as the student: with model.freeze_bn, frozen BN too
    progress = StepProgress(stage, steps, start, enabled=show_progress and dist.is_main)
    tic = last_checkpoint = time.perf_counter()
    with StopOnSignal() as stop:
        for step in range(start, steps):
            done = train_step(step)
            # SIGTERM / Ctrl-C, or train.checkpoint_minutes: every rank at the same step
            due = (cfg.train.checkpoint_minutes is not None and
                   time.perf_counter() - last_checkpoint >= 60 * cfg.train.checkpoint_minutes)
            halt, due = dist.any_rank(stop.requested is not None, due)
            if done == steps:
                break
            if halt or due or done % cfg.train.checkpoint_every == 0:
                checkpoint(done, {})
                last_checkpoint = time.perf_counter()
            if halt:
                progress.close()
                raise run_stopped(stop.requested or "SIGTERM", stage, done, steps, run_dir)
        progress.close()

        # Target-val mIoU is reported, never used to pick a checkpoint: the last one is the model.
        final = evaluate(student, target_val, cfg, device) if target_val.has_labels else None
        metrics = _val_metrics(final) if final else {}
        if dist.is_main:
            append_jsonl(run_dir / "metrics.jsonl", {"step": steps, "final": True, **metrics})
        checkpoint(steps, metrics)
        if dist.any_rank(stop.requested is not None)[0]:  # signalled in the last step: it is
            raise run_stopped(stop.requested or "SIGTERM", stage, steps, steps, run_dir)  # done
    return StageResult(run_dir, steps, metrics)


def _val_metrics(metrics: SegMetrics, brief: bool = False) -> dict[str, Any]:
    """Target-val metrics as logged: mIoU (and SYNTHIA's 13-class mIoU), pixel accuracy, IoUs."""
    out = {f"target_val_{k}": v for k, v in metrics.as_dict().items()}
    brief_keys = ("target_val_miou", "target_val_miou13", "target_val_single_scale")
    return {k: v for k, v in out.items() if k in brief_keys} if brief else out


def _pseudo_stats(p_raw: torch.Tensor, p_sel: torch.Tensor, truth: torch.Tensor,
                  ignore: int) -> dict[str, float]:
    """Fraction of pseudo-labelled pixels kept by selection; accuracy before and after it
    where the target train split has labels (diagnosis only)."""
    raw_valid = p_raw != ignore
    kept = (p_sel != ignore) & raw_valid
    out = {"kept": (kept.sum() / raw_valid.sum().clamp(min=1)).item()}
    known = truth != ignore
    if known.any():
        out["pl_acc_raw"] = ((p_raw == truth) & known & raw_valid).sum().item() / max(
            (known & raw_valid).sum().item(), 1)
        out["pl_acc_kept"] = ((p_sel == truth) & known & kept).sum().item() / max(
            (known & kept).sum().item(), 1)
    return out


def check_resumable(run_dir: Path, stage: str) -> None:
    """A clear error when ``--resume`` has nothing to resume or another stage's run."""
    ckpt = resolve_checkpoint(run_dir, "last")
    if ckpt.meta.get("stage") != stage:
        raise UserError(f"{run_dir} is a '{ckpt.meta.get('stage')}' run, not '{stage}'",
                        f"resume it with 'diga train {ckpt.meta.get('stage')}'")
