"""``diga train source|warmup|selftrain``: the training stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diga.cli.common import (
    ConfigArgs,
    Devices,
    Out,
    Quiet,
    Resume,
    console,
    launch_on_devices,
    split_config_args,
    stage_config,
)
from diga.config import Config

app = typer.Typer(help="Train a stage: source (baseline), warmup (DiGA stage 1), selftrain "
                  "(DiGA stage 2).\n\nExamples:\n  diga train warmup demo --out runs/warmup\n"
                  "  diga train selftrain demo --init runs/warmup", no_args_is_help=True)

AutoResume = Annotated[bool, typer.Option(
    "--auto-resume", help="Resume when --out holds a checkpoint of this stage, else start "
    "fresh: one command line for torchrun restarts and a scheduler's requeue.")]
MaxRestarts = Annotated[int, typer.Option(
    "--max-restarts", min=0, help="With --devices: torchrun restarts all processes up to N "
    "times after one fails; they resume from the last checkpoint.")]


def _auto(out: Path | None, resume: bool, auto_resume: bool, max_restarts: int) -> bool:
    """``--resume`` as ``--auto-resume`` decides it: a checkpoint in --out, or a config.yaml
    (self-training, whose rounds resume themselves)."""
    from diga.checkpoint import has_checkpoint
    from diga.errors import UserError

    if not (auto_resume or max_restarts):
        return resume
    if out is None:
        raise UserError("--auto-resume and --max-restarts need the run directory",
                        "pass --out RUN_DIR (the same on every restart)")
    return resume or has_checkpoint(out) or (out / "round1").is_dir()


def _report(stage: str, run_dir: Path, metrics: dict, no_target: bool = False) -> None:
    miou, miou13 = metrics.get("target_val_miou"), metrics.get("target_val_miou13")
    tail = (f"target-val mIoU {miou:.2f}" if miou is not None else
            f"no target: score it with diga eval {run_dir} --target KIND:ROOT" if no_target else
            "target val has no labels")
    if miou13 is not None:
        tail += f", 13 classes {miou13:.2f}"
    console.print(f"[green]{stage} done[/]: {run_dir}  ({tail})")


def _round_stages(cfg: Config) -> list:
    """Self-training's rounds as a job's stages, on the time axis after the init run."""
    from diga.checkpoint import has_checkpoint, resolve_checkpoint
    from diga.status import StageInfo

    init, steps = cfg.selftrain.init, cfg.stage_steps("selftrain")
    axis = 0
    if init is not None and has_checkpoint(init):
        ckpt = resolve_checkpoint(init)
        axis = int(ckpt.meta.get("axis_start", 0)) + ckpt.step
    return [StageInfo(f"selftrain round {r}", f"round{r}", steps, axis + (r - 1) * steps)
            for r in range(1, cfg.selftrain.rounds + 1)]


def _check_before_launch(cfg: Config, devices: int, stage: str) -> None:
    """The user errors a torchrun job would hit, caught before its processes start."""
    from diga.config import check_data_paths
    from diga.device import select_device
    from diga.train.distributed import Distributed, check_world

    check_data_paths(cfg, source=True, target=True)
    batch, key = cfg.stage_batch_size(stage)
    check_world(Distributed(world_size=devices), cfg.run, batch, select_device(cfg.run.device), key)


def _flags(out: Path, resume: bool, quiet: bool, auto: bool = False) -> list[str]:
    return (["--out", str(out)] + (["--auto-resume"] if auto else ["--resume"] if resume else [])
            + (["--quiet"] if quiet else []))


def _train(stage: str, args: list[str] | None, out: Path | None, resume: bool, quiet: bool,
           devices: int | None = None, auto_resume: bool = False, max_restarts: int = 0) -> None:
    from diga.status import JobStatus, StageInfo
    from diga.train.distributed import destroy_distributed, init_distributed
    from diga.train.loop import train_stage
    from diga.train.stages import prepare_run_dir, undo_failed_start

    auto = auto_resume or max_restarts > 0
    resume = _auto(out, resume, auto_resume, max_restarts)
    cfg = stage_config(args, out, resume)
    run_dir = _run_dir(out, stage)
    prepare_run_dir(run_dir, resume, stage, fresh_ok=auto)
    job = JobStatus(run_dir, split_config_args(args)[0],
                    [StageInfo(stage, ".", cfg.stage_steps(stage), 0)])
    if devices is not None and devices > 1:  # the same command again, under torchrun
        _check_before_launch(cfg, devices, stage)
        with undo_failed_start(run_dir), job:
            job.begin(stage)
            launch_on_devices(devices, cfg.run, ["train", stage, *(args or []),
                                                 *_flags(run_dir, resume, quiet, auto)],
                              max_restarts)
        _next(stage, args, run_dir, cfg)
        return
    dist, _ = init_distributed(cfg.run)  # under torchrun: join the job; else one process
    try:
        dist.barrier()  # every rank checked the run directory before rank 0 writes into it
        with undo_failed_start(run_dir, dist.is_main), job:
            job.begin(stage)
            result = train_stage(cfg, stage, run_dir, resume=resume, show_progress=not quiet)
    finally:
        destroy_distributed()
    if dist.is_main:
        _report(stage, run_dir, result.metrics, cfg.data.target.kind == "none")
        _next(stage, args, run_dir, cfg)


def _run_dir(out: Path | None, stage: str) -> Path:
    """``--out``, or ``runs/<stage>``; when that is taken, ``runs/<stage>-2``, ... said aloud,
    since a later ``--init runs/<stage>`` would take the older run."""
    from diga.train.stages import default_run_dir

    if out is not None:
        return out
    run_dir = default_run_dir(stage)
    if run_dir.name != stage:
        console.print(f"[yellow]runs/{stage} is taken: this run goes to {run_dir}[/] (--out "
                      "chooses the folder)", highlight=False)
    return run_dir


def _next(stage: str, args: list[str] | None, run_dir: Path, cfg: Config) -> None:
    """The exact command that comes next, with the user's CONFIG and overrides."""
    import shlex

    from diga.train.stages import default_run_dir

    args = list(args or [])
    if split_config_args(args)[0] is None and (run_dir / "config.yaml").is_file():
        args.insert(0, str(run_dir / "config.yaml"))  # resumed without CONFIG: the run's own
    given = f" {shlex.join(args)}" if args else ""
    if stage == "warmup" and cfg.data.target.kind != "none":
        out = default_run_dir("selftrain", run_dir.parent)  # a free folder beside it
        command = f"diga train selftrain{given} --init {run_dir} --out {out}"
    elif stage == "source":
        command = f"diga train warmup{given} --out {default_run_dir('warmup', run_dir.parent)}"
    else:
        command = f"diga export {run_dir} --int8"
    console.print(f"next: {command}", highlight=False, markup=False, soft_wrap=True)


@app.command("source")
def source(args: ConfigArgs = None, out: Out = None, resume: Resume = False, quiet: Quiet = False,
           devices: Devices = None, auto_resume: AutoResume = False,
           max_restarts: MaxRestarts = 0) -> None:
    """Source-only baseline: supervised CE on the labelled source domain.

    Example:
      diga train source demo train.steps=600 --out runs/source
    """
    _train("source", args, out, resume, quiet, devices, auto_resume, max_restarts)


@app.command("warmup")
def warmup(args: ConfigArgs = None, out: Out = None, resume: Resume = False, quiet: Quiet = False,
           devices: Devices = None, auto_resume: AutoResume = False,
           max_restarts: MaxRestarts = 0) -> None:
    """DiGA stage 1: symmetric distillation with cross-domain mixture (EMA teacher).

    Ablations with the same command: warmup.symkd=false (source-only),
    warmup.mixture=false (SymKD without mixture), warmup.translator=fda|learned|none.

    Examples:
      diga train warmup demo --out runs/warmup
      diga train warmup gta2cs-deeplabv2 data.source.root=/data/GTA5 \\
        data.target.root=/data/cityscapes --out runs/gta-warmup --devices 8
    """
    _train("warmup", args, out, resume, quiet, devices, auto_resume, max_restarts)


@app.command("selftrain")
def selftrain(
    args: ConfigArgs = None,
    init: Annotated[Path | None, typer.Option("--init", help="The warm-up run to start from.")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", min=1, help="Self-training rounds "
                                               "(selftrain.rounds); each regenerates pseudo-labels.")] = None,
    regenerate: Annotated[bool, typer.Option(
        "--regenerate", help="Make the pseudo-labels and centroids again where another model, "
        "other data or an older diga made them (default: refuse them).")] = False,
    out: Out = None, resume: Resume = False, quiet: Quiet = False, devices: Devices = None,
    auto_resume: AutoResume = False, max_restarts: MaxRestarts = 0,
) -> None:
    """DiGA stage 2: self-training with threshold-free bilateral-consensus pseudo-labels.

    Makes the init run's pseudo-labels and centroids when they are missing, and refuses
    ones another model made (--regenerate makes them again).

    A train.steps=N override without selftrain.steps sets the steps of every round.

    Example:
      diga train selftrain demo --init runs/warmup --rounds 2 --out runs/selftrain
    """
    from diga.config import save_config
    from diga.errors import UserError
    from diga.status import JobStatus
    from diga.train.distributed import destroy_distributed, init_distributed
    from diga.train.stages import prepare_run_dir, run_selftrain, undo_failed_start

    auto = auto_resume or max_restarts > 0
    resume = _auto(out, resume, auto_resume, max_restarts)
    if auto and resume and out is not None:  # rounds resume themselves from the saved config
        resume = (out / "config.yaml").is_file()
    cfg = stage_config(args, out, resume)
    if rounds is not None:
        cfg.selftrain.rounds = rounds
    if init is not None:
        cfg.selftrain.init = init
    if cfg.selftrain.init is None:
        raise UserError("self-training needs a warm-up run to start from",
                        "pass --init runs/warmup (or selftrain.init=...)")
    run_dir = _run_dir(out, "selftrain")
    if not resume:
        prepare_run_dir(run_dir, False, "selftrain", fresh_ok=auto)
    job = JobStatus(run_dir, split_config_args(args)[0], _round_stages(cfg))
    if devices is not None and devices > 1:
        _check_before_launch(cfg, devices, "selftrain")
        extra = ["--init", str(cfg.selftrain.init), "--rounds", str(cfg.selftrain.rounds),
                 *(["--regenerate"] if regenerate else [])]
        with job:
            job.begin("selftrain round 1")
            launch_on_devices(devices, cfg.run, ["train", "selftrain", *(args or []), *extra,
                                                 *_flags(run_dir, resume, quiet, auto)],
                              max_restarts)
        return

    def on_round(r: int, done: bool) -> None:
        if r > 1:
            job.finish(f"selftrain round {r - 1}")
            if dist.is_main:  # round r-1's result as it ends, not after the last round
                _report_round(run_dir, r - 1, cfg.stage_steps("selftrain"))
        (job.skip if done else job.begin)(f"selftrain round {r}")

    dist, _ = init_distributed(cfg.run)
    try:
        dist.barrier()  # every rank checked the run directory before rank 0 writes into it
        with undo_failed_start(run_dir, dist.is_main), job:
            if dist.is_main:
                save_config(cfg, run_dir / "config.yaml")
            results = run_selftrain(cfg, cfg.selftrain.init, run_dir, resume=resume,
                                    show_progress=not quiet, regenerate=regenerate,
                                    on_round=on_round)
    finally:
        destroy_distributed()
    if dist.is_main and results:  # the earlier rounds were reported as the next began
        _report(f"selftrain round {len(results)}", results[-1].run_dir, results[-1].metrics)
        _next("selftrain", args, run_dir, cfg)


def _report_round(run_dir: Path, r: int, steps: int) -> None:
    """Round ``r``'s line, from the metrics its checkpoint saved when it finished."""
    from diga.train.stages import finished_metrics

    round_dir = run_dir / f"round{r}"
    _report(f"selftrain round {r}", round_dir, finished_metrics(round_dir, steps) or {})


def _register_translator() -> None:
    from diga.cli import translator

    translator.register(app)


_register_translator()
