"""A newcomer's path through the training commands: where each wrote and what comes next is
said, a taken default folder is announced, a failed start leaves nothing behind, and exports
land where the README says."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from diga.cli.app import app

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def in_tmp(tmp_path):
    """Commands run in an empty working folder: the default runs/<stage> lands there."""
    before = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_each_stage_says_the_next_command_and_exports_where_the_readme_says(in_tmp, tiny):
    warm = run("train", "warmup", "demo", *tiny, "-q")
    assert warm.exit_code == 0, warm.output
    assert "warmup done: runs/warmup" in warm.output
    assert f"next: diga train selftrain demo {' '.join(tiny)} --init runs/warmup --out " \
           "runs/selftrain" in " ".join(warm.output.split())

    # the same command again: runs/warmup is taken, the new folder is said aloud
    again = run("train", "warmup", "demo", *tiny, "train.steps=1", "-q")
    assert again.exit_code == 0, again.output
    assert "runs/warmup is taken: this run goes to runs/warmup-2" in again.output

    # a failed start (no such --init) leaves no folder behind; the corrected command runs
    bad = run("train", "selftrain", "demo", *tiny, "--init", "runs/nope", "-q")
    assert bad.exit_code == 1 and "model not found: runs/nope" in bad.output
    assert not (in_tmp / "runs" / "selftrain").exists()
    good = run("train", "selftrain", "demo", *tiny, "--init", "runs/warmup", "-q")
    assert good.exit_code == 0, good.output
    assert "next: diga export runs/selftrain --int8" in good.output

    # diga export RUN writes RUN/export: the README's paths
    exported = run("export", "runs/selftrain", "export.exporter=torchscript")
    assert exported.exit_code == 0, exported.output
    assert (in_tmp / "runs" / "selftrain" / "export" / "model.onnx").is_file()
    assert not (in_tmp / "runs" / "selftrain" / "round1" / "export").exists()


def test_a_failed_job_start_can_be_corrected(tmp_path, tiny):
    """diga run refused on bad input before training: the corrected command is not refused
    as another config."""
    out = tmp_path / "job"
    bad = run("run", "demo", *tiny, "pipeline.baseline=false",
              f"model.pretrained={tmp_path}/no.safetensors", "--out", out, "--until", "warmup",
              "-q")  # refused inside the warm-up, after the job's config.yaml was written
    assert bad.exit_code == 1 and "weights file not found" in bad.output
    assert not out.exists()
    good = run("run", "demo", *tiny, "pipeline.baseline=false", "--out", out, "--until",
               "warmup", "-q")
    assert good.exit_code == 0, good.output
    assert (out / "warmup" / "checkpoints" / "last" / "meta.json").is_file()
