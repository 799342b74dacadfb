"""Training the learned translator (``diga train translator``) and loading it for the warm-up.

Read ``train_translator`` top to bottom: data, networks, losses, optimisers, then per step: lr,
batch, translations, generator losses and step, discriminator losses and step, log, visuals,
checkpoint.

A translator run directory holds
  ``config.yaml``, ``metrics.jsonl``, ``visuals/step_*.png``, ``translator.json``,
  ``checkpoints/last/``  ``model.safetensors`` (G: S->T, what the warm-up loads),
                         ``extra.safetensors`` (F: T->S and both discriminators),
                         ``state.pt`` (step, optimisers, RNG), ``meta.json``, ``translator.json``.
``translator.json`` holds the generator's architecture, so ``load_translator`` can rebuild it
from the run directory, the checkpoint folder or the weights file.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diga.checkpoint import META_FILE, MODEL_FILE, resolve_checkpoint, save_checkpoint
from diga.config import Config, check_data_paths, save_config
from diga.data.classes import class_protocol
from diga.data.datasets import build_dataset, infinite_loader
from diga.device import select_device
from diga.errors import UserError
from diga.io import atomic_write_json
from diga.models.weights import read_weights
from diga.train.progress import StepProgress
from diga.train.run import StageResult, check_resumable, seed_everything
from diga.train.runlog import RunLog
from diga.train.signals import StopOnSignal, run_stopped
from diga.train.visuals import save_grid
from diga.translator.losses import (
    PerceptualLoss,
    cycle_consistency_loss,
    discriminator_loss,
    generator_adversarial_loss,
    identity_loss,
    semantic_edge_loss,
)
from diga.translator.networks import Generator, GeneratorSpec, PatchDiscriminator

logger = logging.getLogger(__name__)

STAGE = "translator"
SPEC_FILE = "translator.json"
FORMAT = "diga-translator"


def linear_decay_lr(base_lr: float, step: int, total: int, decay_start: float) -> float:
    """CycleGAN's schedule: ``base_lr`` until ``decay_start * total``, then linear to 0."""
    start = int(decay_start * total)
    if step < start:
        return base_lr
    return base_lr * (1.0 - (step - start) / max(total - start, 1))


def _spec_json(spec: GeneratorSpec) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "direction": "source->target", "weights": MODEL_FILE,
            "generator": spec.to_dict(),
            "io": "float RGB (B, 3, H, W) in [0, 1] -> the same shape in [0, 1]"}


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _load(module: nn.Module, state: dict[str, torch.Tensor], what: str, prefix: str = "",
          hint: str = "resume with the run's own translator.* settings") -> None:
    if prefix:
        state = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{what} does not fit this translator: {str(exc).splitlines()[0][:160]}",
                        hint) from None


def train_translator(cfg: Config, run_dir: Path, resume: bool = False,
                     show_progress: bool = True) -> StageResult:
    """Train G: S->T (and F: T->S, D_T, D_S) into ``run_dir``; returns the last step's losses.

    Target images are used without their labels; source labels feed only the semantic-edge
    loss.

    Args:
        resume: continue from ``run_dir/checkpoints/last`` (weights, optimisers, RNG, data
            position): the result equals an uninterrupted run's.
    """
    tcfg = cfg.translator
    check_data_paths(cfg, source=True, target=True)
    device = select_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    run_dir = Path(run_dir)
    steps, batch = tcfg.steps, tcfg.batch_size
    protocol = class_protocol(cfg.num_classes)

    # ---- data: source images with labels, target images (labels never read); translator crops
    data_cfg = cfg.model_copy(deep=True)
    data_cfg.train.crop = tcfg.crop or cfg.train.crop
    source = build_dataset(data_cfg, "source", "train", train=True)
    target = build_dataset(data_cfg, "target", "train", train=True)
    target.with_labels = False  # files on disk: target labels are never even read

    # ---- networks: G: S->T, F: T->S, D_T judges target images, D_S source images
    spec = GeneratorSpec(tcfg.gen_channels, tcfg.gen_blocks)
    g_st = Generator(spec.channels, spec.blocks).to(device)
    g_ts = Generator(spec.channels, spec.blocks).to(device)
    d_t = PatchDiscriminator(tcfg.disc_channels).to(device)
    d_s = PatchDiscriminator(tcfg.disc_channels).to(device)
    perceptual = None
    if tcfg.lambda_perceptual > 0 and tcfg.vgg_weights is not None:
        perceptual = PerceptualLoss.from_file(tcfg.vgg_weights).to(device)
    elif tcfg.lambda_perceptual > 0:
        logger.warning("translator.vgg_weights is not set: training the translator without the "
                       "perceptual term (give torchvision's vgg16/vgg19 weights file to use it)")
    opt_g = torch.optim.Adam(chain(g_st.parameters(), g_ts.parameters()), lr=tcfg.lr,
                             betas=tcfg.betas)
    opt_d = torch.optim.Adam(chain(d_t.parameters(), d_s.parameters()), lr=tcfg.lr,
                             betas=tcfg.betas)

    # ---- resume: weights, optimisers, RNG; the data streams restart at the same step
    start = 0
    if resume:
        check_resumable(run_dir, STAGE)
        ckpt = resolve_checkpoint(run_dir, "last")
        saved = ckpt.meta.get(STAGE, {}).get("generator")
        if saved is not None and GeneratorSpec.from_dict(saved) != spec:
            raise UserError(f"{run_dir} trains a generator {saved}, the config asks for "
                            f"{spec.to_dict()}", "resume without translator.gen_* overrides")
        state, extra = ckpt.state(), ckpt.extra()
        _load(g_st, ckpt.model(), f"{ckpt.folder}/{MODEL_FILE}")
        for prefix, module in (("g_ts", g_ts), ("d_t", d_t), ("d_s", d_s)):
            _load(module, extra, f"{ckpt.folder} ({prefix})", prefix)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
    else:
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / SPEC_FILE, _spec_json(spec))
    # metrics.jsonl and TensorBoard events: the replayed steps appear once
    runlog = RunLog(run_dir, start, 0, cfg.train.tensorboard)
    if start == 0:
        runlog.text("config", f"```yaml\n{cfg.to_yaml()}```")
    source_iter = infinite_loader(source, batch, cfg.run.seed, start, cfg.data.num_workers)
    target_iter = infinite_loader(target, batch, cfg.run.seed + 7, start, cfg.data.num_workers)

    def checkpoint(step: int, metrics: dict[str, Any]) -> None:
        runlog.flush()  # every event before the checkpoint on disk
        folder = save_checkpoint(
            run_dir / "checkpoints" / "last",
            model=g_st.state_dict(),
            extra={**_prefixed("g_ts", g_ts), **_prefixed("d_t", d_t), **_prefixed("d_s", d_s)},
            state={"step": step, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                   "torch_rng": torch.get_rng_state()},
            meta={"stage": STAGE, "step": step, "steps": steps, "config": cfg.to_dict(),
                  "config_hash": cfg.hash(), "metrics": metrics, STAGE: _spec_json(spec)},
        )
        atomic_write_json(folder / SPEC_FILE, _spec_json(spec))  # next to model.safetensors

    log: dict[str, float] = {}

    def translator_step(step: int) -> int:
        """One generator and one discriminator update; returns the number of steps done."""
        nonlocal log
        lr = linear_decay_lr(tcfg.lr, step, steps, tcfg.decay_start)
        for group in chain(opt_g.param_groups, opt_d.param_groups):
            group["lr"] = lr
        x_s = next(source_iter)
        y_s = x_s["label"].to(device).long()  # (B, H, W), for the semantic-edge loss only
        x_s = x_s["image"].to(device).float() / 255.0  # (B, 3, H, W) in [0, 1]
        x_t = next(target_iter)["image"].to(device).float() / 255.0

        # Generators: translate both ways and back. The discriminators are frozen for this
        # step so the generators' backward leaves their gradients alone.
        fake_t, fake_s = g_st(x_s), g_ts(x_t)  # G(x_s), F(x_t)
        cycled_s, cycled_t = g_ts(fake_t), g_st(fake_s)  # F(G(x_s)), G(F(x_t))
        d_t.requires_grad_(False)
        d_s.requires_grad_(False)
        adv = generator_adversarial_loss(d_t(fake_t)) + generator_adversarial_loss(d_s(fake_s))
        cycle = cycle_consistency_loss(cycled_s, x_s) + cycle_consistency_loss(cycled_t, x_t)
        # Object outlines of the source must survive G, so y_s stays a valid label of G(x_s).
        edge = semantic_edge_loss(fake_t, x_s, y_s)
        loss_g = tcfg.lambda_adv * adv + tcfg.lambda_cycle * cycle + tcfg.lambda_edge * edge
        log = {"adv": adv.item(), "cycle": cycle.item(), "edge": edge.item()}
        if tcfg.lambda_identity > 0:
            ident = identity_loss(g_st(x_t), x_t) + identity_loss(g_ts(x_s), x_s)
            loss_g = loss_g + tcfg.lambda_identity * ident
            log["identity"] = ident.item()
        if perceptual is not None:
            # Content (deep VGG features) is kept; texture and colour are free to change.
            perc = perceptual(fake_t, x_s) + perceptual(fake_s, x_t)
            loss_g = loss_g + tcfg.lambda_perceptual * perc
            log["perceptual"] = perc.item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        # Discriminators: real target vs G(x_s), real source vs F(x_t); the translations are
        # detached so this step trains only the discriminators.
        d_t.requires_grad_(True)
        d_s.requires_grad_(True)
        loss_d = (discriminator_loss(d_t(x_t), d_t(fake_t.detach()))
                  + discriminator_loss(d_s(x_s), d_s(fake_s.detach())))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        done = step + 1
        log.update(loss_g=loss_g.item(), loss_d=loss_d.item())
        progress.update(done, log)
        if done % tcfg.log_every == 0 or done == steps:
            elapsed = time.perf_counter() - tic
            runlog.record({"step": done, "lr": lr, **log,
                           "sec_per_step": elapsed / (done - start)})
        if tcfg.visual_every and (done % tcfg.visual_every == 0 or done == steps):
            grid = save_grid(run_dir / "visuals" / f"step_{done:06d}.png",
                             {"source": x_s, "translated": fake_t.detach(),
                              "cycled": cycled_s.detach(), "target": x_t, "label": y_s},
                             protocol.palette)
            runlog.image("visuals", grid, done)
        if done % tcfg.checkpoint_every == 0 and done != steps:
            checkpoint(done, {})
        return done

    for net in (g_st, g_ts, d_t, d_s):
        net.train()
    progress = StepProgress(STAGE, steps, start, enabled=show_progress)
    tic = time.perf_counter()
    with StopOnSignal() as stop, runlog:
        for step in range(start, steps):
            done = translator_step(step)
            if stop.requested and done != steps:  # SIGTERM / Ctrl-C: keep the step reached
                checkpoint(done, {})
                progress.close()
                raise run_stopped(stop.requested, STAGE, done, steps, run_dir)
    progress.close()

    metrics = {f"final_{k}": v for k, v in log.items()}
    checkpoint(steps, metrics)
    return StageResult(run_dir, steps, metrics)


# ---------------------------------------------------------------- loading for the warm-up


def _read_spec(folder: Path) -> GeneratorSpec | None:
    """The generator spec in ``folder/translator.json``, else in ``folder/meta.json``."""
    for name, key in ((SPEC_FILE, None), (META_FILE, STAGE)):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            if key is not None:
                if data.get("stage") != STAGE:
                    raise UserError(f"{folder} is a '{data.get('stage')}' checkpoint, not a translator",
                                    "warmup.translator_path takes a run of 'diga train translator'")
                data = data[key]
            if data.get("format") != FORMAT:
                continue
            return GeneratorSpec.from_dict(data["generator"])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError,
                ValueError):
            raise UserError(f"{path} is corrupt or not a translator description",
                            "use the files written by 'diga train translator'") from None
    return None


def _locate(path: Path) -> tuple[Path, GeneratorSpec]:
    """(weights file, spec) from a run directory, a checkpoint folder or a weights file."""
    hint = ("give the run directory of 'diga train translator', its checkpoints/<name> folder, "
            "or the generator's .safetensors file (with translator.json beside it)")
    if not path.exists():
        raise UserError(f"translator not found: {path} (warmup.translator_path)", hint)
    if path.is_file():
        weights = path
    elif (path / MODEL_FILE).is_file():
        weights = path / MODEL_FILE
    else:
        try:
            weights = resolve_checkpoint(path, "last").folder / MODEL_FILE
        except UserError:
            raise UserError(f"{path} holds no translator checkpoint (warmup.translator_path)",
                            hint) from None
    spec = _read_spec(weights.parent)
    if spec is None:
        raise UserError(f"no {SPEC_FILE} next to {weights}: the generator's architecture is unknown",
                        hint)
    return weights, spec


def load_translator(path: Path, device: torch.device | str = "cpu") -> Generator:
    """The frozen S->T generator of a translator run, in eval mode on ``device``.

    Args:
        path: the run directory (its ``checkpoints/last``), a checkpoint folder, or the
            generator's ``.safetensors`` file with ``translator.json`` (or the checkpoint's
            ``meta.json``) beside it.

    Returns:
        a module mapping float (B, 3, H, W) in [0, 1] to the same shape in [0, 1].

    Raises:
        UserError: nothing there, another stage's checkpoint, or weights that do not fit.
    """
    weights, spec = _locate(Path(path))
    generator = Generator(spec.channels, spec.blocks)
    _load(generator, read_weights(weights), str(weights),
          hint=f"the weights and {SPEC_FILE} must come from the same translator run")
    return generator.to(device).eval().requires_grad_(False)
