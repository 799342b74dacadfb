"""``diga demo``: ``diga run`` on the built-in benchmark, on this machine.

source-only -> DiGA warm-up -> DiGA self-training (2 rounds) -> evaluation of each on target
val -> ONNX + INT8 export of the final model -> latency benchmark -> a report (``report.md``,
per-stage mIoU, curves, a prediction grid). The same code path as ``diga run demo``
(``diga.pipeline``); the demo preset turns the source-only baseline on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diga.config import Config, load_config
from diga.pipeline import Options, PipelineResult, run_pipeline

# --quick: a smoke run of every step in about two minutes on a 2-core CPU
QUICK = ["train.steps=60", "selftrain.steps=40", "data.builtin.source_train=64",
         "data.builtin.target_train=64", "data.builtin.target_val=24", "train.log_every=10",
         "train.checkpoint_every=30", "train.visual_every=30", "export.calib_images=8",
         "export.parity_images=4", "bench.time_budget_s=1.0"]


def demo_config(quick: bool, overrides: list[str]) -> Config:
    """The demo preset with two self-training rounds (``diga run demo`` trains the preset's one)."""
    return load_config("demo", ["selftrain.rounds=2"] + (QUICK if quick else []) + list(overrides))


def run_demo(out: Path, quick: bool = False, overrides: list[str] | None = None,
             say: Callable[[str], None] = print, show_progress: bool = True) -> PipelineResult:
    """The demo into ``out``; running it again continues it (finished stages are skipped)."""
    cfg = demo_config(quick, overrides or [])
    return run_pipeline(cfg, Path(out), Options(quiet=not show_progress, config_name="demo",
                                                title="DiGA on the built-in benchmark"), say)
