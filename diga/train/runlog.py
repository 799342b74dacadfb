"""A stage's log: ``metrics.jsonl`` and TensorBoard events, written by one call.

Every value a stage logs goes to both, so the two cannot disagree: training records (losses,
learning rate, pseudo-label statistics), each evaluation (mIoU, per-class IoU), the visual
grids and the resolved config. Steps are on the job's one time axis: a stage that starts at
``axis_start`` (self-training round 1 after the warm-up's N steps: N) logs its step s at
``axis_start + s``, so ``tensorboard --logdir RUN`` draws a whole ``diga run`` as one curve,
one colour per stage.

A resumed stage replays the steps after its checkpoint. ``metrics.jsonl`` drops their lines
(``truncate_jsonl``); the new events file starts with TensorBoard's purge marker (a
``SessionLog.START`` at the first replayed step), so TensorBoard's reader discards the old
file's events from that step on: no step is shown twice. Events are flushed at every
checkpoint, so a ``kill -9`` loses only steps that are replayed anyway.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from diga.io import append_jsonl, truncate_jsonl

# logged by self-training: the pseudo-labels' kept share and accuracy (against target labels,
# for diagnosis only, where the target train split has them)
PSEUDO_KEYS = ("kept", "pl_acc_raw", "pl_acc_kept")
EVENTS = "events.out.tfevents."
# metrics that are counts, not values to draw
NOT_VALUES = ("classes", "data_classes", "mapped_from")


MISSING = ("no TensorBoard events: the tensorboard package is not installed (pip install "
           "'diga[tensorboard]'; train.tensorboard=false turns this off)")
_warned = False


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record: tag -> value.

    ``train/<key>`` for losses and the learning rate, ``pseudo/<key>`` for the pseudo-label
    statistics, ``val/<key>`` for target-val metrics (``target_val_`` dropped; per-class IoU as
    ``val/iou/<class>``, nested dicts by ``/``), ``time/sec_per_step``. ``step`` and ``final``
    are not values; None (a class absent from val) is left out.
    """
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{tag}/{k}", v)
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            return
        elif isinstance(value, int | float):
            out[tag] = float(value)

    for key, value in record.items():
        if key in ("step", "final"):
            continue
        if key.startswith("target_val_"):
            name = key.removeprefix("target_val_")
            if name not in NOT_VALUES:
                put(f"val/{name}", value)
        elif key in PSEUDO_KEYS:
            put(f"pseudo/{key}", value)
        elif key == "sec_per_step":
            put("time/sec_per_step", value)
        else:
            put(f"train/{key}", value)
    return out


class RunLog:
    """``run_dir/metrics.jsonl`` and ``run_dir/events.out.tfevents.*`` of one stage (rank 0).

    Args:
        start: the step the stage starts or resumes from (lines after it are dropped).
        axis_start: where the stage's step 0 lies on the job's time axis.
        tensorboard: write events (``train.tensorboard``); a warning, once, where the
            tensorboard package is missing.
    """

    def __init__(self, run_dir: Path, start: int = 0, axis_start: int = 0,
                 tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.axis_start = axis_start
        truncate_jsonl(self.path, start)
        if tensorboard and start == 0:  # an attempt killed before its first checkpoint
            for old in Path(run_dir).glob(f"{EVENTS}*"):
                old.unlink()
        self.writer = _writer(Path(run_dir), axis_start + start + 1 if start else None) \
            if tensorboard else None

    def record(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` and its scalars at the same step."""
        append_jsonl(self.path, record)
        if self.writer is not None:
            step = self.axis_start + int(record["step"])
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image (a visual grid) at a stage step."""
        if self.writer is not None:
            self.writer.add_image(tag, image, self.axis_start + step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, self.axis_start + step)

    def flush(self) -> None:
        """Everything logged so far on disk (before a checkpoint: a kill loses nothing of it)."""
        if self.writer is not None:
            self.writer.flush()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _writer(run_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ModuleNotFoundError:  # one line, once per process, then training goes on
        global _warned
        if not _warned:
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True).print(
                "[yellow]warning:[/] " + escape(MISSING), highlight=False, soft_wrap=True)
            _warned = True
        return None
    _after_existing_events(run_dir)
    return SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=30)


def _after_existing_events(run_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the
    second it was made: a resume within the same second as the last file would sort by pid.
    Wait for the next second then, so the new file (with its purge marker) is read last."""
    stamps = [int(m.group(1)) for p in run_dir.glob(f"{EVENTS}*")
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)
