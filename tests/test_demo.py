"""``diga demo --quick``: the README's main command, end to end (the CI smoke run)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diga.cli.app import app


@pytest.mark.slow
def test_demo_quick_runs_every_step(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo.json").read_text())
    assert list(summary["miou"]) == ["source", "warmup", "selftrain round 1", "selftrain round 2"]
    assert all(0 < v <= 100 for v in summary["miou"].values())
    for name in ("report.md", "predictions.png", "miou_per_stage.png", "export/model.onnx",
                 "export/model.int8.onnx", "bench/bench.json", "bench/bench.md"):
        assert (out / name).is_file(), name
    rows = {(r["backend"], r["precision"]) for r in summary["bench"]}
    assert rows == {("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")}
    report = (out / "report.md").read_text()
    assert "selftrain round 2" in report and "predictions.png" in report
    # a second run into the same folder is refused; --resume reuses every finished stage
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "-q"])
    assert again.exit_code == 1 and "already exists" in again.output
