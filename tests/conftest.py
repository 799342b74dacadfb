"""Shared fixtures: tiny settings so every training test runs in seconds on a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Tiny built-in benchmark and schedule: a few seconds per stage on the CPU.
TINY = [
    "data.builtin.size=32x64", "data.builtin.source_train=8", "data.builtin.target_train=8",
    "data.builtin.target_val=4", "data.num_workers=0", "train.steps=4", "train.batch_size=2",
    "selftrain.steps=null",  # self-training rounds run train.steps too (demo sets its own)
    "train.crop=32x64", "train.log_every=1", "train.checkpoint_every=2", "train.visual_every=2",
    "eval.batch_size=4", "pseudo.batch_size=4", "run.device=cpu", "warmup.fda_band=0.1",
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: one thread avoids contention, several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_png16_rgb(path: Path, channel0: np.ndarray) -> Path:
    """A 16-bit RGB PNG with ``channel0`` in the first channel, as SYNTHIA's GT/LABELS."""
    import png

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = channel0.shape
    rgb = np.zeros((h, w, 3), np.uint16)
    rgb[..., 0] = channel0
    rgb[..., 1] = 7  # instance ids live in the other channels; they must be ignored
    with open(path, "wb") as fh:
        png.Writer(w, h, greyscale=False, bitdepth=16).write(fh, rgb.reshape(h, w * 3).tolist())
    return path


def diga_ok(*args: object) -> str:
    """Run ``diga ARGS`` through Typer's runner; its output, after asserting exit code 0."""
    from typer.testing import CliRunner

    from diga.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"diga {' '.join(map(str, args))}:\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def run_and_onnx(tmp_path_factory):
    """A run directory (random tiny model) and its ONNX export (TorchScript exporter: quick)."""
    from diga.checkpoint import save_checkpoint
    from diga.config import load_config
    from diga.export.onnx_export import export_onnx, model_info
    from diga.models import build_model

    root = tmp_path_factory.mktemp("predict")
    cfg = load_config("demo", ["data.builtin.size=64x128"])
    torch.manual_seed(0)
    model = build_model("deeplabv2_tiny", 19).eval()
    meta = {"stage": "source", "step": 0, "config": cfg.to_dict(), "metrics": {}}
    save_checkpoint(root / "run" / "checkpoints" / "last", model=model.state_dict(), meta=meta)
    info = model_info(cfg, meta, (64, 128), dynamic=True, bake_preprocess=False, argmax=False)
    onnx_path = root / "model.onnx"
    export_onnx(model, info, onnx_path, exporter="torchscript")
    return root / "run", onnx_path
