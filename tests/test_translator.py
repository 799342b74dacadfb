"""The learned translator: networks, losses on hand-computed tensors, training, resume, loading,
and a warm-up that uses it."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from diga.checkpoint import resolve_checkpoint
from diga.config import load_config
from diga.errors import UserError
from diga.train.loop import train_stage
from diga.train.progress import StepProgress
from diga.translator import load_translator, train_translator
from diga.translator.losses import (
    PerceptualLoss,
    cycle_consistency_loss,
    discriminator_loss,
    generator_adversarial_loss,
    identity_loss,
    load_vgg_features,
    lsgan_loss,
    semantic_boundaries,
    semantic_edge_loss,
    vgg_features,
)
from diga.translator.networks import Generator, PatchDiscriminator
from diga.translator.train import linear_decay_lr

# Tiny translator runs: 32x64 crops, batch 2, 3 steps, small networks.
TINY_TRANSLATOR = [
    "data.builtin.size=32x64", "data.builtin.source_train=8", "data.builtin.target_train=8",
    "data.builtin.target_val=4", "data.num_workers=0", "run.device=cpu",
    "translator.steps=3", "translator.batch_size=2", "translator.crop=32x64",
    "translator.gen_channels=4", "translator.gen_blocks=1", "translator.disc_channels=4",
    "translator.log_every=1", "translator.checkpoint_every=2", "translator.visual_every=2",
]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG16 in torchvision's full-model layout (``features.N.*``)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v.contiguous()
             for k, v in vgg_features("vgg16").state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory):
    """One uninterrupted 3-step translator run, shared by the tests that read it."""
    run = tmp_path_factory.mktemp("translator") / "run"
    train_translator(load_config("demo", TINY_TRANSLATOR), run, show_progress=False)
    return run


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("size", [(32, 64), (30, 50)])
def test_networks_keep_shape_and_range(size):
    torch.manual_seed(0)
    g = Generator(channels=4, blocks=1)
    x = torch.cat([torch.rand(2, 3, *size), torch.zeros(1, 3, *size), torch.ones(1, 3, *size)])
    y = g(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    y.mean().backward()
    assert all(p.grad is not None for p in g.parameters())
    scores = PatchDiscriminator(channels=4)(x)
    assert scores.shape[:2] == (4, 1) and scores.shape[-1] >= 1


# ---------------------------------------------------------------- losses


def test_lsgan_cycle_and_identity_losses_match_hand_computation():
    scores = torch.tensor([[0.5, 1.5], [0.0, 2.0]])
    # real: mean((s - 1)^2) = (0.25 + 0.25 + 1 + 1) / 4; fake: mean(s^2) = (0.25 + 2.25 + 0 + 4) / 4
    assert lsgan_loss(scores, True).item() == pytest.approx(0.625)
    assert lsgan_loss(scores, False).item() == pytest.approx(1.625)
    assert generator_adversarial_loss(scores).item() == pytest.approx(0.625)
    assert discriminator_loss(scores, scores).item() == pytest.approx(0.5 * (0.625 + 1.625))
    rec, orig = torch.tensor([[0.2, 0.4]]), torch.tensor([[0.5, 0.5]])
    assert cycle_consistency_loss(rec, orig).item() == pytest.approx((0.3 + 0.1) / 2)
    assert identity_loss(rec, orig).item() == pytest.approx(0.2)


def test_semantic_edge_loss_matches_hand_computation():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]]])  # (1, 3, 4)
    expected = torch.tensor([[[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(semantic_boundaries(labels)[:, 0], expected)
    # Source flat gray (zero gradient); translation a horizontal ramp of step 0.1 in all
    # channels. Normalised Sobel d/dx: 0.1 inside, 0.05 at the replicated left / right border;
    # d/dy = 0. Boundary pixels: row 0 cols 1-2 (0.2), rows 1-2 all (0.3 each) = 0.8 over
    # 10 pixels x 2 directions.
    source = torch.full((1, 3, 3, 4), 0.5)
    ramp = (0.1 * torch.arange(4.0)).expand(1, 3, 3, 4)
    assert semantic_edge_loss(ramp, source, labels).item() == pytest.approx(0.8 / 20)
    assert semantic_edge_loss(source + 0.2, source, labels).item() == pytest.approx(0.0, abs=1e-7)
    assert semantic_edge_loss(ramp, source, torch.zeros_like(labels)).item() == 0.0  # no boundary


def test_linear_decay_schedule():
    lrs = [linear_decay_lr(1.0, s, 10, 0.5) for s in range(10)]
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2])


def test_perceptual_loss_from_a_vgg_file(vgg_file, tmp_path):
    loss = PerceptualLoss.from_file(vgg_file)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.features.training
    a = torch.rand(1, 3, 32, 32, requires_grad=True)
    b = torch.rand(1, 3, 32, 32)
    assert loss(b, b).item() == 0.0
    value = loss(a, b)
    value.backward()
    assert value.item() > 0 and a.grad.abs().sum() > 0
    # the features alone (``N.weight``) load too; a VGG19 file is recognised as such
    bare = tmp_path / "features.safetensors"
    save_file(load_file(str(vgg_file)), str(bare))
    assert load_vgg_features(bare)[1] == "vgg16"
    vgg19 = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in vgg_features("vgg19").state_dict().items()},
              str(vgg19))
    assert load_vgg_features(vgg19)[1] == "vgg19"


def test_wrong_vgg_files_are_user_errors(vgg_file, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vgg_features(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    with pytest.raises(UserError, match="cannot read weights"):
        load_vgg_features(junk)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(UserError, match="no VGG16 / VGG19 weights"):
        load_vgg_features(other)
    state = load_file(str(vgg_file))
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    shaped = tmp_path / "shaped.safetensors"
    save_file(state, str(shaped))
    with pytest.raises(UserError, match="features.0.weight|0.weight"):
        load_vgg_features(shaped)
    cfg = load_config("demo", TINY_TRANSLATOR + [f"translator.vgg_weights={other}"])
    with pytest.raises(UserError, match="no VGG16"):
        train_translator(cfg, tmp_path / "run", show_progress=False)


# ---------------------------------------------------------------- training, resume, loading


def test_translator_run_layout(translator_run):
    lines = [json.loads(line) for line in (translator_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {"adv", "cycle", "edge", "loss_g", "loss_d", "lr"} <= lines[0].keys()
    assert "perceptual" not in lines[0]
    assert sorted(p.name for p in (translator_run / "visuals").iterdir()) == [
        "step_000002.png", "step_000003.png"]
    ckpt = resolve_checkpoint(translator_run)
    assert ckpt.step == 3 and ckpt.meta["stage"] == "translator"
    assert {p.name for p in ckpt.folder.iterdir()} == {
        "model.safetensors", "extra.safetensors", "state.pt", "meta.json", "translator.json"}
    prefixes = {k.split(".")[0] for k in ckpt.extra()}
    assert prefixes == {"g_ts", "d_t", "d_s"}  # F and both discriminators
    spec = json.loads((translator_run / "translator.json").read_text())
    assert spec["generator"] == {"channels": 4, "blocks": 1}


def test_resume_reaches_the_same_weights(translator_run, tmp_path, monkeypatch, caplog):
    real_update = StepProgress.update

    def crash_at_3(self, done, losses):
        if done == 3:
            raise Interrupt
        real_update(self, done, losses)

    monkeypatch.setattr(StepProgress, "update", crash_at_3)
    cfg = load_config("demo", TINY_TRANSLATOR)
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupt):
        train_translator(cfg, tmp_path / "cut", show_progress=False)
    assert "without the perceptual term" in caplog.text
    assert resolve_checkpoint(tmp_path / "cut").step == 2
    monkeypatch.setattr(StepProgress, "update", real_update)
    train_translator(cfg, tmp_path / "cut", resume=True, show_progress=False)
    full, cut = resolve_checkpoint(translator_run), resolve_checkpoint(tmp_path / "cut")
    assert cut.step == 3
    for a, b in ((full.model(), cut.model()), (full.extra(), cut.extra())):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_perceptual_term_is_used_with_a_vgg_file(vgg_file, tmp_path):
    cfg = load_config("demo", TINY_TRANSLATOR + ["translator.steps=1", "translator.visual_every=0",
                                                 f"translator.vgg_weights={vgg_file}"])
    train_translator(cfg, tmp_path / "run", show_progress=False)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["perceptual"] > 0


def test_load_translator_from_run_checkpoint_and_file(translator_run):
    folder = translator_run / "checkpoints" / "last"
    x = torch.rand(2, 3, 30, 50)
    outputs = []
    for path in (translator_run, folder, folder / "model.safetensors"):
        g = load_translator(path)
        assert not g.training and not any(p.requires_grad for p in g.parameters())
        with torch.no_grad():
            outputs.append(g(x))
    assert outputs[0].shape == x.shape and 0 <= outputs[0].min() and outputs[0].max() <= 1
    assert all(torch.equal(outputs[0], y) for y in outputs[1:])


def test_load_translator_errors(translator_run, tmp_path):
    with pytest.raises(UserError, match="translator not found"):
        load_translator(tmp_path / "nothing")
    with pytest.raises(UserError, match="holds no translator checkpoint"):
        load_translator(tmp_path)
    lonely = tmp_path / "g.safetensors"
    lonely.write_bytes((translator_run / "checkpoints" / "last" / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="translator.json"):
        load_translator(lonely)
    spec = json.loads((translator_run / "translator.json").read_text())
    spec["generator"]["channels"] = 8
    (tmp_path / "translator.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="does not fit"):
        load_translator(lonely)


def test_warmup_with_the_learned_translator(translator_run, tmp_path, tiny):
    cfg = load_config("demo", tiny + ["train.steps=2", "warmup.translator=learned",
                                      f"warmup.translator_path={translator_run}"])
    result = train_stage(cfg, "warmup", tmp_path / "warmup", show_progress=False)
    assert result.step == 2 and resolve_checkpoint(tmp_path / "warmup").teacher() is not None
    with pytest.raises(UserError, match="not a translator"):
        load_translator(tmp_path / "warmup")


def test_cli_command(tmp_path):
    from diga.cli.translator import register

    app = typer.Typer()

    @app.callback()
    def train() -> None:
        """A stand-in for ``diga train``."""

    register(app)
    out = tmp_path / "run"
    args = ["translator", "demo", *TINY_TRANSLATOR, "translator.steps=1", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warmup.translator_path" in result.output
    assert load_translator(out) is not None
    result = CliRunner().invoke(app, args)  # the run exists: refused, not overwritten
    assert isinstance(result.exception, UserError) and "already exists" in str(result.exception)


def test_config_checks_translator_fields():
    cfg = load_config("demo")
    assert cfg.translator.crop is None and cfg.translator.lambda_cycle == 10
    assert cfg.translator.betas == (0.5, 0.999) and cfg.translator.lr == 2e-4
    with pytest.raises(UserError, match="betas"):
        load_config("demo", ["translator.betas=[0.5,1.5]"])
    with pytest.raises(UserError, match="did you mean 'translator.lambda_edge'"):
        load_config("demo", ["translator.lambda_edges=1"])
