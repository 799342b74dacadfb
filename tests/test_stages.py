"""Warm-up and self-training end to end on tiny settings, and their inputs' checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diga.checkpoint import load_model, resolve_checkpoint
from diga.config import load_config
from diga.data.pseudo_labels import (
    PseudoLabelDataset,
    StaleInputError,
    pseudo_label_path,
    write_pseudo_label,
)
from diga.errors import UserError
from diga.method import class_mix_mask, mix
from diga.train.loop import train_stage
from diga.train.pseudo import load_centroids, make_centroids, make_pseudo_labels
from diga.train.stages import ensure_centroids, ensure_pseudo_labels, run_selftrain


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    from conftest import TINY

    run = tmp_path_factory.mktemp("warm") / "run"
    train_stage(load_config("demo", TINY), "warmup", run, show_progress=False)
    return run


@pytest.mark.parametrize("keys,files", [
    (["warmup.symkd=false"], {"model.safetensors", "state.pt", "meta.json"}),
    (["warmup.mixture=false"], {"model.safetensors", "teacher.safetensors", "state.pt", "meta.json"}),
    (["warmup.translator=none"], {"model.safetensors", "teacher.safetensors", "state.pt", "meta.json"}),
])
def test_warmup_ablations_are_keys(tmp_path, tiny, keys, files):
    result = train_stage(load_config("demo", tiny + keys), "warmup", tmp_path / "r", show_progress=False)
    assert result.step == 4
    assert {p.name for p in resolve_checkpoint(tmp_path / "r").folder.iterdir()} == files
    logged = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert ("kd" in logged) == ("warmup.symkd=false" not in keys)


def test_warmup_checkpoint_holds_student_and_teacher(warm):
    ckpt = resolve_checkpoint(warm)
    student, teacher = ckpt.model(), ckpt.teacher()
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)  # EMA lags the student
    grid = Image.open(sorted((warm / "visuals").iterdir())[-1])
    assert grid.width == 6 * 64  # source, label, augmented, translated, mixed, prediction


def test_class_mix_labels_take_source_where_pasted():
    y_s = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 3]]])
    p = torch.tensor([[[5, 5, 5, 255], [6, 6, 6, 6]]])
    mask = class_mix_mask(y_s, torch.Generator().manual_seed(0))
    y_cm = mix(mask, y_s, p)
    assert torch.equal(y_cm[mask], y_s[mask]) and torch.equal(y_cm[~mask], p[~mask])
    assert mask[0, 1, 2]  # ignore pixels of the source are pasted (and stay ignored)


def test_pseudo_labels_deterministic_and_roundtrip(tmp_path, warm, tiny):
    model, _, ckpt = load_model(warm)
    cfg = load_config("demo", tiny)
    a = make_pseudo_labels(model, cfg, ckpt, tmp_path / "a", torch.device("cpu"))
    make_pseudo_labels(model, cfg, ckpt, tmp_path / "b", torch.device("cpu"))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 8 and a["dataset"]["images"] == 8 and a["scales"] == [1.0, 0.5]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    label = np.arange(32 * 64).reshape(32, 64) % 19
    path = pseudo_label_path(tmp_path / "c", "aachen/aachen_000001_000019_leftImg8bit.png")
    assert path == tmp_path / "c" / "aachen" / "aachen_000001_000019.png"
    write_pseudo_label(path, label)
    assert (np.asarray(Image.open(path)) == label).all()
    # the dataset yields the pseudo-label and, on the built-in benchmark, the true label
    from diga.data.datasets import build_dataset

    ds = PseudoLabelDataset(build_dataset(cfg, "target", "train", train=True), tmp_path / "a")
    item = ds[(0, 5)]
    assert item["label"].shape == (2, 32, 64) and (item["label"][1] != 255).any()


def test_centroids_file_checked(tmp_path, warm, tiny):
    model, _, ckpt = load_model(warm)
    cfg = load_config("demo", tiny)
    c = make_centroids(model, cfg, ckpt, tmp_path / "c.safetensors", torch.device("cpu"))
    assert c.shape == (19, 64)
    assert torch.equal(load_centroids(tmp_path / "c.safetensors", 19, 64), c)
    with pytest.raises(UserError, match=r"have shape \(19, 64\), this model needs \(16, 64\)"):
        load_centroids(tmp_path / "c.safetensors", 16, 64)
    with pytest.raises(UserError, match="not found"):
        load_centroids(tmp_path / "none.safetensors", 19, 64)


def test_pseudo_labels_of_another_dataset_are_refused(tmp_path, warm, tiny):
    run = tmp_path / "warm"
    shutil.copytree(warm, run)
    cfg = load_config("demo", tiny)
    ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)
    other = load_config("demo", tiny + ["data.builtin.seed=5"])
    with pytest.raises(UserError, match="made for another dataset .*builtin"):
        ensure_pseudo_labels(other, run, torch.device("cpu"), quiet=True)
    manifest = json.loads((run / "pseudo" / "manifest.json").read_text())
    manifest["dataset"]["classes"] = 16
    (run / "pseudo" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="classes: 16, this run has 19"):
        ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)


def _retrained(warm, tmp_path, tiny):
    """The warm-up run trained on: the same folder and config, other weights."""
    run = tmp_path / "warm"
    shutil.copytree(warm, run)
    cfg = load_config("demo", tiny)
    ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)
    ensure_centroids(cfg, run, torch.device("cpu"), quiet=True)
    before = resolve_checkpoint(run).identity()
    shutil.rmtree(run / "checkpoints")
    train_stage(load_config("demo", tiny + ["run.seed=3"]), "warmup", tmp_path / "other",
                show_progress=False)
    shutil.copytree(tmp_path / "other" / "checkpoints", run / "checkpoints")
    return run, cfg, before


def test_inputs_of_another_model_are_refused_then_regenerated(tmp_path, warm, tiny):
    """Pseudo-labels and centroids name the model that made them (weights hash): after the run
    was trained again they are refused with both models named, and made again on request."""
    run, cfg, before = _retrained(warm, tmp_path, tiny)
    after = resolve_checkpoint(run).identity()
    assert before["folder"] == after["folder"] and before["weights"] != after["weights"]
    with pytest.raises(StaleInputError) as err:
        ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)
    line = str(err.value)
    assert f"weights {before['weights'][:8]}" in line and f"weights {after['weights'][:8]}" in line
    assert "--regenerate" in line
    with pytest.raises(StaleInputError, match=f"centroids in .* were made by .*{before['weights'][:8]}"):
        ensure_centroids(cfg, run, torch.device("cpu"), quiet=True)
    ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True, regenerate=True)
    manifest = json.loads((run / "pseudo" / "manifest.json").read_text())
    assert manifest["model"]["weights"] == after["weights"]
    ensure_centroids(cfg, run, torch.device("cpu"), quiet=True, regenerate=True)
    ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)  # accepted now
    ensure_centroids(cfg, run, torch.device("cpu"), quiet=True)


def test_inputs_of_an_older_diga_are_refused(tmp_path, warm, tiny):
    """diga 0.1 wrote pseudo-labels at the training resize and centroids without provenance:
    one line that says so and what to do."""
    run = tmp_path / "warm"
    shutil.copytree(warm, run)
    cfg = load_config("demo", tiny)
    ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)
    ensure_centroids(cfg, run, torch.device("cpu"), quiet=True)
    old = {"model": str(run / "checkpoints" / "last"), "stage": "warmup", "step": 4,
           "config_hash": "x", "scales": [1.0, 0.5],
           "dataset": json.loads((run / "pseudo" / "manifest.json").read_text())["dataset"]}
    (run / "pseudo" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(StaleInputError, match="made by an older diga .*training resize"):
        ensure_pseudo_labels(cfg, run, torch.device("cpu"), quiet=True)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "centroids.safetensors"))
    save_file(tensors, str(run / "centroids.safetensors"), metadata={"classes": "19"})
    with pytest.raises(StaleInputError, match="centroids in .* made by an older diga"):
        ensure_centroids(cfg, run, torch.device("cpu"), quiet=True)


@pytest.mark.slow
def test_selftrain_rounds_and_resume(tmp_path, warm, tiny):
    init = tmp_path / "warm"
    shutil.copytree(warm, init)
    cfg = load_config("demo", tiny + ["selftrain.rounds=2", "selftrain.steps=3"])
    results = run_selftrain(cfg, init, tmp_path / "st", show_progress=False)
    assert [r.run_dir.name for r in results] == ["round1", "round2"]
    assert [r.step for r in results] == [3, 3]  # selftrain.steps per round, not train.steps=4
    assert (init / "pseudo" / "manifest.json").is_file() and (init / "centroids.safetensors").is_file()
    assert (tmp_path / "st" / "round1" / "pseudo" / "manifest.json").is_file()  # round 2's labels
    assert resolve_checkpoint(tmp_path / "st").folder.parent.parent.name == "round2"
    log = [json.loads(x) for x in (tmp_path / "st/round1/metrics.jsonl").read_text().splitlines()]
    step = log[0]
    assert 0 < step["kept"] <= 1 and 0 <= step["pl_acc_raw"] <= 1 and "ce_mix" in step
    ckpt = resolve_checkpoint(tmp_path / "st" / "round1")
    assert ckpt.extra()["centroids"].shape == (19, 64)
    # centroids moved online, but slowly (momentum 1e-4)
    start = load_centroids(init / "centroids.safetensors", 19, 64)
    moved = (ckpt.extra()["centroids"] - start).abs().max().item()
    assert 0 < moved < 0.05

    # interrupt round 2 after its step-2 checkpoint, resume: same weights as uninterrupted
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "st", cut)
    shutil.rmtree(cut / "round2")
    from diga.train import loop

    real = loop.StepProgress.update

    def crash(self, done, losses):
        if done == 3:
            raise KeyboardInterrupt
        real(self, done, losses)

    loop.StepProgress.update = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            run_selftrain(cfg, init, cut, show_progress=False)
    finally:
        loop.StepProgress.update = real
    run_selftrain(cfg, init, cut, resume=True, show_progress=False)
    a = resolve_checkpoint(tmp_path / "st" / "round2").model()
    b = resolve_checkpoint(cut / "round2").model()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_selftrain_needs_a_warmup_run(tmp_path, tiny):
    with pytest.raises(UserError, match="model not found"):
        run_selftrain(load_config("demo", tiny), tmp_path / "missing", tmp_path / "st")
