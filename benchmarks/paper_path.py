"""A rehearsal of the users' path: each paper preset on data in the real layouts, scaled down.

Users run a paper preset (DeepLabV2, HRNet-W48 + OCR or MiT-B5 + SegFormer, from GTA5 or
SYNTHIA to Cityscapes; or the GTA5 domain-generalisation preset, scored on Cityscapes, BDD100K
and Mapillary) on the real datasets, then ship the model to an app that labels raw frames. This runs the same path on the
built-in benchmark written by ``diga data make-demo`` in the GTA5, SYNTHIA-RAND-CITYSCAPES
and Cityscapes layouts (each at its dataset's aspect ratio, so source and target differ in
size), with the presets' own resizes, protocol and class sets. Only these are changed, by the
one override list ``scaled_overrides`` (everything 1/16 of the paper's size):

  sizes   data.*.resize, train.crop, export.input_size and TensorRT profile sizes; the FDA
          band keeps the paper's 5 frequencies (0.01 of 512 rows is 0.16 of 32)
  steps   train.steps, selftrain.steps and the logging / eval / checkpoint / visual periods
  batch   train.batch_size, selftrain.batch_size, pseudo.batch_size, the image counts of
          calibration and parity (and the fp32 parity bar: a few steps leave near-ties)
  model   the family's small variant (deeplabv2_tiny, hrnet18_ocr, segformer_mit_b0) from
          scratch (no ImageNet weights here), so with the demo's from-scratch optimiser (AdamW
          2e-3, no lr warm-up; the presets' are for pretrained backbones) and BatchNorm that
          learns (frozen BN keeps a random init's statistics)
  machine run.device=cpu

Stages: ``data check`` -> ``train warmup`` -> ``train selftrain --rounds 2`` -> ``eval`` (the
preset's multi-scale protocol, its single-scale number and, for SYNTHIA, 16 and 13 classes;
for DG, no self-training and one eval of the three targets) -> ``export --int8 --openvino``
-> ``Segmenter`` on raw-size frames -> ``predict`` -> ``bench``. The CI
suite runs it (``tests/test_paper_path.py``); run it here, with more steps, for the
deployed-scale numbers:

    python -m diga.benchmarks.paper_path --preset gta2cs-deeplabv2 --steps 300 --out runs/paper-path

which also prints how the exported model's labels on raw-size target val images agree with
``diga eval --save-predictions`` at the trained scale and at each image's own size (what the
runtime did before it knew the inference size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PRESETS = ("gta2cs-deeplabv2", "synthia2cs-deeplabv2", "gta2cs-hrnet48-ocr",
           "synthia2cs-hrnet48-ocr", "gta2cs-segformer-b5", "synthia2cs-segformer-b5",
           "gta5-dg-deeplabv2")
DG_PRESETS = ("gta5-dg-deeplabv2",)  # trained on the source alone, scored on three targets
# The paper's sizes / 16. Raw: Cityscapes 1024x2048 -> 64x128 (make-demo --size), GTA5 and
# SYNTHIA at their aspect ratios and the same width (70x128, 76x128).
DATA_SIZE = "64x128"
SOURCE_LAYOUT = {"gta5": ("gta5", "45x80"),  # resize 720x1280 / 16
                 "synthia": ("synthia", "48x80")}  # resize 760x1280 / 16
# each network family's small variant, random weights: the preset's network scaled down
SMALL_MODEL = {"deeplabv2": "deeplabv2_tiny", "hrnet48-ocr": "hrnet18_ocr",
               "segformer-b5": "segformer_mit_b0"}
# the DG table's targets, each at half its dataset's size / 16 (1x of the 2x + 1x test)
DG_TARGETS = ("cityscapes:{data}/cityscapes,resize=32x64", "bdd100k:{data}/bdd100k,resize=23x40",
              "mapillary:{data}/mapillary,resize=34x60")


def dg_targets(data: Path) -> list[str]:
    """``--target`` options of the DG table's three datasets in ``data`` (make-demo's)."""
    return [opt for t in DG_TARGETS for opt in ("--target", t.format(data=data))]


Invoke = Callable[..., str]  # runs ``diga ARGS``, returns its output, raises on a non-zero exit


def scaled_overrides(preset: str, data: Path, steps: int = 4, selftrain_steps: int = 3,
                     batch: int = 2) -> list[str]:
    """The one override list: only sizes, steps, batch, model (and the device) scaled down."""
    layout, source_resize = SOURCE_LAYOUT["synthia" if preset.startswith("synthia") else "gta5"]
    family = preset.split("-", 1)[1]
    period = max(1, steps // 2)
    target = ([] if preset in DG_PRESETS else  # DG reads no target: data.target.kind=none
              [f"data.target.root={data / 'cityscapes'}", "data.target.resize=32x64"])
    return [
        # sizes
        f"data.source.root={data / layout}", *target,
        f"data.source.resize={source_resize}", "train.crop=32x56",
        "export.input_size=32x64", "export.trt_min_size=16x32", "export.trt_opt_size=64x128",
        "export.trt_max_size=64x128", "warmup.fda_band=0.16",
        # steps
        f"train.steps={steps}", f"selftrain.steps={selftrain_steps}", f"train.log_every={period}",
        f"train.eval_every={period}", f"train.checkpoint_every={period}",
        f"train.visual_every={period}",
        # batch
        f"train.batch_size={batch}", f"selftrain.batch_size={batch}", f"pseudo.batch_size={batch}",
        "export.calib_images=4", "export.parity_images=2",
        # a few steps from scratch leave near-tied logits, which the in-graph frame resize's
        # rounding (+-1 level against Pillow's) flips on ~0.1% of pixels; the logits agree
        "export.min_agreement=99.0",
        # model (from scratch: the demo's optimiser, BatchNorm that learns) and machine
        f"model.name={SMALL_MODEL[family.removeprefix('dg-')]}", "model.pretrained=null",
        "model.freeze_bn=false", "train.optim.name=adamw", "train.optim.lr=0.002",
        "train.optim.weight_decay=0.0001", "train.optim.warmup_steps=0", "run.device=cpu",
    ]


def write_data(invoke: Invoke, out: Path, source_train: int = 16, target_train: int = 6,
               target_val: int = 12) -> Path:
    invoke("data", "make-demo", out, "--size", DATA_SIZE, "--source-train", source_train,
           "--target-train", target_train, "--target-val", target_val)
    return out


def rehearse(invoke: Invoke, preset: str, data: Path, out: Path, steps: int = 4,
             selftrain_steps: int = 3) -> dict[str, Any]:
    """Every stage of a paper preset, through the CLI, into ``out``; returns what each wrote.
    A DG preset trains its warm-up alone and is scored on the three DG targets."""
    keys = scaled_overrides(preset, data, steps, selftrain_steps)
    warm, self_trained, frames = out / "warmup", out / "selftrain", out / "frames"
    dg = preset in DG_PRESETS
    done: dict[str, Any] = {"check": invoke("data", "check", preset, *keys)}
    invoke("train", "warmup", preset, *keys, "--out", warm, "-q")
    if dg:
        final, export_dir = warm, warm / "export"
        invoke("eval", warm, *dg_targets(data), "--json", out / "eval.json")
    else:
        invoke("train", "selftrain", preset, *keys, "--init", warm, "--rounds", 2,
               "--out", self_trained, "-q")
        final, export_dir = self_trained, self_trained / "export"
        invoke("eval", self_trained, "--json", out / "eval.json")
    done["eval"] = json.loads((out / "eval.json").read_text())
    done["export"] = invoke("export", final, "--int8", "--openvino")
    done["onnx"], done["int8"] = export_dir / "model.onnx", export_dir / "model.int8.onnx"
    done["openvino"] = export_dir / "model.xml"
    # raw camera frames: the target val images as they are on disk, at their own size
    raw = sorted((data / "cityscapes" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    done["frames"] = raw
    invoke("predict", done["int8"], *raw, "--out", frames)
    done["predict"] = frames
    # the same frames as a camera's video: overlay video, a report line per frame, uncertainty
    from diga.data.layouts import read_image

    video = write_video(out / "camera.mp4", [read_image(p) for p in raw])
    invoke("predict", done["int8"], video, "--out", out / "video", "--uncertainty")
    done["video"] = out / "video"
    target = ["data.target.kind=cityscapes", f"data.target.root={data / 'cityscapes'}",
              "data.target.resize=32x64"] if dg else []  # bench scores a target's val split
    invoke("bench", final, "--backend", "torch", "--backend", "ort-cpu", "--backend",
           "openvino", *target, "bench.time_budget_s=0.1", "bench.warmup=1",
           "bench.min_iters=2", "--json", out / "bench.json")
    done["bench"] = json.loads((out / "bench.json").read_text())
    return done


def write_video(path: Path, images: list[Any], fps: int = 10) -> Path:
    """RGB frames of one size as a video file (PyAV, the video extra)."""
    from diga.runtime.video import VideoWriter

    with VideoWriter(path, fps, images[0].shape[:2]) as writer:
        for image in images:
            writer.write(image)
    return path


def deployed_vs_eval(invoke: Invoke, run: Path, onnx: Path, out: Path) -> dict[str, Any]:
    """The exported model on raw-size target val images against ``diga eval`` of the checkpoint.

    ``diga eval RUN eval.scales=[1.0] --save-predictions`` gives the labels and mIoU of the
    checkpoint at its trained scale, one scale, as the exported model runs. The runtime's
    labels (``Segmenter``, torch-free) on the same images at their own size are compared with
    them pixel by pixel, at the trained scale (``size="trained"``, the default) and at each
    image's own size (``size="native"``, what the runtime did for a dynamic model before it
    knew the inference size); so are the labels of the checkpoint's PyTorch path of
    ``diga predict`` (``TorchSegmenter``). ``diga eval FILE`` gives the file's mIoU.
    """
    from PIL import Image

    from diga.checkpoint import config_for_model
    from diga.data.classes import class_protocol
    from diga.export.parity import target_images
    from diga.metrics import confusion_matrix, metrics_from_confusion
    from diga.runtime import Segmenter
    from diga.train.evaluate import TorchSegmenter, predicted_label_ids_name

    preds = out / "eval_predictions"
    invoke("eval", run, "eval.scales=[1.0]", "--save-predictions", preds, "--json",
           out / "eval_single.json")
    eval_miou = json.loads((out / "eval_single.json").read_text())["miou"]
    cfg = config_for_model(onnx, [])
    protocol = class_protocol(cfg.num_classes)
    images = target_images(cfg, "val", None)  # at their own size, as a camera gives them
    result: dict[str, Any] = {"images": len(images), "eval_miou": eval_miou,
                              "image_size": list(images[0].image.shape[:2]),
                              "inference_size": list(cfg.inference_size or ())}
    invoke("eval", onnx, "--json", out / "eval_file.json")
    result["eval_file_miou"] = json.loads((out / "eval_file.json").read_text())["miou"]
    for size in ("trained", "native", "torch"):
        agree = total = 0
        conf = np.zeros((cfg.num_classes, cfg.num_classes), np.int64)
        segmenter = TorchSegmenter(run) if size == "torch" else Segmenter(onnx, "cpu", size)
        with contextlib.closing(segmenter) as seg:
            for item in images:
                labels = seg(item.image)  # (H, W) train ids at the image's own size
                saved = np.asarray(Image.open(preds / predicted_label_ids_name(item.name)))
                agree += int((protocol.train_to_label_id[labels] == saved).sum())
                total += saved.size
                conf += confusion_matrix(labels.astype(np.int64), item.label.astype(np.int64),
                                         cfg.num_classes)
        metrics = metrics_from_confusion(conf, protocol.names)
        result[size] = {"pixel_agreement": 100.0 * agree / total, "miou": metrics.miou,
                        "miou_minus_eval": metrics.miou - eval_miou}
    return result


def _subprocess_invoke(*args: Any) -> str:
    """``diga ARGS`` as a user runs it: the installed command, in a fresh process."""
    command = Path(sys.executable).with_name("diga")
    cmd = [str(command)] if command.is_file() else [sys.executable, "-m", "diga.cli.app"]
    cmd += [str(a) for a in args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"diga {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default=PRESETS[0])
    parser.add_argument("--steps", type=int, default=300, help="warm-up steps (rounds: half)")
    parser.add_argument("--images", type=int, default=24, help="target val images")
    parser.add_argument("--out", type=Path, default=Path("runs/paper-path"))
    args = parser.parse_args(argv)
    out = args.out / args.preset
    data = out / "data"
    if not data.is_dir():
        write_data(_subprocess_invoke, data, source_train=64, target_train=48,
                   target_val=args.images)
    done = rehearse(_subprocess_invoke, args.preset, data, out / "runs", args.steps,
                    max(1, args.steps // 2))
    ev = done["eval"]
    print(f"eval ({'+'.join(f'{s:g}x' for s in ev['protocol']['scales'])}): mIoU {ev['miou']:.2f}"
          + (f", 13 classes {ev['miou13']:.2f}" if "miou13" in ev else "")
          + (f"; single scale {ev['single_scale']['miou']:.2f}" if "single_scale" in ev else ""))
    report = deployed_vs_eval(_subprocess_invoke, out / "runs" / "selftrain", done["onnx"],
                              out / "runs")
    print(json.dumps(report, indent=2))
    (out / "deployed_vs_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
