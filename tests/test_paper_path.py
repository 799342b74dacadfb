"""The users' path: each paper preset, scaled down (``diga.benchmarks.paper_path``), on data in
the real GTA5 / SYNTHIA / Cityscapes layouts with the presets' resizes, through every stage to
the torch-free runtime on raw-size frames; and the runtime against ``diga eval`` there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import diga_ok
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from diga.benchmarks.paper_path import deployed_vs_eval, rehearse, scaled_overrides, write_data
from diga.cli.app import app
from diga.runtime import Segmenter

runner = CliRunner()
RAW = (64, 128)  # Cityscapes 1024x2048 / 16: the frames an app receives
TRAINED = (32, 64)  # the presets' 512x1024 / 16: the scale the model is trained and run at


invoke = diga_ok  # diga ARGS, asserting exit code 0; its output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(invoke, tmp_path_factory.mktemp("paper") / "data")


def test_make_demo_writes_the_real_layouts_at_their_aspect_ratios(data):
    from diga.data.layouts import read_image

    sizes = {name: read_image(next((data / name).rglob(pattern))).shape[:2] for name, pattern in
             (("gta5", "images/*.png"), ("synthia", "RGB/*.png"),
              ("cityscapes", "leftImg8bit/val/*/*.png"))}
    assert sizes == {"gta5": (70, 128), "synthia": (76, 128), "cityscapes": RAW}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["synthia2cs-deeplabv2", "gta2cs-hrnet48-ocr",
                                    "synthia2cs-segformer-b5"])
def test_paper_preset_rehearsal(tmp_path, data, preset):
    """data check -> warm-up -> self-training (2 rounds) -> eval -> export --int8 --openvino ->
    runtime on raw frames -> predict -> bench, for each network family (its small variant,
    random weights). Self-training failed at its first batch before pseudo-labels were stored
    at each image's own size (they were written at the 32x64 resize). gta2cs-deeplabv2 runs
    the same stages through diga run (tests/test_pipeline.py)."""
    done = rehearse(invoke, preset, data, tmp_path)
    synthia = preset.startswith("synthia")
    small = {"deeplabv2": "deeplabv2_tiny", "hrnet48-ocr": "hrnet18_ocr",
             "segformer-b5": "segformer_mit_b0"}[preset.split("-", 1)[1]]
    run_config = (tmp_path / "selftrain" / "round2" / "config.yaml").read_text()
    assert f"name: {small}" in run_config
    assert f"source train ({'synthia' if synthia else 'gta5'})" in done["check"]
    assert "all datasets readable" in done["check"]

    # pseudo-labels at the raw label resolution, centroids at the training scale, both with
    # the model that made them
    for init in (tmp_path / "warmup", tmp_path / "selftrain" / "round1"):
        manifest = json.loads((init / "pseudo" / "manifest.json").read_text())
        assert manifest["format"] == 2 and manifest["inference_size"] == "32x64"
        assert manifest["scales"] == [2.0, 1.0]
        assert manifest["model"]["folder"] == str(init / "checkpoints" / "last")
        labels = sorted((init / "pseudo").rglob("*.png"))
        assert len(labels) == 6 and Image.open(labels[0]).size == (RAW[1], RAW[0])
        with safe_open(str(init / "centroids.safetensors"), "pt") as fh:
            made_by = json.loads(fh.metadata()["provenance"])
        assert made_by["model"]["weights"] == manifest["model"]["weights"]

    # the preset's protocol: 2x + 1x of the resize (full resolution and half), single scale
    # beside it, SYNTHIA's 16 and 13 classes in both
    ev = done["eval"]
    assert ev["protocol"] == {"scales": [2.0, 1.0], "flip": False, "run_size": "32x64"}
    assert len(ev["iou"]) == (16 if synthia else 19) and "single_scale" in ev
    assert ("miou13" in ev) == synthia and ("miou13" in ev["single_scale"]) == synthia
    history = [json.loads(x) for x in
               (tmp_path / "selftrain" / "round2" / "metrics.jsonl").read_text().splitlines()]
    assert ("target_val_miou13" in history[-1]) == synthia
    # OCR's auxiliary logits train with their own terms (logged as "aux"); the others have none
    assert any("aux" in m for m in history) == (small == "hrnet18_ocr")

    # every exported file records the inference size and makes labels at the frame's size
    for path in (done["onnx"], done["int8"]):
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert props["inference_size"] == "32x64"
        assert (props["input_kind"], props["frame"]) == ("frame", "onnxruntime")
        assert props["output_resize"].startswith("in the graph: logits bilinear (align_corners)")
    summary = json.loads((done["onnx"].parent / "export.json").read_text())
    assert summary["inference_size"] == list(TRAINED)
    assert summary["exporter"] == "dynamo"  # the users' exporter, the parity gate below
    files = {f["format"]: f for f in summary["files"]}
    assert set(files) == {"onnx", "onnx-int8", "openvino", "openvino-int8"}
    for name in ("onnx", "openvino"):  # float files: PyTorch's logits, its labels but ties
        parity = files[name]["parity"]
        assert parity["pixel_agreement"] >= 99.0
        if parity["max_abs_logit_diff"] is not None:
            assert parity["max_abs_logit_diff"] < 1e-4 * max(1.0, parity["max_abs_logit"])
    for name in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
        assert files[name]["evaluation"]["miou"] >= 0  # scored on target val by the runtime
    assert done["openvino"].is_file() and done["openvino"].with_suffix(".bin").is_file()

    # an app: raw 64x128 frames in, labels at 64x128 out, computed at 32x64
    frame = np.asarray(Image.open(done["frames"][0]).convert("RGB"))
    with Segmenter(done["int8"], backend="cpu") as seg:
        assert seg.run_size(frame.shape[:2]) == TRAINED
        labels = seg(frame)
        assert labels.shape == RAW and labels.max() < (16 if synthia else 19)
        assert "runs at the trained 32x64" in seg.describe()
    outputs = sorted(done["predict"].rglob("*_label.png"))
    assert len(outputs) == len(done["frames"])
    assert np.array_equal(np.asarray(Image.open(outputs[0])), labels)

    # the frames as a camera's video: an overlay video as long, a report line per frame, at
    # the raw size, computed at the trained scale (as the images)
    lines = (done["video"] / "camera.jsonl").read_text().splitlines()
    assert len(lines) == len(done["frames"])
    assert all(json.loads(x)["size"] == list(RAW) for x in lines)
    import av

    with av.open(str(done["video"] / "camera_overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == len(done["frames"])
        assert (stream.codec_context.height, stream.codec_context.width) == RAW
    assert (done["video"] / "camera_uncertainty.mp4").is_file()

    with Segmenter(done["openvino"], backend="cpu") as seg:  # the IR, through OpenVINO
        ir_labels = seg(frame)
        assert ir_labels.shape == RAW
    rows = [r for r in done["bench"]["rows"] if r["status"] == "ok"]
    assert {(Path(r["model"]).name, r["backend"]) for r in rows} >= {
        ("last", "torch"), ("model.onnx", "ort-cpu"), ("model.int8.onnx", "ort-cpu"),
        ("model.xml", "openvino")}
    for row in rows:
        assert row["run_size"] == list(TRAINED) and row["miou"] is not None
        assert (row["miou13"] is not None) == synthia


@pytest.mark.slow
def test_dg_preset_reads_no_target_and_scores_three(tmp_path, data):
    """The DG preset: warm-up on GTA5 alone (every target dataset moved away while it trains:
    nothing can read one), then one diga eval on Cityscapes, BDD100K and Mapillary with a row
    each and their mean, export (calibrated on source images), the runtime and bench."""
    targets = ("cityscapes", "bdd100k", "mapillary")
    away = tmp_path / "away"
    away.mkdir()
    keys = scaled_overrides("gta5-dg-deeplabv2", data)
    for name in targets:
        (data / name).rename(away / name)
    try:
        check = invoke("data", "check", "gta5-dg-deeplabv2", *keys)
        invoke("train", "warmup", "gta5-dg-deeplabv2", *keys, "--out", tmp_path / "warmup", "-q")
    finally:
        for name in targets:
            (away / name).rename(data / name)
    assert "source train (gta5)" in check and "target" not in check.split("all datasets")[0]
    history = (tmp_path / "warmup" / "metrics.jsonl").read_text()
    assert "target_val" not in history  # no target val either

    done = rehearse(invoke, "gta5-dg-deeplabv2", data, tmp_path / "rehearsal")
    ev = done["eval"]
    rows = ev["targets"]
    assert list(rows) == ["cityscapes", "bdd100k", "mapillary"]
    assert [rows[n]["protocol"]["run_size"] for n in rows] == ["32x64", "23x40", "34x60"]
    assert ev["mean_miou"] == pytest.approx(sum(r["miou"] for r in rows.values()) / 3)
    summary = json.loads((done["onnx"].parent / "export.json").read_text())
    assert any("no target domain (domain generalisation)" in n for n in summary["notes"])
    assert {f["format"] for f in summary["files"]} == {"onnx", "onnx-int8", "openvino",
                                                        "openvino-int8"}
    frame = np.asarray(Image.open(done["frames"][0]).convert("RGB"))
    with Segmenter(done["int8"], backend="cpu") as seg:
        assert seg(frame).shape == RAW
    bench = [r for r in done["bench"]["rows"] if r["status"] == "ok"]
    assert all(r["miou"] is not None for r in bench)  # bench scored Cityscapes val, as asked


@pytest.mark.slow
def test_runtime_on_raw_frames_agrees_with_eval(tmp_path, data):
    """The exported model on raw-size target val images, through the torch-free runtime, gives
    diga eval's labels (>= 99% of pixels) and mIoU (to 0.1) at the trained scale; running
    each image at its own size (the old behaviour) gives other labels."""
    keys = scaled_overrides("gta2cs-deeplabv2", data, steps=300)
    run = tmp_path / "source"
    invoke("train", "source", "gta2cs-deeplabv2", *keys, "--out", run, "-q")
    invoke("export", run)
    report = deployed_vs_eval(invoke, run, run / "export" / "model.onnx", tmp_path)
    assert report["image_size"] == list(RAW) and report["inference_size"] == list(TRAINED)
    assert report["eval_miou"] > 5  # a model that learned something: the comparison means it
    assert report["trained"]["pixel_agreement"] >= 99.0
    assert abs(report["trained"]["miou_minus_eval"]) <= 0.1
    assert report["native"]["pixel_agreement"] < report["trained"]["pixel_agreement"] - 5
    assert report["eval_file_miou"] == pytest.approx(report["trained"]["miou"], abs=1e-9)
    assert report["torch"]["pixel_agreement"] == 100.0  # diga predict RUN: diga eval's code


def test_bad_self_training_inputs_are_one_line(tmp_path, data):
    """Pseudo-labels another model made: one line naming both models and the flag; --regenerate
    makes them again. A centroids file without provenance (diga 0.1): one line too."""
    from test_cli import one_error_line

    keys = scaled_overrides("gta2cs-deeplabv2", data, steps=2, selftrain_steps=1)
    warm, other = tmp_path / "warm", tmp_path / "other"
    invoke("train", "warmup", "gta2cs-deeplabv2", *keys, "--out", warm, "-q")
    invoke("train", "warmup", "gta2cs-deeplabv2", *keys, "run.seed=1", "--out", other, "-q")
    invoke("pseudo", other, "--out", warm / "pseudo")  # a folder made by another model
    selftrain = ["train", "selftrain", "gta2cs-deeplabv2", *keys, "--init", warm, "--rounds", 1]
    line = one_error_line(runner.invoke(app, [*map(str, selftrain), "--out", str(tmp_path / "s")]))
    assert f"were made by {other / 'checkpoints' / 'last'}" in line
    assert f"not by {warm / 'checkpoints' / 'last'}" in line and "--regenerate" in line
    invoke(*selftrain, "--regenerate", "--out", tmp_path / "s2", "-q")
    manifest = json.loads((warm / "pseudo" / "manifest.json").read_text())
    assert manifest["model"]["folder"] == str(warm / "checkpoints" / "last")
    from safetensors.torch import load_file, save_file

    centroids = warm / "centroids.safetensors"
    save_file(load_file(str(centroids)), str(centroids), metadata={"classes": "19"})
    line = one_error_line(runner.invoke(app, [*map(str, selftrain), "--out", str(tmp_path / "s3")]))
    assert "centroids in" in line and "older diga" in line and "--regenerate" in line
