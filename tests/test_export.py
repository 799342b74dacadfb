"""Export: ONNX of every model with parity, metadata, fp16 / INT8, the CLI, TensorRT (marked)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from diga.checkpoint import save_checkpoint
from diga.cli.app import app
from diga.config import load_config
from diga.data.datasets import build_dataset, normalize
from diga.errors import UserError
from diga.export import FORMATS, formats_for_flags
from diga.export.onnx_export import ExportWrapper, export_onnx, model_info
from diga.export.parity import TargetImage, check_parity, target_images
from diga.export.pipeline import ExportOptions, export_checkpoint
from diga.models import available_models, build_model
from diga.runtime import Segmenter
from diga.runtime.segmenter import engine_sidecar
from diga.runtime.tensorrt_engine import cuda_device_count

SMALL = [
    "data.builtin.size=64x128", "data.builtin.source_train=8", "data.builtin.target_train=8",
    "data.builtin.target_val=6", "data.num_workers=0", "run.device=cpu",
    "export.parity_images=3", "export.calib_images=8",
]
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = (cuda_device_count() or 0) > 0
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_run(folder: Path, model: torch.nn.Module, metrics: dict | None = None) -> Path:
    cfg = load_config("demo", SMALL)
    save_checkpoint(folder / "checkpoints" / "last", model=model.state_dict(),
                    meta={"stage": "source", "step": 40, "config": cfg.to_dict(),
                          "metrics": metrics or {}})
    return folder


def briefly_trained_tiny() -> torch.nn.Module:
    """deeplabv2_tiny after 40 supervised steps on 8 target train images (about 13% mIoU)."""
    cfg = load_config("demo", SMALL)
    data = build_dataset(cfg, "target", "train", train=False)
    items = [data[i] for i in range(len(data))]
    x = normalize(torch.stack([it["image"] for it in items]), cfg.data.mean, cfg.data.std)
    y = torch.stack([it["label"] for it in items]).long()
    torch.manual_seed(0)
    model = build_model("deeplabv2_tiny", cfg.num_classes)
    opt = torch.optim.AdamW(model.parameters(), 5e-3)
    model.train()
    for _ in range(40):
        idx = torch.randperm(len(x))[:4]
        logits = F.interpolate(model(x[idx]).logits, size=x.shape[-2:], mode="bilinear",
                               align_corners=True)
        loss = F.cross_entropy(logits, y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("trained"), briefly_trained_tiny(),
                    metrics={"target_val_miou": 41.2})


@pytest.fixture(scope="module")
def exported(trained_run):
    """The trained tiny model exported with fp16 and int8 (dynamic shapes, default out dir)."""
    return export_checkpoint(trained_run, [], ExportOptions(fp16=True, int8=True))


# ------------------------------------------------------------------ the format table


def test_format_table_is_consistent():
    names = [f.file for f in FORMATS.values() if f.file]
    assert len(names) == len(set(names))
    from diga.export.formats import BENCH_BACKENDS, format_of_file

    for fmt in FORMATS.values():
        assert fmt.source is None or fmt.source in FORMATS
        assert all(b in BENCH_BACKENDS for b in fmt.backends)
        if fmt.file:
            assert format_of_file(Path(fmt.file)) is fmt
    assert [f.name for f in formats_for_flags()] == ["onnx"]
    # strongly typed engines: each from the ONNX of its precision, which is written too
    assert [f.name for f in formats_for_flags(trt=True)] == ["onnx", "onnx-fp16", "trt-fp16"]
    assert [f.name for f in formats_for_flags(int8=True, trt=True)] == ["onnx", "onnx-int8", "trt-int8"]
    assert [f.name for f in formats_for_flags(fp16=True, int8=True, trt=True, trt_fp32=True)] == [
        "onnx", "onnx-fp16", "onnx-int8", "trt-fp32", "trt-fp16", "trt-int8"]
    assert {f.name: f.source for f in FORMATS.values() if f.suffix == ".engine"} == {
        "trt-fp32": "onnx", "trt-fp16": "onnx-fp16", "trt-int8": "onnx-int8"}
    assert all(f.needs_gpu for f in formats_for_flags(fp16=True, int8=True, trt=True)
               if f.suffix == ".engine")


# ------------------------------------------------------------------ every model


def _models():
    """DeepLabV2's variants. HRNet + OCR and SegFormer export (dynamo) with the parity gate in
    tests/test_paper_path.py's rehearsal of their presets (30-100 s each here: once is enough);
    tests/test_models.py runs every variant's contract."""
    for name in available_models():
        if name.startswith(("hrnet", "segformer")):
            continue
        big = name.endswith(("resnet50", "resnet101", "resnet18"))  # 5-20 s each on 2 CPU cores
        yield pytest.param(name, marks=pytest.mark.slow) if big else name


@pytest.mark.parametrize("name", list(_models()))
def test_every_model_exports_with_parity(tmp_path, name):
    cfg = load_config("demo", SMALL)
    torch.manual_seed(0)
    model = build_model(name, cfg.num_classes).eval()
    size = (64, 128) if name.endswith("tiny") else (64, 64)
    info = model_info(cfg, {"stage": "source", "step": 0}, size, dynamic=True,
                      bake_preprocess=False, argmax=False)
    result = export_onnx(model, info, tmp_path / "model.onnx", opset=18)
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert result.opset >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3 and all(d.dim_param for i, d in enumerate(dims) if i != 1)
    images = [TargetImage(t.image[: size[0], : size[1]].copy(), t.label, t.name)
              for t in target_images(cfg, "val", 2)]
    report = check_parity(ExportWrapper(model, info), result.path, images)
    print(f"{name} ({result.exporter}): pixel agreement {report.pixel_agreement:.4f}%, "
          f"max |logit diff| {report.max_abs_logit_diff:.2e} (max |logit| {report.max_abs_logit:.1f})")
    assert report.pixel_agreement >= 99.9, report
    # float32 rounding grows with depth and logit size: bound the difference relative to it
    assert report.max_abs_logit_diff < 1e-4 * max(1.0, report.max_abs_logit), report


# ------------------------------------------------------------------ the pipeline


def test_export_writes_files_and_parity(exported, trained_run):
    out = trained_run / "export"
    assert exported.out_dir == out
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "parity.json", "export.json"):
        assert (out / name).is_file(), name
    parity = json.loads((out / "parity.json").read_text())
    fp32 = parity["models"]["model.onnx"]
    assert fp32["pixel_agreement"] >= 99.9 and fp32["max_abs_logit_diff"] < 1e-3
    assert fp32["images"] == 3
    summary = json.loads((out / "export.json").read_text())
    assert summary["exporter"] in ("dynamo", "torchscript")
    assert [f["path"] for f in summary["files"]] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17


def test_metadata_round_trips_into_the_runtime(exported, trained_run):
    cfg = load_config("demo", SMALL)
    with Segmenter(trained_run / "export" / "model.onnx", backend="cpu") as seg:
        info = seg.info
    from diga.data.classes import class_protocol

    protocol = class_protocol(19)
    assert info.class_names == protocol.names
    assert np.array_equal(info.palette, protocol.palette)
    assert info.mean == tuple(cfg.data.mean) and info.std == tuple(cfg.data.std)
    assert (info.input_kind, info.output_kind, info.layout, info.channel_order, info.frame) == (
        "frame", "labels", "NHWC", "RGB", "onnxruntime")
    assert info.input_size == (64, 128) and info.dynamic and info.precision == "fp32"
    prov = info.provenance
    assert prov["config_hash"] == cfg.hash() and prov["stage"] == "source" and prov["step"] == 40
    assert prov["target_val_miou"] == 41.2 and prov["target"]["kind"] == "builtin"
    assert prov["model"] == "deeplabv2_tiny"


def test_int8_is_qdq_and_reports_miou_vs_fp32(exported, trained_run, record_property):
    proto = onnx.load(str(trained_run / "export" / "model.int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # conv weights stored as int8
    zero_points = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
                   if t.name.endswith("zero_point")]
    assert zero_points and all((z == 0).all() for z in zero_points)  # symmetric, for TensorRT
    files = {f.path.name: f for f in exported.files}
    fp32, int8 = files["model.onnx"].evaluation, files["model.int8.onnx"].evaluation
    record_property("fp32_miou", fp32["miou"])
    record_property("int8_miou", int8["miou"])
    print(f"target val mIoU: fp32 {fp32['miou']:.2f} ({fp32['ms_per_image']:.1f} ms/img), "
          f"int8 {int8['miou']:.2f} ({int8['ms_per_image']:.1f} ms/img)")
    assert fp32["images"] == int8["images"] == 6
    assert fp32["miou"] > 5.0  # the model is trained: far above a constant prediction
    assert math.isfinite(int8["miou"]) and abs(int8["miou"] - fp32["miou"]) < 5.0
    assert files["model.int8.onnx"].parity["pixel_agreement"] > 90.0


def test_fp16_model_keeps_float32_io(exported, trained_run):
    proto = onnx.load(str(trained_run / "export" / "model.fp16.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    assert types == {"image": onnx.TensorProto.UINT8, "run_size": onnx.TensorProto.INT64,
                     "labels": onnx.TensorProto.UINT8, "logits": onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    fp16 = {f.path.name: f for f in exported.files}["model.fp16.onnx"]
    assert fp16.parity["pixel_agreement"] > 99.0
    assert Segmenter(trained_run / "export" / "model.fp16.onnx", "cpu").info.precision == "fp16"


def test_dynamic_model_runs_other_sizes_and_batches(exported, trained_run):
    from diga.checkpoint import load_model
    from diga.export.parity import torch_frame_labels

    model, path = load_model(trained_run)[0], trained_run / "export" / "model.onnx"
    rgb = np.random.default_rng(0).integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    with Segmenter(path, backend="cpu") as seg:
        got = seg.segment(list(rgb))  # one batch of two frames: their own size, no resize
        assert seg.run_size((48, 80)) == (48, 80)
        info = seg.info
    for frame, prediction in zip(rgb, got, strict=True):
        ref, _ = torch_frame_labels(model, info, frame, (48, 80))
        assert prediction.labels.shape == (48, 80) and (prediction.labels == ref).mean() >= 0.999


def test_static_core_runs_frames_of_any_size(trained_run, tmp_path):
    summary = export_checkpoint(trained_run, ["export.dynamic=false"], out_dir=tmp_path)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, "height", "width", 3]  # the static core's batch; frames of any size
    assert summary.files[0].parity["pixel_agreement"] >= 99.9
    with Segmenter(tmp_path / "model.onnx", backend="cpu") as seg:
        assert not seg.info.dynamic and seg.info.input_size == (64, 128)
        frame = np.full((50, 70, 3), 90, np.uint8)
        labels = seg(frame)  # resized to 64x128 in the graph, labels at 50x70
        several = seg.predict_batch([frame] * 3)  # the static batch of 1: three calls
    assert all(np.array_equal(s, labels) for s in several)
    assert labels.shape == (50, 70) and labels.dtype == np.uint8 and labels.max() < 19


def test_dynamo_failure_falls_back_to_torchscript(monkeypatch, tmp_path, caplog):
    import diga.export.onnx_export as onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator for the test")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    cfg = load_config("demo", SMALL)
    model = build_model("deeplabv2_tiny", 19).eval()
    info = model_info(cfg, {}, (64, 128), dynamic=True, bake_preprocess=False, argmax=False)
    with caplog.at_level(logging.WARNING, logger="diga.export"):
        result = export_onnx(model, info, tmp_path / "model.onnx")
    assert result.exporter == "torchscript"
    assert "unsupported operator for the test" in result.fallback_reason
    assert "falling back to the TorchScript exporter" in caplog.text
    images = target_images(cfg, "val", 2)
    assert check_parity(ExportWrapper(model, info), result.path, images).pixel_agreement >= 99.9
    with pytest.raises(UserError, match="dynamo ONNX exporter failed"):
        export_onnx(model, info, tmp_path / "other.onnx", exporter="dynamo")


# ------------------------------------------------------------------ the CLI


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_cli_export_fp16_with_summary(tmp_path):
    run = make_run(tmp_path / "run", build_model("deeplabv2_tiny", 19))
    # the TorchScript exporter here: quicker, and the dynamo path is tested above
    result = runner.invoke(app, ["export", str(run), "--fp16", "--opset", "18",
                                 "export.parity_images=2", "export.exporter=torchscript",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "model.fp16.onnx" in result.output and "wrote" in result.output
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["opset"] == 18 and len(summary["files"]) == 2
    assert summary["exporter"] == "torchscript"
    assert summary["files"][0]["parity"]["pixel_agreement"] >= 99.9


@pytest.mark.parametrize("case,message", [
    ("missing", "model not found"),
    ("corrupt-weights", "cannot read weights file"),
    ("corrupt-meta", "is corrupt"),
    ("onnx", "already an exported model"),
    ("opset", "export.opset=16"),
    ("stray", "unexpected argument 'oops'"),
])
def test_cli_export_bad_input(tmp_path, case, message):
    run = tmp_path / "run"
    args = ["export", str(run)]
    if case != "missing":
        make_run(run, build_model("deeplabv2_tiny", 19))
    if case == "corrupt-weights":
        (run / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not safetensors")
    elif case == "corrupt-meta":
        (run / "checkpoints" / "last" / "meta.json").write_text("{ broken")
    elif case == "onnx":
        (tmp_path / "m.onnx").write_bytes(b"x")
        args = ["export", str(tmp_path / "m.onnx")]
    elif case == "opset":
        args += ["--opset", "16"]
    elif case == "stray":
        args += ["oops"]
    assert message in one_error_line(runner.invoke(app, args))


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="TensorRT and a GPU are present: --trt works here")
def test_cli_trt_without_tensorrt_or_gpu_is_one_line(tmp_path):
    run = make_run(tmp_path / "run", build_model("deeplabv2_tiny", 19))
    line = one_error_line(runner.invoke(app, ["export", str(run), "--trt"]))
    assert any(why in line for why in ("TensorRT is not installed", "no CUDA device", "pycuda"))
    assert not (run / "export").exists()  # checked before any export work


# ------------------------------------------------------------------ TensorRT and GPU (marked)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and HAS_GPU), reason=f"needs TensorRT and a CUDA GPU (TensorRT "
                    f"installed: {HAS_TRT}, GPU visible: {HAS_GPU})")
def test_trt_engines_build_and_match(trained_run, tmp_path):
    """Strongly typed fp32, fp16 and int8 engines each build from the ONNX of their precision;
    their labels agree with onnxruntime fp32 on target images (fp16 >= 99 %, int8 within 1 mIoU)
    and ``Segmenter`` runs each one."""
    from diga.export.parity import evaluate_model_file

    keys = ["export.trt_min_size=32x64", "export.trt_opt_size=64x128",
            "export.trt_max_size=128x256", "export.trt_workspace_gb=1"]
    summary = export_checkpoint(trained_run, keys, ExportOptions(int8=True, fp16=True, trt=True,
                                                                 trt_fp32=True), out_dir=tmp_path)
    files = {f.path.name: f for f in summary.files}
    assert {"model.fp32.engine", "model.fp16.engine", "model.int8.engine"} <= set(files)
    assert (tmp_path / "trt_timing.cache").stat().st_size > 0
    cfg = load_config("demo", SMALL)
    images = target_images(cfg, "val", None, finest=True)
    ort_labels = []
    with Segmenter(tmp_path / "model.onnx", backend="cpu") as ort_fp32:
        ort_labels = [ort_fp32(item.image) for item in images]
    fp32_miou = evaluate_model_file(tmp_path / "model.onnx", images)["miou"]
    for precision, source in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"),
                              ("int8", "model.int8.onnx")):
        engine = tmp_path / f"model.{precision}.engine"
        sidecar = json.loads(engine_sidecar(engine).read_text())
        assert sidecar["precision"] == precision and sidecar["strongly_typed"] is True
        assert sidecar["precision_source"]["onnx"] == source
        assert sidecar["profile"]["max"] == [1, 128, 256, 3] and sidecar["compute_capability"]
        assert len(sidecar["timing_cache"]["sha256"]) == 64
        with Segmenter(engine) as seg:
            assert seg.backend == "tensorrt" and seg.info.precision == precision
            agree = np.mean([(seg(item.image) == ref).mean()
                             for item, ref in zip(images, ort_labels, strict=True)])
        if precision in ("fp32", "fp16"):
            assert agree >= 0.99, (precision, agree)
        else:
            miou = evaluate_model_file(engine, images, backend="tensorrt")["miou"]
            assert fp32_miou - miou <= 1.0, (fp32_miou, miou)


def test_trt_profile_covers_the_export_size():
    from diga.export.tensorrt_build import profile_shapes

    cfg = load_config("demo", SMALL + ["export.trt_max_batch=4"])
    info = model_info(cfg, {}, (64, 128), dynamic=True, frame="tensorrt")
    shapes = profile_shapes(info, cfg.export)  # frames 256x512 .. 2048x4096, widened to 64x128
    assert shapes == {"min": (1, 64, 128, 3), "opt": (2, 1024, 2048, 3), "max": (4, 2048, 4096, 3)}
    network_alone = info.replace(layout="NCHW", input_kind="float", output_kind="logits",
                                 frame=None)
    assert profile_shapes(network_alone, cfg.export)["max"] == (4, 3, 2048, 4096)


def test_export_stops_when_fp32_parity_is_below_min_agreement(monkeypatch, tmp_path):
    import diga.export.pipeline as pipeline
    from diga.export.parity import ParityReport

    def poor_parity(model, path, images, backend="cpu"):
        return ParityReport(Path(path).name, len(images), 97.5, 3.0, 0.5, "CPUExecutionProvider")

    monkeypatch.setattr(pipeline, "check_frame_parity", poor_parity)
    run = make_run(tmp_path / "run", build_model("deeplabv2_tiny", 19))
    with pytest.raises(UserError, match=r"agrees with PyTorch on only 97.500% .*min_agreement=99.9"):
        export_checkpoint(run, ["export.exporter=torchscript"], ExportOptions(int8=True),
                          out_dir=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["models"]["model.onnx"]
    assert not (tmp_path / "out" / "model.int8.onnx").exists()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(exported, trained_run, tmp_path, method, capsys):
    from diga.checkpoint import load_model
    from diga.export.onnx_export import write_frame_model
    from diga.export.parity import evaluate_model_file
    from diga.export.quantize import quantize_int8

    cfg = load_config("demo", SMALL)
    core_info = exported.info.replace(input_kind="float", output_kind="logits", layout="NCHW",
                                      frame=None)
    core = export_onnx(load_model(trained_run)[0], core_info, tmp_path / "core.onnx",
                       exporter="torchscript", features=True).path
    calib = [t.image for t in target_images(cfg, "train", 4)]
    quantized = quantize_int8(core, tmp_path / "core.int8.onnx", calib, core_info, method)
    assert "Collecting tensor data" not in capsys.readouterr().out  # calibrator chatter kept off
    path = write_frame_model(quantized, tmp_path / "model.int8.onnx",
                             exported.info.replace(precision="int8"))
    val = target_images(cfg, "val", None)
    got = evaluate_model_file(path, val)["miou"]
    ref = {f.path.name: f for f in exported.files}["model.onnx"].evaluation["miou"]
    assert abs(got - ref) < 5.0, (method, got, ref)


@pytest.mark.slow
def test_int8_leaves_the_working_directory_clean_and_the_attention_in_float(tmp_path, monkeypatch,
                                                                         caplog):
    """onnxruntime's symbolic shape inference gave up on MiT's (and HRNet's) dynamic sizes and
    saved the model and its weights, as a file named by a uuid, into the working directory;
    ONNX's shape inference completes (the graph is optimised before quantisation), in a
    temporary folder.
    ``export.int8_float=[attention]``: no kept node's output is quantised (a MatMul between
    DequantizeLinear inputs and a QuantizeLinear output would run as an INT8 kernel)."""
    from collections import defaultdict

    from diga.export.quantize import float_nodes, quantize_int8

    cfg = load_config("demo", SMALL)
    torch.manual_seed(0)
    model = build_model("segformer_mit_b0", cfg.num_classes).eval()
    info = model_info(cfg, {"stage": "source", "step": 0}, (64, 128), dynamic=True)
    core_info = info.replace(input_kind="float", output_kind="logits", layout="NCHW", frame=None)
    core = export_onnx(model, core_info, tmp_path / "core.onnx", features=True,
                       exporter="torchscript").path  # 10x faster than dynamo here; same graph ops
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    calib = [t.image for t in target_images(cfg, "train", 2)]
    with caplog.at_level(logging.WARNING, logger="diga.export"):
        out = quantize_int8(core, tmp_path / "core.int8.onnx", calib, core_info,
                            keep_float=["attention"])
    assert list(cwd.iterdir()) == []
    assert "quant_pre_process failed" not in caplog.text
    kept = set(float_nodes(onnx.load(str(core)), ["attention"]))
    types = {n.name: n.op_type for n in onnx.load(str(core)).graph.node if n.name in kept}
    # MiT-B0: 8 attention blocks, each scores MatMul -> scaling Mul -> Softmax -> values MatMul
    assert sorted(types.values()).count("MatMul") == 16 and list(types.values()).count("Softmax") == 8
    proto = onnx.load(str(out))
    consumers = defaultdict(set)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    quantised = {n.name for n in proto.graph.node if "QuantizeLinear" in consumers[n.output[0]]}
    assert not kept & quantised
    linear = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in kept]
    assert linear and set(linear) <= quantised  # the linear layers: INT8
