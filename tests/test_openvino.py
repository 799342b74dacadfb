"""OpenVINO IRs: export with the metadata inside, the runtime against the ONNX, INT8 mIoU,
bench / eval / predict on IR files, no torch in the runtime, the missing-extra message.

On the users' path: ``gta2cs-deeplabv2`` scaled down (``diga.benchmarks.paper_path``) on
``make-demo`` data in the real GTA5 / Cityscapes layouts, trained at the preset's 32x64 resize
of 64x128 frames; the runtime gets the raw frames and resizes them to the trained scale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import diga_ok
from typer.testing import CliRunner

from diga.benchmarks.paper_path import scaled_overrides, write_data
from diga.cli.app import app
from diga.data.layouts import read_image
from diga.errors import UserError
from diga.export.formats import format_of_file, formats_for_flags
from diga.runtime import Segmenter

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
PRESET = "gta2cs-deeplabv2"


invoke = diga_ok  # diga ARGS, asserting exit code 0; its output


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A 12-step warm-up of the scaled paper preset, exported with --openvino --int8."""
    tmp = tmp_path_factory.mktemp("openvino")
    data = write_data(invoke, tmp / "data")
    keys = scaled_overrides(PRESET, data, steps=12) + ["train.eval_every=0"]
    invoke("train", "warmup", PRESET, *keys, "--out", tmp / "run", "-q")
    invoke("export", tmp / "run", "--openvino", "--int8")
    frames = sorted((data / "cityscapes" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    return {"run": tmp / "run", "export": tmp / "run" / "export", "frames": frames,
            "summary": json.loads((tmp / "run" / "export" / "export.json").read_text())}


def test_ir_files_and_metadata(exported):
    out = exported["export"]
    for name in ("model.xml", "model.bin", "model.int8.xml", "model.int8.bin"):
        assert (out / name).is_file(), name
    onnx_info = Segmenter(out / "model.onnx", "cpu").info
    for name, precision in (("model.xml", "fp32"), ("model.int8.xml", "int8")):
        seg = Segmenter(out / name)
        assert seg.backend == "openvino" and seg.provider.startswith("OpenVINO")
        info = seg.info
        assert info.precision == precision and info.inference_size == (32, 64)  # trained scale
        assert info.class_names == onnx_info.class_names and info.mean == onnx_info.mean
        assert np.array_equal(info.palette, onnx_info.palette)
        assert info.provenance == onnx_info.provenance


def test_ir_labels_agree_with_the_onnx_on_raw_frames(exported):
    out = exported["export"]
    frames = [read_image(p) for p in exported["frames"]]
    assert frames[0].shape[:2] == (64, 128)  # raw frames, twice the trained scale
    onnx = Segmenter(out / "model.onnx", "cpu").predict_batch(frames)
    ir = Segmenter(out / "model.xml").predict_batch(frames)
    assert all(label.shape == (64, 128) for label in ir)
    agreement = np.mean([np.mean(a == b) for a, b in zip(onnx, ir, strict=True)])
    assert agreement >= 0.999
    parity = {f["format"]: f["parity"] for f in exported["summary"]["files"]}
    assert parity["openvino"]["pixel_agreement"] >= 99.9  # against PyTorch, at export


def test_int8_ir_miou_against_fp32(exported):
    files = {f["format"]: f for f in exported["summary"]["files"]}
    fp32 = files["onnx"]["evaluation"]["miou"]
    int8 = files["openvino-int8"]["evaluation"]["miou"]
    assert fp32 > 5  # a model that learned something, so the comparison means something
    assert abs(int8 - fp32) <= 1.0
    assert files["openvino-int8"]["parity"]["pixel_agreement"] >= 97


def test_eval_bench_and_predict_take_ir_files(exported, tmp_path):
    out = exported["export"]
    invoke("eval", out / "model.xml", "--json", tmp_path / "ir.json")
    invoke("eval", out / "model.onnx", "--json", tmp_path / "onnx.json")
    ir, onnx = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ir", "onnx"))
    assert ir["miou"] == pytest.approx(onnx["miou"], abs=0.5)
    invoke("bench", exported["run"], "--backend", "openvino", "--backend", "openvino-tput",
           "--backend", "ort-cpu", "bench.time_budget_s=0.2", "bench.min_iters=3",
           "--json", tmp_path / "bench.json")
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    ov_rows = {(r["backend"], r["precision"]): r for r in rows if "openvino" in r["backend"]}
    assert set(ov_rows) == {(b, p) for b in ("openvino", "openvino-tput") for p in ("fp32", "int8")}
    assert all(r["status"] == "ok" and r["latency_ms"]["p50"] > 0 for r in ov_rows.values())
    for backend in ("openvino", "openvino-tput"):  # the hint changes speed, not labels
        assert ov_rows[(backend, "fp32")]["miou"] == pytest.approx(ir["miou"], abs=1e-6)
    invoke("predict", out / "model.xml", *exported["frames"][:2], "--out", tmp_path / "pred")
    assert len(list((tmp_path / "pred").rglob("*.png"))) >= 2


def test_runtime_runs_an_ir_without_torch(exported):
    code = ("import sys, numpy as np; from diga.runtime import Segmenter; "
            f"seg = Segmenter({str(exported['export'] / 'model.xml')!r}); "
            "labels = seg(np.zeros((64, 128, 3), np.uint8)); "
            "assert labels.shape == (64, 128), labels.shape; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_without_openvino_one_line_says_how_to_install_it(exported, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(UserError, match=r"pip install 'diga\[openvino\]'"):
        Segmenter(exported["export"] / "model.xml")
    result = runner.invoke(app, ["export", str(exported["run"]), "--openvino",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "openvino" in result.output and "Traceback" not in result.output


def test_format_table_knows_the_irs():
    assert [f.name for f in formats_for_flags(openvino=True)] == ["onnx", "openvino"]
    assert [f.name for f in formats_for_flags(openvino=True, int8=True)] == [
        "onnx", "onnx-int8", "openvino", "openvino-int8"]
    assert format_of_file(Path("model.int8.xml")).name == "openvino-int8"
    assert format_of_file(Path("model.xml")).backends == ("openvino", "openvino-tput")


def test_an_ir_without_its_bin_is_one_line(exported, tmp_path):
    lone = tmp_path / "model.xml"
    lone.write_bytes((exported["export"] / "model.xml").read_bytes())
    with pytest.raises(UserError, match="model.bin"):
        Segmenter(lone)


@pytest.fixture(scope="module")
def cpp_app(tmp_path_factory) -> Path:
    """``examples/cpp`` built against the openvino wheel's CMake config."""
    import shutil

    import openvino

    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} to build the C++ app")
    build = tmp_path_factory.mktemp("cpp")
    root = Path(__file__).resolve().parents[1] / "examples" / "cpp"
    ov_cmake = Path(openvino.__file__).parent / "cmake"
    configure = subprocess.run(["cmake", "-S", root, "-B", build, f"-DOpenVINO_DIR={ov_cmake}"],
                               capture_output=True, text=True)
    if configure.returncode and "PNG" in configure.stdout + configure.stderr:
        pytest.skip("libpng's headers are missing (apt-get install libpng-dev)")
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    made = subprocess.run(["cmake", "--build", build, "-j2"], capture_output=True, text=True)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-2000:]
    return build / "diga_segment"


@pytest.mark.parametrize("model", ["model.xml", "model.onnx"])
def test_cpp_app_labels_equal_the_python_runtime(exported, cpp_app, tmp_path, model):
    from PIL import Image

    path = exported["export"] / model
    seg = Segmenter(path, "openvino" if model.endswith(".xml") else "cpu")
    agreement = []
    for frame in exported["frames"][:4]:  # raw 64x128 frames; the model runs at 32x64
        out = tmp_path / f"{frame.stem}.png"
        proc = subprocess.run([cpp_app, path, frame, out], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "ran at 32x64" in proc.stdout
        labels = np.asarray(Image.open(out))
        expected = seg(read_image(frame))
        assert labels.shape == expected.shape == (64, 128) and labels.dtype == np.uint8
        agreement.append(np.mean(labels == expected))
    assert np.mean(agreement) >= 0.999, agreement


def test_cpp_app_bad_input_is_one_line(exported, cpp_app, tmp_path):
    proc = subprocess.run([cpp_app, exported["export"] / "model.xml", tmp_path / "none.png",
                           tmp_path / "out.png"], capture_output=True, text=True)
    assert proc.returncode == 1 and not (tmp_path / "out.png").exists()
    assert proc.stderr.startswith("diga_segment: cannot read") and proc.stderr.count("\n") == 1


def test_nncf_int8_ir_from_the_same_calibration_images(exported, tmp_path):
    pytest.importorskip("nncf", reason="NNCF is not installed")
    invoke("export", exported["run"], "--openvino", "--int8", "export.openvino_int8=nncf",
           "--out", tmp_path)
    files = {f["format"]: f for f in json.loads((tmp_path / "export.json").read_text())["files"]}
    seg = Segmenter(tmp_path / "model.int8.xml")
    assert seg.info.precision == "int8" and seg.info.inference_size == (32, 64)
    assert files["openvino-int8"]["parity"]["pixel_agreement"] >= 97
    fp32 = files["onnx"]["evaluation"]["miou"]
    assert abs(files["openvino-int8"]["evaluation"]["miou"] - fp32) <= 1.0


def test_cpu_backend_settings_are_measured(exported):
    from diga.benchmarks import cpu_backends

    result = cpu_backends.measure(exported["export"] / "model.onnx", (32, 64), budget_s=0.05)
    rows = result["p50_ms"]
    assert "onnxruntime: all, threads default, spin (runtime)" in rows
    assert "openvino: latency, f32 (runtime)" in rows and "openvino: throughput, f32" in rows
    assert len(rows) >= 8 and all(v > 0 for v in rows.values())


def test_bench_says_which_file_openvino_needs(exported, tmp_path):
    invoke("bench", exported["export"] / "model.onnx", "--backend", "openvino",
           "bench.time_budget_s=0.1", "bench.min_iters=1", "--json", tmp_path / "b.json")
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["status"] == (f"unavailable: openvino needs an OpenVINO IR (.xml) and "
                             f"{exported['export'] / 'model.onnx'} has none; write one with "
                             "'diga export RUN --openvino'")


def test_predict_with_openvino_on_a_checkpoint_is_one_line(exported, tmp_path):
    result = runner.invoke(app, ["predict", str(exported["run"]), str(exported["frames"][0]),
                                 "--backend", "openvino", "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "backend 'openvino' runs .xml files, not checkpoints" in result.output
    assert "diga export RUN --openvino" in result.output
