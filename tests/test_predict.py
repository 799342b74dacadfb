"""``diga predict``: images and folders through .onnx and checkpoints; bad inputs are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diga.cli.app import app
from diga.runtime import engine_sidecar

runner = CliRunner()
ORT_HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder with an RGB PNG, a grayscale JPEG and an RGBA PNG in a subfolder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)).save(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not an image, ignored in folders")
    return folder


def predict(*args) -> object:
    return runner.invoke(app, ["predict", *[str(a) for a in args]])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def check_outputs(out: Path, stem: str, size: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(Image.open(out / f"{stem}_label.png"))
    color = Image.open(out / f"{stem}_color.png")
    over = Image.open(out / f"{stem}_overlay.png")
    assert labels.shape == size and labels.dtype == np.uint8 and labels.max() < 19
    assert color.mode == "RGB" and color.size == (size[1], size[0])
    assert over.mode == "RGB" and over.size == (size[1], size[0])
    return labels


def test_predict_onnx_writes_label_color_overlay(run_and_onnx, images, tmp_path):
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], images, "--out", out, "--backend", "cpu")
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.output
    check_outputs(out, "a", (40, 72))
    check_outputs(out, "b", (30, 50))
    check_outputs(out / "sub", "c", (24, 24))  # folder structure kept
    assert len(list(out.rglob("*.png"))) == 9
    report = json.loads((out / "a.json").read_text())  # class areas and mean confidences
    assert report["size"] == [40, 72] and report["model"] == str(run_and_onnx[1])
    assert sum(c["area"] for c in report["classes"].values()) == pytest.approx(1.0)
    assert all(0 < c["confidence"] <= 1 for c in report["classes"].values())
    labels = np.asarray(Image.open(out / "a_label.png"))
    top = next(iter(report["classes"].values()))  # largest first, as the label PNG counts it
    assert top["area"] == pytest.approx(np.bincount(labels.ravel()).max() / labels.size)


def test_predict_checkpoint_agrees_with_onnx(run_and_onnx, images, tmp_path):
    run, onnx_path = run_and_onnx
    assert predict(onnx_path, images / "a.png", "--out", tmp_path / "o").exit_code == 0
    result = predict(run, images / "a.png", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert "PyTorch on cpu" in result.output
    via_onnx = check_outputs(tmp_path / "o", "a", (40, 72))
    via_torch = check_outputs(tmp_path / "t", "a", (40, 72))
    assert (via_onnx == via_torch).mean() > 0.999


def test_damaged_video_is_one_line_before_any_work(run_and_onnx, images, tmp_path):
    (images / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    args = (run_and_onnx[1], images, "--out", tmp_path / "out")
    line = one_error_line(predict(*args, "--strict"))
    assert "cannot open video" in line and "clip.mp4" in line
    assert not (tmp_path / "out").exists()  # checked before the first image was written
    result = predict(*args)  # without --strict: skipped, the images predicted
    assert result.exit_code == 0, result.output
    assert f"warning: skipped {images / 'clip.mp4'}: cannot decode (" in result.output
    assert "skipped 1 undecodable file;" in " ".join(result.output.split())
    assert (tmp_path / "out" / "a_overlay.png").is_file()


def test_undecodable_image_in_a_folder_names_the_file(run_and_onnx, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line = one_error_line(predict(run_and_onnx[1], images, "--out", tmp_path / "out", "--strict"))
    assert "cannot decode image" in line and "broken.png" in line
    assert not (tmp_path / "out").exists()  # headers are read before any work


def _broken_files(folder: Path) -> list[Path]:
    """Real damaged files: a JPEG and a PNG cut in half (their headers read, their pixels do
    not) and a text file named .png."""
    import io

    picture = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = []
    for name, fmt in (("cut_jpeg.jpg", "JPEG"), ("cut_png.png", "PNG")):
        data = io.BytesIO()
        Image.fromarray(picture).save(data, format=fmt)
        (folder / name).write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
        out.append(folder / name)
    (folder / "text.png").write_text("not a picture")
    return [*out, folder / "text.png"]


def test_undecodable_files_are_skipped_with_a_warning_each(run_and_onnx, images, tmp_path):
    broken = _broken_files(images / "sub")
    out = tmp_path / "out"
    result = predict(run_and_onnx[1], images, "--out", out)
    assert result.exit_code == 0, result.output  # the good images are predicted
    lines = result.output.splitlines()
    for path in broken:
        warning = [line for line in lines if line.startswith(f"warning: skipped {path}: ")]
        assert len(warning) == 1 and ": cannot decode (" in warning[0], result.output
    assert "not an image Pillow can read" in result.output  # the text file's reason
    assert "image file is truncated" in result.output  # the cut files'
    text = " ".join(result.output.split())
    assert f"wrote 12 files for 3 images to {out}, skipped 3 undecodable files;" in text
    for stem in ("a", "b", "sub/c"):
        check_outputs(out / Path(stem).parent, Path(stem).name, {"a": (40, 72), "b": (30, 50),
                                                                 "sub/c": (24, 24)}[stem])
    assert not list((out / "sub").glob("cut*")) and not list((out / "sub").glob("text*"))
    # --strict: the first stops the run, exit code 1, as before
    line = one_error_line(predict(run_and_onnx[1], images, "--out", tmp_path / "s", "--strict"))
    assert "cannot decode image" in line


def test_a_list_of_files_all_undecodable_is_an_error(run_and_onnx, images, tmp_path):
    broken = _broken_files(tmp_path)
    result = predict(run_and_onnx[1], *broken, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output  # nothing predicted: never a silent 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert sum(line.startswith("warning: skipped") for line in lines) == 3
    assert lines[-1].startswith("error: none of the 3 input files could be decoded")
    result = predict(run_and_onnx[1], images / "a.png", broken[1], "--out", tmp_path / "o2")
    assert result.exit_code == 0, result.output  # a list: the good one predicted
    assert f"warning: skipped {broken[1]}: cannot decode (" in result.output
    check_outputs(tmp_path / "o2", "a", (40, 72))


def test_zero_byte_image(run_and_onnx, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    line = one_error_line(predict(run_and_onnx[1], empty, "--out", tmp_path / "out"))
    assert "empty.jpg" in line and "the file is empty, 0 bytes" in line  # a lone input: its line


@pytest.mark.parametrize("truncated", [False, True])
def test_lone_undecodable_image_is_its_own_error_line(run_and_onnx, tmp_path, truncated):
    path = _broken_files(tmp_path)[0 if truncated else 2]  # pixels or header undecodable
    result = predict(run_and_onnx[1], path, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: cannot decode image {path} (")  # no warning before it
    if not truncated:  # a header is read before the model loads: the one line of output
        one_error_line(result)


def _legend_box(h: int, w: int) -> tuple[int, int]:
    """(height, width) of the legend drawn on a flat grey picture: the pixels it changed."""
    from diga.data.classes import class_protocol
    from diga.runtime.draw import draw_legend

    protocol = class_protocol(19)
    rows = [(name, tuple(int(v) for v in protocol.palette[i]), 0.3 / (i + 1))
            for i, name in enumerate(protocol.names[:8])]
    flat = np.full((h, w, 3), 128, np.uint8)
    changed = (draw_legend(flat, rows) != flat).any(-1)
    ys, xs = np.nonzero(changed)
    assert ys.min() == 0 and xs.min() == 0  # top-left corner
    return int(ys.max()) + 1, int(xs.max()) + 1


def test_legend_scales_with_the_picture():
    big_h, big_w = _legend_box(1080, 1920)
    small_h, small_w = _legend_box(128, 256)
    tiny_h, tiny_w = _legend_box(64, 128)
    assert big_h > 3 * small_h and big_w > 3 * small_w  # text ~27 px tall there, ~8 px here
    assert 1080 * 0.15 < big_h <= 1080 / 3
    assert small_h <= 128 / 3 + 1 and small_w < 256  # a corner of the small one, not half of it
    assert tiny_h <= 64 / 2 and tiny_w < 128


@pytest.mark.parametrize("case,message", [
    ("missing-input", "input not found"),
    ("missing-model", "model not found"),
    ("corrupt-onnx", "cannot load ONNX model"),
    ("corrupt-checkpoint", "cannot read weights file"),
    ("unknown-backend", "unknown backend 'gpu'"),
    ("engine-without-trt", "TensorRT"),
    ("trt-on-checkpoint", "backend 'tensorrt' runs .onnx and .engine files"),
])
def test_bad_input_is_one_line(run_and_onnx, images, tmp_path, case, message):
    run, onnx_path = run_and_onnx
    model, inputs, extra = onnx_path, [images / "a.png"], []
    if case == "missing-input":
        inputs = [tmp_path / "nowhere.png"]
    elif case == "missing-model":
        model = tmp_path / "nowhere.onnx"
    elif case == "corrupt-onnx":
        model = tmp_path / "corrupt.onnx"
        model.write_bytes(onnx_path.read_bytes()[:500])
    elif case == "corrupt-checkpoint":
        model = tmp_path / "ckpt"
        (model).mkdir()
        (model / "meta.json").write_text((run / "checkpoints" / "last" / "meta.json").read_text())
        (model / "model.safetensors").write_bytes(b"\x00" * 64)
    elif case == "unknown-backend":
        extra = ["--backend", "gpu"]
    elif case == "engine-without-trt":
        from diga.runtime.tensorrt_engine import cuda_device_count

        if (cuda_device_count() or 0) > 0:
            pytest.skip("a GPU is present: a fake engine would reach TensorRT's own loader")
        model = tmp_path / "model.fp16.engine"
        model.write_bytes(b"engine")
        props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        engine_sidecar(model).write_text(json.dumps({"metadata": props}))
    elif case == "trt-on-checkpoint":
        model, extra = run, ["--backend", "tensorrt"]
    line = one_error_line(predict(model, *inputs, "--out", tmp_path / "out", *extra))
    assert message in line


@pytest.mark.skipif(ORT_HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_cuda_backend_without_provider_is_one_line(run_and_onnx, images, tmp_path):
    line = one_error_line(predict(run_and_onnx[1], images / "a.png", "--out", tmp_path / "o",
                                  "--backend", "cuda"))
    assert "CUDAExecutionProvider" in line and "--backend cpu" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="PyTorch sees a CUDA GPU here")
def test_cuda_backend_for_checkpoint_without_gpu(run_and_onnx, images, tmp_path):
    line = one_error_line(predict(run_and_onnx[0], images / "a.png", "--out", tmp_path / "o",
                                  "--backend", "cuda"))
    assert "needs a CUDA GPU" in line


def test_auto_backend_warns_when_cuda_is_not_obtained(monkeypatch, run_and_onnx, images, tmp_path):
    if ORT_HAS_CUDA and torch.cuda.is_available():
        pytest.skip("a CUDA provider and GPU are really here")
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    result = predict(run_and_onnx[1], images / "a.png", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "CPUExecutionProvider" in result.output
    check_outputs(tmp_path / "o", "a", (40, 72))
