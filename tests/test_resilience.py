"""Runs that survive what clusters do to them: SIGTERM and Ctrl-C mid-stage (one process and two
under torchrun), a rank killed with SIGKILL under ``--max-restarts``, a run killed inside a
checkpoint swap; every time the run goes on from where it was. (A full disk, a read-only
folder and a missing permission, made real: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diga.checkpoint import Checkpoint, resolve_checkpoint, save_checkpoint
from diga.cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.slow
TINY = ["data.builtin.size=32x64", "data.builtin.source_train=8", "data.builtin.target_train=8",
        "data.builtin.target_val=4", "data.num_workers=0", "train.batch_size=2",
        "train.crop=32x64", "train.log_every=1", "train.visual_every=0", "train.eval_every=0",
        "eval.batch_size=4", "run.device=cpu", "warmup.fda_band=0.1"]
DIGA = [sys.executable, "-m", "diga.cli.app"]


def steps_logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip() and "lr" in line]


@pytest.fixture
def start():
    """Start ``diga ARGS`` in its own session; whatever is left of it is killed afterwards."""
    started: list[subprocess.Popen] = []

    def run(args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen([*DIGA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers too
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def stopped_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_checkpoints_the_step_reached_and_resume_goes_on(tmp_path, start, sig, code):
    run = tmp_path / "run"
    args = ["train", "warmup", "demo", *TINY, "train.steps=120", "train.checkpoint_every=1000",
            "--out", str(run), "-q"]
    proc = start(args)
    wait_for(lambda: len(steps_logged(run)) >= 8)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = stopped_line(err)
    step = Checkpoint(run / "checkpoints" / "last").step
    logged = steps_logged(run)
    assert step == logged[-1] and step >= 8  # no step lost: the checkpoint is the step reached
    assert f"stopped by {sig.name} at step {step}/120 of warmup" in line
    assert line.endswith("--out " + str(run) + " -q --resume")
    resumed = subprocess.run([*DIGA, *args, "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert Checkpoint(run / "checkpoints" / "last").step == 120
    assert steps_logged(run) == list(range(1, 121))  # one history: no step twice


def test_sigterm_under_torchrun_stops_every_rank_at_one_step(tmp_path, start):
    run = tmp_path / "run"
    args = ["train", "source", "demo", *TINY, "train.steps=200", "train.checkpoint_every=1000",
            "--out", str(run), "-q", "--devices", "2"]
    proc = start(args)
    wait_for(lambda: len(steps_logged(run)) >= 5, timeout=180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    ckpt = Checkpoint(run / "checkpoints" / "last")
    assert ckpt.meta["world_size"] == 2 and ckpt.step == steps_logged(run)[-1]
    state = ckpt.state()
    assert len(state["rank_rng"]) == 2  # both ranks' streams, from the same step


def test_a_rank_killed_under_max_restarts_is_restarted_into_its_run(tmp_path, start):
    run = tmp_path / "run"
    args = ["train", "source", "demo", *TINY, "train.steps=120", "train.checkpoint_every=20",
            "--out", str(run), "-q", "--devices", "2", "--max-restarts", "1"]
    proc = start(args)
    wait_for(lambda: (run / "checkpoints" / "last" / "meta.json").is_file()
             and len(steps_logged(run)) >= 30, timeout=240)
    killed_at = steps_logged(run)[-1]
    saved = Checkpoint(run / "checkpoints" / "last").step
    from diga.cli.common import child_pids

    torchrun = child_pids(proc.pid)
    workers = child_pids(torchrun[0])
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert Checkpoint(run / "checkpoints" / "last").step == 120
    assert killed_at - saved <= 20  # lost at most one checkpoint interval, trained again
    assert steps_logged(run) == list(range(1, 121))


class _Killed(BaseException):
    """A process killed inside the swap: no cleanup runs after it."""


def _tiny_run(tmp_path: Path, steps: int = 4) -> Path:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "source", "demo", *TINY, f"train.steps={steps}",
                                 "train.checkpoint_every=2", "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    return run


def test_a_run_killed_inside_the_checkpoint_swap_still_resumes(tmp_path, monkeypatch):
    """Simulated: a kill that lands between the two renames of the swap cannot be timed."""
    import diga.io

    run = _tiny_run(tmp_path)
    before = Checkpoint(run / "checkpoints" / "last")
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 1:
            return real_replace(src, dst)  # last -> .last.old
        raise _Killed  # the rename of the new folder into place never happens, nor any undo

    monkeypatch.setattr(diga.io.os, "replace", replace)
    with pytest.raises(_Killed):
        save_checkpoint(run / "checkpoints" / "last", model=before.model(),
                        meta={**before.meta, "step": 99}, state=before.state())
    monkeypatch.undo()
    assert not (run / "checkpoints" / "last").exists()
    found = resolve_checkpoint(run)  # the previous checkpoint, still whole, as .last.old
    assert found.folder.name == ".last.old" and found.step == 4
    out = runner.invoke(app, ["eval", str(run)])
    assert out.exit_code == 0, out.output
    more = runner.invoke(app, ["train", "source", "--out", str(run), "train.steps=6", "-q",
                               "--resume"])
    assert more.exit_code == 0, more.output
    assert resolve_checkpoint(run).step == 6 and not (run / "checkpoints" / ".last.old").exists()


def test_auto_resume_starts_fresh_then_resumes(tmp_path):
    run = tmp_path / "run"
    base = ["train", "source", "demo", *TINY, "train.checkpoint_every=2", "--out", str(run),
            "-q", "--auto-resume"]
    first = runner.invoke(app, [*base, "train.steps=4"])
    assert first.exit_code == 0, first.output  # fresh: nothing there
    again = runner.invoke(app, [*base, "train.steps=6"])
    assert again.exit_code == 0, again.output  # the same command line: resumes
    assert resolve_checkpoint(run).step == 6
    assert steps_logged(run) == list(range(1, 7))


def test_sigterm_stops_the_translator_at_its_step(tmp_path, start):
    run = tmp_path / "translator"
    args = ["train", "translator", "demo", "data.builtin.size=32x64", "data.num_workers=0",
            "data.builtin.source_train=8", "data.builtin.target_train=8", "run.device=cpu",
            "translator.steps=400", "translator.batch_size=2", "translator.crop=32x64",
            "translator.gen_channels=4", "translator.gen_blocks=1", "translator.disc_channels=4",
            "translator.log_every=1", "translator.checkpoint_every=1000",
            "translator.visual_every=0", "--out", str(run), "-q"]
    proc = start(args)
    wait_for(lambda: len(steps_logged(run)) >= 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "of translator" in stopped_line(err)
    assert Checkpoint(run / "checkpoints" / "last").step == steps_logged(run)[-1]
