from __future__ import annotations

import json

import pytest
import torch

from diga.checkpoint import load_model, resolve_checkpoint
from diga.config import load_config
from diga.train import loop
from diga.train.loop import train_stage


class Interrupt(Exception):
    pass


def _weights(run):
    return resolve_checkpoint(run).model()


def test_source_training_writes_the_run(tmp_path, tiny):
    cfg = load_config("demo", tiny)
    result = train_stage(cfg, "source", tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    assert result.step == 4 and 0 <= result.metrics["target_val_miou"] <= 100
    assert (run / "config.yaml").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "ce" in x] == [1, 2, 3, 4]
    assert lines[-1]["final"] and lines[-1]["target_val_miou"] == result.metrics["target_val_miou"]
    assert sorted(p.name for p in (run / "visuals").iterdir()) == ["step_000002.png", "step_000004.png"]
    ckpt = resolve_checkpoint(run)
    assert ckpt.step == 4 and ckpt.meta["config"]["train"]["steps"] == 4
    assert {p.name for p in ckpt.folder.iterdir()} == {"model.safetensors", "state.pt", "meta.json"}
    model, cfg2, _ = load_model(run)
    assert cfg2 == cfg and not model.training


@pytest.mark.parametrize("stage", ["source", "warmup"])
def test_resume_reaches_the_same_weights(tmp_path, tiny, monkeypatch, stage):
    cfg = load_config("demo", tiny)
    train_stage(cfg, stage, tmp_path / "full", show_progress=False)

    real_update = loop.StepProgress.update

    def crash_at_3(self, done, losses):
        if done == 3:
            raise Interrupt
        real_update(self, done, losses)

    monkeypatch.setattr(loop.StepProgress, "update", crash_at_3)
    with pytest.raises(Interrupt):
        train_stage(cfg, stage, tmp_path / "cut", show_progress=False)
    assert resolve_checkpoint(tmp_path / "cut").step == 2
    monkeypatch.setattr(loop.StepProgress, "update", real_update)
    result = train_stage(cfg, stage, tmp_path / "cut", resume=True, show_progress=False)
    assert result.step == 4
    full, cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    if stage == "warmup":
        t_full = resolve_checkpoint(tmp_path / "full").teacher()
        t_cut = resolve_checkpoint(tmp_path / "cut").teacher()
        assert all(torch.equal(t_full[k], t_cut[k]) for k in t_full)


def test_lr_schedule_poly_with_a_linear_warmup():
    from diga.train.optim import poly_lr

    assert poly_lr(1.0, 0, 100, 0.9) == 1.0  # no warm-up: METHOD's poly from the start
    assert poly_lr(1.0, 50, 100, 1.0) == pytest.approx(0.5)
    ramp = [poly_lr(1.0, s, 100, 1.0, warmup=10) for s in range(12)]
    assert ramp[0] == pytest.approx(0.1 * 1.0) and ramp[4] == pytest.approx(0.5 * 0.96)
    assert ramp[9] == pytest.approx(0.91) and ramp[11] == pytest.approx(0.89)  # then poly alone
    assert all(a < b for a, b in zip(ramp[:9], ramp[1:10], strict=True))
