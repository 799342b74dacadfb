"""``diga predict`` on videos, globs and streams of frames; uncertainty maps; class reports;
``Segmenter.stream``; the line a user gets without PyAV (issue 19)."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import one_error_line, predict

from diga.runtime import Segmenter
from diga.runtime.metadata import ModelInfo
from diga.runtime.prediction import Prediction, class_report, prediction_from_output

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

RATE = Fraction(10)


def write_video(path: Path, frames: int, size: tuple[int, int] = (64, 128),
                rate: Fraction = RATE) -> Path:
    """A short street-like clip with PyAV: a sky/road split that moves, and noise."""
    rng = np.random.default_rng(0)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    for i in range(frames):
        image = np.zeros((*size, 3), np.uint8)
        horizon = size[0] // 3 + i % 5
        image[:horizon] = (70, 130, 180)
        image[horizon:] = (128, 64, 128)
        image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def probe(path: Path) -> tuple[int, tuple[int, int], Fraction]:
    """(decoded frame count, (H, W), average rate) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, (stream.codec_context.height, stream.codec_context.width), stream.average_rate


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "drive.mp4", 12)


def test_video_gives_an_overlay_video_and_a_line_per_frame(run_and_onnx, clip, tmp_path):
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], clip, "--out", out, "--backend", "cpu", "--save-frames",
                     "--batch", "5")
    assert result.exit_code == 0, result.output
    assert probe(out / "drive_overlay.mp4") == (12, (64, 128), RATE)
    lines = [json.loads(x) for x in (out / "drive.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(12))
    assert lines[3]["time"] == pytest.approx(0.3)
    assert all(sum(c["area"] for c in r["classes"].values()) == pytest.approx(1) for r in lines)
    assert all(0 < r["mean_confidence"] <= 1 for r in lines)
    labels = sorted((out / "drive_frames").glob("*_label.png"))
    assert len(labels) == 12 and np.asarray(Image.open(labels[0])).shape == (64, 128)
    assert "12 frames in" in result.output and "frames/s" in result.output  # and where it went
    assert "decode" in result.output and "model" in result.output
    assert not list(out.glob(".*partial*"))  # written under a temporary name, then renamed


def test_stride_halves_the_frames_and_the_rate(run_and_onnx, clip, tmp_path):
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], clip, "--out", out, "--stride", "2", "--uncertainty")
    assert result.exit_code == 0, result.output
    assert probe(out / "drive_overlay.mp4") == (6, (64, 128), RATE / 2)
    assert probe(out / "drive_uncertainty.mp4")[:2] == (6, (64, 128))
    frames = [json.loads(x)["frame"] for x in (out / "drive.jsonl").read_text().splitlines()]
    assert frames == [0, 2, 4, 6, 8, 10]


def test_glob_selects_the_right_files(run_and_onnx, clip, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("f1.png", "f2.png", "g.jpg", "sub/f3.png"):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    assert predict(run_and_onnx[1], str(folder / "f*.png"), "--out", out).exit_code == 0
    assert sorted(p.name for p in out.glob("*_label.png")) == ["f1_label.png", "f2_label.png"]
    deep = tmp_path / "deep"
    assert predict(run_and_onnx[1], str(folder / "**" / "*.png"), "--out", deep).exit_code == 0
    assert sorted(p.name for p in deep.glob("*_label.png")) == [
        "f1_label.png", "f2_label.png", "f3_label.png"]
    line = one_error_line(predict(run_and_onnx[1], str(folder / "*.bmp"), "--out", out))
    assert "no images or videos match the pattern" in line


def test_uncertainty_is_higher_where_the_logits_are_flatter():
    info = ModelInfo(("a", "b", "c"), np.zeros((3, 3), np.uint8), (0.5,) * 3, (0.5,) * 3)
    logits = np.zeros((3, 4, 6), np.float32)  # left half flat, right half peaked on class 1
    logits[1, :, 3:] = 8.0
    logits[0, :, :3] = np.linspace(0, 1, 3)  # nearly flat
    pred = prediction_from_output(logits, info, uncertainty=True)
    u, conf = pred.uncertainty, pred.confidence
    assert u.min() >= 0 and u.max() <= 1 and conf.min() >= 1 / 3 and conf.max() <= 1
    assert (u[:, :3] > 0.85).all() and (u[:, 3:] < 0.01).all()
    assert u[0, 0] > u[0, 2] > u[0, 3]  # flatter -> higher
    exact = np.full((3, 4, 6), 2.5, np.float32)  # all equal: exactly 1 and 1/3
    flat = prediction_from_output(exact, info, uncertainty=True)
    assert np.allclose(flat.uncertainty, 1.0) and np.allclose(flat.confidence, 1 / 3)
    report = class_report(Prediction(pred.labels, conf, u), info.class_names)
    assert list(report["classes"]) == ["a", "b"]  # by area, ties by class id
    assert report["classes"]["b"] == {"id": 1, "area": 0.5, "confidence": pytest.approx(
        float(conf[0, 3]))}


def test_uncertainty_png_and_overlay_grid(run_and_onnx, tmp_path):
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 72, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], image, "--out", out, "--uncertainty")
    assert result.exit_code == 0, result.output
    u = np.asarray(Image.open(out / "street_uncertainty.png"))
    assert u.shape == (40, 72) and u.dtype == np.uint8
    report = json.loads((out / "street.json").read_text())
    assert report["mean_uncertainty"] == pytest.approx(u.mean() / 255, abs=0.01)
    assert Image.open(out / "street_overlay.png").size == (2 * 72, 40)  # overlay | heat map


def test_segmenter_stream_yields_frame_by_frame(run_and_onnx, clip):
    with Segmenter(run_and_onnx[1], "cpu") as seg:
        results = list(seg.stream(clip, stride=3, batch=2, uncertainty=True))
        assert [f.index for f, _ in results] == [0, 3, 6, 9]
        frame, pred = results[1]
        assert frame.time == pytest.approx(0.3) and pred.labels.shape == (64, 128)
        assert np.array_equal(pred.labels, seg(frame.image))  # the same as one image at a time
        assert pred.uncertainty is not None
        own = np.zeros((3, 64, 128, 3), np.uint8)  # an app's own frames: any iterable
        assert [f.index for f, _ in seg.stream(iter(own), batch=2)] == [0, 1, 2]


def test_missing_video_reader_is_one_line(run_and_onnx, clip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    line = one_error_line(predict(run_and_onnx[1], clip, "--out", tmp_path / "out"))
    assert "needs PyAV" in line and "pip install 'diga[video]'" in line


@pytest.mark.parametrize("kind", ["checkpoint", "openvino"])
def test_video_through_a_checkpoint_and_an_openvino_ir(run_and_onnx, clip, tmp_path, kind):
    """The same video path for every model kind (the runtime's shared preprocessing, or
    PyTorch for a checkpoint): frames, reports and confidence."""
    run, onnx_path = run_and_onnx
    model = run
    if kind == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO (the openvino extra) is not installed")
        from diga.export.openvino_export import export_openvino

        with Segmenter(onnx_path, "cpu") as seg:
            info = seg.info
        model = export_openvino(onnx_path, tmp_path / "model.xml", info)
    out = tmp_path / "out"
    result = predict(model, clip, "--out", out, "--stride", "4", "--uncertainty")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "drive.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 4, 8]
    assert all(0 < r["mean_confidence"] <= 1 and 0 <= r["mean_uncertainty"] <= 1 for r in lines)
    assert probe(out / "drive_overlay.mp4") == (3, (64, 128), RATE / 4)


def test_ctrl_c_keeps_complete_outputs(run_and_onnx, clip, tmp_path, monkeypatch):
    """Ctrl-C (how a webcam or a stream stops) in the middle of a video: exit code 130, the
    frames done so far in a complete, playable video and as many JSON lines; nothing partial."""
    real = Segmenter.segment
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "segment", interrupted)
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], clip, "--out", out, "--batch", "4")
    assert result.exit_code == 130, result.output
    assert probe(out / "drive_overlay.mp4")[:2] == (8, (64, 128))  # two batches of 4
    assert len((out / "drive.jsonl").read_text().splitlines()) == 8
    assert not list(out.glob(".*partial*"))
