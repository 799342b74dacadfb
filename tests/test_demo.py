"""``diga demo --quick``: the README's main command, end to end, on the tiny settings of every
training test (the --quick settings themselves are only overrides; their wall time is measured
by ``python -m diga.benchmarks.demo_time --quick``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diga.cli.app import app


@pytest.mark.slow
def test_demo_quick_runs_every_step(tmp_path, tiny):
    out = tmp_path / "demo"
    tiny = [*tiny, "bench.time_budget_s=0.2", "bench.min_iters=2"]
    result = CliRunner().invoke(app, ["demo", "--quick", *tiny, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["miou"]) == ["source", "warmup", "selftrain round 1", "selftrain round 2"]
    assert all(0 < v <= 100 for v in summary["miou"].values())
    for name in ("report.md", "predictions.png", "miou_per_stage.png", "curves.png",
                 "eval/eval.json", "export/model.onnx",
                 "export/model.int8.onnx", "bench/bench.json", "bench/bench.md"):
        assert (out / name).is_file(), name
    rows = {(r["backend"], r["precision"]) for r in summary["bench"]}
    assert rows == {("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")}
    report = (out / "report.md").read_text()
    assert "selftrain round 2" in report and "predictions.png" in report
    # the same command again finds every stage finished; another config is refused
    again = CliRunner().invoke(app, ["demo", "--quick", *tiny, "--out", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert again.output.count("target-val mIoU") >= 4 and "training" not in again.output
    other = CliRunner().invoke(app, ["demo", "--quick", *tiny, "train.steps=5", "--out",
                                     str(out)])
    assert other.exit_code == 1 and "train.steps (4 -> 5)" in other.output
