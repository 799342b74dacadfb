"""PyTorch -> ONNX: the network ("core"), the frame graph that ships around it, metadata, checker.

``diga export`` exports the network as the core of the frame graph (``diga.export.frame``):
normalised NCHW float in, logits at feature resolution out (``ExportWrapper(features=True)``).
The shipped ``model.onnx`` wraps it: a frame of any size in, labels at its size out. The other
wrappings are what diga shipped before (the runtime still runs such files): logits upsampled
bilinearly (align_corners=True) to the input size, optionally with the normalisation baked in
(``bake_preprocess``: uint8 RGB NHWC in) and the argmax (``argmax``: uint8 (B, H, W) out).

torch's dynamo exporter (``torch.export``) is tried first; where it fails, the TorchScript
exporter takes over and the reason is logged and returned.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from diga import __version__
from diga.config import Config
from diga.data.classes import class_protocol
from diga.errors import UserError
from diga.io import atomic_write
from diga.runtime.metadata import ModelInfo

log = logging.getLogger("diga.export")

INPUT_NAME = "image"


class ExportWrapper(nn.Module):
    """A graph around the model: [uint8 NHWC -> normalised NCHW] -> model -> upsample ->
    [argmax]; with ``features``, the frame graph's core: the model's logits at feature
    resolution, nothing else."""

    def __init__(self, model: nn.Module, info: ModelInfo, features: bool = False) -> None:
        super().__init__()
        self.model = model
        self.features = features
        self.bake_preprocess = info.input_kind == "uint8"
        self.argmax = info.output_kind == "labels"
        # mean / std as buffers of the [0, 255] scale: one Sub and one Div in the graph
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bake_preprocess:
            x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std  # (B, H, W, 3) -> (B, 3, H, W)
        logits = self.model(x).logits  # (B, C, H/8, W/8)
        if self.features:
            return logits
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        if self.argmax:
            return logits.argmax(1).to(torch.uint8)  # (B, H, W)
        return logits  # (B, C, H, W)


@dataclass
class OnnxExport:
    """What ``export_onnx`` did."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    fallback_reason: str | None
    opset: int
    info: ModelInfo


def model_info(cfg: Config, meta: dict[str, Any], input_size: tuple[int, int], *,
               dynamic: bool, bake_preprocess: bool = False, argmax: bool = False,
               classes: int | None = None, frame: str | None = None) -> ModelInfo:
    """The metadata of a model exported from a checkpoint with ``meta`` and config ``cfg``.

    ``input_size`` is the export (and, for a static model, the only) size; the inference size
    the runtime resizes images to is ``cfg.inference_size``. ``classes``: the protocol the
    model predicts (its checkpoint's ``data.classes``; default ``cfg``'s). ``frame``: a frame
    graph of that flavour (``diga.export.frame``; uint8 frames in, labels out).
    """
    protocol = class_protocol(classes or cfg.num_classes)
    metrics = meta.get("metrics") or {}
    source, target = cfg.data.source, cfg.data.target
    provenance = {
        "diga_version": __version__,
        "model": cfg.model.name,
        "config_hash": cfg.hash(),
        "stage": meta.get("stage"),
        "step": meta.get("step"),
        "source": {"kind": source.kind, "root": source.root.name if source.root else None},
        "target": {"kind": target.kind, "root": target.root.name if target.root else None},
        "target_val_miou": metrics.get("target_val_miou"),
        "metrics": metrics,
    }
    return ModelInfo(
        class_names=protocol.names, palette=protocol.palette,
        mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),  # type: ignore[arg-type]
        input_kind="frame" if frame else "uint8" if bake_preprocess else "float",
        output_kind="labels" if argmax or frame else "logits",
        layout="NHWC" if bake_preprocess or frame else "NCHW", frame=frame,
        input_size=tuple(input_size), dynamic=dynamic,  # type: ignore[arg-type]
        precision="fp32", provenance=provenance,
        inference_size=cfg.inference_size)


def example_input(info: ModelInfo, batch: int = 1, min_side: int = 0) -> torch.Tensor:
    """A tensor of the model's input kind and layout at its export size (scaled up by a whole
    factor until its shorter side is at least ``min_side``)."""
    h, w = info.input_size or (64, 64)
    scale = -(-min_side // min(h, w)) if min_side else 1
    h, w = h * max(1, scale), w * max(1, scale)
    if info.input_kind == "uint8":
        return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, h, w)


def _spatial_axes(info: ModelInfo) -> tuple[int, int]:
    return (1, 2) if info.layout == "NHWC" else (2, 3)


def _export_dynamo(wrapper: ExportWrapper, x: torch.Tensor, path: Path, info: ModelInfo,
                   opset: int, output_name: str) -> onnx.ModelProto:
    dynamic_shapes = None
    if info.dynamic:
        hy, wx = _spatial_axes(info)
        dims = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
        dynamic_shapes = {"x": {0: dims[0], hy: dims[1], wx: dims[2]}}
    program = torch.onnx.export(wrapper, (x,), dynamo=True, opset_version=opset,
                                input_names=[INPUT_NAME], output_names=[output_name],
                                dynamic_shapes=dynamic_shapes, verbose=False)
    if program is None:
        raise RuntimeError("the dynamo exporter returned no program")
    return program.model_proto


def _export_torchscript(wrapper: ExportWrapper, x: torch.Tensor, path: Path, info: ModelInfo,
                        opset: int, output_name: str) -> onnx.ModelProto:
    dynamic_axes = None
    if info.dynamic:
        hy, wx = _spatial_axes(info)
        out_axes = {0: "batch", 1 if info.output_kind == "labels" else 2: "height",
                    2 if info.output_kind == "labels" else 3: "width"}
        if wrapper.features:  # the feature grid: its own sizes, not the input's
            out_axes = {0: "batch", 2: "grid_height", 3: "grid_width"}
        dynamic_axes = {INPUT_NAME: {0: "batch", hy: "height", wx: "width"}, output_name: out_axes}
    tmp = path.with_name(f".{path.name}.torchscript.tmp")
    try:
        torch.onnx.export(wrapper, (x,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
        return onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(model: nn.Module, info: ModelInfo, path: Path, *, opset: int = 18,
                exporter: str = "auto", doc: str = "", features: bool = False) -> OnnxExport:
    """Export ``model`` (eval mode, CPU) wrapped as ``info`` describes, with metadata, checked.

    Args:
        exporter: ``auto`` (dynamo, TorchScript if dynamo fails), ``dynamo`` or ``torchscript``.
        features: the frame graph's core (``info`` a float NCHW logits model): logits at
            feature resolution, not upsampled.

    Raises:
        UserError: the exporters failed, or the result does not pass ``onnx.checker``.
    """
    if opset < 18:
        raise UserError(f"opset {opset} is too old (the frame graph's antialiased Resize needs 18)",
                        "use export.opset=18 or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model.cpu().eval(), info, features).eval()
    # a dynamic export traces batch 2 and a shorter side of 64 or more: a dimension of size 1
    # (the batch, or the 1x2 grid of a stride-32 stage at 32x64) is specialised to a constant
    x = example_input(info, batch=2, min_side=64) if info.dynamic else example_input(info)
    output_name = "labels" if info.output_kind == "labels" else "logits"
    reason: str | None = None
    used = exporter
    proto = None
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporters():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracer notes)
        if exporter in ("auto", "dynamo"):
            try:
                proto = _export_dynamo(wrapper, x, path, info, opset, output_name)
                used = "dynamo"
            except Exception as exc:  # torch.export / onnxscript raise many kinds
                reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                if exporter == "dynamo":
                    raise UserError(f"the dynamo ONNX exporter failed ({reason})",
                                    "try export.exporter=torchscript") from None
                log.warning("dynamo exporter failed (%s); falling back to the TorchScript exporter",
                            reason)
        if proto is None:
            try:
                proto = _export_torchscript(wrapper, x, path, info, opset, output_name)
                used = "torchscript"
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise UserError(f"ONNX export failed: {first}"
                                + (f" (dynamo exporter: {reason})" if reason else ""),
                                "check that the model runs in PyTorch; try another export.opset") from None
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    write_model(proto, path, info, doc=doc or f"diga {info.provenance.get('model', '')} "
                f"semantic segmentation; exported with the {used} exporter")
    return OnnxExport(path=path, exporter=used, fallback_reason=reason, opset=got_opset, info=info)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' own INFO / WARNING logs (opset conversion notes, rewrites)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def set_metadata(proto: onnx.ModelProto, info: ModelInfo, doc: str | None = None) -> None:
    """Replace the model's diga metadata props with ``info``'s."""
    props = info.to_props()
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    if doc:
        proto.doc_string = doc


def write_model(proto: onnx.ModelProto, path: Path, info: ModelInfo, doc: str | None = None) -> None:
    """Set the metadata, save atomically, and run ``onnx.checker`` (full check) on the file."""
    set_metadata(proto, info, doc)
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    check_onnx(path)


def write_frame_model(core_path: Path, path: Path, info: ModelInfo,
                      run_size: tuple[int, int] | None = None) -> Path:
    """Wrap the core at ``core_path`` into the frame graph of ``info.frame`` and write it with
    ``info`` (``run_size``: baked into a TensorRT flavour), checked."""
    from diga.export.frame import frame_graph

    core = onnx.load(str(core_path))
    proto = frame_graph(core, info.frame, info.mean, info.std, run_size)  # type: ignore[arg-type]
    write_model(proto, path, info, doc=f"diga {info.provenance.get('model', '')} frame graph "
                f"({info.frame}): uint8 frames in, labels at their size out; {info.precision}")
    return path


def check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path.name} fails onnx.checker: {first}",
                        "try export.exporter=torchscript or another export.opset") from None
