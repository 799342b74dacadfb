"""The torch-free runtime: Segmenter on .onnx, inputs of every kind, providers, engines, helpers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from diga.config import load_config
from diga.errors import UserError
from diga.export.onnx_export import ExportWrapper, export_onnx, model_info
from diga.models import build_model
from diga.runtime import (
    ModelInfo,
    RuntimeFallbackWarning,
    Segmenter,
    colorize,
    engine_sidecar,
    overlay,
    to_rgb_uint8,
)
from diga.runtime.tensorrt_engine import cuda_device_count

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = (cuda_device_count() or 0) > 0
ORT_HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def model_and_onnx(tmp_path_factory):
    """A seeded tiny model and its ONNX (TorchScript exporter: the quickest; dynamo is in
    test_export), with metadata as diga export writes it."""
    torch.manual_seed(0)
    model = build_model("deeplabv2_tiny", 19).eval()
    cfg = load_config("demo")
    info = model_info(cfg, {"stage": "warmup", "step": 7, "metrics": {"target_val_miou": 33.3}},
                      (64, 128), dynamic=True, bake_preprocess=False, argmax=False)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, info, path, exporter="torchscript")
    return model, path


@pytest.fixture(scope="module")
def seg(model_and_onnx):
    with Segmenter(model_and_onnx[1], backend="cpu") as s:
        yield s


def test_runtime_never_imports_torch(model_and_onnx):
    code = (
        "import sys, numpy as np\n"
        "from diga.runtime import Segmenter, colorize\n"
        f"seg = Segmenter({str(model_and_onnx[1])!r})\n"
        "labels = seg(np.zeros((40, 60, 3), np.uint8))\n"
        "color = colorize(labels, seg.info.palette)\n"
        "assert labels.shape == (40, 60) and color.shape == (40, 60, 3)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'diga.config', 'diga.data.datasets') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_labels_match_pytorch(model_and_onnx, seg):
    model, _ = model_and_onnx
    rgb = np.random.default_rng(1).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    labels = seg(rgb)
    batch, _ = seg.prepare([rgb])
    with torch.no_grad():
        ref = ExportWrapper(model, seg.info)(torch.from_numpy(batch)).argmax(1)[0].numpy()
    assert labels.shape == (72, 100) and labels.dtype == np.uint8
    assert (labels == ref).mean() > 0.999


def test_every_input_kind_gives_the_same_labels(seg):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    expected = seg(rgb)
    rgba = np.concatenate([rgb, np.full((33, 47, 1), 7, np.uint8)], axis=2)
    for image in (gray, gray[..., None], rgba, Image.fromarray(gray), Image.fromarray(rgba),
                  Image.fromarray(rgb).convert("P")):
        assert np.array_equal(seg(image), expected)
    assert seg(rgb, out_size=(66, 94)).shape == (66, 94)


def test_predict_batch_groups_sizes(seg):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in ((32, 64, 3), (40, 40, 3), (32, 64, 3))]
    batched = seg.predict_batch(images, max_batch=2)
    for image, labels in zip(images, batched, strict=True):
        assert np.array_equal(labels, seg(image))


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 10, 3), np.uint8), "is empty"),
    (np.zeros((10, 10, 3), np.float32), "dtype float32"),
    (np.zeros((3, 10, 10, 2), np.uint8), "has shape"),
    (Image.new("RGB", (0, 0)), "is empty"),
    ("street.png", "not an image"),
])
def test_bad_images_are_user_errors(seg, image, message):
    with pytest.raises(UserError, match=message):
        seg(image)


def test_metadata_props_round_trip():
    info = ModelInfo(class_names=("a", "b"), palette=np.array([[1, 2, 3], [4, 5, 6]]),
                     mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), input_kind="uint8",
                     output_kind="labels", layout="NHWC", input_size=(32, 48), dynamic=False,
                     precision="int8", provenance={"stage": "selftrain", "step": 3})
    back = ModelInfo.from_props(info.to_props(), "here")
    assert back.to_props() == info.to_props()
    assert back.input_size == (32, 48) and back.dynamic is False
    props = info.to_props()
    props["palette"] = "[[1, 2"
    with pytest.raises(UserError, match="damaged"):
        ModelInfo.from_props(props, "model.onnx")


def test_missing_corrupt_and_foreign_onnx(tmp_path, model_and_onnx):
    with pytest.raises(UserError, match="model not found"):
        Segmenter(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UserError, match="cannot load ONNX model"):
        Segmenter(bad)
    proto = onnx.load(str(model_and_onnx[1]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(UserError, match="carries no diga metadata"):
        Segmenter(foreign)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unknown model file type"):
        Segmenter(other)


def test_unknown_backend(model_and_onnx):
    with pytest.raises(UserError, match="unknown backend 'cdua'.*did you mean 'cuda'"):
        Segmenter(model_and_onnx[1], backend="cdua")


@pytest.mark.skipif(ORT_HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_cuda_requested_where_onnxruntime_has_none(model_and_onnx):
    with pytest.raises(UserError, match="needs onnxruntime's CUDAExecutionProvider"):
        Segmenter(model_and_onnx[1], backend="cuda")


@pytest.mark.skipif(ORT_HAS_CUDA and HAS_GPU, reason="a CUDA provider and GPU are really here")
def test_cuda_provider_not_obtained(monkeypatch, model_and_onnx):
    # onnxruntime lists the provider, but the session cannot get it (no GPU / no CUDA libs):
    # an error when asked for, a warning under auto
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's own note about the provider
        with pytest.raises(UserError, match="session got CPUExecutionProvider"):
            Segmenter(model_and_onnx[1], backend="cuda")
    with warnings.catch_warnings(), pytest.warns(RuntimeFallbackWarning, match="running on CPU"):
        warnings.filterwarnings("ignore", "Specified provider", UserWarning)
        auto = Segmenter(model_and_onnx[1], backend="auto")
    assert auto.backend == "cpu" and auto(np.zeros((16, 16, 3), np.uint8)).shape == (16, 16)


def test_describe_says_which_provider(seg):
    assert seg.provider == "CPUExecutionProvider" and seg.backend == "cpu"
    assert "CPUExecutionProvider" in seg.describe() and "dynamic" in seg.describe()


def test_colorize_and_overlay():
    palette = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    labels = np.array([[0, 1], [255, 1]], np.uint8)
    color = colorize(labels, palette)
    assert color[0, 0].tolist() == [10, 20, 30] and color[0, 1].tolist() == [200, 100, 0]
    assert color[1, 0].tolist() == [0, 0, 0]  # ignore id: black
    image = np.full((2, 2, 3), 100, np.uint8)
    assert np.array_equal(overlay(image, labels, palette, alpha=0.0), image)
    assert np.array_equal(overlay(image, labels, palette, alpha=1.0), color)
    half = overlay(image, labels, palette, alpha=0.5)
    assert half[0, 1].tolist() == [150, 100, 50]


def test_to_rgb_uint8_keeps_rgb_arrays():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)


# ------------------------------------------------------------------ engines


def _engine_with_sidecar(tmp_path: Path, model_and_onnx) -> Path:
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not a real engine")
    props = {p.key: p.value for p in onnx.load(str(model_and_onnx[1])).metadata_props}
    engine_sidecar(engine).write_text(json.dumps({"metadata": props}))
    return engine


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="TensorRT and a GPU are present")
def test_engine_without_tensorrt_or_gpu_is_one_clear_error(tmp_path, model_and_onnx):
    engine = _engine_with_sidecar(tmp_path, model_and_onnx)
    with pytest.raises(UserError, match="TensorRT is not installed|no CUDA device|pycuda"):
        Segmenter(engine)


def test_engine_needs_its_sidecar_and_a_tensorrt_backend(tmp_path, model_and_onnx):
    engine = _engine_with_sidecar(tmp_path, model_and_onnx)
    with pytest.raises(UserError, match="runs on TensorRT, not on backend 'cpu'"):
        Segmenter(engine, backend="cpu")
    engine_sidecar(engine).unlink()
    with pytest.raises(UserError, match="no metadata side-car"):
        Segmenter(engine)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and HAS_GPU), reason=f"needs TensorRT and a CUDA GPU (TensorRT "
                    f"installed: {HAS_TRT}, GPU visible: {HAS_GPU})")
def test_corrupt_engine_or_one_of_another_tensorrt_is_a_user_error(tmp_path, model_and_onnx):
    engine = _engine_with_sidecar(tmp_path, model_and_onnx)
    with pytest.raises(UserError, match="cannot load TensorRT engine"):
        Segmenter(engine)
    # a plan of another TensorRT version is refused before it is deserialised
    sidecar = json.loads(engine_sidecar(engine).read_text())
    engine_sidecar(engine).write_text(json.dumps({**sidecar, "tensorrt": "9.0.0"}))
    with pytest.raises(UserError, match="was built by TensorRT 9.0.0; this is TensorRT"):
        Segmenter(engine)


@pytest.mark.gpu
@pytest.mark.skipif(not (ORT_HAS_CUDA and HAS_GPU), reason=f"needs onnxruntime-gpu and a CUDA GPU "
                    f"(CUDA provider: {ORT_HAS_CUDA}, GPU visible: {HAS_GPU})")
def test_cuda_provider_matches_cpu(model_and_onnx, seg):
    with Segmenter(model_and_onnx[1], backend="cuda") as gpu:
        assert gpu.provider == "CUDAExecutionProvider"
        rgb = np.random.default_rng(4).integers(0, 256, (64, 128, 3), dtype=np.uint8)
        assert (gpu(rgb) == seg(rgb)).mean() > 0.999


def _with_props(path: Path, out: Path, **changes: str | None) -> Path:
    """A copy of an ONNX with some metadata props changed (None: removed)."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def test_images_run_at_the_trained_scale_and_come_back_at_their_size(tmp_path, model_and_onnx):
    """A model trained at 32x64 runs a 64x128 frame at 32x64: the labels equal those of the
    frame resized to 32x64 by hand, brought back to 64x128; native runs it at 64x128."""
    model, path = model_and_onnx
    trained = _with_props(path, tmp_path / "trained.onnx", inference_size="32x64")
    frame = np.random.default_rng(5).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    with Segmenter(trained, backend="cpu") as seg, Segmenter(path, backend="cpu") as native_seg:
        assert seg.info.inference_size == (32, 64) and native_seg.info.inference_size is None
        assert seg.run_size((64, 128)) == (32, 64) and seg.run_size((10, 10)) == (32, 64)
        small = np.asarray(Image.fromarray(frame).resize((64, 32), Image.Resampling.BILINEAR))
        logits = native_seg.run(native_seg.prepare([small])[0])[0]  # (C, 32, 64)
        expected = np.stack([np.asarray(Image.fromarray(c).resize((128, 64), Image.Resampling.BILINEAR))
                             for c in logits]).argmax(0)
        assert np.array_equal(seg(frame), expected)
        assert "runs at the trained 32x64" in seg.describe()
    with Segmenter(trained, backend="cpu", size="native") as seg:
        assert seg.run_size((64, 128)) == (64, 128)
        assert np.array_equal(seg(frame), native_seg_labels(path, frame))
    with Segmenter(trained, backend="cpu", size=(16, 32)) as seg:
        assert seg.run_size((64, 128)) == (16, 32) and seg(frame).shape == (64, 128)
    with pytest.raises(UserError, match="unknown run size 'half'"):
        Segmenter(trained, size="half")


def native_seg_labels(path: Path, frame: np.ndarray) -> np.ndarray:
    with Segmenter(path, backend="cpu") as seg:
        return seg(frame)


def test_older_export_without_inference_size_warns_and_runs_native(tmp_path, model_and_onnx):
    """diga 0.1 exports record no inference size: documented fallback, each image at its own
    size, with a warning that says how to fix it (and the CLI prints it as one line)."""
    from typer.testing import CliRunner

    from diga.cli.app import app
    from diga.runtime import ScaleWarning

    old = _with_props(model_and_onnx[1], tmp_path / "old.onnx", inference_size=None,
                      output_resize=None)
    frame = np.random.default_rng(6).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    with pytest.warns(ScaleWarning, match="records no inference size .*export it again"):
        seg = Segmenter(old, backend="cpu")
    with seg:
        assert not seg.info.scale_recorded and seg.run_size((40, 60)) == (40, 60)
        assert np.array_equal(seg(frame), native_seg_labels(model_and_onnx[1], frame))
        assert "inference_size" not in seg.info.to_props()  # read back as it was written
    Image.fromarray(frame).save(tmp_path / "f.png")
    result = CliRunner().invoke(app, ["predict", str(old), str(tmp_path / "f.png"),
                                      "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 2 and "records no inference size" in warning[1]
    # an older export runs through the host path, with one line saying a re-export is faster
    assert "holds the network alone" in warning[0] and "diga export RUN" in warning[0]


def test_static_model_runs_only_at_its_size(tmp_path, model_and_onnx):
    static = _with_props(model_and_onnx[1], tmp_path / "static.onnx", dynamic="false",
                         input_size="64x128", inference_size="64x128")
    with pytest.raises(UserError, match="static model: it runs only at 64x128"):
        Segmenter(static, size="native")
    with Segmenter(static, backend="cpu", size=(64, 128)) as seg:
        assert seg.run_size((10, 20)) == (64, 128)
