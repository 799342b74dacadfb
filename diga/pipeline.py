"""``diga run CONFIG --out RUN``: the whole job, stage after stage, resumable as one command.

Stages, each in its own folder of RUN::

    source/                  the source-only baseline (pipeline.baseline; the demo has it)
    warmup/                  DiGA stage 1
    selftrain/round1, ...    DiGA stage 2, one folder per round
    eval/eval.json           the final model on the config's target (its class protocols)
    export/                  model.onnx and what pipeline.export asks for (export.json last)
    bench/                   bench.json, bench.md, latency.png
    report.md                per-stage mIoU, curves, a prediction grid, the bench table
    config.yaml              the resolved config, written before anything else
    summary.json             what the report says, as JSON
    status.json              the job's state for ``diga runs``

Running the same command again continues: finished stages are skipped (a training stage is
finished when its last checkpoint reached its steps; the others when their last file exists),
an interrupted stage resumes from its checkpoint, and a config that differs from the saved one
is refused with the keys that differ. So one scheduler script (the command, requeued on
preemption) carries the schedule. ``until`` / ``start`` run part of it.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diga.config import Config
from diga.errors import RunStopped, UserError
from diga.io import atomic_write_text, replace_folder

STAGES = ("source", "warmup", "selftrain", "eval", "export", "bench", "report")
TRAINING = ("source", "warmup", "selftrain")
# what each stage reads: a stage before --from must have finished if a later one needs it
NEEDS = {"selftrain": "warmup", "eval": "selftrain", "export": "selftrain", "bench": "export"}


@dataclass
class Options:
    until: str | None = None  # the last stage to run
    start: str | None = None  # --from: run from this stage; finished deploy stages are redone
    devices: int | None = None  # training stages under torchrun with N processes
    quiet: bool = False  # no progress bars
    export: list[str] | None = None  # None: cfg.pipeline.export
    config_name: str | None = None  # CONFIG as given (for status.json and the report)
    title: str = "diga run"


@dataclass
class PipelineResult:
    out: Path
    miou: dict[str, float | None] = field(default_factory=dict)  # training stage -> target mIoU
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time this attempt
    eval: dict[str, Any] | None = None
    bench: list[dict[str, Any]] = field(default_factory=list)  # diga-bench/1 rows, status ok
    exported: list[dict[str, Any]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)  # stages run (not skipped) this attempt


def plan(cfg: Config, options: Options) -> list[str]:
    """The stages this attempt covers, in order (``source`` only with ``pipeline.baseline``)."""
    stages = [s for s in STAGES if s != "source" or cfg.pipeline.baseline]
    for flag, name in (("--from", options.start), ("--until", options.until)):
        if name is not None and name not in stages:
            why = " (pipeline.baseline is off)" if name == "source" else ""
            raise UserError(f"{flag} {name}: no such stage{why}",
                            f"choose from: {', '.join(stages)}")
    first = stages.index(options.start) if options.start else 0
    last = stages.index(options.until) if options.until else len(stages) - 1
    if first > last:
        raise UserError(f"--from {options.start} comes after --until {options.until}",
                        f"the stages run in this order: {', '.join(stages)}")
    return stages[first:last + 1]


def round_dirs(cfg: Config, out: Path) -> list[Path]:
    return [out / "selftrain" / f"round{r}" for r in range(1, cfg.selftrain.rounds + 1)]


def stage_table(cfg: Config, out: Path) -> list[dict[str, Any]]:
    """Every stage as ``status.json`` lists it, with its steps on the job's time axis."""
    warm, st = cfg.stage_steps("warmup"), cfg.stage_steps("selftrain")
    rows = [{"name": "source", "dir": "source", "steps": warm, "axis_start": 0}] \
        if cfg.pipeline.baseline else []
    rows.append({"name": "warmup", "dir": "warmup", "steps": warm, "axis_start": 0})
    rows += [{"name": f"selftrain round {r}", "dir": f"selftrain/round{r}", "steps": st,
              "axis_start": warm + (r - 1) * st} for r in range(1, cfg.selftrain.rounds + 1)]
    rows += [{"name": s, "dir": s, "steps": None, "axis_start": None}
             for s in ("eval", "export", "bench", "report")]
    return rows


def check_same_config(saved: dict[str, Any], cfg: Config, out: Path) -> None:
    """A rerun continues only the job it started: the keys that differ, in one line."""
    diff = _differences(saved, cfg.to_dict())
    if diff:
        shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise UserError(f"{out} was started with another config: {shown}{more}",
                        "rerun with the same CONFIG and overrides to continue it, or choose "
                        "another --out for a new job (diga config show shows a config)")


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in dict.fromkeys([*a, *b]):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def run_pipeline(cfg: Config, out: Path, options: Options | None = None,
                 say: Callable[[str], None] = print) -> PipelineResult:
    """Run (or continue) the job in ``out``; returns what the report shows."""
    import yaml

    from diga.config import check_data_paths

    options = options or Options()
    out = Path(out)
    stages = plan(cfg, options)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", "choose a folder for the job")
    saved = out / "config.yaml"
    if saved.is_file():
        check_same_config(yaml.safe_load(saved.read_text()), cfg, out)
    elif out.is_dir() and any(out.iterdir()):
        what = "a training run" if (out / "checkpoints").is_dir() else "not a diga run folder"
        raise UserError(f"{out} is {what} (no config.yaml of a diga run)",
                        "choose another --out (an empty or new folder) for the job")
    check_data_paths(cfg, source=True, target=cfg.data.target.kind != "none")
    _check_needs(cfg, out, stages)

    from diga.train.stages import undo_failed_start

    result = PipelineResult(out)
    # a start that fails on a user error before any checkpoint leaves no folder behind: the
    # corrected command is then a new job, not "another config"
    with undo_failed_start(out):
        if not saved.is_file():
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, cfg.to_yaml())
        _run_stages(cfg, out, options, stages, result, say)
    return result


def _run_stages(cfg: Config, out: Path, options: Options, stages: list[str],
                result: PipelineResult, say: Callable[[str], None]) -> None:
    from diga.status import JobStatus

    with JobStatus(out, options.config_name, stage_table(cfg, out)) as status, \
            _stop_on_signal():
        for stage in stages:
            tic = time.perf_counter()
            try:
                ran = STAGE_FUNCTIONS[stage](cfg, out, options, result, status, say,
                                             redo=options.start is not None)
            except _Interrupted as exc:
                from diga.train.signals import EXIT_CODES

                raise RunStopped(f"stopped by {exc.signal} in {status.data['stage'] or stage}; "
                                 f"go on with: {rerun_command()}",
                                 EXIT_CODES.get(exc.signal, 0)) from None
            if ran:
                result.seconds[stage] = time.perf_counter() - tic
                result.ran.append(stage)


def _check_needs(cfg: Config, out: Path, stages: list[str]) -> None:
    for stage in stages:
        need = NEEDS.get(stage)
        if need is None or need in stages:
            continue
        if not _finished(cfg, out, need):
            raise UserError(f"--from {stages[0]} needs a finished {need} stage in {out}",
                            f"run from an earlier stage (--from {need}), or drop --from")


def _finished(cfg: Config, out: Path, stage: str) -> bool:
    from diga.train.stages import finished_metrics

    if stage in ("source", "warmup"):
        return finished_metrics(out / stage, cfg.stage_steps(stage)) is not None
    if stage == "selftrain":
        return finished_metrics(round_dirs(cfg, out)[-1], cfg.stage_steps("selftrain")) \
            is not None
    return (out / DONE_FILES[stage]).is_file()


DONE_FILES = {"eval": "eval/eval.json", "export": "export/export.json",
              "bench": "bench/bench.json", "report": "report.md"}


class _Interrupted(BaseException):
    """SIGTERM / SIGINT outside a training loop. A BaseException, as KeyboardInterrupt: code
    that turns any Exception into its own error (a damaged-file message) lets it through."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal = name


@contextmanager
def _stop_on_signal() -> Iterator[None]:
    """SIGTERM / Ctrl-C outside a training loop (which checkpoints first): stop at once, with
    the line and exit code a training stage has. Deploy stages and pseudo-labels are written
    into staging folders, so what was published stays whole."""

    def stop(signum: int, frame: object) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # handlers: main thread only
        yield
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def rerun_command() -> str:
    """The command that continues this job: the same one (``diga run`` resumes by itself)."""
    return "diga " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "diga run"


# ---------------------------------------------------------------- the stages

def _train_once(name: str, run_dir: Path, steps: int, status: Any, result: PipelineResult,
                say: Callable[[str], None], train: Callable[[], None]) -> bool:
    """A training stage (or round) in ``run_dir``: skipped when its checkpoint reached
    ``steps``, else ``train()`` (which resumes from a checkpoint itself); its target-val mIoU
    recorded and said either way. Returns whether it trained."""
    from diga.train.stages import finished_metrics

    metrics = finished_metrics(run_dir, steps)
    ran = metrics is None
    if ran:
        status.begin(name)
        train()
        metrics = finished_metrics(run_dir, steps) or {}
        status.finish(name)
    else:
        status.skip(name)
    result.miou[name] = metrics.get("target_val_miou")
    say(f"[{name}] {_miou_text(metrics)}")
    return ran


def _train(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
           say: Callable[[str], None], redo: bool = False, stage: str = "warmup") -> bool:
    from diga.checkpoint import has_checkpoint

    run_dir, steps = out / stage, cfg.stage_steps(stage)

    def train() -> None:
        resume = has_checkpoint(run_dir)
        say(f"[{stage}] {'resuming' if resume else 'training'} {steps} steps -> {run_dir}")
        if options.devices and options.devices > 1:
            _launch(cfg, out, options, ["train", stage, str(out / "config.yaml"),
                                        "--out", str(run_dir), "--auto-resume"])
        else:
            from diga.train.loop import train_stage

            train_stage(cfg, stage, run_dir, resume=resume, show_progress=not options.quiet)

    return _train_once(stage, run_dir, steps, status, result, say, train)


def _selftrain(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
               say: Callable[[str], None], redo: bool = False) -> bool:
    from diga.train.stages import run_selftrain

    steps, ran = cfg.stage_steps("selftrain"), False
    for r, round_dir in enumerate(round_dirs(cfg, out), 1):

        def train(r: int = r, round_dir: Path = round_dir) -> None:
            say(f"[selftrain round {r}] {steps} steps -> {round_dir}")
            if options.devices and options.devices > 1:
                _launch(cfg, out, options, [
                    "train", "selftrain", str(out / "config.yaml"), "--init", str(out / "warmup"),
                    "--rounds", str(r), "--out", str(out / "selftrain"), "--auto-resume"])
            else:
                one = cfg.model_copy(deep=True)
                one.selftrain.rounds = r  # rounds before r are finished: skipped inside
                run_selftrain(one, out / "warmup", out / "selftrain", resume=True,
                              show_progress=not options.quiet)

        ran |= _train_once(f"selftrain round {r}", round_dir, steps, status, result, say, train)
    return ran


def _launch(cfg: Config, out: Path, options: Options, args: list[str]) -> None:
    """A training stage under torchrun (its processes leave the job's status.json to us)."""
    from diga.cli.common import launch_on_devices

    launch_on_devices(options.devices, cfg.run, args + (["--quiet"] if options.quiet else []))


def _miou_text(metrics: dict[str, Any]) -> str:
    miou = metrics.get("target_val_miou")
    return f"target-val mIoU {miou:.2f}" if miou is not None else "done (no target-val labels)"


def final_model(cfg: Config, out: Path) -> Path:
    return round_dirs(cfg, out)[-1]


def _eval(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
          say: Callable[[str], None], redo: bool = False) -> bool:
    """``diga eval`` of the final model: the config's targets and class protocols."""
    import json

    path = out / DONE_FILES["eval"]
    if path.is_file() and not redo:
        status.skip("eval")
        result.eval = json.loads(path.read_text())
        return False
    reason = _no_eval_reason(cfg)
    if reason:
        say(f"[eval] skipped: {reason}")
        status.skip("eval")
        return False
    from diga.cli.evaluate import eval_command

    status.begin("eval")
    say(f"[eval] {final_model(cfg, out)} -> {path}")
    protocols = ["16,13"] if cfg.num_classes == 16 else None  # SYNTHIA's two tables
    eval_command(final_model(cfg, out), [], json_path=path, save_predictions=None,
                 teacher=False, native_size=False, classes=protocols, targets=None)
    result.eval = json.loads(path.read_text())
    status.finish("eval")
    return True


def _no_eval_reason(cfg: Config) -> str | None:
    if cfg.eval.targets:
        return None
    if cfg.data.target.kind == "none":
        return "no target dataset (data.target.kind none) and no eval.targets"
    from diga.data.datasets import build_dataset

    if not build_dataset(cfg, "target", "val", train=False).has_labels:
        return "the target val split has no labels"
    return None


def export_flags(cfg: Config, options: Options) -> dict[str, bool]:
    chosen = cfg.pipeline.export if options.export is None else options.export
    return {name: name in chosen for name in ("fp16", "int8", "openvino", "trt", "trt_fp32")}


def _export(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
            say: Callable[[str], None], redo: bool = False) -> bool:
    import json

    from diga.export.pipeline import ExportOptions, export_checkpoint

    path = out / DONE_FILES["export"]
    if path.is_file() and not redo:
        status.skip("export")
        result.exported = json.loads(path.read_text()).get("files", [])
        return False
    status.begin("export")
    summary = export_checkpoint(final_model(cfg, out), [], ExportOptions(**export_flags(cfg, options)),
                                out / "export", report=lambda m: say(f"[export] {m}"))
    result.exported = [f.as_dict() for f in summary.files]
    status.finish("export")
    return True


def bench_backends(cfg: Config, exported: list[Path]) -> list[str]:
    """``pipeline.bench_backends``, or: PyTorch and onnxruntime on the CPU, plus OpenVINO /
    TensorRT for the files exported for them and onnxruntime's CUDA provider on a GPU."""
    if cfg.pipeline.bench_backends is not None:
        return list(cfg.pipeline.bench_backends)
    from diga.device import select_device

    backends = ["torch", "ort-cpu"]
    if any(p.suffix == ".xml" for p in exported):
        backends.append("openvino")
    if any(p.suffix == ".engine" for p in exported):
        backends.append("trt")
    if select_device(cfg.run.device).type == "cuda":
        backends.append("ort-cuda")
    return backends


def _bench(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
           say: Callable[[str], None], redo: bool = False) -> bool:
    import json

    from diga.benchmarks.latency import run_bench
    from diga.benchmarks.report import write_reports
    from diga.checkpoint import resolve_checkpoint

    path = out / DONE_FILES["bench"]
    if path.is_file() and not redo:
        status.skip("bench")
        result.bench = json.loads(path.read_text())["rows"]
        return False
    status.begin("bench")
    exported = json.loads((out / DONE_FILES["export"]).read_text())["files"]
    files = [out / "export" / Path(f["path"]).name for f in exported]
    backends = bench_backends(cfg, files)
    say(f"[bench] {', '.join(backends)}")
    models = [resolve_checkpoint(final_model(cfg, out)).folder, *files]
    bench = run_bench(models, backends=backends)
    bench["rows"] = [r for r in bench["rows"] if r["status"] == "ok"]
    staged = out / ".bench.partial"
    shutil.rmtree(staged, ignore_errors=True)
    write_reports(bench, staged)
    replace_folder(staged, out / "bench")
    result.bench = bench["rows"]
    status.finish("bench")
    return True


def _report(cfg: Config, out: Path, options: Options, result: PipelineResult, status: Any,
            say: Callable[[str], None], redo: bool = False) -> bool:
    from diga.report import write_report

    if (out / DONE_FILES["report"]).is_file() and not redo and not result.ran:
        status.skip("report")  # nothing changed since it was written
        return False
    status.begin("report")
    _fill_from_disk(cfg, out, result)
    write_report(cfg, out, result, options, {"source-only": out / "source",
                                             "warm-up": out / "warmup",
                                             "self-training": final_model(cfg, out)})
    status.finish("report")
    say(f"[report] {out / 'report.md'}")
    return True


def _fill_from_disk(cfg: Config, out: Path, result: PipelineResult) -> None:
    """What earlier attempts (or a run with --from) finished, for the report."""
    import json

    from diga.train.stages import finished_metrics

    dirs = {"source": out / "source", "warmup": out / "warmup"}
    dirs.update({f"selftrain round {r}": d for r, d in enumerate(round_dirs(cfg, out), 1)})
    for name, folder in dirs.items():
        if name == "source" and not cfg.pipeline.baseline:
            continue
        steps = cfg.stage_steps("selftrain" if name.startswith("selftrain") else "warmup")
        metrics = finished_metrics(folder, steps)
        if metrics is not None and name not in result.miou:
            result.miou[name] = metrics.get("target_val_miou")
    for key, stage in (("eval", "eval"), ("bench", "bench"), ("exported", "export")):
        path = out / DONE_FILES[stage]
        if path.is_file() and not getattr(result, key):
            data = json.loads(path.read_text())
            setattr(result, key, {"eval": data, "bench": data.get("rows", []),
                                  "exported": data.get("files", [])}[key])


STAGE_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "source": lambda *a, **k: _train(*a, **k, stage="source"),
    "warmup": lambda *a, **k: _train(*a, **k, stage="warmup"),
    "selftrain": _selftrain, "eval": _eval, "export": _export, "bench": _bench,
    "report": _report,
}
