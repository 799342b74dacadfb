"""What the jobs under a folder are doing (``diga runs``) and their curves (``diga runs plot``).

A job is a folder with ``status.json`` (``diga.status``); its step, loss, mIoU and speed come
from its stages' ``metrics.jsonl``. A folder of an older diga (``config.yaml`` and
``metrics.jsonl``, no status) is a job of one stage whose state is only known once its final
record is there. A job marked running whose process is gone from this host (``kill -9``, an
out-of-memory kill, a power cut) is reported crashed.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diga.errors import UserError
from diga.status import STATUS_FILE, read_status

VANISHED = "the process ended without a word (killed?)"
PRUNE = {"checkpoints", "visuals", "__pycache__"}  # never hold a job; can hold many files
START_SLACK_S = 2.0  # /proc start times are in clock ticks since boot: rounding


@dataclass
class Stage:
    """A stage of a job as the reader sees it, with its ``metrics.jsonl`` records."""

    name: str
    dir: str
    steps: int | None
    axis_start: int | None
    state: str
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def trains(self) -> bool:
        return self.steps is not None or any("loss" in r for r in self.records)

    def last(self, key: str, training: bool = False) -> Any:
        """The last value of ``key`` (of a training record when ``training``), or None."""
        for record in reversed(self.records):
            if key in record and (not training or "loss" in record):
                return record[key]
        return None

    @property
    def step(self) -> int | None:
        """The step reached: the last training record's, or the final record's."""
        for record in reversed(self.records):
            if record.get("final") or "loss" in record:
                return _int(record.get("step"))
        return None


@dataclass
class Job:
    folder: Path
    status: dict[str, Any] | None
    stages: list[Stage]


@dataclass
class RunRow:
    """One line of ``diga runs``; ``--json`` prints these fields."""

    name: str
    path: str
    config: str | None
    stage: str | None
    step: int | None
    steps: int | None
    state: str
    loss: float | None
    miou: float | None
    elapsed_s: float | None
    eta_s: float | None
    error: str | None
    host: str | None
    pid: int | None
    started: float | None
    updated: float | None
    ended: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``metrics.jsonl``; a line that does not parse (cut by a kill) is
    skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    """A finite number, else None (an mIoU with no labels to score is NaN: shown as -)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def is_job(folder: Path) -> bool:
    return (folder / STATUS_FILE).is_file() or ((folder / "config.yaml").is_file()
                                                and (folder / "metrics.jsonl").is_file())


def job_folders(folder: Path) -> Iterator[Path]:
    """Every job folder under ``folder`` (itself included), in name order; a job's own folders
    are not searched (its stages are not jobs)."""
    for root, dirs, _ in os.walk(folder):
        here = Path(root)
        if is_job(here):
            dirs.clear()
            yield here
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in PRUNE)


def load_job(folder: Path) -> Job:
    """A job's status (None for an older diga's run) and its stages with their records."""
    folder = Path(folder)
    status = read_status(folder)
    if status is None:
        stages = [Stage(folder.name, ".", None, 0, "unknown")]
    else:
        stages = [Stage(str(s.get("name")), str(s.get("dir") or "."), _int(s.get("steps")),
                        _int(s.get("axis_start")), str(s.get("state", "pending")))
                  for s in status.get("stages", []) if isinstance(s, dict)]
    seen: set[Path] = set()
    for stage in stages:
        path = (folder / stage.dir / "metrics.jsonl").resolve()
        if path not in seen:  # two stages in one folder: the records belong to the first
            seen.add(path)
            stage.records = read_jsonl(path)
    if status is None and stages[0].last("final"):
        stages[0].steps, stages[0].state = stages[0].step, "finished"
    return Job(folder, status, stages)


def process_alive(pid: int, since: float | None = None) -> bool:
    """Whether ``pid`` runs on this host (a zombie does not). With ``since`` (the last time the
    job wrote its status), a process that started after it is another one with a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return not Path("/proc").is_dir() or Path(f"/proc/{pid}").exists()  # not Linux
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    if since is not None:
        try:
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                        .splitlines() if line.startswith("btime "))
            started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (OSError, StopIteration, ValueError, IndexError):
            return True
        return started <= since + START_SLACK_S
    return True


def job_state(status: dict[str, Any]) -> tuple[str, str | None]:
    """The job's state and error line: a running job whose process is gone is crashed. On
    another host a running job cannot be checked: it is reported running."""
    state, error = str(status.get("state", "unknown")), status.get("error")
    pid = _int(status.get("pid"))
    if (state == "running" and status.get("host") == socket.gethostname() and pid is not None
            and not process_alive(pid, _number(status.get("updated")))):
        return "crashed", VANISHED
    return state, error


def current_stage(job: Job) -> Stage | None:
    """The stage the status names, else the first not done, else the last."""
    if not job.stages:
        return None
    if job.status is None:
        return job.stages[0]
    name = job.status.get("stage")
    named = next((s for s in job.stages if s.name == name), None)
    return named or next((s for s in job.stages if s.state not in ("finished", "skipped")),
                         job.stages[-1])


def run_row(job: Job, name: str, now: float | None = None) -> RunRow:
    now = time.time() if now is None else now
    status = job.status or {}
    state, error = job_state(status) if job.status else (job.stages[0].state, None)
    stage = current_stage(job)
    index = job.stages.index(stage) if stage is not None else -1
    trained = [s for s in job.stages[:index + 1] if s.last("loss") is not None]
    loss = _number(trained[-1].last("loss")) if trained else None
    mious = [m for s in job.stages if (m := _number(s.last("target_val_miou"))) is not None]
    miou = mious[-1] if mious else None
    started, updated, ended = (_number(status.get(k)) for k in ("started", "updated", "ended"))
    end = ended or (updated if state != "running" else now)
    elapsed = end - started if started is not None and end is not None else None
    step = stage.step if stage is not None and stage.trains else None
    steps = stage.steps if stage is not None else None
    if stage is not None and steps is None and stage.last("final"):
        steps = step
    eta = None
    if state == "running" and stage is not None and stage.steps is not None:
        speed = _number(stage.last("sec_per_step", training=True))
        later = sum(s.steps for s in job.stages[index + 1:]
                    if s.steps is not None and s.state not in ("finished", "skipped"))
        if speed is not None:
            eta = max(0, stage.steps - (step or 0) + later) * speed
    return RunRow(name=name, path=str(job.folder), config=status.get("config"),
                  stage=stage.name if stage is not None and job.status else None, step=step,
                  steps=steps, state=state, loss=loss, miou=miou, elapsed_s=elapsed, eta_s=eta,
                  error=error, host=status.get("host"), pid=_int(status.get("pid")),
                  started=started, updated=updated, ended=ended)


def find_runs(folder: Path) -> list[RunRow]:
    """A row for every job under ``folder``, named by its path relative to ``folder``.

    Raises:
        UserError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}" if not folder.exists() else
                        f"{folder} is a file, not a folder of runs",
                        "give the folder the runs were written to (diga runs FOLDER)")
    now = time.time()
    return [run_row(load_job(job), str(folder) if job == folder else str(job.relative_to(folder)),
                    now) for job in job_folders(folder)]


def resolve_runs(paths: list[Path]) -> list[tuple[str, Job]]:
    """``diga runs plot`` arguments as (name, job): a job folder, or every job under a folder.

    Raises:
        UserError: a path that does not exist or holds no job.
    """
    found: list[tuple[str, Job]] = []
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"run not found: {path}", "give job folders (with status.json or "
                            "metrics.jsonl), or a folder of them")
        jobs = list(job_folders(Path(path)))
        if not jobs:
            raise UserError(f"no run in {path}", "give job folders (with status.json or "
                            "metrics.jsonl), or a folder of them")
        found += [(str(job), load_job(job)) for job in jobs]  # job: path/its place under it
    return found


@dataclass
class Curve:
    """One metric of a job over a stretch of its step axis: a stage's training values, or the
    evaluations of stages one after the other (the model goes on: one line)."""

    key: str
    xs: list[float]
    ys: list[float]
    beside: bool = False  # a baseline stage another stage starts over again (drawn dashed)


@dataclass
class JobCurves:
    curves: list[Curve]
    starts: dict[float, list[str]]  # step -> the training stages that start there
    end: float  # where the last training stage ends (planned: a running job's whole axis)
    beside: list[str]  # the stages drawn dashed


def job_curves(job: Job) -> JobCurves:
    """A job's curves on its step axis: ``loss``, ``lr``, ``kept`` per stage (no line joins one
    stage's end to the next one's start) and ``target_val_miou``. A stage whose place a later
    stage starts at too (the source-only baseline beside the warm-up) is ``beside``. Stages
    without ``axis_start`` follow the previous ones."""
    placed: list[tuple[float, Stage]] = []
    axis = 0.0
    for stage in job.stages:
        if stage.trains or stage.records:
            start = float(stage.axis_start) if stage.axis_start is not None else axis
            placed.append((start, stage))
            axis = max(axis, start + (stage.steps or stage.step or 0))
    starts: dict[float, list[str]] = {}
    curves: list[Curve] = []
    miou: Curve | None = None
    besides: list[str] = []
    for i, (start, stage) in enumerate(placed):
        starts.setdefault(start, []).append(stage.name)
        beside = any(later == start for later, _ in placed[i + 1:])
        if beside:
            besides.append(stage.name)
        if beside or miou is None or miou.beside:
            miou = Curve("target_val_miou", [], [], beside)
            curves.append(miou)
        own = {key: Curve(key, [], [], beside) for key in ("loss", "lr", "kept")}
        for record in stage.records:
            step = _number(record.get("step"))
            if step is None:
                continue
            for curve in own.values() if "loss" in record else (miou,):
                value = _number(record.get(curve.key))
                if value is not None:
                    curve.xs.append(start + step)
                    curve.ys.append(value)
        curves += own.values()
    return JobCurves([c for c in curves if c.xs], starts, axis, besides)


PANELS = (("loss", "train loss"), ("lr", "learning rate"),
          ("kept", "pseudo-labels kept (%)"), ("target_val_miou", "target-val mIoU (%)"))


def _smooth(ys: list[float], points: int) -> list[float]:
    """An exponential moving average over about ``points`` values, for noisy losses."""
    alpha, out, value = 2 / (points + 1), [], ys[0]
    for y in ys:
        value = alpha * y + (1 - alpha) * value
        out.append(value)
    return out


def plot_runs(runs: list[tuple[str, Job]], path: Path) -> list[str]:
    """One PNG of the runs' curves, a panel per metric some run has, one colour per run, stage
    starts as thin dotted lines (named when every run has the same); returns the panels drawn.

    Raises:
        UserError: no run has a training record yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diga.io import atomic_write

    data = [(name, job_curves(job)) for name, job in runs]
    drawn = {c.key for _, d in data for c in d.curves}
    panels = [(key, label) for key, label in PANELS if key in drawn]
    if not panels:
        raise UserError("nothing to plot: no training record in the runs' metrics.jsonl",
                        "plot runs that trained at least one logged step (train.log_every)")
    fig, grid = plt.subplots(len(panels), 1, figsize=(9, 1.4 + 2.1 * len(panels)), dpi=100,
                             sharex=True, squeeze=False, layout="constrained")
    axes = dict(zip((key for key, _ in panels), grid[:, 0], strict=True))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, d) in enumerate(data):
        colour = colours[i % len(colours)]
        for ax in axes.values():
            for start in sorted(d.starts)[1:]:
                ax.axvline(start, color=colour, lw=0.8, ls=":", alpha=0.7)
        for curve in d.curves:
            ax, ys = axes[curve.key], curve.ys
            style = {"color": colour, "ls": "--" if curve.beside else "-"}
            if curve.key == "kept":
                ys = [100 * y for y in ys]
            if curve.key == "target_val_miou":
                ax.plot(curve.xs, ys, marker="o", ms=4, lw=1.2, **style)
            elif curve.key == "loss" and len(ys) > 20:  # raw values faint, their trend drawn
                ax.plot(curve.xs, ys, lw=0.6, alpha=0.3, **style)
                ax.plot(curve.xs, _smooth(ys, max(5, len(ys) // 40)), lw=1.4, **style)
            else:  # a few logged steps: each one seen
                ax.plot(curve.xs, ys, lw=1.2, marker="o" if len(ys) <= 12 else None, ms=3,
                        **style)
        grid[0, 0].plot([], [], color=colour, lw=2, label=name)  # one legend entry per run
    beside = sorted({name for _, d in data for name in d.beside})
    if beside:  # what the dashed lines are
        grid[0, 0].plot([], [], color="0.4", lw=1.2, ls="--", label="dashed: " + ", ".join(beside))
    # the whole job's axis, the stages still to come included: a running job's progress
    low = min(min(d.starts, default=0.0) for _, d in data)
    high = max(d.end for _, d in data)
    if high > low:  # a margin: the last evaluation's marker whole
        grid[0, 0].set_xlim(low - 0.01 * (high - low), high + 0.01 * (high - low))
    if all(d.starts == data[0][1].starts for _, d in data):  # the stages alike: name them
        for start, names in data[0][1].starts.items():
            grid[0, 0].annotate(" / ".join(names), (start, 1),
                                xycoords=("data", "axes fraction"), xytext=(3, 3),
                                textcoords="offset points", fontsize=7, color="0.3")
    for key, label in panels:
        axes[key].set_ylabel(label, fontsize=8)
        axes[key].tick_params(labelsize=8)
        axes[key].grid(alpha=0.3)
        if key == "lr":
            axes[key].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            axes[key].yaxis.get_offset_text().set_fontsize(7)
    grid[-1, 0].set_xlabel("step (the job's stages one after the other)", fontsize=8)
    entries = len(data) + bool(beside)
    fig.legend(loc="outside lower center", fontsize=8, frameon=False,
               ncols=min(entries, 2 if max(len(n) for n, _ in runs) > 30 else 4))
    fig.suptitle(f"diga runs: {runs[0][0]}" if len(runs) == 1 else
                 f"diga runs: {len(runs)} runs", fontsize=10)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return [key for key, _ in panels]
