"""The README's and the docs' command blocks, run as written, page by page (the docs test).

Every fenced ``bash`` block of README.md and docs/*.md runs in order in a scratch folder per
page, later blocks seeing what earlier ones wrote. Only the dataset roots are faked: the
documented ``/data/...`` roots point to the built-in benchmark written in those layouts
(``diga data make-demo``), their sizes (``resize=HxW``) are scaled as the fakes are (1/16), and
commands that train get the scaled-down overrides of the paper path
(``benchmarks/paper_path.py``: sizes, steps, a small network) appended. A block that
cannot run here carries ``<!-- docs-test: skip REASON -->`` on the line before it. After a page
ran, every ``runs/<run>/...`` path the page names under a run its commands made must exist: a
path the docs promise and the tools do not write fails the build.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, diga_ok
from PIL import Image
from typer.testing import CliRunner

from diga.benchmarks.paper_path import scaled_overrides, write_data
from diga.cli.app import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)\n```", re.S)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
ROOTS = {"/data/GTA5": "gta5", "/data/RAND_CITYSCAPES": "synthia", "/data/cityscapes": "cityscapes",
         "/data/bdd100k": "bdd100k", "/data/mapillary": "mapillary", "/data/camera": "camera"}
# verbs whose CONFIG [key=value ...] get the scaled-down keys
TRAINS = (("run",), ("demo",), ("train", "source"), ("train", "warmup"), ("train", "selftrain"),
          ("train", "translator"), ("data", "check"), ("pseudo",))
PATH = re.compile(r"(?<![\w/.-])(runs/[\w./-]*[\w/])")
runner = CliRunner()
RESIZE = re.compile(r"(resize)=(\d+)x(\d+)")  # --target ...,resize=HxW and data.*.resize=HxW


def blocks(page: Path) -> list[str]:
    """The page's runnable bash blocks, in order."""
    return [m["body"] for m in BLOCK.finditer("\n" + page.read_text())
            if not SKIP.search(m["before"])]


def commands(body: str) -> list[str]:
    """One command per line, continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The documented roots, faked: every layout of make-demo, and an unlabelled camera."""
    root = write_data(diga_ok, tmp_path_factory.mktemp("docs") / "data")
    camera = root / "camera" / "images"
    for split in ("train", "val"):
        (camera / split).mkdir(parents=True)
        frames = sorted((root / "cityscapes" / "leftImg8bit" / split).rglob("*.png"))[:4]
        for i, frame in enumerate(frames):
            Image.open(frame).save(camera / split / f"frame_{i:04d}.jpg", quality=90)
    return root


def scaled(argv: list[str], data: Path) -> list[str]:
    """``argv`` with the fake roots, its sizes (``resize=HxW``) at the fakes' scale (1/16, as
    the paper path's), and the scaled-down keys where it trains."""
    argv = [RESIZE.sub(_sixteenth, _roots(a, data)) for a in argv]
    verb = tuple(argv[1:3]) if argv[1] in ("train", "data") else (argv[1],)
    if verb not in TRAINS:
        return argv
    rest = argv[1 + len(verb):]
    preset = rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else "demo"
    if preset == "demo" or preset.endswith((".yaml", ".yml")):
        keys = [k for k in TINY if not k.startswith("selftrain.steps")] + [
            "selftrain.steps=1", "train.steps=2", "export.calib_images=2",
            "export.parity_images=2", "bench.time_budget_s=0.1", "bench.warmup=0",
            "bench.min_iters=1", "pipeline.baseline=false"]
    else:
        keys = [k for k in scaled_overrides(preset, data, 2, 1) if ".root=" not in k] + [
            "bench.time_budget_s=0.1", "bench.warmup=0", "bench.min_iters=1"]
    # the TorchScript exporter: the page's paths and commands are the point here, and the
    # dynamo exporter's 5 s an export is tested on every network by test_export
    keys.append("export.exporter=torchscript")
    flags = [i for i, a in enumerate(argv) if a.startswith("-")]
    at = flags[0] if flags else len(argv)  # the keys before the first option
    return argv[:at] + keys + argv[at:]


def _sixteenth(m: re.Match) -> str:
    return f"{m[1]}={max(8, int(m[2]) // 16)}x{max(8, int(m[3]) // 16)}"


def _roots(arg: str, data: Path) -> str:
    for documented, name in ROOTS.items():
        arg = arg.replace(documented, str(data / name))
    return arg


def run_line(line: str, cwd: Path, data: Path) -> None:
    """A ``diga`` line through the CLI app in this process (what the console script runs,
    without a Python start per line), in ``cwd``; any other line through the shell."""
    argv = shlex.split(line)
    if argv[0] == "diga":
        argv = scaled(argv, data)
        before = os.getcwd()
        os.chdir(cwd)
        try:
            result = runner.invoke(app, argv[1:], env={"COLUMNS": "100"})
        finally:
            os.chdir(before)
        assert result.exit_code == 0, f"$ {line}\n{result.output[-3000:]}"
        return
    proc = subprocess.run(_roots(line, data), shell=True, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"$ {line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_command_blocks_run_as_written(page, data, tmp_path):
    for body in blocks(page):
        for line in commands(body):
            run_line(line, tmp_path, data)
    # a path under a run this page's commands made must exist (a skipped block's runs, e.g.
    # the full demo's, are not here to check)
    named = {p for p in PATH.findall(page.read_text()) if not any(c in p for c in "<*{")}
    missing = sorted(p for p in named if (tmp_path / "/".join(p.split("/")[:2])).is_dir()
                     and not (tmp_path / p).exists())
    assert not missing, f"{page.name} names paths its commands did not write: {missing}"
