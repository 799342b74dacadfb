"""The frame graph (issue 28): frames of any size in, labels at their size out, every per-pixel
step inside the model, by one rule for every backend and for ``diga eval``.

The rule: the frame resized to the run size with Pillow's antialiased bilinear filter, the
network, its logits upsampled bilinearly (align_corners) from the feature grid to the frame's
size, the argmax. Checked piece by piece on hand-made inputs (the resize against Pillow, the
exact post-processing against the dense one, every flavour and odd sizes), and end to end on
the users' path (the scaled gta2cs preset's export on raw frames larger than its inference
size, an odd frame size) against PyTorch and against the host path diga used before.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from PIL import Image

from diga.export.frame import (
    GraphBuilder,
    postprocess_cells,
    postprocess_dense,
    preprocess,
    size_or_image,
)
from diga.runtime import HostPathWarning, Segmenter
from diga.runtime.prediction import softmax_maps, upsample_align_corners

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _graph(b: GraphBuilder, inputs: list, output: str, out_type) -> ort.InferenceSession:
    b.nodes.append(helper.make_node("Identity", [output], ["out"]))
    graph = helper.make_graph(b.nodes, b.prefix, inputs, [out_type], initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def post_session(kind: str) -> ort.InferenceSession:
    """logits (B, C, h, w) and an image (B, H, W, 3) -> labels (B, H, W)."""
    b = GraphBuilder("post")
    out_hw, _ = size_or_image(b, "image", None)
    labels = (postprocess_cells if kind == "cells" else postprocess_dense)(b, "logits", out_hw)
    return _graph(b, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "c", "h", "w"]),
                      helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", "H", "W", 3])],
                  labels, helper.make_tensor_value_info("out", TensorProto.UINT8, ["b", "H", "W"]))


def pre_session(flavour: str) -> ort.InferenceSession:
    """image (B, H, W, 3) and run_size -> normalised (B, 3, h, w), as the flavour resizes."""
    b = GraphBuilder("pre")
    frame, run = size_or_image(b, "image", "run_size")
    x = preprocess(b, "image", frame, run, flavour, MEAN, STD)
    return _graph(b, [helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", "H", "W", 3]),
                      helper.make_tensor_value_info("run_size", TensorProto.INT64, [2])],
                  x, helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3, "h", "w"]))


def scene_logits(seed: int, grid: tuple[int, int], classes: int = 19) -> torch.Tensor:
    """Logits with a scene's layout: smooth class regions, borders between them, a little
    noise; (1, C, h, w)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, grid[0] // 8 + 1, grid[1] // 8 + 1, generator=g) * 4
    smooth = F.interpolate(coarse, size=grid, mode="bilinear", align_corners=True)
    return smooth + 0.2 * torch.randn(1, classes, *grid, generator=g)


@pytest.mark.parametrize("frame", [(1024, 2048), (1023, 2047), (61, 130), (7, 9), (64, 128)])
def test_cells_post_processing_equals_every_pixel_interpolated(frame):
    """Exact: the same labels as interpolating every pixel (to float rounding), for frames
    larger and smaller than the grid, odd sizes, a batch of two."""
    logits = torch.cat([scene_logits(0, (64, 128)), scene_logits(1, (64, 128))])
    reference = F.interpolate(logits, size=frame, mode="bilinear", align_corners=True).argmax(1)
    image = np.zeros((2, *frame, 3), np.uint8)
    cells = post_session("cells").run(None, {"logits": logits.numpy(), "image": image})[0]
    dense = post_session("dense").run(None, {"logits": logits.numpy(), "image": image})[0]
    assert cells.shape == dense.shape == (2, *frame) and cells.dtype == np.uint8
    assert (cells == reference.numpy()).mean() >= 0.9999
    assert (dense == reference.numpy()).mean() >= 0.9999


def test_cells_post_processing_with_few_classes_and_a_flat_grid():
    """Two classes (fewer than the candidates it keeps); one class everywhere (no border)."""
    two = scene_logits(2, (8, 16), classes=2)
    image = np.zeros((1, 50, 90, 3), np.uint8)
    got = post_session("cells").run(None, {"logits": two.numpy(), "image": image})[0]
    ref = F.interpolate(two, size=(50, 90), mode="bilinear", align_corners=True).argmax(1)
    assert np.array_equal(got, ref.numpy())
    flat = torch.zeros(1, 19, 8, 16)
    flat[:, 5] = 1.0
    got = post_session("cells").run(None, {"logits": flat.numpy(), "image": image})[0]
    assert (got == 5).all()


@pytest.mark.parametrize("run", [(32, 64), (45, 90), (100, 200), (0, 0)])
def test_in_graph_resize_is_pillows_filter(run):
    """Down- and upscaling and non-integer ratios: onnxruntime's antialiased Resize and the
    gathers of the TensorRT / OpenVINO filter give Pillow's pixels (within a grey level)."""
    rng = np.random.default_rng(3)
    frame = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 16, 3), np.uint8))
                       .resize((128, 64), Image.BICUBIC)).copy()
    frame[20:40, 30:70] = 255  # sharp edges: aliasing would show
    size = run if run != (0, 0) else frame.shape[:2]
    pil = np.asarray(Image.fromarray(frame).resize(size[::-1], Image.BILINEAR), np.float32)
    pil = ((pil / 255 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    grey = 1 / 255 / min(STD)
    for flavour in ("onnxruntime", "tensorrt"):
        got = pre_session(flavour).run(None, {"image": frame[None],
                                              "run_size": np.array(run, np.int64)})[0][0]
        assert got.shape == pil.shape
        assert np.abs(got - pil).max() <= 2 * grey + 1e-5, flavour


def test_confidence_maps_follow_the_rule():
    """The maps an app asks for: softmax of the logits upsampled by the rule, at the frame."""
    logits = scene_logits(4, (8, 16))
    full = F.interpolate(logits, size=(50, 90), mode="bilinear", align_corners=True)[0]
    up = upsample_align_corners(logits[0].numpy(), (50, 90))
    assert np.abs(up - full.numpy()).max() < 1e-5
    confidence, uncertainty = softmax_maps(up)
    p = full.softmax(0)
    assert np.abs(confidence - p.max(0).values.numpy()).max() < 1e-5
    entropy = -(p * p.clamp_min(1e-12).log()).sum(0) / np.log(19)
    assert np.abs(uncertainty - entropy.numpy()).max() < 1e-4


# ---------------------------------------------------------------- the users' path


@pytest.fixture(scope="module")
def users_path(tmp_path_factory):
    """The scaled gta2cs preset: a short warm-up, exported with --int8 --openvino, and the same
    network exported as diga did before (logits out, the host path)."""
    from conftest import diga_ok

    from diga.benchmarks.paper_path import scaled_overrides, write_data
    from diga.checkpoint import load_model
    from diga.config import load_config
    from diga.export.onnx_export import export_onnx, model_info

    tmp = tmp_path_factory.mktemp("frames")
    data = write_data(diga_ok, tmp / "data")
    keys = scaled_overrides("gta2cs-deeplabv2", data, steps=40) + ["train.eval_every=0"]
    diga_ok("train", "source", "gta2cs-deeplabv2", *keys, "--out", tmp / "run", "-q")
    diga_ok("export", tmp / "run", "--int8", "--openvino")
    model, cfg, ckpt = load_model(tmp / "run")
    info = model_info(cfg, ckpt.meta, (32, 64), dynamic=True)  # the network alone
    export_onnx(model, info, tmp / "before.onnx", exporter="torchscript")
    frames = sorted((data / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    return {"model": model, "cfg": load_config("gta2cs-deeplabv2", keys), "export": tmp / "run" / "export",
            "before": tmp / "before.onnx",
            "frames": [np.asarray(Image.open(p).convert("RGB")) for p in frames]}


def _odd(frame: np.ndarray) -> np.ndarray:
    """The frame at 77x141: larger than the 32x64 run size, not divisible by 8."""
    return np.asarray(Image.fromarray(frame).resize((141, 77), Image.BILINEAR))


def _host(path, frame: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostPathWarning)
        with Segmenter(path, "cpu") as before:
            return before(frame)


def test_labels_on_raw_frames_follow_the_rule_on_every_backend(users_path):
    from diga.export.parity import torch_frame_labels

    frames = users_path["frames"] + [_odd(users_path["frames"][0])]
    assert frames[0].shape[:2] == (64, 128)  # raw frames, twice the trained 32x64
    ref = [torch_frame_labels(users_path["model"], users_path["cfg"].data, f, (32, 64))[0]
           for f in frames]
    before_vs_rule = 100 * np.mean([np.mean(o == r) for o, r in zip(
        [_host(users_path["before"], f) for f in frames], ref, strict=True)])
    print(f"the host path: {before_vs_rule:.3f}% of pixels as diga eval's rule")
    old = [_host(users_path["before"], f) for f in frames]  # the host path diga used before
    # The host path upsampled twice (align_corners to the run size in the graph, then Pillow's
    # half-pixel bilinear to the frame) where diga eval upsamples once from the feature grid:
    # it differed from diga eval on a share of the pixels, the frame graph follows diga eval.
    for name, backend, least in (("model.onnx", "cpu", 99.9), ("model.xml", "openvino", 99.9),
                                 ("model.int8.onnx", "cpu", 97.0)):
        with Segmenter(users_path["export"] / name, backend) as seg:
            assert seg.info.input_kind == "frame" and seg.run_size(frames[0].shape[:2]) == (32, 64)
            got = seg.predict_batch(frames)
        assert all(g.shape == f.shape[:2] and g.dtype == np.uint8 for g, f in zip(got, frames, strict=True))
        rule = 100 * np.mean([np.mean(g == r) for g, r in zip(got, ref, strict=True)])
        host = 100 * np.mean([np.mean(g == o) for g, o in zip(got, old, strict=True)])
        print(f"{name}: {rule:.3f}% of pixels as diga eval's rule, {host:.3f}% as the host path")
        assert rule >= least and host >= least - 1.0, (name, rule, host)


def test_uncertainty_and_other_sizes_come_from_the_logits_output(users_path):
    from diga.export.parity import torch_frame_labels

    frame = _odd(users_path["frames"][1])
    with Segmenter(users_path["export"] / "model.onnx", "cpu") as seg:
        plain = seg.segment([frame])[0]
        asked = seg.segment([frame], uncertainty=True)[0]
        other = seg.segment([frame], out_size=(40, 50))[0]
    assert plain.confidence is None and plain.uncertainty is None  # not asked, not computed
    assert np.array_equal(asked.labels, plain.labels)
    _, logits = torch_frame_labels(users_path["model"], users_path["cfg"].data, frame, (32, 64))
    full = F.interpolate(torch.from_numpy(logits)[None], size=frame.shape[:2], mode="bilinear",
                         align_corners=True)[0].softmax(0)
    assert np.abs(asked.confidence - full.max(0).values.numpy()).max() < 1e-3
    assert asked.uncertainty.shape == frame.shape[:2] and 0 <= asked.uncertainty.min()
    assert other.labels.shape == (40, 50)


def test_older_logits_export_still_runs_with_a_note(users_path):
    frame = users_path["frames"][0]
    with pytest.warns(HostPathWarning, match="holds the network alone.*diga export RUN"):
        seg = Segmenter(users_path["before"], "cpu")
    with seg:
        assert seg(frame).shape == frame.shape[:2]
        assert seg.segment([frame], uncertainty=True)[0].confidence is not None


def test_stream_batches_frames_of_one_size(users_path):
    frames = users_path["frames"] * 3
    with Segmenter(users_path["export"] / "model.onnx", "cpu") as seg:
        one = [p.labels for _, p in seg.stream(iter(frames), batch=1)]
        four = [p.labels for _, p in seg.stream(iter(frames), batch=4)]
    assert len(four) == len(frames) and all(np.array_equal(a, b) for a, b in zip(one, four, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA GPU")
def test_frame_graph_on_onnxruntime_cuda(users_path):
    """On the GPU the frame goes in as uint8 and the labels come back as uint8."""
    frame = users_path["frames"][0]
    with Segmenter(users_path["export"] / "model.onnx", "cuda") as gpu, \
            Segmenter(users_path["export"] / "model.onnx", "cpu") as cpu:
        assert gpu.provider == "CUDAExecutionProvider"
        assert (gpu(frame) == cpu(frame)).mean() >= 0.999
        inputs = {i.name: i.type for i in gpu._model.session.get_inputs()}
        assert inputs["image"] == "tensor(uint8)"
