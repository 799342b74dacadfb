"""The runtime install: ``pip install diga`` (no extra) in a fresh venv, where ``import torch``
fails, runs an exported model: ``diga predict``, ``diga bench`` and ``diga eval`` on the
file, and the runtime API; a training command says in one line what to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.builtin.size=32x64", "data.builtin.target_val=3", "bench.time_budget_s=0.2",
        "bench.min_iters=3", "bench.warmup=1", "bench.matmul_size=256"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with diga installed from this tree, no extra."""
    root = tmp_path_factory.mktemp("runtime-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = subprocess.run([str(root / "bin" / "pip"), "install", "-q", str(ROOT)],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.fail(f"pip install diga failed:\n{pip.stdout[-2000:]}\n{pip.stderr[-2000:]}")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A frame graph exported here (with torch) from a tiny model, in a folder of its own."""
    import torch

    from diga.checkpoint import save_checkpoint
    from diga.config import load_config
    from diga.export.pipeline import export_checkpoint
    from diga.models import build_model

    tmp = tmp_path_factory.mktemp("runtime-model")
    cfg = load_config("demo", ["data.builtin.size=32x64", "data.builtin.target_val=3"])
    torch.manual_seed(0)
    save_checkpoint(tmp / "run" / "checkpoints" / "last",
                    model=build_model("deeplabv2_tiny", 19).state_dict(),
                    meta={"stage": "source", "step": 1, "config": cfg.to_dict(), "metrics": {}})
    export_checkpoint(tmp / "run", ["export.parity_images=1", "export.exporter=torchscript"],
                      out_dir=tmp / "app")
    return tmp / "app" / "model.onnx"


def run(venv: Path, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *map(str, args[1:])], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_runtime_install_runs_exported_models_without_torch(venv, model, tmp_path):
    no_torch = run(venv, "python", "-c", "import torch", cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    frame = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "frame.png")

    # the API an app uses
    api = run(venv, "python", "-c",
              "import sys, numpy as np; from PIL import Image; from diga.runtime import Segmenter; "
              f"seg = Segmenter({str(model)!r}); labels = seg(np.asarray(Image.open('frame.png'))); "
              "print(labels.shape, labels.dtype, 'torch' in sys.modules)", cwd=tmp_path)
    assert api.returncode == 0, api.stderr
    assert api.stdout.strip() == "(50, 90) uint8 False"

    predicted = run(venv, "diga", "predict", model, "frame.png", "--out", "pred", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    labels = np.asarray(Image.open(tmp_path / "pred" / "frame_label.png"))
    assert labels.shape == (50, 90)

    bench = run(venv, "diga", "bench", model, *DATA, "-b", "ort-cpu", "--json", "b.json",
                cwd=tmp_path)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["status"] == "ok" and row["latency_ms"]["p50"] > 0 and row["miou"] is not None
    assert set(row["parts_ms"]) == {"pre", "model", "post"}

    evaluated = run(venv, "diga", "eval", model, *DATA, "--json", "e.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(row["miou"])

    train = run(venv, "diga", "train", "source", "demo", "--out", "r", cwd=tmp_path)
    lines = [line for line in (train.stdout + train.stderr).splitlines() if line.strip()]
    assert train.returncode == 1 and len(lines) == 1, lines
    assert "needs PyTorch, which is not installed" in lines[0]
    assert "pip install 'diga[train]'" in lines[0] and "Traceback" not in train.stderr
