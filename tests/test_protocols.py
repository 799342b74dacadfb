"""Class protocols where a model meets data (``diga.protocols``), on the users' path: the
``gta2cs`` / ``synthia2cs`` presets, scaled down, on Cityscapes-layout data with the presets'
resize; a 19-class model scored on 16 and 13 classes against a hand-computed confusion matrix
and cityscapesscripts, a 16-class model on 19-class data, foreign class names refused, and the
commands that must not mix protocols (pseudo, centroids, selftrain --init)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from typer.testing import CliRunner

from diga.benchmarks.paper_path import scaled_overrides, write_data
from diga.checkpoint import save_checkpoint
from diga.cli.app import app
from diga.config import load_config
from diga.data.classes import CITYSCAPES_CLASSES, class_protocol
from diga.data.datasets import build_dataset, normalize
from diga.errors import UserError
from diga.models import build_model
from diga.protocols import label_protocol, parse_protocols, plan_scoring
from diga.runtime import Segmenter

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAME_OF_ID = {label_id: name for label_id, _, name, _ in CITYSCAPES_CLASSES}


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"diga {' '.join(map(str, args))}:\n{result.output}"
    return result.output


def refused(*args: object) -> str:
    """The one error line of a command that must exit 1."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def make_run(folder: Path, preset: str, data: Path, classes: int,
             relabel: dict[int, int] | None = None) -> Path:
    """A deeplabv2_tiny briefly trained on the Cityscapes train split at ``classes`` classes,
    saved as a run of ``preset`` (scaled down; target resize 32x64 from raw 64x128).
    ``relabel`` (train id -> train id) changes the training labels, so that the model predicts
    classes outside a smaller protocol where the val labels hold one inside it."""
    keys = [*scaled_overrides(preset, data), f"data.classes={classes}", "data.num_workers=0"]
    cfg = load_config(preset, keys)
    train = build_dataset(cfg, "target", "train", train=False)
    items = [train[i] for i in range(len(train))]
    x = normalize(torch.stack([it["image"] for it in items]), cfg.data.mean, cfg.data.std)
    y = torch.stack([it["label"] for it in items]).long()
    for old, new in (relabel or {}).items():
        y[y == old] = new
    torch.manual_seed(0)
    model = build_model("deeplabv2_tiny", classes)
    opt = torch.optim.AdamW(model.parameters(), 5e-3)
    for _ in range(30):
        logits = F.interpolate(model(x).logits, size=y.shape[-2:], mode="bilinear",
                               align_corners=True)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(folder / "checkpoints" / "last", model=model.eval().state_dict(),
                    meta={"stage": "warmup", "step": 30, "config": cfg.to_dict(), "metrics": {}})
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(invoke, tmp_path_factory.mktemp("protocols") / "data", target_val=6)


@pytest.fixture(scope="module")
def run19(data) -> Path:
    # sidewalk learnt as terrain: on val it predicts terrain, outside 16 and 13, on sidewalk
    run = make_run(data.parent / "run19", "gta2cs-deeplabv2", data, 19, relabel={1: 9})
    invoke("export", run)
    return run


@pytest.fixture(scope="module")
def run16(data) -> Path:
    run = make_run(data.parent / "run16", "synthia2cs-deeplabv2", data, 16)
    invoke("export", run)
    return run


# ------------------------------------------------------------ the reference computations

def hand_ious(pairs: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...]) -> list[float]:
    """IoU (%) per class of a protocol from (predicted, ground-truth) Cityscapes label-id maps,
    counted pixel by pixel: pixels labelled outside the protocol are left out; a pixel labelled
    c and predicted anything else (a class outside the protocol included) is a miss for c."""
    ious = []
    for name in names:
        tp = fp = fn = 0
        for pred, gt in pairs:
            pred_names = np.vectorize(lambda i: NAME_OF_ID.get(int(i), ""))(pred)
            gt_names = np.vectorize(lambda i: NAME_OF_ID.get(int(i), ""))(gt)
            in_protocol = np.isin(gt_names, names)
            tp += int(((gt_names == name) & (pred_names == name)).sum())
            fn += int(((gt_names == name) & (pred_names != name)).sum())
            fp += int((in_protocol & (gt_names != name) & (pred_names == name)).sum())
        ious.append(100.0 * tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return ious


def cityscapes_ious(pairs: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...],
                    folder: Path, monkeypatch) -> dict[str, float]:
    """cityscapesscripts' evaluator on the same label-id maps, restricted to the protocol's
    classes: every other class set to ignoreInEval."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    for label_id, label in list(ev.id2label.items()):
        if label.name not in names and not label.ignoreInEval:
            monkeypatch.setitem(ev.id2label, label_id, label._replace(ignoreInEval=True))
    preds, gts = [], []
    for i, (pred, gt) in enumerate(pairs):
        stem = f"frankfurt_{i:06d}_000019"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt.astype(np.uint8)).save(folder / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(pred.astype(np.uint8)).save(folder / f"{stem}_pred.png")
        gts.append(str(folder / f"{stem}_gtFine_labelIds.png"))
        preds.append(str(folder / f"{stem}_pred.png"))
    monkeypatch.setattr(ev.args, "evalInstLevelScore", False)
    monkeypatch.setattr(ev.args, "JSONOutput", False)
    monkeypatch.setattr(ev.args, "quiet", True)
    result = ev.evaluateImgLists(preds, gts, ev.args)
    return {name: 100.0 * result["classScores"][name] for name in names}


def assert_ious(ours: dict, expected: list[float], names: tuple[str, ...]) -> None:
    assert list(ours) == list(names)
    for name, want in zip(names, expected, strict=True):
        got = ours[name]
        assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-6), name


def raw_val_pairs(data: Path, onnx_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, ground truth) label-id maps of the exported model on the raw val frames,
    read straight from the Cityscapes tree; the runtime runs them at the trained scale."""
    ids19 = class_protocol(19).train_to_label_id
    pairs = []
    with Segmenter(onnx_path, backend="cpu") as seg:
        for frame in sorted((data / "cityscapes" / "leftImg8bit" / "val").rglob("*.png")):
            gt_path = Path(str(frame).replace("leftImg8bit", "gtFine", 1).replace(
                "_leftImg8bit.png", "_gtFine_labelIds.png"))
            gt = np.asarray(Image.open(gt_path))
            pred = seg(np.asarray(Image.open(frame).convert("RGB")))
            assert pred.shape == gt.shape == (64, 128)
            pairs.append((ids19[pred], gt))
    return pairs


# ------------------------------------------------------------ the scoring rule itself

def test_scoring_rule_on_a_known_matrix():
    """One 3-class toy inside the 19: road labelled 10 px, 6 right, 3 as sidewalk, 1 as
    terrain (outside the 16-class protocol); terrain labelled 5 px, 2 predicted road."""
    labels = label_protocol("cityscapes", 19)
    scoring = plan_scoring(class_protocol(19).names, labels, [16], 16, "m")
    road, sidewalk, terrain = 0, 1, 9  # 19-class train ids
    gt = np.array([road] * 10 + [terrain] * 5 + [sidewalk] * 4)
    pred = np.array([road] * 6 + [sidewalk] * 3 + [terrain] + [road] * 2 + [terrain] * 3
                    + [sidewalk] * 4)
    m = scoring.metrics(scoring.confusion(pred, gt))
    iou = dict(zip(m.class_names, m.iou, strict=True))
    # road: tp 6, fn 4 (3 sidewalk + 1 terrain: a miss), fp 0 (terrain-labelled pixels ignored)
    assert iou["road"] == pytest.approx(60.0)
    assert iou["sidewalk"] == pytest.approx(100 * 4 / 7)  # tp 4, fp 3
    assert "terrain" not in iou and m.num_classes == 16 and m.mapped_from == 19
    assert m.pixel_acc == pytest.approx(100 * 10 / 14)


def test_plan_refuses_what_cannot_be_mapped_in_one_line():
    names19 = class_protocol(19).names
    renamed = ("street", *names19[1:])
    with pytest.raises(UserError, match="predicts 19 classes .* it has no road"):
        plan_scoring(renamed, label_protocol("cityscapes", 19), [16], 19, "x.onnx")
    with pytest.raises(UserError, match="predicts 5 classes"):
        plan_scoring(names19[:5], label_protocol("cityscapes", 19), [], 19, "x.onnx")
    # a folder of 16-class train ids holds no terrain / truck / train labels
    with pytest.raises(UserError, match="16-class train ids .* no terrain, truck, train"):
        plan_scoring(names19, label_protocol("folder", 16), [19], 16, "m")
    assert plan_scoring(names19, label_protocol("folder", 16), [13], 16, "m").protocols[0] \
        .num_classes == 13
    assert parse_protocols(["16,13", "13"]) == [16, 13]
    with pytest.raises(UserError, match="--classes: '12' is not a class protocol"):
        parse_protocols(["12"])


# ------------------------------------------------------------ eval on the users' path

def test_19_class_model_on_16_and_13_matches_hand_count_and_cityscapesscripts(
        run19, data, tmp_path, monkeypatch):
    onnx_path = run19 / "export" / "model.onnx"
    out = " ".join(invoke("eval", onnx_path, "--classes", "19,16,13", "--json",
                          tmp_path / "e.json").split())
    assert "19 classes" in out and "16 classes, mapped from the model's 19" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["classes"] == 19 and "mapped_from" not in result
    pairs = raw_val_pairs(data, onnx_path)  # the runtime's own labels at the frames' size
    terrain, sidewalk = 22, 8  # label ids: the rule matters only where this happens
    assert sum(int(((p == terrain) & (g == sidewalk)).sum()) for p, g in pairs) > 100
    for n in (19, 16, 13):
        names = class_protocol(n).names
        scored = result["class_protocols"][str(n)]
        assert scored["classes"] == n and scored.get("mapped_from") == (None if n == 19 else 19)
        expected = hand_ious(pairs, names)
        assert_ious(scored["iou"], expected, names)
        theirs = cityscapes_ious(pairs, names, tmp_path / f"cs{n}", monkeypatch)
        monkeypatch.undo()
        for name, want in zip(names, expected, strict=True):
            assert (math.isnan(want) and math.isnan(theirs[name])) or \
                theirs[name] == pytest.approx(want, abs=1e-6), name
        assert scored["miou"] == pytest.approx(np.nanmean(expected), abs=1e-6)
    # the mapped protocols are not the 19-class IoUs averaged: terrain predictions are misses
    assert result["class_protocols"]["16"]["miou"] != pytest.approx(
        np.nanmean([result["iou"][c] for c in class_protocol(16).names
                    if result["iou"][c] is not None]), abs=1e-9)


def test_checkpoint_eval_maps_data_classes_override_by_name(run19, data, tmp_path):
    """``diga eval RUN data.classes=16`` (the issue's case): 16 classes mapped from 19, said in
    one line and in the JSON, equal to counting the saved predictions by hand."""
    out = invoke("eval", run19, "data.classes=16", "--json", tmp_path / "e.json",
                 "--save-predictions", tmp_path / "pred")
    assert "scored on the 16-class protocol by name (terrain, truck, train predicted: a miss" \
        in " ".join(out.split())
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["classes"], result["mapped_from"]) == (16, 19)
    # by hand: the saved 19-class predictions against the val labels the eval read (resized
    # by the preset to 32x64 in, labels at their own 64x128, as the checkpoint is evaluated)
    cfg = load_config("gta2cs-deeplabv2", scaled_overrides("gta2cs-deeplabv2", data))
    val = build_dataset(cfg, "target", "val", train=False)
    ids19 = class_protocol(19).train_to_label_id
    pairs = []
    for i in range(len(val)):
        stem = Path(val.samples[i].name)
        pred = np.asarray(Image.open(tmp_path / "pred" / stem.parent / stem.name.replace(
            "_leftImg8bit.png", "_pred_labelIds.png")))
        label = val[i]["label"].numpy()
        gt = np.where(label == 255, 0, ids19[np.minimum(label, 18)])
        pairs.append((pred, gt))
    names = class_protocol(16).names
    expected = hand_ious(pairs, names)
    assert_ious(result["iou"], expected, names)
    assert set(np.unique(np.concatenate([p.ravel() for p, _ in pairs]))) <= set(ids19.tolist())


def test_16_class_model_on_19_class_data_is_scored_on_its_own_16(run16, tmp_path):
    own = tmp_path / "own.json"
    invoke("eval", run16, "--json", own)
    out = invoke("eval", run16, "data.classes=19", "--json", tmp_path / "m.json")
    assert "predicts 16 classes, the data 19: scored on its 16 (labels of terrain, truck, " \
        "train ignored)" in " ".join(out.split())
    mapped = json.loads((tmp_path / "m.json").read_text())
    base = json.loads(own.read_text())
    assert (mapped["classes"], mapped["data_classes"], base["classes"]) == (16, 19, 16)
    assert "mapped_from" not in mapped and mapped["miou"] == pytest.approx(base["miou"])
    assert mapped["iou"] == base["iou"] and mapped["miou13"] == pytest.approx(base["miou13"])
    # the same through its .onnx, and its 13-class protocol mapped from 16
    onnx_out = invoke("eval", run16 / "export" / "model.onnx", "data.classes=19",
                      "--classes", "19,13", "--json", tmp_path / "f.json")
    assert "scored on its 16" in " ".join(onnx_out.split())
    from_file = json.loads((tmp_path / "f.json").read_text())
    assert list(from_file["class_protocols"]) == ["16", "13"]
    assert from_file["class_protocols"]["13"]["mapped_from"] == 16


def foreign_names(src: Path, dst: Path) -> Path:
    """An ONNX whose metadata lists other class names (road renamed)."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "class_names":
            names = json.loads(prop.value)
            prop.value = json.dumps(["street", *names[1:]])
    onnx.save(model, str(dst))
    return dst


def test_onnx_with_other_class_names_is_refused(run19, data, tmp_path):
    other = foreign_names(run19 / "export" / "model.onnx", run19 / "export" / "other.onnx")
    try:
        line = refused("eval", other)
        assert "other.onnx predicts 19 classes (street, sidewalk, building, wall, ... (19)), " \
            "which are not the 19-class protocol's: it has no road" in line
        assert "--classes 13" not in line and "score it on a protocol" in line
        assert "it has no road" in refused("eval", other, "--classes", "13")
        assert "it has no road" in refused("predict", other, data / "cityscapes", "--out",
                                           tmp_path / "p", "--classes", "16")
    finally:
        other.unlink()


def test_predict_classes_writes_the_protocols_train_ids(run19, data, tmp_path):
    frames = data / "cityscapes" / "leftImg8bit" / "val"
    onnx_path = run19 / "export" / "model.onnx"
    invoke("predict", onnx_path, frames, "--out", tmp_path / "own")
    out = invoke("predict", onnx_path, frames, "--out", tmp_path / "p16", "--classes", "16")
    assert "labels: 16-class train ids, mapped by class name from the model's 19 (terrain, " \
        "truck, train -> 255)" in " ".join(out.split())
    to16 = class_protocol(16).train19_to_train
    for own in sorted((tmp_path / "own").rglob("*_label.png")):
        mapped = np.asarray(Image.open(tmp_path / "p16" / own.relative_to(tmp_path / "own")))
        assert (mapped == to16[np.asarray(Image.open(own))]).all()


def test_bench_and_export_score_on_the_data_protocol(run19, tmp_path):
    invoke("bench", run19, "data.classes=16", "--backend", "ort-cpu", "bench.time_budget_s=0.05",
           "bench.warmup=1", "bench.min_iters=2", "--json", tmp_path / "b.json")
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    row = next(r for r in rows if r["backend"] == "ort-cpu" and r["status"] == "ok")
    assert (row["classes"], row["mapped_from"]) == (16, 19)
    assert any("scored on the 16-class protocol by name" in n for n in row["notes"])
    # export keeps the model's own classes in its metadata; its evaluation is mapped
    out = invoke("export", run19, "data.classes=16", "--int8", "--out", tmp_path / "x")
    assert "scored on the 16-class protocol by name" in " ".join(out.split())
    with Segmenter(tmp_path / "x" / "model.int8.onnx", backend="cpu") as seg:
        assert seg.info.class_names == class_protocol(19).names
    files = json.loads((tmp_path / "x" / "export.json").read_text())["files"]
    evaluation = next(f for f in files if f["format"] == "onnx-int8")["evaluation"]
    assert (evaluation["classes"], evaluation["mapped_from"]) == (16, 19)


@pytest.mark.parametrize("verb", ["pseudo", "centroids"])
def test_training_inputs_refuse_another_protocol(run19, verb, tmp_path):
    line = refused(verb, run19, "data.classes=16", "--out", tmp_path / verb)
    assert "predicts 19 classes but data.classes=16: pseudo-labels and centroids need the " \
        "model's own classes" in line and "drop the data.classes override" in line
    assert not (tmp_path / verb).exists()


def test_selftrain_init_refuses_another_protocol(run19, data, tmp_path):
    keys = scaled_overrides("gta2cs-deeplabv2", data)
    line = refused("train", "selftrain", "gta2cs-deeplabv2", *keys, "data.classes=16",
                   "--init", run19, "--out", tmp_path / "st", "-q")
    assert "predicts 19 classes but data.classes=16: self-training's pseudo-labels and " \
        "centroids need the model's own classes" in line
