"""Files and folders diga writes take the umask, as ``open`` / ``mkdir`` would (issue 32):
tempfile's 0600 / 0700 in the atomic writes made a model copied to a server or into a
container that runs as another user unreadable there.

One real run per umask (train, export, predict, bench), each in its own process so that the
umask does not leak into pytest; both run at once (one torch thread each), then every file
and folder they wrote is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, write_png

# runs the four commands in one process: four torch / onnxruntime imports cost more than the work
DRIVER = r"""
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from diga.cli.app import app

torch.set_num_threads(1)
root, image, tiny = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]


def diga(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code:
        sys.exit(f"diga {' '.join(map(str, args))}: {result.exception!r}\n{result.output}")


diga("train", "source", "demo", "--out", root / "run", *tiny)
diga("export", root / "run", "--int8", "export.exporter=torchscript", "export.parity_images=1",
     "export.calib_images=2")  # fewer images, TorchScript: 3 of its 4.5 CPU seconds saved
(onnx,) = root.rglob("model.onnx")  # wherever the export writes by default
diga("predict", onnx, image, "--out", root / "predict")
diga("bench", onnx, "-b", "ort-cpu", "--out", root / "bench", "--json", root / "bench.json",
     "bench.time_budget_s=0.1", "bench.warmup=0", "bench.min_iters=1", "bench.max_images=2",
     "bench.matmul_size=64")
"""

# what each command writes: a walk that found none of these would prove nothing
EXPECTED = {"config.yaml", "model.safetensors", "last", "model.onnx", "model.int8.onnx",
            "export.json", "img_label.png", "bench.json", "bench.md"}


def _modes(root: Path) -> dict[Path, int]:
    """Permission bits of ``root`` and of every file and folder under it."""
    paths = [root, *root.rglob("*")]
    return {p: p.lstat().st_mode & 0o777 for p in paths}


@pytest.mark.slow
def test_written_files_and_folders_take_the_umask(tmp_path: Path) -> None:
    image = write_png(tmp_path / "inputs" / "img.png",
                      np.random.default_rng(0).integers(0, 255, (32, 64, 3), np.uint8))
    masks = (0o022, 0o077)
    procs = {mask: subprocess.Popen(  # the root folder too is made by diga, under the umask
        [sys.executable, "-c", DRIVER, str(tmp_path / f"umask{mask:03o}"), str(image),
         *TINY, "train.steps=2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=tmp_path, preexec_fn=lambda mask=mask: os.umask(mask)) for mask in masks}
    for mask, proc in procs.items():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"umask {mask:03o}:\n{output[-4000:]}"
    for mask in masks:
        modes = _modes(tmp_path / f"umask{mask:03o}")
        assert EXPECTED <= {p.name for p in modes}, sorted(p.name for p in modes)
        want = {False: 0o666 & ~mask, True: 0o777 & ~mask}
        wrong = {str(p.relative_to(tmp_path)): f"{m:o}" for p, m in modes.items() if m != want[p.is_dir()]}
        assert not wrong, f"umask {mask:03o}: want {want[False]:o} / {want[True]:o}: {wrong}"
