"""What INT8 should leave in float, per network: the measurement behind ``export.int8_float``.

For each model: a source-only run on the built-in benchmark (``demo``, from scratch), then
``diga export RUN --int8`` once per choice of what stays in float (nothing; LayerNormalization;
the attention's activation MatMuls; both) and ``diga bench`` of every file on the CPU
(onnxruntime, frame in -> labels out). A choice that keeps the same nodes in float as one
measured already (no LayerNorm in HRNet, no attention in DeepLabV2) is not exported again. Reported per row:
target-val mIoU of the fp32 and INT8 files through the runtime, INT8's pixel agreement with
fp32 PyTorch, the INT8 nodes kept in float, and the end-to-end p50 latency against fp32's. Run:

    python -m diga.benchmarks.int8_float --models segformer_mit_b0 hrnet18_ocr --steps 300 \\
        --out runs/int8-float

Finished runs and exports are reused; the table goes to ``OUT/int8_float.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diga.benchmarks.paper_path import _subprocess_invoke as diga
from diga.io import atomic_write_json, atomic_write_text

CHOICES: dict[str, list[str]] = {
    "all int8": [],
    "layer norm float": ["layer_norm"],
    "attention float": ["attention"],
    "layer norm + attention float": ["layer_norm", "attention"],
}


def kept_nodes(fp32: Path, keep: list[str]) -> int:
    import onnx

    from diga.export.quantize import float_nodes

    return len(float_nodes(onnx.load(str(fp32)), keep))


LARGE = "512x1024"  # the presets' run size: latency only (2 frames scored)


def _latency(path: Path, out: Path, size: str | None = None) -> float:
    """p50 ms of frame in -> labels out; at the file's run size, or every frame at ``size``."""
    at = [f"bench.input_size={size}", "bench.max_images=2"] if size else []
    diga("bench", path, "--backend", "ort-cpu", "bench.time_budget_s=3", "bench.warmup=3",
         "bench.min_iters=20", *at, "--json", out)
    row = next(r for r in json.loads(out.read_text())["rows"] if r["status"] == "ok")
    return row["latency_ms"]["p50"]


def measure(model: str, steps: int, out: Path) -> list[dict[str, Any]]:
    run = out / model / "run"
    if not (run / "checkpoints" / "last").is_dir():
        diga("train", "source", "demo", f"model.name={model}", f"train.steps={steps}",
             "train.visual_every=0", "--out", run, "-q")
    rows, fp32_ms, core, seen = [], None, None, {0}
    for name, keep in CHOICES.items():
        folder = out / model / name.replace(" ", "-").replace("+", "and")
        if keep and core is not None and kept_nodes(core, keep) in seen:
            continue  # keeps the same nodes as a choice measured already: the same file
        if not (folder / "export.json").is_file():
            diga("export", run, "--int8", f"export.int8_float=[{','.join(keep)}]",
                 "--out", folder)
        summary = json.loads((folder / "export.json").read_text())
        files = {f["format"]: f for f in summary["files"]}
        if core is None:  # the float core, for counting nodes: re-exported without the frame
            core = folder / "core.onnx"
            if not core.is_file():
                _export_core(run, core)
        if fp32_ms is None:
            fp32 = folder / files["onnx"]["path"]
            fp32_ms = (_latency(fp32, folder / "bench-fp32.json"),
                       _latency(fp32, folder / "bench-fp32-large.json", LARGE))
        int8 = files["onnx-int8"]
        if keep:
            seen.add(kept_nodes(core, keep))
        rows.append({
            "model": model, "float": name, "kept_nodes": kept_nodes(core, keep) if keep else 0,
            "fp32_miou": files["onnx"]["evaluation"]["miou"],
            "int8_miou": int8["evaluation"]["miou"],
            "int8_agreement": int8["parity"]["pixel_agreement"],
            "fp32_ms": fp32_ms[0],
            "int8_ms": _latency(folder / int8["path"], folder / "bench-int8.json"),
            "fp32_ms_large": fp32_ms[1],
            "int8_ms_large": _latency(folder / int8["path"], folder / "bench-int8-large.json",
                                      LARGE),
        })
    return rows


def _export_core(run: Path, path: Path) -> None:
    """The network alone (no frame graph), as ``quantize_int8`` sees it."""
    from diga.checkpoint import load_model
    from diga.export.onnx_export import export_onnx, model_info

    model, saved, ckpt = load_model(run, "cpu")
    info = model_info(saved, ckpt.meta, saved.data.target.resize or (64, 128), dynamic=True,
                      bake_preprocess=False, argmax=False)
    export_onnx(model.eval(), info, path, opset=18)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | in float | INT8 nodes kept in float | fp32 mIoU | INT8 mIoU | INT8 - fp32 "
             "| INT8 pixel agreement | p50 ms fp32 / INT8, 64x128 frames | p50 ms fp32 / INT8, "
             f"{LARGE} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['float']} | {r['kept_nodes']} | {r['fp32_miou']:.2f} "
                     f"| {r['int8_miou']:.2f} | {r['int8_miou'] - r['fp32_miou']:+.2f} "
                     f"| {r['int8_agreement']:.2f} % | {r['fp32_ms']:.1f} / {r['int8_ms']:.1f} "
                     f"| {r['fp32_ms_large']:.0f} / {r['int8_ms_large']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["segformer_mit_b0", "hrnet18_ocr"])
    parser.add_argument("--steps", type=int, default=300, help="source-only training steps")
    parser.add_argument("--out", type=Path, default=Path("runs/int8-float"))
    args = parser.parse_args(argv)
    rows = [row for model in args.models for row in measure(model, args.steps, args.out)]
    text = table(rows)
    print(text)
    atomic_write_json(args.out / "int8_float.json", {"steps": args.steps, "rows": rows})
    atomic_write_text(args.out / "int8_float.md", text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
