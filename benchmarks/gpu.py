"""The GPU check: a paper preset's training steps, evaluation and pseudo-labelling on one GPU.

For a paper preset (``--preset``; default ``gta2cs-deeplabv2``: DeepLabV2 ResNet-101, crop
512x896, batch 3; the HRNet-W48 + OCR and MiT-B5 + SegFormer presets too) on the built-in
benchmark at that crop (no dataset needed; random weights, which time like ImageNet ones):

- the source, warm-up and self-training steps of ``train_stage`` in fp32, bf16,
  bf16 + channels_last and, while the time budget allows, bf16 + channels_last +
  ``torch.compile``: seconds per step, images/s, peak GPU memory;
- the warm-up step's ratio to its bare network passes (same precision);
- host syncs per step between log points (``torch.cuda.set_sync_debug_mode``);
- evaluation, pseudo-labelling and centroid throughput at 512x1024 with the preset's scales;
- the projected wall-clock time of the preset's schedule (warm-up, then every self-training
  round with its pseudo-labels and centroids, and every periodic evaluation) on full
  GTA5 / Cityscapes, from the fastest precision measured on every stage.

It writes ``gpu_check.json`` and ``gpu_check.md`` and prints the table. ``--smoke`` runs the
same code on the CPU with the family's small model in seconds (a test runs it). Run:

    python -m diga.benchmarks.gpu [--preset NAME] [--out DIR] [--steps 15] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from diga.config import Config, load_config

PRESET = "gta2cs-deeplabv2"
# the presets it can project (domain generalisation trains the warm-up alone: not one of them)
PRESETS = ("gta2cs-deeplabv2", "synthia2cs-deeplabv2", "gta2cs-hrnet48-ocr",
           "synthia2cs-hrnet48-ocr", "gta2cs-segformer-b5", "synthia2cs-segformer-b5")
# --smoke: each family's small variant on the CPU
SMOKE_MODEL = {"deeplabv2": "deeplabv2_tiny", "hrnet48-ocr": "hrnet18_ocr",
               "segformer-b5": "segformer_mit_b0"}
PRECISIONS = {  # name -> run.* overrides
    "fp32": [],
    "bf16": ["run.amp=bf16"],
    "bf16+cl": ["run.amp=bf16", "run.channels_last=true"],
    "bf16+cl+compile": ["run.amp=bf16", "run.channels_last=true", "run.compile=true"],
}
STAGES = ("source", "warmup", "selftrain")
CITYSCAPES_TRAIN, CITYSCAPES_VAL = 2975, 500  # images of the splits the schedule runs over
DATA = ["model.pretrained=null", "data.source.kind=builtin", "data.target.kind=builtin",
        "data.builtin.source_train=16", "data.builtin.target_train=16",
        "data.builtin.target_val=8"]
GPU = DATA + ["run.device=cuda", "data.builtin.size=512x896"]
# 64 images: no sampler epoch boundary (a host read of its permutation) in the sync count
SMOKE = DATA + ["data.builtin.source_train=64", "data.builtin.target_train=64",
                "run.device=cpu", "data.builtin.size=32x64",
                "train.crop=32x64", "data.source.resize=32x64", "data.target.resize=32x64",
                "train.batch_size=2", "warmup.fda_band=0.1", "data.num_workers=1",
                "eval.batch_size=4", "pseudo.batch_size=4"]


def smoke_overrides(preset: str) -> list[str]:
    """``SMOKE`` with the preset's family's small model."""
    return SMOKE + [f"model.name={SMOKE_MODEL[preset.split('-', 1)[1]]}"]


def check(steps: int = 15, budget_s: float = 420.0, smoke: bool = False,
          preset: str = PRESET, precisions: tuple[str, ...] = tuple(PRECISIONS)) -> dict[str, Any]:
    """Every measurement of the check (of ``precisions``); skips what would pass the time
    budget, and says so."""
    start = time.monotonic()
    base = smoke_overrides(preset) if smoke else GPU
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the GPU check needs a CUDA GPU; 'python -m diga.benchmarks.gpu "
                         "--smoke' runs its code path on the CPU")
    cfg = load_config(preset, base)
    result: dict[str, Any] = {"preset": preset, **_environment(device), "model": cfg.model.name,
                              "crop": list(cfg.train.crop), "batch_size": cfg.train.batch_size,
                              "steps_timed": steps, "rows": [], "skipped": [],
                              "syncs_per_step": None, "inference": None, "projection": None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in PRECISIONS:
            if name not in precisions:
                result["skipped"].append(f"{name}: not asked for (--precision)")
            elif smoke and "compile" in name:
                result["skipped"].append(f"{name}: not in the CPU smoke run")
            # compile last, and only with time for its compilations left
            elif time.monotonic() - start > budget_s - (150 if "compile" in name else 0):
                result["skipped"].append(f"{name}: time budget")
            else:
                _step_rows(result, load_config(preset, base + PRECISIONS[name]), name, steps,
                           work / name, device)
        fastest = fastest_complete(result["rows"])
        if fastest is None:
            result["skipped"].append("syncs, inference, projection: no precision ran every stage")
        else:
            fast_cfg = load_config(preset, base + PRECISIONS[fastest])
            result["syncs_per_step"] = {
                stage: _syncs_per_step(fast_cfg, stage, work / "syncs", device)
                for stage in ("warmup", "selftrain")}
            result["syncs_precision"] = fastest
            result["inference"] = _inference(fast_cfg, work / fastest / "init", work, device)
            result["projection"] = project(cfg, result)
    result["wall_s"] = time.monotonic() - start
    return result


def _step_rows(result: dict[str, Any], cfg: Config, name: str, steps: int, work: Path,
               device: torch.device) -> None:
    """One row per stage (compile: the warm-up only) of ``train_stage``'s step at ``cfg``."""
    from diga.benchmarks.training import bare_step_time, real_step_time

    for stage in STAGES if not cfg.run.compile else ("warmup",):
        _reset_peak(device)
        try:
            step_s = real_step_time(cfg, stage, steps, work, warm=steps)
        except torch.cuda.OutOfMemoryError:  # a note, not the end of the check
            result["skipped"].append(f"{name} {stage}: out of GPU memory")
            torch.cuda.empty_cache()
            continue
        row = {"precision": name, "stage": stage, "step_s": step_s,
               "images_per_s": _images_per_step(cfg, stage) / step_s,
               "peak_gib": _peak_gib(device)}
        if stage == "warmup":
            row["bare_step_s"] = bare_step_time(cfg, stage, steps, device, warm=3)
            row["ratio_to_bare"] = step_s / row["bare_step_s"]
        result["rows"].append(row)


def _environment(device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": str(device), "gpu": gpu or "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "date": date.today().isoformat()}


def _images_per_step(cfg: Config, stage: str) -> int:
    """Images loaded per step: the source batch, and a target batch where the stage reads one."""
    batch = cfg.stage_batch_size(stage)[0]
    reads_target = stage == "selftrain" or (stage == "warmup" and cfg.warmup.translator == "fda")
    return batch * (2 if reads_target else 1)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _syncs_per_step(cfg: Config, stage: str, work: Path, device: torch.device) -> float:
    """Host syncs per step between log points: runs of 2 and 12 steps, counted, subtracted."""
    from diga.benchmarks.syncs import count_host_syncs
    from diga.benchmarks.training import warmup_init
    from diga.checkpoint import resolve_checkpoint
    from diga.train.loop import train_stage
    from diga.train.run import SelftrainInputs
    from diga.train.stages import ensure_centroids, ensure_pseudo_labels

    quiet = cfg.model_copy(deep=True)
    quiet.train.log_every, quiet.train.checkpoint_every = 10**6, 10**6
    quiet.train.eval_every = quiet.train.visual_every = 0
    quiet.selftrain.steps = None
    inputs = None
    if stage == "selftrain":
        init = warmup_init(quiet, work)
        inputs = SelftrainInputs(resolve_checkpoint(init),
                                 ensure_pseudo_labels(quiet, init, device, quiet=True),
                                 ensure_centroids(quiet, init, device, quiet=True))
    counts = []
    for steps in (2, 12):
        quiet.train.steps = steps
        with count_host_syncs(device) as counter:
            train_stage(quiet, stage, work / f"{stage}{steps}", selftrain=inputs,
                        show_progress=False)
        counts.append(sum(counter.values()))
    return (counts[1] - counts[0]) / 10


def _inference(cfg: Config, init: Path, work: Path, device: torch.device) -> dict[str, float]:
    """Images/s of evaluation (target val), pseudo-labelling and centroids (target train) at
    the target resize with the preset's scales, with the warm-up checkpoint the self-training
    measurement made."""
    from diga.checkpoint import load_model
    from diga.data.datasets import build_dataset
    from diga.train.evaluate import evaluate
    from diga.train.pseudo import make_centroids, make_pseudo_labels

    model, _, ckpt = load_model(init, device)
    val = build_dataset(cfg, "target", "val", train=False, scales=cfg.eval.scales)
    evaluate(model, val, cfg, device, max_images=2)  # first calls: allocations, autotuning
    out = {}
    for name, run, count in (
            ("eval", lambda: evaluate(model, val, cfg, device), len(val)),
            ("pseudo_labels", lambda: make_pseudo_labels(model, cfg, ckpt, work / "pl", device),
             cfg.data.builtin.target_train),
            ("centroids", lambda: make_centroids(model, cfg, ckpt, work / "c.safetensors", device),
             cfg.data.builtin.target_train)):
        _reset_peak(device)
        tic = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[f"{name}_images_per_s"] = count / (time.perf_counter() - tic)
    out["scales"] = list(cfg.eval.scales)
    out["size"] = list(cfg.data.target.resize or cfg.data.builtin.size)
    return out


def fastest_complete(rows: list[dict[str, Any]]) -> str | None:
    """The precision with the fastest warm-up step among those with every stage measured."""
    complete = {r["precision"] for r in rows if r["stage"] == "selftrain"} & {
        r["precision"] for r in rows if r["stage"] == "warmup"}
    timed = [r for r in rows if r["stage"] == "warmup" and r["precision"] in complete]
    return min(timed, key=lambda r: r["step_s"])["precision"] if timed else None


def project(cfg: Config, result: dict[str, Any]) -> dict[str, Any]:
    """The preset's schedule on full GTA5 -> Cityscapes, from the fastest precision's steps."""
    precision = fastest_complete(result["rows"])
    step = {r["stage"]: r["step_s"] for r in result["rows"] if r["precision"] == precision}
    inf = result["inference"]

    def evals(steps: int) -> float:  # every eval_every steps, and at the end
        n = (steps - 1) // cfg.train.eval_every + 1 if cfg.train.eval_every else 1
        return n * CITYSCAPES_VAL / inf["eval_images_per_s"]

    warm_steps, st_steps = cfg.stage_steps("warmup"), cfg.stage_steps("selftrain")
    warmup_s = warm_steps * step["warmup"] + evals(warm_steps)
    round_s = (CITYSCAPES_TRAIN / inf["pseudo_labels_images_per_s"]
               + CITYSCAPES_TRAIN / inf["centroids_images_per_s"]
               + st_steps * step["selftrain"] + evals(st_steps))
    total = warmup_s + cfg.selftrain.rounds * round_s
    return {"precision": precision, "warmup_h": warmup_s / 3600,
            "round_h": round_s / 3600, "rounds": cfg.selftrain.rounds, "total_h": total / 3600,
            "warmup_steps": warm_steps, "selftrain_steps": st_steps}


def markdown(result: dict[str, Any]) -> str:
    def fmt(v: Any, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = [f"GPU check, {result['preset']} ({result['model']}, crop "
             f"{result['crop'][0]}x{result['crop'][1]}, batch {result['batch_size']}): "
             f"{result['gpu']}, torch {result['torch']}, CUDA {result['cuda']}, {result['date']}",
             "", "| precision | stage | s/step | images/s | peak GiB | ratio to bare passes |",
             "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['precision']} | {r['stage']} | {fmt(r['step_s'])} | "
                     f"{fmt(r['images_per_s'], 1)} | {fmt(r['peak_gib'], 1)} | "
                     f"{fmt(r.get('ratio_to_bare'), 2)} |")
    inf, proj = result["inference"], result["projection"]
    lines.append("")
    if proj is not None:
        size = "x".join(map(str, inf["size"]))
        lines += [f"Host syncs per step between log points ({result['syncs_precision']}): "
                  + ", ".join(f"{k} {v:g}" for k, v in result["syncs_per_step"].items()),
                  f"At {size}, scales {inf['scales']}: evaluation "
                  f"{inf['eval_images_per_s']:.2f}, pseudo-labels "
                  f"{inf['pseudo_labels_images_per_s']:.2f}, centroids "
                  f"{inf['centroids_images_per_s']:.2f} images/s",
                  f"Projected schedule ({proj['precision']}): warm-up {proj['warmup_steps']} "
                  f"steps {proj['warmup_h']:.1f} h, {proj['rounds']} self-training rounds of "
                  f"{proj['selftrain_steps']} steps {proj['round_h']:.1f} h each, total "
                  f"{proj['total_h']:.1f} h (Cityscapes train {CITYSCAPES_TRAIN}, val "
                  f"{CITYSCAPES_VAL} images)"]
    lines += [f"Skipped: {s}" for s in result["skipped"]]
    lines.append(f"Check wall time {result['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per row (after as "
                        "many warm-up steps)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no measurement after this (compile needs 150 s left)")
    parser.add_argument("--smoke", action="store_true",
                        help="the same code on the CPU with the family's small model, in seconds")
    parser.add_argument("--preset", choices=PRESETS, default=PRESET)
    parser.add_argument("--precision", action="append", choices=PRECISIONS, dest="precisions",
                        help="measure only this precision (repeatable; default: all)")
    args = parser.parse_args(argv)
    steps = 2 if args.smoke and args.steps == 15 else args.steps
    result = check(steps, args.budget_s, args.smoke, args.preset,
                   tuple(args.precisions or PRECISIONS))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "gpu_check.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
