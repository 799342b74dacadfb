"""Job status files and ``diga runs``: real jobs in child processes, ended in each real way
(normally, by SIGTERM through ``StopOnSignal``, by an exception, by SIGKILL) or left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diga.cli.app import app
from diga.errors import RunStopped, UserError
from diga.status import JobStatus, StageInfo, read_status

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# A job of warm-up (60 steps), one self-training round (40) and an export, in a child process.
# MODE says how it ends; "ready" on stdout says its files are written.
CHILD = r'''
import sys, time
from pathlib import Path
from diga.io import append_jsonl
from diga.status import JobStatus, StageInfo
from diga.train.signals import StopOnSignal, run_stopped

folder, mode = Path(sys.argv[1]), sys.argv[2]
stages = [StageInfo("warmup", "warmup", 60), StageInfo("selftrain round 1", "selftrain/round1", 40),
          StageInfo("export", "export")]

def train(status, name, sub, upto, steps, final):
    status.begin(name)
    for step in range(10, upto + 1, 10):
        append_jsonl(folder / sub / "metrics.jsonl", {"step": step, "lr": 1e-3 * (1 - step / steps),
                     "loss": 2.0 - step / 100, "kept": 0.5 + step / 200, "sec_per_step": 0.5})
    if final:
        append_jsonl(folder / sub / "metrics.jsonl", {"step": steps, "final": True,
                                                      "target_val_miou": 30.0 + steps / 10})
        status.finish(name)

with JobStatus(folder, "gta2cs-deeplabv2", stages) as status:
    if mode == "finished":
        train(status, "warmup", "warmup", 60, 60, True)
        train(status, "selftrain round 1", "selftrain/round1", 40, 40, True)
        status.begin("export"); status.finish("export")
    elif mode == "crashed":
        train(status, "warmup", "warmup", 60, 60, True)
        train(status, "selftrain round 1", "selftrain/round1", 20, 40, False)
        raise ValueError("bad batch\nwith a second line")
    else:
        train(status, "warmup", "warmup", 30, 60, False)
        with StopOnSignal() as stop:
            print("ready", flush=True)
            while stop.requested is None:
                time.sleep(0.02)
            raise run_stopped(stop.requested, "warmup", 30, 60, folder / "warmup")
'''


def start(folder: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A folder with one job in each state; the running one is killed at the end."""
    root = tmp_path_factory.mktemp("jobs")
    procs = {mode: start(root / "team" / mode, mode) for mode in ("finished", "crashed")}
    procs |= {mode: start(root / mode, "wait") for mode in ("stopped", "killed", "running")}
    for mode in ("stopped", "killed", "running"):
        wait_ready(procs[mode])
    procs["stopped"].send_signal(signal.SIGTERM)
    procs["killed"].send_signal(signal.SIGKILL)
    for mode in ("finished", "crashed", "stopped", "killed"):
        procs[mode].wait(timeout=30)
    with open(root / "killed" / "warmup" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 40, "lr": 0.0005, "lo')  # the line a kill cut
    old = root / "old-diga"  # a run of a diga before status files
    old.mkdir()
    (old / "config.yaml").write_text("train:\n  steps: 20\n")
    (old / "metrics.jsonl").write_text('{"step": 10, "loss": 1.5, "sec_per_step": 0.1}\n'
                                       '{"step": 20, "final": true, "target_val_miou": 12.5}\n')
    yield root, procs
    procs["running"].kill()
    procs["running"].wait()


def runs_cli(*args: object, width: int = 80):
    return runner.invoke(app, ["runs", *map(str, args)], env={"COLUMNS": str(width)},
                         terminal_width=width)


def test_each_exit_is_its_state(jobs):
    root, procs = jobs
    assert procs["finished"].returncode == 0 and procs["crashed"].returncode == 1
    assert procs["killed"].returncode == -signal.SIGKILL
    rows = {row["name"]: row for row in json.loads(runs_cli(root, "--json").output)}
    assert set(rows) == {"team/finished", "team/crashed", "stopped", "killed", "running",
                         "old-diga"}
    state = {name: row["state"] for name, row in rows.items()}
    assert state == {"team/finished": "finished", "team/crashed": "crashed",
                     "stopped": "stopped", "killed": "crashed", "running": "running",
                     "old-diga": "finished"}
    assert rows["team/crashed"]["error"] == "ValueError: bad batch with a second line"
    assert rows["stopped"]["error"].startswith("stopped by SIGTERM at step 30/60 of warmup")
    assert rows["killed"]["error"] == "the process ended without a word (killed?)"
    assert read_status(root / "killed")["state"] == "running"  # the file says so; the pid not

    running = rows["running"]  # warm-up at 30/60, then 40 self-training steps, at 0.5 s a step
    assert (running["stage"], running["step"], running["steps"]) == ("warmup", 30, 60)
    assert running["eta_s"] == pytest.approx((30 + 40) * 0.5)
    assert running["loss"] == pytest.approx(1.7) and running["miou"] is None
    finished = rows["team/finished"]
    assert finished["stage"] == "export" and finished["miou"] == pytest.approx(34.0)
    assert finished["loss"] == pytest.approx(1.6) and finished["eta_s"] is None
    assert (rows["team/crashed"]["step"], rows["team/crashed"]["miou"]) == (20, pytest.approx(36.0))
    assert rows["old-diga"]["steps"] == 20 and rows["old-diga"]["miou"] == 12.5
    for row in rows.values():
        assert row["elapsed_s"] is None or 0 <= row["elapsed_s"] < 120


def test_status_file_of_a_finished_job(jobs):
    status = read_status(jobs[0] / "team" / "finished")
    assert status["command"].startswith("diga ") and status["config"] == "gta2cs-deeplabv2"
    assert status["state"] == "finished" and status["error"] is None and status["ended"]
    assert [(s["name"], s["dir"], s["steps"], s["axis_start"], s["state"])
            for s in status["stages"]] == [
        ("warmup", "warmup", 60, 0, "finished"),
        ("selftrain round 1", "selftrain/round1", 40, 60, "finished"),
        ("export", "export", None, None, "finished")]


def test_table_names_states_in_80_columns(jobs):
    result = runs_cli(jobs[0])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    table = {line.split()[0]: line for line in lines if line.split()}
    for name, state in (("team/finished", "finished"), ("team/crashed", "crashed"),
                        ("stopped", "stopped"), ("killed", "crashed"), ("running", "running")):
        assert f" {state} " in table[name], result.output
    assert "30/60" in table["running"] and "0:00:35" in table["running"]
    assert "killed: the process ended without a word" in result.output
    assert "team/crashed: ValueError: bad batch" in result.output
    assert "team/finished:" not in result.output


def test_plain_runs_and_folder_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with JobStatus(Path("runs/ablations/a"), "demo", [StageInfo("source", ".", 10)]) as job:
        job.begin("source")
    for args in ((), ("runs/ablations",), ("list", "runs"), ("runs/ablations/a",)):
        result = runs_cli(*args)
        assert result.exit_code == 0 and " finished " in result.output, result.output
    assert "runs/ablations/a " in result.output  # a job folder itself: named as given
    (tmp_path / "empty").mkdir()
    result = runs_cli("empty")
    assert result.exit_code == 0 and result.output.strip() == "no runs in empty"


@pytest.mark.parametrize("args", [("/nonexistent/runs",), ("plot", "/nonexistent/run")])
def test_unknown_folder_is_one_line(args):
    result = runs_cli(*args)
    assert result.exit_code == 1
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "/nonexistent/run" in lines[0]


@pytest.mark.parametrize("args", [(), ("list",), ("plot",)])
def test_help(args):
    result = runs_cli(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "Traceback" not in result.output


def test_plot_two_runs(jobs, tmp_path):
    root = jobs[0]
    out = tmp_path / "x.png"
    result = runs_cli("plot", root / "team" / "finished", root / "running", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    assert 20_000 < out.stat().st_size < 2_000_000
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 400 and image.shape[1] > 600
    coloured = (image.max(-1).astype(int) - image.min(-1)) > 80  # the runs' lines, not greys
    assert coloured.mean() > 0.002


def test_plot_default_path_of_one_run(jobs):
    job = jobs[0] / "team" / "crashed"
    result = runs_cli("plot", job)
    assert result.exit_code == 0, result.output
    assert (job / "curves.png").stat().st_size > 10_000


def test_second_attempt_keeps_start_and_finished_stages(tmp_path):
    stages = [StageInfo("warmup", "warmup", 60), StageInfo("selftrain round 1",
                                                           "selftrain/round1", 40)]
    with pytest.raises(RunStopped), JobStatus(tmp_path, "demo", stages) as job:
        job.begin("warmup")
        job.finish("warmup")
        job.begin("selftrain round 1")
        raise RunStopped("stopped by SIGTERM", 0)
    first = read_status(tmp_path)
    assert first["state"] == "stopped" and first["error"] == "stopped by SIGTERM"
    assert [s["state"] for s in first["stages"]] == ["finished", "stopped"]

    again = [StageInfo(**{**s.__dict__, "state": "pending"}) for s in stages]
    with JobStatus(tmp_path, "demo", again) as job:
        status = read_status(tmp_path)
        assert status["started"] == first["started"] and status["state"] == "running"
        assert status["ended"] is None and status["error"] is None
        assert [s["state"] for s in status["stages"]] == ["finished", "pending"]
        job.skip("warmup")
        job.begin("selftrain round 1")
    status = read_status(tmp_path)
    assert status["state"] == "finished" and status["started"] == first["started"]
    assert [s["state"] for s in status["stages"]] == ["skipped", "finished"]


def test_user_error_and_ctrl_c_lines(tmp_path):
    with pytest.raises(UserError), JobStatus(tmp_path / "a", None, []):
        raise UserError("dataset folder not found: /x", "give data.target.root")
    assert read_status(tmp_path / "a")["error"] == "dataset folder not found: /x"
    with pytest.raises(KeyboardInterrupt), JobStatus(tmp_path / "b", None, []):
        raise KeyboardInterrupt
    assert read_status(tmp_path / "b")["state"] == "stopped"


@pytest.mark.parametrize("exc,state,error", [
    # launch_on_devices: the torchrun workers stopped on SIGTERM / Ctrl-C and checkpointed
    ("typer.Exit(0)", "stopped", "stopped by a signal (exit code 0)"),
    ("typer.Exit(130)", "stopped", "stopped by a signal (exit code 130)"),
    ("typer.Exit(2)", "crashed", "exit code 2"),
    ("SystemExit(0)", "finished", None), ("SystemExit(3)", "crashed", "exit code 3")])
def test_exits_of_the_cli(tmp_path, exc, state, error):
    import typer

    error_type = typer.Exit if exc.startswith("typer") else SystemExit
    with pytest.raises(error_type), JobStatus(tmp_path, None, [StageInfo("source", ".", 4)]) as job:
        job.begin("source")
        raise eval(exc)
    status = read_status(tmp_path)
    assert status["state"] == state and (status["error"] or "").startswith(error or "")
    assert (status["error"] is None) == (error is None)
    assert status["stages"][0]["state"] == state


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"DIGA_NO_STATUS": "1"}])
def test_one_writer_per_job(tmp_path, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with JobStatus(tmp_path, "demo", [StageInfo("source", ".", 10)]) as job:
        job.begin("source")
    assert not (tmp_path / "status.json").exists()


def test_pid_reused_after_the_job_is_not_alive():
    from diga.runs import process_alive

    assert process_alive(os.getpid()) and process_alive(os.getpid(), since=1e12)
    assert not process_alive(os.getpid(), since=0)  # this process started after 1970


def test_curves_of_a_pipeline_job(tmp_path):
    """`diga run`'s stages: the source-only baseline beside the warm-up (both from step 0),
    the rounds after it; the mIoU one line from the warm-up on, the baseline's its own."""
    from diga.io import append_jsonl
    from diga.runs import job_curves, load_job

    stages = [{"name": "source", "dir": "source", "steps": 20, "axis_start": 0},
              {"name": "warmup", "dir": "warmup", "steps": 20, "axis_start": 0},
              {"name": "selftrain round 1", "dir": "selftrain/round1", "steps": 10},
              {"name": "eval", "dir": "eval", "steps": None, "axis_start": None}]
    with JobStatus(tmp_path, "demo", stages):
        for sub, steps in (("source", 20), ("warmup", 20), ("selftrain/round1", 10)):
            for step in range(5, steps + 1, 5):
                append_jsonl(tmp_path / sub / "metrics.jsonl", {"step": step, "lr": 0.1,
                                                                "loss": 1.0})
            append_jsonl(tmp_path / sub / "metrics.jsonl",
                         {"step": steps, "final": True, "target_val_miou": 10.0 + steps})
    curves = job_curves(load_job(tmp_path))
    assert curves.starts == {0.0: ["source", "warmup"], 20.0: ["selftrain round 1"]}
    assert curves.end == 30 and curves.beside == ["source"]
    miou = [(c.xs, c.beside) for c in curves.curves if c.key == "target_val_miou"]
    assert miou == [([20.0], True), ([20.0, 30.0], False)]
    losses = [c.xs for c in curves.curves if c.key == "loss"]
    assert losses == [[5.0, 10.0, 15.0, 20.0]] * 2 + [[25.0, 30.0]]
