"""A stage's log: which TensorBoard tag each metrics.jsonl value becomes, and training without
the tensorboard package (one warning line, metrics.jsonl as always)."""

from __future__ import annotations

import json
import sys

import numpy as np

from diga.train import runlog
from diga.train.runlog import RunLog, scalars


def test_each_logged_value_has_one_tag():
    record = {"step": 40, "final": True, "lr": 0.001, "loss": 2.5, "ce": 1.0, "kept": 0.8,
              "pl_acc_kept": 0.9, "sec_per_step": 0.2, "target_val_miou": 41.0,
              "target_val_classes": 19, "target_val_iou": {"road": 90.0, "train": None},
              "target_val_single_scale": {"miou": 40.0}, "note": "text"}
    assert scalars(record) == {
        "train/lr": 0.001, "train/loss": 2.5, "train/ce": 1.0, "pseudo/kept": 0.8,
        "pseudo/pl_acc_kept": 0.9, "time/sec_per_step": 0.2, "val/miou": 41.0,
        "val/iou/road": 90.0, "val/single_scale/miou": 40.0}


def test_without_tensorboard_one_warning_and_the_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(runlog, "_warned", False)
    for run in ("a", "b"):
        with RunLog(tmp_path / run, tensorboard=True) as log:
            log.record({"step": 1, "loss": 1.5})
            log.image("visuals", np.zeros((2, 2, 3), np.uint8), 1)
    err = capsys.readouterr().err
    assert err.count("no TensorBoard events") == 1 and "diga[tensorboard]" in err
    assert json.loads((tmp_path / "a" / "metrics.jsonl").read_text()) == {"step": 1, "loss": 1.5}
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))
