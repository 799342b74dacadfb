"""Training throughput: data loading vs consumption, and each stage's step vs its bare passes.

For every stage the real step (``train_stage``: augmentation, translation, masks, losses, EMA,
logging) is timed and divided by the time of the bare network passes the stage needs:

  source     student forward + backward on B images, optimiser step
  warmup     student forward + backward on the 2B views, teacher forward on them, optimiser step
  selftrain  student forward + backward on 3B images (2B views + B class-mixed), teacher forward
             on 3B (2B views + B target), optimiser step

A ratio near 1 means the method costs little beyond the network itself. Run:

    python -m diga.benchmarks.training [CONFIG] [key=value ...] [--steps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diga.config import Config, load_config
from diga.data.datasets import build_dataset, infinite_loader, normalize
from diga.device import select_device

PASSES = {"source": (1, 0), "warmup": (2, 2), "selftrain": (3, 3)}  # (student, teacher) x B


def data_loading_rate(cfg: Config, batches: int = 20) -> float:
    """Source images per second delivered by the training DataLoader (transforms included)."""
    dataset = build_dataset(cfg, "source", "train", train=True)
    it = infinite_loader(dataset, cfg.train.batch_size, cfg.run.seed, 0, cfg.data.num_workers)
    next(it)  # worker start-up is not throughput
    tic = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.train.batch_size / (time.perf_counter() - tic)


def bare_step_time(cfg: Config, stage: str, steps: int, device: torch.device,
                   warm: int = 2) -> float:
    """Seconds per step of the network passes alone, on random inputs of the crop size, with
    the run's precision, memory format and compilation (``run.amp``, ``channels_last``,
    ``compile``)."""
    from diga.method import EMATeacher
    from diga.models import build_model
    from diga.train.optim import build_optimizer
    from diga.train.speed import Precision, maybe_compile, to_memory_format

    student_mult, teacher_mult = PASSES[stage]
    b, (h, w) = cfg.stage_batch_size(stage)[0], cfg.train.crop
    model = to_memory_format(build_model(cfg.model.name, cfg.num_classes,
                                         freeze_bn=cfg.model.freeze_bn).to(device), cfg.run).train()
    teacher = EMATeacher(model) if teacher_mult else None
    student_fn = maybe_compile(model, cfg.run)
    teacher_fn = maybe_compile(teacher.model.train(), cfg.run) if teacher is not None else None
    forward = Precision.from_config(cfg.run, device)
    optimizer = build_optimizer(model, cfg.train.optim)
    xs = torch.rand(student_mult * b, 3, h, w, device=device)
    xt = torch.rand(teacher_mult * b, 3, h, w, device=device)

    def one() -> None:
        out = forward(student_fn, normalize(xs, cfg.data.mean, cfg.data.std))
        if teacher_fn is not None:
            with torch.no_grad():
                forward(teacher_fn, normalize(xt, cfg.data.mean, cfg.data.std))
        optimizer.zero_grad(set_to_none=True)
        out.logits.mean().backward()
        optimizer.step()

    for _ in range(warm):
        one()
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    return (time.perf_counter() - tic) / steps


def real_step_time(cfg: Config, stage: str, steps: int, work: Path, warm: int = 3) -> float:
    """Seconds per step of ``train_stage`` (data loading overlapped by workers), its first
    ``warm`` steps excluded. Logs are read at multiples of gcd(warm, steps) only: a log point
    waits for the device."""
    from diga.train.loop import train_stage
    from diga.train.stages import run_selftrain

    keys = {"train.steps": steps + warm, "train.eval_every": 0, "train.visual_every": 0,
            "train.log_every": math.gcd(warm, steps), "train.checkpoint_every": 10**6}
    run_cfg = cfg.model_copy(deep=True)
    for key, value in keys.items():
        section, name = key.split(".")
        setattr(getattr(run_cfg, section), name, value)
    run_cfg.selftrain.steps = None  # every stage runs the measured steps
    if stage == "selftrain":
        run_cfg.selftrain.rounds = 1
        run_dir = work / "selftrain"
        run_selftrain(run_cfg, warmup_init(run_cfg, work), run_dir, show_progress=False)
        log = run_dir / "round1" / "metrics.jsonl"
    else:
        run_dir = work / stage
        train_stage(run_cfg, stage, run_dir, show_progress=False)
        log = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    per_step = {r["step"]: r["sec_per_step"] * r["step"] for r in rows if "sec_per_step" in r}
    return (per_step[steps + warm] - per_step[warm]) / steps  # cumulative time differences


def warmup_init(cfg: Config, work: Path) -> Path:
    """``work/init``: a 1-step warm-up run (made once) for self-training to start from."""
    from diga.train.loop import train_stage

    init = work / "init"
    if not (init / "checkpoints").exists():
        init_cfg = cfg.model_copy(deep=True)
        init_cfg.train.steps = 1
        train_stage(init_cfg, "warmup", init, show_progress=False)
    return init


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_training(cfg: Config, steps: int = 20,
                     stages: tuple[str, ...] = ("source", "warmup", "selftrain")) -> dict[str, Any]:
    """Step time, images/s and the ratio to bare passes for each stage, plus data loading."""
    device = select_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    result: dict[str, Any] = {
        "device": str(device), "threads": torch.get_num_threads(), "model": cfg.model.name,
        "batch_size": cfg.train.batch_size, "crop": list(cfg.train.crop),
        "data_loading_images_per_s": data_loading_rate(cfg), "num_workers": cfg.data.num_workers,
        "stages": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            real = real_step_time(cfg, stage, steps, Path(tmp))
            bare = bare_step_time(cfg, stage, steps, device)
            source_images = cfg.train.batch_size  # source images consumed per step
            target_images = cfg.train.batch_size if stage != "source" else 0
            result["stages"][stage] = {
                "step_s": real, "bare_step_s": bare, "ratio_to_bare": real / bare,
                "images_per_s": (source_images + target_images) / real,
                "source_images_per_s": source_images / real,
            }
    return result


def format_training(result: dict[str, Any]) -> str:
    lines = [f"device {result['device']} ({result['threads']} threads), {result['model']}, "
             f"batch {result['batch_size']}, crop {result['crop'][0]}x{result['crop'][1]}",
             f"data loading: {result['data_loading_images_per_s']:.0f} source images/s "
             f"({result['num_workers']} workers)"]
    for stage, row in result["stages"].items():
        lines.append(f"{stage:>10}: step {row['step_s'] * 1000:7.1f} ms, bare passes "
                     f"{row['bare_step_s'] * 1000:7.1f} ms, ratio {row['ratio_to_bare']:.2f}, "
                     f"consumes {row['source_images_per_s']:.0f} source images/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="*", help="CONFIG then key=value overrides")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stages", default="source,warmup,selftrain")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from diga.cli.common import split_config_args

    config, overrides = split_config_args(args.config)
    cfg = load_config(config, overrides)
    result = measure_training(cfg, args.steps, tuple(args.stages.split(",")))
    print(format_training(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
