"""diga bench: rows, JSON schema and values, mIoU = diga eval's, parity, reports, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from diga.benchmarks.flops import achieved_gflops, matmul_peak_gflops, model_flops
from diga.benchmarks.latency import rows_below_miou
from diga.benchmarks.runners import latency_stats, time_loop
from diga.cli.app import app
from diga.config import load_config
from diga.export.formats import BENCH_BACKENDS
from diga.export.pipeline import ExportOptions, export_checkpoint
from diga.train.loop import train_stage

DATA = ["data.builtin.size=32x64", "data.builtin.source_train=8", "data.builtin.target_train=8",
        "data.builtin.target_val=4", "data.num_workers=0", "run.device=cpu"]
# short timed loops: the tests check structure and values, never speed
FAST = ["bench.time_budget_s=0.2", "bench.warmup=1", "bench.min_iters=3", "bench.matmul_size=256"]
ROW_KEYS = {
    "model", "format", "backend", "precision", "compiled", "status", "provider", "device",
    "file_size_bytes", "input_shape", "run_size", "latency_ms", "parts_ms", "throughput",
    "peak_rss_mb", "rss_increase_mb", "gpu_memory_mb", "flops_per_image", "gflops_per_s",
    "latency_vs_torch", "images", "miou", "miou13", "classes", "mapped_from", "pixel_acc", "pixel_agreement", "reference", "notes",
}
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 2-step source-only deeplabv2_tiny run, exported to fp32 and int8 ONNX."""
    cfg = load_config("demo", DATA + ["model.name=deeplabv2_tiny", "train.steps=2",
                                      "train.batch_size=2", "train.crop=32x64",
                                      "train.eval_every=0", "train.visual_every=0"])
    run = tmp_path_factory.mktemp("bench") / "run"
    train_stage(cfg, "source", run, show_progress=False)
    export_checkpoint(run, ["export.parity_images=2", "export.calib_images=4"],
                      ExportOptions(int8=True))
    return run


@pytest.fixture(scope="module")
def bench(run_dir, tmp_path_factory) -> dict:
    """``diga bench RUN`` with throughput at batch 1 and 2, as JSON."""
    path = tmp_path_factory.mktemp("json") / "bench.json"
    result = invoke("bench", run_dir, *FAST, "--batch", 1, "--batch", 2, "--json", path)
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def rows_of(bench: dict, backend: str, precision: str | None = None) -> list[dict]:
    return [r for r in bench["rows"] if r["backend"] == backend
            and (precision is None or r["precision"] == precision)]


def test_schema_and_one_row_per_model_and_backend(bench):
    assert bench["schema"] == "diga-bench/1"
    assert {"created", "settings", "machine", "rows"} <= set(bench)
    assert bench["settings"]["batch_sizes"] == [1, 2]
    assert bench["settings"]["time_budget_s"] == 0.2
    assert bench["machine"]["matmul_gflops"] > 0
    for row in bench["rows"]:
        assert set(row) == ROW_KEYS
        assert row["status"] == "ok" or row["status"].startswith(("unavailable: ", "error: "))
    # the run's checkpoint, then each exported file on each backend its format runs on
    pairs = [(Path(r["model"]).name, r["backend"], r["precision"]) for r in bench["rows"]]
    assert pairs[0] == ("last", "torch", "fp32")
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        for backend in ("ort-cpu", "ort-cuda", "ort-trt"):
            assert (name, backend, precision) in pairs
    assert any(b == "trt" for _, b, _ in pairs)  # no engine: a row saying so


def test_measured_rows_have_ordered_percentiles_and_sane_values(bench):
    measured = [r for r in bench["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["precision"]) for r in measured} >= {
        ("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")}
    for row in measured:
        lat = row["latency_ms"]
        assert lat["mean"] > 0 and lat["min"] > 0
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert lat["iterations"] >= 3
        assert [t["batch"] for t in row["throughput"]] == [1, 2]
        assert all(t["images_per_s"] > 0 for t in row["throughput"])
        assert row["input_shape"] == [1, 32, 64, 3]  # a target frame as the camera gives it
        assert row["run_size"] == [32, 64]
        assert row["file_size_bytes"] > 0
        assert row["peak_rss_mb"] > 0 and row["rss_increase_mb"] >= 0
        assert row["device"] == "cpu" and row["gpu_memory_mb"] is None
        assert row["flops_per_image"] > 0
        parts = row["parts_ms"]
        assert set(parts) == {"pre", "model", "post"} and all(v >= 0 for v in parts.values())
        assert parts["model"] > 0
        assert row["gflops_per_s"] == pytest.approx(
            row["flops_per_image"] / (parts["model"] / 1000) / 1e9)
        assert row["images"] == 4
        assert 0 <= row["miou"] <= 100 and 0 <= row["pixel_acc"] <= 100
    # every model file is the same network at the same size: one FLOP count
    assert len({r["flops_per_image"] for r in measured}) == 1
    torch_row = rows_of(bench, "torch")[0]
    assert torch_row["latency_vs_torch"] == pytest.approx(1.0)
    assert rows_of(bench, "ort-cpu", "fp32")[0]["latency_vs_torch"] > 0


def test_torch_miou_equals_diga_eval(bench, run_dir, tmp_path):
    result = invoke("eval", run_dir, "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    torch_row = rows_of(bench, "torch")[0]
    assert torch_row["miou"] == pytest.approx(evaluated["miou"], abs=1e-6)
    assert torch_row["pixel_acc"] == pytest.approx(evaluated["pixel_acc"], abs=1e-6)
    assert torch_row["images"] == evaluated["images"]


def test_onnx_miou_equals_diga_eval_of_the_file(bench, run_dir, tmp_path):
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        path = tmp_path / f"{name}.json"
        result = invoke("eval", run_dir / "export" / name, "run.device=cpu", "--json", path)
        assert result.exit_code == 0, result.output
        row = rows_of(bench, "ort-cpu", precision)[0]
        assert row["miou"] == pytest.approx(json.loads(path.read_text())["miou"], abs=1e-6)


def test_onnx_rows_agree_with_torch(bench):
    torch_row = rows_of(bench, "torch")[0]
    assert torch_row["pixel_agreement"] == 100.0  # it is the reference
    fp32 = rows_of(bench, "ort-cpu", "fp32")[0]
    assert fp32["pixel_agreement"] >= 99.9  # % of pixels
    assert fp32["miou"] == pytest.approx(torch_row["miou"], abs=0.5)
    assert fp32["reference"] == torch_row["model"]
    int8 = rows_of(bench, "ort-cpu", "int8")[0]
    assert int8["provider"] == "CPUExecutionProvider" and 0 <= int8["pixel_agreement"] <= 100


@pytest.mark.skipif(HAS_ORT_CUDA, reason="onnxruntime has CUDA here: the GPU rows run")
def test_unavailable_backends_are_rows_with_a_reason(bench):
    for backend, needs in (("ort-cuda", "CUDAExecutionProvider"),
                           ("ort-trt", "TensorrtExecutionProvider")):
        for row in rows_of(bench, backend):
            assert row["status"].startswith("unavailable: ") and needs in row["status"]
            assert row["latency_ms"] is None and row["miou"] is None
    trt = rows_of(bench, "trt")[0]
    assert trt["status"].startswith("unavailable: ") and "--trt" in trt["status"]


def test_reports_are_written_to_the_run(bench, run_dir):
    out = run_dir / "bench"
    saved = json.loads((out / "bench.json").read_text())
    assert [r["backend"] for r in saved["rows"]] == [r["backend"] for r in bench["rows"]]
    markdown = (out / "bench.md").read_text()
    assert "| model | backend | precision |" in markdown
    assert "export/model.int8.onnx | ort-cpu | int8 | ok" in markdown
    assert "unavailable" in markdown and "latency.png" in markdown
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_table_fits_80_columns(run_dir, tmp_path, monkeypatch):
    """In an 80-column terminal the table keeps the main columns, each cell whole (no '…'),
    and a line under it names the columns left to bench.md / bench.json."""
    from rich.console import Console

    import diga.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "console", Console(width=80))  # the CLI's, at import: any width
    model = run_dir / "export" / "model.int8.onnx"
    result = runner.invoke(app, [str(a) for a in ("bench", model, *FAST, "-b", "ort-cpu", "-b",
                                                  "openvino-tput", "--out", tmp_path)],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and "…" not in "".join(table), result.output
    assert all(len(line) <= 80 for line in table), result.output
    header = table[1].split("┃")
    assert [h.strip() for h in header[1:6]] == ["model", "backend", "precision", "p50 ms", "mIoU"]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table if "│" in line]
    assert [r[:3] for r in rows] == [["export/model.int8.onnx", "ort-cpu", "int8"],
                                     ["export/model.int8.onnx", "openvino-tput", "-"]]
    saved = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert rows[0][3] == f"{saved['latency_ms']['p50']:.2f}" and rows[0][4] == f"{saved['miou']:.2f}"
    note = " ".join(result.output.split("└")[1].split())
    assert f"not shown at this width (see {tmp_path / 'bench.md'} and bench.json): " in note
    assert "p90 ms" in note


def test_min_miou_exit_codes(run_dir, tmp_path):
    model = run_dir / "export" / "model.onnx"
    ok = invoke("bench", model, *FAST, "-b", "ort-cpu", "--min-miou", 0, "--out", tmp_path)
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "bench.md").is_file()
    low = invoke("bench", model, *FAST, "-b", "ort-cpu", "--min-miou", 101)
    assert low.exit_code == 1
    error = [line for line in low.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "export/model.onnx on ort-cpu (fp32)" in error[0]
    assert "below --min-miou 101" in error[0] and "Traceback" not in low.output


def test_rows_without_miou_do_not_count():
    rows = [{"miou": None}, {"miou": 40.0}, {"miou": 20.0}]
    assert rows_below_miou(rows, 30.0) == [{"miou": 20.0}]
    assert rows_below_miou(rows[:1], 101.0) == []


def test_requested_backend_without_a_file_is_a_row(run_dir, tmp_path):
    path = tmp_path / "b.json"
    result = invoke("bench", run_dir / "export" / "model.onnx", *FAST, "-b", "trt", "-b", "torch",
                    "--json", path)
    assert result.exit_code == 0, result.output
    rows = json.loads(path.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["trt", "torch"]
    assert all(r["status"].startswith("unavailable: ") for r in rows)


@pytest.mark.parametrize("args,message", [
    (["-b", "ort-cpux"], "did you mean 'ort-cpu'"),
    (["--steps", "3"], "--steps is an option of 'diga bench train'"),
    (["data.builtin.size=32x64", "stray"], "unexpected argument 'stray'"),
    (["bench.batch_sizes=[0]"], "bench.batch_sizes"),
])
def test_user_errors_are_one_line(run_dir, args, message):
    result = invoke("bench", run_dir, *args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_missing_model_is_one_line(tmp_path):
    result = invoke("bench", tmp_path / "nothing.onnx")
    assert result.exit_code == 1 and "model not found" in result.output


def test_bench_train_dispatches_to_the_training_harness(tmp_path):
    path = tmp_path / "train.json"
    result = invoke("bench", "train", "demo", *DATA, "train.batch_size=2", "train.crop=32x64",
                    "--steps", 1, "--stage", "source", "--json", path)
    assert result.exit_code == 0, result.output
    measured = json.loads(path.read_text())
    assert list(measured["stages"]) == ["source"]
    source = measured["stages"]["source"]
    assert source["step_s"] > 0 and source["bare_step_s"] > 0 and source["ratio_to_bare"] > 0
    assert measured["data_loading_images_per_s"] > 0
    assert "source: step" in result.output


def test_bench_train_rejects_model_options():
    result = invoke("bench", "train", "--backend", "ort-cpu")
    assert result.exit_code == 1 and "--backend is an option of 'diga bench MODEL...'" in result.output
    result = invoke("bench", "train", "--stage", "nope")
    assert result.exit_code == 1 and "unknown stage 'nope'" in result.output


def test_time_loop_and_percentiles():
    calls = []
    times = time_loop(lambda: calls.append(1), warmup=2, budget_s=0.01, min_iters=3, max_iters=50)
    assert 3 <= times.size <= 50 and len(calls) == times.size + 2
    stats = latency_stats(np.array([0.001, 0.002, 0.003, 0.010]))
    assert stats["p50"] == pytest.approx(2.5) and stats["mean"] == pytest.approx(4.0)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= 10.0
    assert stats["iterations"] == 4


def test_flop_count_and_peak():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
    conv.train()
    assert model_flops(conv, (8, 8)) == 2 * 3 * 8 * 9 * 8 * 8  # two FLOPs per multiply-add
    assert conv.training and conv[1].training  # modes restored
    threads = torch.get_num_threads()
    assert matmul_peak_gflops(128, repeats=2) > 0
    assert torch.get_num_threads() == threads  # measured on every CPU, then restored
    assert achieved_gflops(2 * 10**9, 1000.0) == pytest.approx(2.0)
    assert achieved_gflops(None, 1.0) is None


def test_every_backend_in_the_table_is_known_to_bench():
    from diga.benchmarks.discovery import check_backends

    assert check_backends(list(BENCH_BACKENDS)) == list(BENCH_BACKENDS)


@pytest.mark.slow
def test_compile_adds_a_row_next_to_eager(run_dir, tmp_path):
    path = tmp_path / "b.json"
    # eval batch 1: predictions reuse the graph compiled for the latency batch
    result = invoke("bench", run_dir, *FAST, "eval.batch_size=1", "-b", "torch", "--compile",
                    "--json", path)
    assert result.exit_code == 0, result.output
    eager, compiled = json.loads(path.read_text())["rows"]
    assert not eager["compiled"] and compiled["compiled"], compiled["status"]
    assert compiled["provider"] == "torch compile"
    if compiled["status"] == "ok":  # inductor needs a C++ compiler; without one the row says so
        assert compiled["miou"] == pytest.approx(eager["miou"], abs=0.5)
        assert compiled["pixel_agreement"] >= 99.0
    else:
        assert compiled["status"].startswith("error: ")


def test_relative_run_path_relates_files_to_their_checkpoint(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(run_dir.parent)
    path = tmp_path / "b.json"
    result = invoke("bench", run_dir.name, *FAST, "-b", "torch", "-b", "ort-cpu", "--out",
                    tmp_path / "out", "--json", path)
    assert result.exit_code == 0, result.output
    rows = {(r["backend"], r["precision"]): r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {("torch", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")}
    assert rows[("ort-cpu", "fp32")]["latency_vs_torch"] > 0
    assert rows[("ort-cpu", "fp32")]["pixel_agreement"] >= 99.9
