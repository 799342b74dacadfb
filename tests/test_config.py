from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diga.config import PRESETS, Config, load_config, parse_overrides
from diga.errors import UserError


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    # the reference's SYNTHIA warm-up distils with 0.25 (GTA5 and METHOD: 0.5)
    assert cfg.warmup.kd_weight == (0.25 if preset.startswith("synthia") else 0.5)
    assert cfg.selftrain.kd_weight == 0.25
    # the demo's 500-step stages from scratch follow a shorter EMA (see demo.yaml)
    assert cfg.method.ema_max == (0.99 if preset == "demo" else 0.999)
    assert cfg.selftrain.centroid_momentum == 1e-4


def test_selftrain_steps_default_to_train_steps():
    cfg = load_config("gta2cs-deeplabv2", ["train.steps=123", "selftrain.steps=null"])
    assert cfg.stage_steps("warmup") == cfg.stage_steps("selftrain") == 123
    cfg = load_config("synthia2cs-deeplabv2", ["selftrain.batch_size=null"])
    assert cfg.stage_batch_size("selftrain") == (4, "train.batch_size")
    cfg = load_config("demo", ["train.steps=50", "selftrain.steps=20"])
    assert (cfg.stage_steps("source"), cfg.stage_steps("warmup"), cfg.stage_steps("selftrain")) \
        == (50, 50, 20)


def test_paper_preset_has_method_defaults():
    cfg = load_config("gta2cs-deeplabv2")
    assert cfg.model.name == "deeplabv2_resnet101"
    assert cfg.train.optim.name == "sgd" and cfg.train.optim.lr == 2.5e-4
    assert cfg.train.optim.head_lr_mult == 10 and cfg.train.optim.momentum == 0.9
    assert cfg.train.optim.weight_decay == 5e-4 and cfg.train.optim.poly_power == 0.9
    assert cfg.warmup.beta == 0.4 and cfg.selftrain.beta == 0.3
    assert load_config("synthia2cs-deeplabv2").num_classes == 16


# fy-vision/DiGA's values (docs/reference-code.md): steps of
# warm-up and of each of 2 rounds, images per step (warm-up, self-training), w_sym, and the
# full + half Cityscapes resolution (1024x2048, 512x1024) of pseudo-labels and evaluation.
REFERENCE = {
    "gta2cs-deeplabv2": dict(steps=(80000, 80000), batch=((3, "train.batch_size"), (3, "train.batch_size")),
                             sym=0.5, source=(720, 1280)),
    "synthia2cs-deeplabv2": dict(steps=(60000, 80000), batch=((4, "train.batch_size"),
                                                               (3, "selftrain.batch_size")),
                                 sym=0.25, source=(760, 1280)),
}


@pytest.mark.parametrize("preset", list(REFERENCE))
def test_paper_presets_follow_the_reference(preset):
    cfg, ref = load_config(preset), REFERENCE[preset]
    assert (cfg.stage_steps("warmup"), cfg.stage_steps("selftrain")) == ref["steps"]
    assert (cfg.stage_batch_size("warmup"), cfg.stage_batch_size("selftrain")) == ref["batch"]
    assert cfg.selftrain.rounds == 2 and cfg.method.sym_weight == ref["sym"]
    assert cfg.data.source.resize == ref["source"] and cfg.data.target.resize == (512, 1024)
    assert cfg.train.crop == (512, 896)
    full, half = (1024, 2048), (512, 1024)
    for scales in (cfg.pseudo.scales, cfg.eval.scales):
        assert [(round(512 * s), round(1024 * s)) for s in scales] == [full, half]
    assert cfg.inference_size == half  # the deployed model runs frames at the trained scale


def test_overrides_are_typed():
    cfg = load_config("demo", ["train.steps=12", "train.crop=32x48", "data.flip=false",
                               "pseudo.scales=[1.0,0.75]", "model.pretrained=null"])
    assert cfg.train.steps == 12 and cfg.train.crop == (32, 48)
    assert cfg.data.flip is False and cfg.pseudo.scales == [1.0, 0.75]
    assert cfg.model.pretrained is None


def test_unknown_key_did_you_mean():
    with pytest.raises(UserError, match=r"unknown config key 'train.step'.*did you mean 'train.steps'"):
        load_config("demo", ["train.step=3"])
    with pytest.raises(UserError, match="unknown config key 'trian'.*did you mean 'train'"):
        load_config("demo", ["trian.steps=3"])


def test_wrong_type_and_range():
    with pytest.raises(UserError, match=r"train.steps='many'"):
        load_config("demo", ["train.steps=many"])
    with pytest.raises(UserError, match=r"train.steps=0.*greater than or equal to 1"):
        load_config("demo", ["train.steps=0"])
    with pytest.raises(UserError, match="data.classes"):
        load_config("demo", ["data.classes=17"])
    with pytest.raises(UserError, match="HxW"):
        load_config("demo", ["train.crop=big"])
    with pytest.raises(UserError, match="unknown model 'deeplabv2_resnet102'.*deeplabv2_resnet101"):
        load_config("demo", ["model.name=deeplabv2_resnet102"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="key.sub=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(UserError, match="did you mean the preset 'demo'"):
        load_config("dmeo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_yaml_file_roundtrip(tmp_path: Path):
    cfg = load_config("demo", ["train.steps=7"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.hash() == cfg.hash()
    assert yaml.safe_load(path.read_text())["train"]["crop"] == "64x128"


@pytest.mark.parametrize("preset", ["demo", "gta2cs-deeplabv2"])
def test_train_steps_override_reaches_the_selftrain_rounds(preset):
    """`diga train selftrain demo train.steps=10` trains 10 steps per round, not the preset's
    own selftrain.steps; selftrain.steps given too wins; a resumed run's saved config too."""
    from diga.config import saved_config_with

    shipped = load_config(preset)
    assert shipped.selftrain.steps is not None  # the preset gives self-training its own count
    cfg = load_config(preset, ["train.steps=10"])
    assert (cfg.stage_steps("warmup"), cfg.stage_steps("selftrain")) == (10, 10)
    both = load_config(preset, ["train.steps=10", "selftrain.steps=7"])
    assert (both.stage_steps("warmup"), both.stage_steps("selftrain")) == (10, 7)
    alone = load_config(preset, ["selftrain.steps=7"])
    assert alone.stage_steps("warmup") == shipped.train.steps and alone.stage_steps("selftrain") == 7
    resumed = saved_config_with(shipped, ["train.steps=12"])
    assert resumed.stage_steps("selftrain") == 12


def _without(cfg: Config, *sections: str) -> dict:
    data = cfg.to_dict()
    for dotted in sections:
        *parents, key = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(key)
    return data


@pytest.mark.parametrize("source", ["gta2cs", "synthia2cs"])
def test_network_presets_are_the_deeplab_presets_with_their_networks_training(source):
    """HRNet-OCR: the reference's HRNet training (SGD 1e-3 for every parameter, linear decay,
    aux 0.1, BN that learns); SegFormer: SegFormer's / DAFormer's AdamW recipe. Everything else
    is the DeepLabV2 preset's."""
    deeplab = load_config(f"{source}-deeplabv2")
    hrnet, segformer = load_config(f"{source}-hrnet48-ocr"), load_config(f"{source}-segformer-b5")
    assert (hrnet.model.name, hrnet.model.pretrained, hrnet.model.freeze_bn,
            hrnet.model.aux_weight) == ("hrnet48_ocr", "imagenet", False, 0.1)
    o = hrnet.train.optim
    assert (o.name, o.lr, o.head_lr_mult, o.momentum, o.weight_decay, o.poly_power,
            o.warmup_steps) == ("sgd", 1e-3, 1.0, 0.9, 5e-4, 1.0, 0)
    assert (segformer.model.name, segformer.model.freeze_bn) == ("segformer_mit_b5", False)
    o = segformer.train.optim
    assert (o.name, o.lr, o.head_lr_mult, o.weight_decay, o.poly_power, o.warmup_steps) == (
        "adamw", 6e-5, 10.0, 0.01, 1.0, 1500)
    for cfg in (hrnet, segformer):
        assert _without(cfg, "model", "train.optim") == _without(deeplab, "model", "train.optim")


def test_dg_preset_reads_no_target():
    cfg = load_config("gta5-dg-deeplabv2")
    assert cfg.data.source.kind == "gta5" and cfg.data.target.kind == "none"
    assert (cfg.warmup.mixture, cfg.warmup.translator, cfg.warmup.kd_weight) == (False, "none", 0.5)
    assert cfg.train.batch_size == 4 and cfg.stage_steps("warmup") == 80000
    assert cfg.train.eval_every == 0 and cfg.eval.scales == [2.0, 1.0]
    assert [(t.name, t.kind, t.resize) for t in cfg.eval.targets] == [
        ("Cityscapes", "cityscapes", (512, 1024)), ("BDD100K", "bdd100k", (360, 640)),
        ("Mapillary", "mapillary", (540, 960))]
    assert cfg.inference_size == (512, 1024)
    with pytest.raises(UserError, match="every stage trains on the source"):
        load_config("demo", ["data.source.kind=none"])


def test_base_key_merges_a_preset_or_a_file(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("base: gta2cs-deeplabv2\ntrain: {steps: 7}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.yaml").write_text("base: ../mine.yaml\nmodel: {name: deeplabv2_resnet50}\n")
    cfg = load_config(str(tmp_path / "sub" / "more.yaml"))
    assert cfg.train.steps == 7 and cfg.model.name == "deeplabv2_resnet50"
    assert cfg.train.crop == (512, 896) and cfg.data.source.kind == "gta5"  # from the preset
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="'base' chains deeper than 4 files"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(UserError, match="nowhere.yaml' not found"):
        load_config(str(tmp_path / "c.yaml"))
