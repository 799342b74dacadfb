"""The mean teacher in a training step: dropout off, BatchNorm as the student's, and the
warm-up teacher carried into self-training with its EMA step count (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, diga_ok
from torch import nn

from diga.benchmarks.paper_path import scaled_overrides, write_data
from diga.config import load_config
from diga.method import EMATeacher
from diga.models import build_model
from diga.train import loop
from diga.train.loop import train_stage
from diga.train.stages import run_selftrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingTeacher(EMATeacher):
    """Records, for every forward of a dropout or BatchNorm layer, whether it ran in training
    mode, for the teacher and for the student it was built from; and the EMA steps."""

    calls: list[tuple[str, str, bool]] = []
    steps: list[int] = []

    def __init__(self, student: nn.Module, *args, **kwargs) -> None:
        super().__init__(student, *args, **kwargs)
        for who, model in (("teacher", self.model), ("student", student)):
            for module in model.modules():
                kind = ("dropout" if isinstance(module, nn.modules.dropout._DropoutNd) else
                        "bn" if isinstance(module, nn.modules.batchnorm._BatchNorm) else None)
                if kind is not None:
                    module.register_forward_hook(
                        lambda m, i, o, who=who, kind=kind: self.calls.append((who, kind, m.training)))

    def update(self, student: nn.Module, step: int) -> None:
        self.steps.append(step)
        super().update(student, step)


@pytest.fixture
def recording(monkeypatch):
    RecordingTeacher.calls, RecordingTeacher.steps = [], []
    monkeypatch.setattr(loop, "EMATeacher", RecordingTeacher)
    return RecordingTeacher


def modes(who: str, kind: str) -> set[bool]:
    return {training for w, k, training in RecordingTeacher.calls if (w, k) == (who, kind)}


def test_train_mode_switches_dropout_off_and_follows_frozen_bn():
    torch.manual_seed(0)
    for freeze_bn in (False, True):
        student = build_model("deeplabv2_tiny", 19, None, freeze_bn).train()
        teacher = EMATeacher(student)
        x = torch.rand(2, 3, 32, 64)
        teacher.train_mode(dropout=False)  # no dropout, BN as the student's
        with torch.no_grad():  # dropout off: two passes give the same targets
            assert torch.equal(teacher(x).logits, teacher(x).logits)
        bn = [m.training for m in teacher.model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert set(bn) == {not freeze_bn}
        teacher.train_mode()  # the reference's teacher: dropout on
        with torch.no_grad():
            assert not torch.equal(teacher(x).logits, teacher(x).logits)
        teacher.train_mode(dropout=False, bn="eval")
        assert not any(m.training for m in teacher.model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="bn must be"):
        teacher.train_mode(bn="frozen")


@pytest.mark.parametrize("keys, teacher_dropout, teacher_bn", [
    ([], {True}, {True}),  # the default, the reference's: dropout on, BN as the student's
    (["method.teacher_dropout=false"], {False}, {True}),  # no dropout noise in the targets
    (["method.teacher_dropout=false", "method.teacher_bn=eval"], {False}, {False}),
    (["model.freeze_bn=true"], {True}, {False}),  # frozen BN: the student's too
])
def test_teacher_mode_during_the_warmup_step(tmp_path, recording, keys, teacher_dropout,
                                              teacher_bn):
    cfg = load_config("demo", [*TINY, "train.steps=2", *keys])
    train_stage(cfg, "warmup", tmp_path / "w", show_progress=False)
    assert modes("teacher", "dropout") == teacher_dropout
    assert modes("teacher", "bn") == teacher_bn
    assert True in modes("student", "dropout")  # the student trains with its dropout
    assert (True in modes("student", "bn")) == (not cfg.model.freeze_bn)


def test_selftrain_continues_the_warmup_teacher_and_its_ema_count(tmp_path, recording):
    base = [*TINY, "train.steps=4", "selftrain.rounds=2", "selftrain.steps=3"]
    warm = tmp_path / "warmup"
    train_stage(load_config("demo", base), "warmup", warm, show_progress=False)
    assert recording.steps == [0, 1, 2, 3]
    assert json.loads((warm / "checkpoints/last/meta.json").read_text())["ema_steps"] == 4

    recording.steps = []
    cfg = load_config("demo", base)
    assert cfg.selftrain.teacher_init == "continue"
    run_selftrain(cfg, warm, tmp_path / "st", show_progress=False)
    # round 1 goes on from the warm-up's 4 steps, round 2 from round 1's 4 + 3
    assert recording.steps == [4, 5, 6, 7, 8, 9]
    first = EMATeacher(build_model("deeplabv2_tiny", 19), 0.99).momentum(4)
    assert first == pytest.approx(0.8)  # not 0: the warm-up teacher is not thrown away
    for name, ema in (("round1", 7), ("round2", 10)):
        meta = json.loads((tmp_path / "st" / name / "checkpoints/last/meta.json").read_text())
        assert meta["ema_steps"] == ema and meta["step"] == 3

    # the reference's restart: every round's teacher starts as a copy of the student, t from 0
    recording.steps = []
    restart = load_config("demo", [*base, "selftrain.teacher_init=restart"])
    run_selftrain(restart, warm, tmp_path / "restart", show_progress=False)
    assert recording.steps == [0, 1, 2, 0, 1, 2]
    meta = json.loads((tmp_path / "restart/round2/checkpoints/last/meta.json").read_text())
    assert meta["ema_steps"] == 3


def _teacher(run: Path) -> dict[str, torch.Tensor]:
    from diga.checkpoint import resolve_checkpoint

    return resolve_checkpoint(run).teacher()


def test_continued_teacher_starts_from_the_warmup_teacher(tmp_path, monkeypatch):
    """At the first self-training step the teacher is the warm-up teacher moved 1 - a towards
    the student (a from the continued count), not a copy of the student."""
    base = [*TINY, "train.steps=4", "selftrain.steps=1"]
    warm = tmp_path / "warmup"
    train_stage(load_config("demo", base), "warmup", warm, show_progress=False)
    from diga.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(warm)
    t0, s0 = ckpt.teacher(), ckpt.model()
    still = load_config("demo", [*base, "train.optim.lr=1e-12"])  # the student stays put
    run_selftrain(still, warm, tmp_path / "st", show_progress=False)
    t1 = _teacher(tmp_path / "st" / "round1")
    a = 1 - 1 / 5  # step 4 of the EMA count
    name = next(k for k in t0 if k.endswith("classifier.weight"))
    assert not torch.equal(t0[name], s0[name])  # the warm-up teacher is not its student
    # the student did not move, so the teacher is a*T0 + (1-a)*S0
    assert torch.allclose(t1[name], a * t0[name] + (1 - a) * s0[name], atol=1e-6)


@pytest.mark.slow
def test_paper_preset_teacher_on_the_users_path(tmp_path, recording):
    """gta2cs-deeplabv2 as shipped (frozen BN) on data in the real layouts: the teacher's BN
    is frozen as the student's, dropout follows the key, and self-training continues the
    warm-up teacher."""
    data = write_data(diga_ok, tmp_path / "data", source_train=4, target_train=4, target_val=2)
    keys = [*scaled_overrides("gta2cs-deeplabv2", data, steps=2, selftrain_steps=2),
            "model.freeze_bn=true", "method.teacher_dropout=false"]
    diga_ok("train", "warmup", "gta2cs-deeplabv2", *keys, "--out", tmp_path / "w", "-q")
    assert modes("teacher", "dropout") == {False} and modes("teacher", "bn") == {False}
    assert modes("student", "dropout") >= {True}
    recording.steps = []
    diga_ok("train", "selftrain", "gta2cs-deeplabv2", *keys, "--init", tmp_path / "w",
            "--out", tmp_path / "s", "-q")
    assert recording.steps == [2, 3, 4, 5]  # the preset's 2 rounds, each going on
    assert modes("teacher", "dropout") == {False}


def test_selftrain_teacher_bn_applies_to_self_training_only(tmp_path, recording):
    base = [*TINY, "train.steps=2", "selftrain.steps=2", "selftrain.teacher_bn=eval"]
    train_stage(load_config("demo", base), "warmup", tmp_path / "w", show_progress=False)
    assert modes("teacher", "bn") == {True}  # warm-up: method.teacher_bn (as the student's)
    recording.calls.clear()
    run_selftrain(load_config("demo", base), tmp_path / "w", tmp_path / "s", show_progress=False)
    assert modes("teacher", "bn") == {False} and True in modes("student", "bn")
