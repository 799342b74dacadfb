"""An OpenVINO IR (``model.xml`` + ``model.bin``) on the CPU, with diga's metadata in its rt_info.

``diga export --openvino`` stores the same key/value pairs as the ONNX ``metadata_props``
(``ModelInfo.to_props``) under the rt_info section ``diga``, so the IR carries its class names,
palette, mean/std and inference size, and a C++ app reads them with
``model->get_rt_info<std::string>("diga", key)``. No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diga.errors import UserError, import_optional

RT_SECTION = "diga"
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
INSTALL_HINT = "pip install 'diga[openvino]' (or pip install openvino)"


def import_openvino() -> Any:
    """The ``openvino`` module, or one line saying how to install it."""
    return import_optional("openvino", "OpenVINO models need the openvino package, which is "
                           "not installed", INSTALL_HINT)


_CORE: Any = None


def shared_core() -> Any:
    """One ``openvino.Core`` for the process, as OpenVINO recommends: a Core owns the plugin
    libraries, and Cores made and dropped per model crashed the process here (a segfault once
    several compiled models had come and gone)."""
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


def read_props(model: Any) -> dict[str, str]:
    """diga's metadata of an ``openvino.Model`` (empty when it has none)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    keys = list(model.get_rt_info()[RT_SECTION])  # the section: key -> value
    return {key: model.get_rt_info([RT_SECTION, key]).astype(str) for key in keys}


def write_props(model: Any, props: dict[str, str]) -> None:
    for key, value in props.items():
        model.set_rt_info(value, [RT_SECTION, key])


class OpenVINOModel:
    """A compiled IR on the CPU plugin: the latency hint (one stream on the physical cores, as
    OpenVINO picks them) by default, or the throughput hint (several streams, for batches and
    parallel requests); float32 layers computed in float32."""

    def __init__(self, path: Path, hint: str = "latency") -> None:
        if hint not in HINTS:
            raise UserError(f"unknown OpenVINO performance hint '{hint}'",
                            f"choose one of: {', '.join(HINTS)}")
        ov = import_openvino()
        core = shared_core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or ["unreadable"])[0][:200]
            raise UserError(f"cannot load OpenVINO model {path}: {first}",
                            f"keep {path.with_suffix('.bin').name} next to it, or export it "
                            "again with 'diga export --openvino'") from None
        self.props = read_props(model)
        batch_dim = model.inputs[0].get_partial_shape()[0]
        self.max_batch: int | None = None if batch_dim.is_dynamic else batch_dim.get_length()
        # f32 everywhere the IR has float32: on CPUs with bf16 units OpenVINO would otherwise
        # run float32 layers in bf16 (max |logit difference| 9e-3 instead of 1e-6 here)
        self.compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": HINTS[hint],
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.hint = hint
        self.backend, self.provider = "openvino", f"OpenVINO {ov.__version__.split('-')[0]} CPU"

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch)})
        return np.array(result[self.compiled.outputs[0]])  # a copy: the request reuses its buffer

    def run_named(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The outputs asked for, as copies (the request reuses its buffers)."""
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(result[self.compiled.output(name)]) for name in outputs]

    def close(self) -> None:
        self.request = None  # the request before the compiled model it belongs to
        self.compiled = None
