"""Frame in, labels out: the frame graph against the network alone and against the host path.

For each model (``deeplabv2_tiny``, ``deeplabv2_resnet18``; random weights trained for a few
steps on built-in scenes, so that their label maps have class borders), exported at the gta2cs
preset's inference size (512x1024), on camera frames of 1024x2048 (the built-in benchmark's
target domain at Cityscapes' size), per backend (onnxruntime, OpenVINO) and precision
(fp32, int8), in one run:

- **model alone**: today's exported graph of the network alone (the network and its logits
  upsampled to 512x1024, logits out) on a prepared tensor: the denominator of every ratio;
- **host path** (what ``Segmenter`` did before the frame graph): the frame resized and
  normalised on the host, that graph, the logits resized to the frame and the argmax on the
  host; its parts and its end-to-end p50;
- **frame graph** (``diga export`` now): the frame in, labels at its size out; its parts,
  timed as the same graph cut into pre / network / post, and its end-to-end p50 through
  ``Segmenter``; the labels' agreement with the host path's and with ``diga eval``'s rule in
  PyTorch; the share of grid cells on a class border (what the post-processing's cost grows
  with); and ``Segmenter.stream`` frames/s at batch 1 and 4.

Run (about 10 minutes on 2 CPU cores; the trained weights are kept in --out):

    python -m diga.benchmarks.frame_latency --out runs/frame-latency [--models deeplabv2_tiny]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from diga.benchmarks.runners import time_loop
from diga.config import load_config
from diga.data.builtin import BuiltinSpec
from diga.data.builtin.scene import generate_scene
from diga.export.frame import (
    GraphBuilder,
    postprocess_cells,
    preprocess,
    size_or_image,
)
from diga.export.onnx_export import export_onnx, model_info, write_frame_model
from diga.models import build_model
from diga.runtime import Segmenter
from diga.runtime.frames import LOGITS, frame_feeds
from diga.runtime.prediction import prediction_from_output
from diga.runtime.preprocess import prepare_batch, resize_rgb

FRAME = (1024, 2048)  # Cityscapes' frames
RUN = (512, 1024)  # the gta2cs preset's inference size
MODELS = ("deeplabv2_tiny", "deeplabv2_resnet18")


def briefly_trained(name: str, out: Path, steps: int) -> torch.nn.Module:
    """``name`` after ``steps`` supervised steps on built-in target scenes at 256x512 (cached):
    random weights give one class everywhere, and so no class border to post-process."""
    path = out / f"{name}_{steps}.pt"
    model = build_model(name, 19)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    spec = BuiltinSpec(seed=1, size=(256, 512), target_train=32)
    data = [generate_scene(spec, "target", "train", i) for i in range(32)]
    images = torch.from_numpy(np.stack([d[0] for d in data])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    y = torch.from_numpy(np.stack([d[1] for d in data])).long()
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(x))[:4]
        logits = F.interpolate(model(x[idx]).logits, size=y.shape[-2:], mode="bilinear",
                               align_corners=True)
        loss = F.cross_entropy(logits, y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def p50_ms(fn: Any, budget_s: float) -> float:
    return float(np.median(time_loop(fn, warmup=2, budget_s=budget_s, min_iters=5,
                                     max_iters=200)) * 1000.0)


def part_graphs(info: Any, classes: int) -> dict[str, onnx.ModelProto]:
    """The frame graph's ends as graphs of their own (the same builders): ``pre`` (frame and
    run size -> normalised input) and ``post`` (feature-grid logits and the frame -> labels)."""
    from onnx import TensorProto, helper

    def model(b: GraphBuilder, inputs: list, output: str, out_type: Any) -> onnx.ModelProto:
        b.nodes.append(helper.make_node("Identity", [output], ["out"]))
        graph = helper.make_graph(b.nodes, b.prefix, inputs, [out_type], initializer=b.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", "H", "W", 3])
    pre = GraphBuilder("pre")
    if info.frame == "openvino":
        frame, run = size_or_image(pre, "image", None)
        x = preprocess(pre, "image", frame, None, "openvino", info.mean, info.std)
        pre_inputs = [image]
    else:
        frame, run = size_or_image(pre, "image", "run_size")
        x = preprocess(pre, "image", frame, run, info.frame, info.mean, info.std)
        pre_inputs = [image, helper.make_tensor_value_info("run_size", TensorProto.INT64, [2])]
    post = GraphBuilder("post")
    out_hw, _ = size_or_image(post, "image", None)
    labels = postprocess_cells(post, "logits", out_hw)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", classes, "h", "w"])
    return {
        "pre": model(pre, pre_inputs, x,
                     helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3, "h", "w"])),
        "post": model(post, [logits, image], labels,
                      helper.make_tensor_value_info("out", TensorProto.UINT8, ["b", "H", "W"])),
    }


def session(path_or_proto: Any, backend: str) -> Any:
    """A callable feeds -> outputs on onnxruntime's or OpenVINO's CPU runtime, as the runtime
    configures them."""
    if backend == "openvino":
        from diga.runtime.openvino_model import shared_core

        core = shared_core()
        model = core.read_model(path_or_proto if isinstance(path_or_proto, str)
                                else path_or_proto.SerializeToString(), b"")
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda feeds: [np.array(t) for t in request.infer(feeds).values()]
    import onnxruntime as ort

    source = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)


def border_share(logits: np.ndarray) -> float:
    """Share of feature-grid cells whose four corners do not share their argmax."""
    a = logits[0].argmax(0)
    down, right = np.concatenate([a[1:], a[-1:]]), np.concatenate([a[:, 1:], a[:, -1:]], 1)
    diag = np.concatenate([right[1:], right[-1:]])
    return float(np.mean((a != down) | (a != right) | (a != diag)))


def measure_model(name: str, out: Path, steps: int, budget_s: float,
                  frames: list[np.ndarray]) -> list[dict[str, Any]]:
    from diga.export.quantize import quantize_int8

    torch_model = briefly_trained(name, out, steps)
    cfg = load_config("demo", [f"model.name={name}", f"data.target.resize={RUN[0]}x{RUN[1]}"])
    meta = {"stage": "source", "step": steps}
    old_info = model_info(cfg, meta, RUN, dynamic=True)  # the network alone, logits out
    new_info = model_info(cfg, meta, RUN, dynamic=True, frame="onnxruntime")
    core_info = old_info  # the core: the same float NCHW input, feature-grid logits out
    calib = [resize_rgb(f, FRAME) for f in frames[:4]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="diga-frame-latency-") as tmp:
        t = Path(tmp)
        files: dict[str, dict[str, Path]] = {"fp32": {}, "int8": {}}
        export_onnx(torch_model, old_info, t / "old.onnx", exporter="torchscript")
        export_onnx(torch_model, core_info, t / "core.onnx", exporter="torchscript", features=True)
        quantize_int8(t / "old.onnx", t / "old.int8.onnx", calib, old_info)
        quantize_int8(t / "core.onnx", t / "core.int8.onnx", calib, core_info)
        from diga.export.openvino_export import export_openvino

        for precision, suffix in (("fp32", ""), ("int8", ".int8")):
            info = new_info.replace(precision=precision)
            files[precision]["old"] = t / f"old{suffix}.onnx"
            files[precision]["core"] = t / f"core{suffix}.onnx"
            files[precision]["onnx"] = write_frame_model(t / f"core{suffix}.onnx",
                                                         t / f"model{suffix}.onnx", info)
            ov_onnx = write_frame_model(t / f"core{suffix}.onnx", t / f"ov{suffix}.onnx",
                                        info.replace(frame="openvino"))
            files[precision]["xml"] = export_openvino(ov_onnx, t / f"model{suffix}.xml",
                                                      info.replace(frame="openvino"))
            files[precision]["old_xml"] = export_openvino(t / f"old{suffix}.onnx",
                                                          t / f"old{suffix}.xml",
                                                          old_info.replace(precision=precision))
        frame = frames[0]
        x = prepare_batch([resize_rgb(frame, RUN)], old_info)
        with torch.no_grad():  # diga eval's rule in PyTorch
            ref = F.interpolate(torch_model(torch.from_numpy(x)).logits, size=FRAME,
                                mode="bilinear", align_corners=True).argmax(1)[0].numpy()
        for backend in ("onnxruntime", "openvino"):
            for precision in ("fp32", "int8"):
                f = files[precision]
                old_path = f["old_xml" if backend == "openvino" else "old"]
                new_path = f["xml" if backend == "openvino" else "onnx"]
                rows.append(_row(name, backend, precision, old_path, new_path, f["core"], frame,
                                 frames, x, ref, budget_s, old_info))
                print(json.dumps({k: rows[-1][k] for k in ("model", "backend", "precision",
                                                          "model_alone_ms", "host_e2e_ms",
                                                          "frame_e2e_ms", "ratio_after")}))
    return rows


def _row(name: str, backend: str, precision: str, old_path: Path, new_path: Path, core: Path,
         frame: np.ndarray, frames: list[np.ndarray], x: np.ndarray, ref: np.ndarray,
         budget_s: float, old_info: Any) -> dict[str, Any]:
    import warnings

    runtime = "openvino" if backend == "openvino" else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = Segmenter(old_path, runtime)
    new = Segmenter(new_path, runtime)
    # model alone: today's graph of the network on a prepared tensor
    alone = p50_ms(lambda: old.run(x), budget_s)
    # the host path, in parts and whole
    batch = old.prepare([frame])[0]
    logits = old.run(batch)[0]
    host = {"pre": p50_ms(lambda: old.prepare([frame]), budget_s), "model": alone,
            "post": p50_ms(lambda: prediction_from_output(logits, old.info, FRAME), budget_s)}
    host_e2e = p50_ms(lambda: old(frame), budget_s)
    host_labels = old(frame)
    # the frame graph: its parts as graphs of their own, on the same runtime; then whole
    parts = part_graphs(new.info, 19)
    run_pre, run_post = session(parts["pre"], backend), session(parts["post"], backend)
    run_core = session(str(core), backend)
    feeds = frame_feeds(new.info, [frame], RUN, FRAME)
    pre_feeds = {k: v for k, v in feeds.items() if k != "out_size"}
    net_in = run_pre(pre_feeds)[0]
    grid = new._model.run_named(feeds, [LOGITS])[0]
    host_pre = 0.0
    if backend == "openvino":  # the IR takes the frame resized by Pillow on the host
        host_pre = p50_ms(lambda: frame_feeds(new.info, [frame], RUN, FRAME), budget_s)
    core_name = onnx.load(str(core)).graph.input[0].name
    core_in = {core_name: net_in}
    graph = {"pre": host_pre + p50_ms(lambda: run_pre(pre_feeds), budget_s),
             "network": p50_ms(lambda: run_core(core_in), budget_s),
             "post": p50_ms(lambda: run_post({"logits": grid, "image": feeds["image"]
                                             if backend != "openvino" else frame[None]}),
                            budget_s)}
    frame_e2e = p50_ms(lambda: new(frame), budget_s)
    labels = new(frame)
    # throughput of a stream of frames, one per call and four per call
    stream = {}
    for b in (1, 4):
        tic = time.perf_counter()
        count = sum(1 for _ in new.stream(iter(frames * 2), batch=b))
        stream[b] = count / (time.perf_counter() - tic)
    old.close()
    new.close()
    return {
        "model": name, "backend": backend, "precision": precision, "frame": list(FRAME),
        "run_size": list(RUN), "model_alone_ms": alone, "host_parts_ms": host,
        "host_e2e_ms": host_e2e, "frame_parts_ms": graph, "frame_e2e_ms": frame_e2e,
        "ratio_before": host_e2e / alone, "ratio_after": frame_e2e / alone,
        "agree_with_host_path": float(np.mean(labels == host_labels)) * 100,
        "agree_with_eval_rule": float(np.mean(labels == ref)) * 100,
        "border_cells": border_share(grid), "stream_fps": {str(k): v for k, v in stream.items()},
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | backend | precision | model alone | host path: pre / model / post | "
             "host path | frame graph: pre / network / post | frame graph | before | after | "
             "agree: host path / eval rule | border cells | stream fps @1 / @4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hp, fp = r["host_parts_ms"], r["frame_parts_ms"]
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['model_alone_ms']:.0f} | "
            f"{hp['pre']:.0f} / {hp['model']:.0f} / {hp['post']:.0f} | {r['host_e2e_ms']:.0f} | "
            f"{fp['pre']:.0f} / {fp['network']:.0f} / {fp['post']:.0f} | {r['frame_e2e_ms']:.0f} | "
            f"{r['ratio_before']:.2f}x | {r['ratio_after']:.2f}x | "
            f"{r['agree_with_host_path']:.3f} / {r['agree_with_eval_rule']:.3f} % | "
            f"{100 * r['border_cells']:.1f} % | {r['stream_fps']['1']:.1f} / "
            f"{r['stream_fps']['4']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("runs/frame-latency"))
    parser.add_argument("--steps", type=int, default=60, help="training steps per model")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per timed loop")
    parser.add_argument("--frames", type=int, default=4, help="distinct frames (stream, calibration)")
    args = parser.parse_args(argv)
    spec = BuiltinSpec(seed=2, size=FRAME, target_val=args.frames)
    frames = [generate_scene(spec, "target", "val", i)[0] for i in range(args.frames)]
    rows = [row for name in args.models
            for row in measure_model(name, args.out, args.steps, args.budget, frames)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frame_latency.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (args.out / "frame_latency.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
