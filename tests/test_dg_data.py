"""Domain-generalisation data: the BDD100K and Mapillary Vistas layouts (tiny trees in their real
layouts, labels decoded by class name), ``make-demo`` writing them, and ``diga eval`` on several
targets in one command (a row each and their mean), for a checkpoint and an exported file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import diga_ok, write_png
from PIL import Image
from typer.testing import CliRunner

from diga.cli.app import app
from diga.config.schema import DomainData
from diga.data.builtin import BuiltinSpec, generate_scene, write_demo
from diga.data.builtin.files import dg_spec
from diga.data.classes import class_protocol
from diga.data.layouts import LabelDecoder, find_samples
from diga.data.mapillary import V12_LABELS
from diga.data.samples import SampleReader
from diga.data.targets import eval_targets, parse_target
from diga.errors import UserError

P19 = class_protocol(19)
ID = {name: i for i, name in enumerate(P19.names)}  # Cityscapes class -> 19-class train id

V12_NAMES = [label[0] for label in V12_LABELS]


def _names(prefix: str, *names: str) -> list[str]:
    return [f"{prefix}--{n}" for n in names]


# Mapillary Vistas v2.0's config_v2.0.json label names, in its order (124)
V20_NAMES = [
    *_names("animal", "bird", "ground-animal"),
    *_names("construction--barrier", "ambiguous", "concrete-block", "curb", "fence", "guard-rail",
            "other-barrier", "road-median", "road-side", "separator", "temporary", "wall"),
    *_names("construction--flat", "bike-lane", "crosswalk-plain", "curb-cut", "driveway",
            "parking", "parking-aisle", "pedestrian-area", "rail-track", "road", "road-shoulder",
            "service-lane", "sidewalk", "traffic-island"),
    *_names("construction--structure", "bridge", "building", "garage", "tunnel"),
    *_names("human--person", "individual", "person-group"),
    *_names("human--rider", "bicyclist", "motorcyclist", "other-rider"),
    *_names("marking--continuous", "dashed", "solid", "zigzag"),
    *_names("marking--discrete", "ambiguous", "arrow--left", "arrow--other", "arrow--right",
            "arrow--split-left-or-straight", "arrow--split-right-or-straight", "arrow--straight",
            "crosswalk-zebra", "give-way-row", "give-way-single", "hatched--chevron",
            "hatched--diagonal", "other-marking", "stop-line", "symbol--bicycle", "symbol--other",
            "text"),
    *_names("marking-only", "continuous--dashed", "discrete--crosswalk-zebra",
            "discrete--other-marking", "discrete--text"),
    *_names("nature", "mountain", "sand", "sky", "snow", "terrain", "vegetation", "water"),
    *_names("object", "banner", "bench", "bike-rack", "catch-basin", "cctv-camera",
            "fire-hydrant", "junction-box", "mailbox", "manhole", "parking-meter", "phone-booth",
            "pothole"),
    *_names("object--sign", "advertisement", "ambiguous", "back", "information", "other", "store"),
    "object--street-light",
    *_names("object--support", "pole", "pole-group", "traffic-sign-frame", "utility-pole"),
    "object--traffic-cone",
    *_names("object--traffic-light", "general-single", "pedestrians", "general-upright",
            "general-horizontal", "cyclists", "other"),
    *_names("object--traffic-sign", "ambiguous", "back", "direction-back", "direction-front",
            "front", "information-parking", "temporary-back", "temporary-front"),
    "object--trash-can",
    *_names("object--vehicle", "bicycle", "boat", "bus", "car", "caravan", "motorcycle",
            "on-rails", "other-vehicle", "trailer", "truck", "vehicle-group", "wheeled-slow"),
    "object--water-valve",
    *_names("void", "car-mount", "dynamic", "ego-vehicle", "ground", "static", "unlabeled"),
]


def test_the_label_lists_are_the_real_ones():
    assert len(V12_NAMES) == 66 and V12_NAMES[-1] == "void--unlabeled"
    # the reference's v1.2 ids (fy-vision/DiGA MapillaryLoader) name these classes
    for index, name in {13: "construction--flat--road", 24: "marking--general",
                        41: "object--manhole", 20: "human--rider--bicyclist",
                        55: "object--vehicle--car", 58: "object--vehicle--on-rails",
                        61: "object--vehicle--truck"}.items():
        assert V12_NAMES[index] == name
    assert len(V20_NAMES) == 124 and V20_NAMES[-1] == "void--unlabeled"
    assert V20_NAMES[21] == "construction--flat--road" and V20_NAMES[108] == "object--vehicle--car"


# -- tiny trees in the real layouts ---------------------------------------------------------------

def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _palettised(path: Path, indices: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)
    return path


def _config(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"labels": [{"name": n, "readable": n.split("--")[-1],
                                            "color": [0, 0, 0], "instances": False,
                                            "evaluate": True} for n in names]}))


def make_mapillary(root: Path, names: list[str], version: str, ids: np.ndarray,
                   splits=("training", "validation"), shapes=((6, 8), (9, 8))) -> Path:
    """A Mapillary tree: a config of ``names``; per split, an image per shape and its labels
    (``ids``' names as this config's indices, tiled to the shape)."""
    config = {"v1.2": "config.json", "v1.2-in-v2": "config_v1.2.json", "v2.0": "config_v2.0.json"}
    labels = {"v1.2": "labels", "v1.2-in-v2": "v1.2/labels", "v2.0": "v2.0/labels"}[version]
    _config(root / config[version], names)
    for split in splits:
        for i, (h, w) in enumerate(shapes):
            key = f"key{i:019d}"
            write_png(root / split / "images" / f"{key}.jpg", _image(h, w, i))
            _palettised(root / split / labels / f"{key}.png", np.resize(ids, (h, w)))
    return root


def _read(kind: str, root: Path, split: str = "val", classes: int = 19) -> SampleReader:
    return SampleReader(DomainData(kind=kind, root=root), split, classes, key="data.target")


def test_bdd100k_layout_reads_train_ids(tmp_path):
    root = tmp_path / "bdd100k"
    labels = np.array([[0, 7, 9, 14], [16, 18, 255, 12]], np.uint8).repeat(3, 0).repeat(2, 1)
    for split in ("train", "val"):
        write_png(root / "images/10k" / split / "7d2f7975-e0c1c5a7.jpg", _image(6, 8))
        write_png(root / "labels/sem_seg/masks" / split / "7d2f7975-e0c1c5a7.png", labels)
    write_png(root / "images/10k/test/ac517380-00000000.jpg", _image(6, 8))  # no labels
    val = _read("bdd100k", root)
    assert [s.name for s in val.samples] == ["7d2f7975-e0c1c5a7.jpg"] and val.has_labels
    image, label = val.load(0)
    assert image.shape == (6, 8, 3)
    np.testing.assert_array_equal(label, labels)
    _, label16 = _read("bdd100k", root, classes=16).load(0)  # terrain, truck, train: ignored
    np.testing.assert_array_equal(label16, class_protocol(16).train19_to_train[labels])
    assert label16[0, 4] == 255 and label16[0, 0] == 0
    assert not _read("bdd100k", root, "test").has_labels
    # the older download: seg/images/<split>, seg/labels/<split>/<stem>_train_id.png
    old = tmp_path / "bdd_seg"
    write_png(old / "seg/images/val/a59131a5-00000000.jpg", _image(6, 8))
    write_png(old / "seg/labels/val/a59131a5-00000000_train_id.png", labels)
    np.testing.assert_array_equal(_read("bdd100k", old).load(0)[1], labels)
    # an id above 18 (and not 255): one line naming the file and the ids
    write_png(root / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png",
              np.full((6, 8), 19, np.uint8))
    with pytest.raises(UserError, match=r"e0c1c5a7.png holds unknown bdd100k label ids \[19\]"):
        val.load(0)


def test_mapillary_v12_maps_classes_by_name(tmp_path):
    name = {n: i for i, n in enumerate(V12_NAMES)}
    ids = np.array([name[n] for n in ("marking--general", "human--rider--bicyclist",
                                      "construction--barrier--curb", "object--vehicle--on-rails",
                                      "nature--water", "object--traffic-sign--back",
                                      "marking--crosswalk-zebra", "void--unlabeled")])
    root = make_mapillary(tmp_path / "mv", V12_NAMES, "v1.2", ids)
    val = _read("mapillary", root)
    assert len(val) == 2 and {s.image.parent.parent.name for s in val.samples} == {"validation"}
    expected = [ID["road"], ID["rider"], ID["sidewalk"], ID["train"], 255, 255, 255, 255]
    sizes = set()
    for i in range(len(val)):
        image, label = val.load(i)
        sizes.add(image.shape[:2])
        np.testing.assert_array_equal(label, np.resize(np.array(expected, np.uint8), label.shape))
    assert sizes == {(6, 8), (9, 8)}  # images of several sizes, as Mapillary's cameras give
    assert len(_read("mapillary", root, "train")) == 2  # train -> training
    # by name, not by index: the same classes at other indices of a shuffled config
    shuffled = list(reversed(V12_NAMES))
    other = make_mapillary(tmp_path / "shuffled", shuffled, "v1.2",
                           np.array([shuffled.index(V12_NAMES[i]) for i in ids]))
    np.testing.assert_array_equal(_read("mapillary", other).load(0)[1],
                                  np.resize(np.array(expected, np.uint8), (6, 8)))
    # 16 classes: train is not one of them
    _, label16 = _read("mapillary", root, classes=16).load(0)
    assert label16[0, 0] == class_protocol(16).names.index("road") and label16[0, 3] == 255


def test_mapillary_v20_names_and_the_version_choice(tmp_path):
    name = {n: i for i, n in enumerate(V20_NAMES)}
    cases = {"construction--flat--road": "road", "marking--continuous--dashed": "road",
             "marking--discrete--arrow--left": "road", "marking-only--discrete--text": "road",
             "marking--discrete--crosswalk-zebra": None, "construction--flat--road-shoulder": None,
             "human--person--individual": "person", "human--person--person-group": "person",
             "human--rider--motorcyclist": "rider", "object--traffic-light--pedestrians":
             "traffic light", "object--traffic-sign--direction-front": "traffic sign",
             "object--traffic-sign--back": None, "object--support--pole-group": "pole",
             "object--vehicle--vehicle-group": "car", "object--vehicle--truck": "truck",
             "object--vehicle--caravan": None, "nature--terrain": "terrain",
             "void--unlabeled": None}
    ids = np.array([name[n] for n in cases])
    expected = np.array([255 if c is None else ID[c] for c in cases.values()], np.uint8)
    root = make_mapillary(tmp_path / "mv", V20_NAMES, "v2.0", ids, shapes=((3, 18),))
    np.testing.assert_array_equal(_read("mapillary", root).load(0)[1], np.resize(expected, (3, 18)))
    # the v2.0 download ships v1.2 labels too: v1.2 unless the split asks for v2.0
    v12_ids = np.array([V12_NAMES.index("object--vehicle--bus")])
    make_mapillary(root, V12_NAMES, "v1.2-in-v2", v12_ids, shapes=((3, 18),))
    assert set(_read("mapillary", root).load(0)[1].ravel()) == {ID["bus"]}
    np.testing.assert_array_equal(_read("mapillary", root, "val@v2.0").load(0)[1],
                                  np.resize(expected, (3, 18)))
    assert set(_read("mapillary", root, "val@v1.2").load(0)[1].ravel()) == {ID["bus"]}
    with pytest.raises(UserError, match="asks for version v3"):
        _read("mapillary", root, "val@v3")
    with pytest.raises(UserError, match="the v2.0 config not found"):
        _read("mapillary", make_mapillary(tmp_path / "old", V12_NAMES, "v1.2", v12_ids),
              "val@v2.0")


def test_mapillary_errors_are_one_line(tmp_path):
    root = make_mapillary(tmp_path / "mv", V12_NAMES, "v1.2", np.array([13, 70, 66]))
    with pytest.raises(UserError, match=r"unknown mapillary v1.2 label ids \[66, 70\]") as err:
        _read("mapillary", root).load(0)
    assert "66 labels of config.json" in err.value.hint
    label = next((root / "validation/labels").iterdir())
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(label)  # a colour rendering
    with pytest.raises(UserError, match="is in mode RGB, not Mapillary's label indices"):
        LabelDecoder("mapillary", P19, root=root, split="val").decode(label)
    (root / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the Mapillary config"):
        _read("mapillary", root)
    (root / "config.json").unlink()
    with pytest.raises(UserError, match="config.json, config_v1.2.json or config_v2.0.json not "
                       "found .*data.target.root"):
        find_samples("mapillary", root, "val", "data.target.root")


# -- make-demo ------------------------------------------------------------------------------------

def test_make_demo_writes_the_dg_layouts_and_the_loaders_read_them(tmp_path):
    spec = BuiltinSpec(seed=4, size=(32, 64), source_train=1, target_train=3, target_val=2)
    roots = write_demo(tmp_path / "d", spec, dg_targets=True)
    assert roots["bdd100k_root"] == tmp_path / "d/bdd100k"
    config = json.loads((roots["mapillary_root"] / "config.json").read_text())
    assert [label["name"] for label in config["labels"]] == V12_NAMES
    assert config["labels"][24]["readable"] == "Lane Marking - General"
    for kind in ("bdd100k", "mapillary"):
        for split, n in (("val", 2), ("train", 2)):  # train as small as val
            reader = _read(kind, roots[f"{kind}_root"], split)
            assert len(reader) == n and reader.has_labels
            for i in range(n):
                image, label = reader.load(i)
                truth_image, truth = generate_scene(dg_spec(spec, kind, i), "target", split, i)
                assert image.shape == truth_image.shape  # JPEG: the pixels differ a little
                assert np.abs(image.astype(int) - truth_image).mean() < 8
                np.testing.assert_array_equal(label, truth)  # every class, and ignore
    bdd = _read("bdd100k", roots["bdd100k_root"])
    assert bdd.image_size(0) == (36, 64)  # 720:1280
    mv = _read("mapillary", roots["mapillary_root"])
    assert [mv.image_size(i) for i in range(2)] == [(48, 64), (36, 64)]  # 4:3 and 16:9
    label = next((roots["mapillary_root"] / "validation/labels").iterdir())
    assert Image.open(label).mode == "P"
    # other scenes than the Cityscapes layout's
    cs = _read("cityscapes", roots["target_root"])
    assert not np.array_equal(cs.load(0)[1][:32], bdd.load(0)[1][:32])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """make-demo through the CLI, tiny: every layout."""
    out = tmp_path_factory.mktemp("dg") / "d"
    text = diga_ok("data", "make-demo", out, "--size", "32x64", "--source-train", "2",
                   "--target-train", "2", "--target-val", "3")
    return out, text


def test_make_demo_cli_and_data_check_on_the_dg_layouts(demo, tmp_path):
    out, text = demo
    assert f"BDD100K layout, 36x64): {out / 'bdd100k'}" in " ".join(text.split())
    assert "Mapillary Vistas v1.2 layout, 36x64 and 48x64" in text
    keys = ["data.source.kind=gta5", f"data.source.root={out / 'gta5'}",
            "data.target.kind=bdd100k", f"data.target.root={out / 'bdd100k'}",
            f"eval.targets=[{{kind: mapillary, root: {out / 'mapillary'}}}]"]
    text = " ".join(diga_ok("data", "check", *keys).split())
    assert "target val (bdd100k)" in text and "eval target mapillary val (mapillary)" in text
    assert "all datasets readable" in text
    # a bad id in a copy: reported, exit 1
    bad = tmp_path / "mv"
    bad.mkdir()
    (bad / "config.json").write_text((out / "mapillary/config.json").read_text())
    make_mapillary(bad, V12_NAMES, "v1.2", np.array([99]), splits=("validation",),
                   shapes=((4, 4),))
    (bad / "training/images").mkdir(parents=True)
    result = CliRunner().invoke(app, ["data", "check", "data.target.kind=mapillary",
                                      f"data.target.root={bad}"])
    assert result.exit_code == 1 and "unknown ids [99]" in result.output


# -- diga eval on several targets -----------------------------------------------------------------

def test_target_specs():
    t = parse_target("bdd=bdd100k:/data/bdd,resize=360x640,val_split=val")
    assert (t.name, t.kind, str(t.root), t.resize, t.val_split) == ("bdd", "bdd100k", "/data/bdd",
                                                                    (360, 640), "val")
    t = parse_target("mapillary:/data/a,b:c,val_split=val@v2.0")  # commas, colons in paths
    assert (t.name, str(t.root), t.resize, t.val_split) == (None, "/data/a,b:c", None, "val@v2.0")
    assert parse_target("builtin").kind == "builtin"
    for spec, message in (("bdd:/x", "unknown dataset kind 'bdd'"),
                          ("none:/x", "unknown dataset kind 'none'"),  # no dataset to score
                          ("bdd100k", "no dataset folder"),
                          ("bdd100k:/x,rezise=1x2", "unknown option 'rezise'"),
                          ("bdd100k:/x,resize=big", "resize: expected a size")):
        with pytest.raises(UserError, match=message):
            parse_target(spec)


def _targets(out: Path) -> list[str]:
    return ["--target", f"cityscapes:{out / 'cityscapes'},resize=32x64",
            "--target", f"bdd=bdd100k:{out / 'bdd100k'}",
            "--target", f"mapillary:{out / 'mapillary'},resize=24x32"]


def _check_table(text: str, path: Path, run_sizes: dict[str, str]) -> dict:
    result = json.loads(path.read_text())
    rows = result["targets"]
    assert list(rows) == ["cityscapes", "bdd", "mapillary"]
    assert [rows[n]["images"] for n in rows] == [3, 3, 3]
    assert {n: r["protocol"]["run_size"] for n, r in rows.items()} == run_sizes
    assert rows["mapillary"]["kind"] == "mapillary"
    assert result["mean_miou"] == pytest.approx(np.mean([r["miou"] for r in rows.values()]))
    assert "mIoU per target" in text and "mean" in text and "bdd100k" in text
    return result


def test_eval_of_a_checkpoint_on_several_targets(demo, run_and_onnx, tmp_path):
    out, _ = demo
    run, _ = run_and_onnx
    text = diga_ok("eval", run, "run.device=cpu", "eval.scales=[2.0,1.0]", *_targets(out),
                   "--json", tmp_path / "dg.json", "--save-predictions", tmp_path / "pred")
    result = _check_table(text, tmp_path / "dg.json", {"cityscapes": "32x64",
                                                       "bdd": "each image's own size",
                                                       "mapillary": "24x32"})
    assert result["mean_single_scale_miou"] == pytest.approx(
        np.mean([r["single_scale"]["miou"] for r in result["targets"].values()]))
    assert {p.parent.name for p in (tmp_path / "pred").rglob("*.png")} >= {"bdd", "mapillary"}
    # the same targets from the config (eval.targets), and --classes: a mean per protocol
    listed = ", ".join([f"{{name: cityscapes, kind: cityscapes, root: {out / 'cityscapes'}, "
                        "resize: 32x64}", f"{{name: bdd, kind: bdd100k, root: {out / 'bdd100k'}}}",
                        f"{{kind: mapillary, root: {out / 'mapillary'}, resize: 24x32}}"])
    diga_ok("eval", run, "run.device=cpu", f"eval.targets=[{listed}]", "--classes", "19,16",
            "--json", tmp_path / "cfg.json")
    by_config = json.loads((tmp_path / "cfg.json").read_text())
    assert by_config["mean_miou"] == pytest.approx(result["mean_single_scale_miou"])
    assert set(by_config["mean_miou_by_classes"]) == {"19", "16"}


def test_eval_of_an_exported_file_on_several_targets(demo, run_and_onnx, tmp_path):
    out, _ = demo
    _, onnx_path = run_and_onnx
    text = diga_ok("eval", onnx_path, "run.device=cpu", *_targets(out), "--json",
                   tmp_path / "dg.json")
    _check_table(text, tmp_path / "dg.json", {"cityscapes": "32x64",
                                              "bdd": "each image's own size",
                                              "mapillary": "24x32"})
    assert "runs at 24x32" in json.loads((tmp_path / "dg.json").read_text())[
        "targets"]["mapillary"]["backend"]


def _one_error_line(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), \
        result.output
    return lines[0]


def test_a_missing_target_is_one_line_naming_it(demo, run_and_onnx, tmp_path):
    out, _ = demo
    run, onnx_path = run_and_onnx
    for model in (run, onnx_path):
        line = _one_error_line("eval", model, "--target", f"bdd=bdd100k:{tmp_path / 'nowhere'}")
        assert "target 'bdd'" in line and "nowhere" in line
    unlabelled = tmp_path / "bdd"
    write_png(unlabelled / "images/10k/val/a.jpg", _image(4, 4))
    line = _one_error_line("eval", run, "--target", f"bdd100k:{unlabelled}")
    assert "target 'bdd100k': 1 of 1 images" in line and "labels/sem_seg/masks" in line
    line = _one_error_line("eval", run, "--target", f"mapillary:{out / 'bdd100k'}")
    assert "target 'mapillary'" in line and "config.json" in line
    with pytest.raises(UserError, match="two eval targets are named 'bdd100k'"):
        from diga.config import load_config

        eval_targets(load_config("demo"), [f"bdd100k:{out / 'bdd100k'}"] * 2)


# -- training with no target (domain generalisation) ---------------------------------------------

def test_dg_warmup_reads_no_target_and_the_rest_says_so(demo, tmp_path, tiny):
    """data.target.kind=none: the warm-up without the cross-domain mixture trains on the source
    alone (no target val either); everything that needs target images says so in one line;
    export calibrates on source images and leaves the mIoU to diga eval --target."""
    from test_cli import one_error_line

    out, _ = demo
    keys = [*tiny, "data.source.kind=gta5", f"data.source.root={out / 'gta5'}",
            "data.source.resize=32x56", "data.target.kind=none", "warmup.mixture=false",
            "warmup.translator=none", "export.input_size=32x64", "export.calib_images=2",
            "export.parity_images=2", "train.eval_every=2"]
    run = tmp_path / "dg"
    text = " ".join(diga_ok("train", "warmup", "demo", *keys, "--out", run, "-q").split())
    assert f"no target: score it with diga eval {run} --target KIND:ROOT" in text
    assert "target_val" not in (run / "metrics.jsonl").read_text()

    def fails(*args) -> str:
        return one_error_line(CliRunner().invoke(app, [str(a) for a in args]))

    line = fails("train", "warmup", "demo", *keys, "warmup.mixture=true", "warmup.translator=fda",
                 "--out", tmp_path / "fda")
    assert "the cross-domain mixture's FDA needs target images, and data.target.kind is none" in line
    assert "warmup.mixture=false" in line
    line = fails("train", "selftrain", "demo", *keys, "--init", run, "--out", tmp_path / "st")
    assert "needs target images" in line
    for command in (("eval", run), ("pseudo", run, "--out", tmp_path / "p")):
        line = fails(*command)
        assert "this needs target images and data.target.kind is none" in line, command
        assert "--target KIND:ROOT" in line
    assert not (tmp_path / "p").exists()

    diga_ok("export", run, "--int8")
    summary = json.loads((run / "export" / "export.json").read_text())
    assert any("no target domain (domain generalisation)" in n for n in summary["notes"])
    assert {f["format"] for f in summary["files"]} == {"onnx", "onnx-int8"}
    ev = json.loads(Path(diga_ok_json(run / "export" / "model.onnx", out, tmp_path)).read_text())
    assert list(ev["targets"]) == ["cityscapes", "bdd", "mapillary"]


def diga_ok_json(model: Path, out: Path, tmp_path: Path) -> Path:
    path = tmp_path / "eval.json"
    diga_ok("eval", model, *_targets(out), "--json", path)
    return path
