from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_png, write_png16_rgb

from diga.config import load_config
from diga.data.check import check_datasets, format_reports
from diga.data.classes import SYNTHIA_TO_TRAIN19, class_protocol
from diga.data.datasets import InfiniteSampler, JointTransform, build_dataset
from diga.errors import UserError


def test_classes_agree_with_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    proto = class_protocol(19)
    official = sorted((x for x in labels if 0 <= x.trainId < 255), key=lambda x: x.trainId)
    assert list(proto.names) == [x.name for x in official]
    assert [tuple(c) for c in proto.palette] == [tuple(x.color) for x in official]
    assert list(proto.train_to_label_id) == [x.id for x in official]
    lut = proto.label_id_lut()
    for x in labels:
        if x.id >= 0:
            assert lut[x.id] == (x.trainId if 0 <= x.trainId < 255 else 255), x.name


def test_16_and_13_class_protocols():
    p16, p13 = class_protocol(16), class_protocol(13)
    assert set(class_protocol(19).names) - set(p16.names) == {"terrain", "truck", "train"}
    assert set(p16.names) - set(p13.names) == {"wall", "fence", "pole"}
    assert p16.train19_to_train[9] == 255 and p16.train19_to_train[10] == 9  # sky shifts down
    # every SYNTHIA class maps to a 16-class id
    lut = p16.synthia_lut()
    assert sorted(lut[list(SYNTHIA_TO_TRAIN19)].tolist()) == list(range(16))


def _scene(h=24, w=40, seed=0):
    """An image whose colour encodes its Cityscapes label id, so alignment can be checked."""
    rng = np.random.default_rng(seed)
    ids = np.array([7, 8, 11, 21, 23, 26])[rng.integers(0, 6, (h // 4, w // 4))]
    ids = ids.repeat(4, 0).repeat(4, 1).astype(np.uint8)
    image = np.stack([ids * 7, ids * 3, 255 - ids * 5], -1).astype(np.uint8)
    return image, ids


def make_cityscapes(root: Path, n_train=3, n_val=2):
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city = "aachen" if split == "train" else "frankfurt"
            stem = f"{city}_{i:06d}_000019"
            image, ids = _scene(seed=i + (100 if split == "val" else 0))
            write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    return root


def make_gta5(root: Path, n=3):
    for i in range(n):
        image, ids = _scene(seed=i)
        write_png(root / "images" / f"{i:05d}.png", image)
        write_png(root / "labels" / f"{i:05d}.png", ids)
    return root


def make_synthia(root: Path, n=3):
    inv = {v: k for k, v in SYNTHIA_TO_TRAIN19.items()}
    lut19 = class_protocol(19).label_id_lut()
    for i in range(n):
        image, ids = _scene(seed=i)
        write_png(root / "RGB" / f"{i:07d}.png", image)
        write_png16_rgb(root / "GT" / "LABELS" / f"{i:07d}.png",
                        np.vectorize(lambda v: inv.get(int(lut19[v]), 0))(ids).astype(np.uint16))
    return root


def make_folder(root: Path, n=3, classes=19):
    lut = class_protocol(classes).label_id_lut()
    for split in ("train", "val"):
        for i in range(n):
            image, ids = _scene(seed=i)
            write_png(root / "images" / split / f"f{i}.jpg", image)
            write_png(root / "labels" / split / f"f{i}.png", lut[ids])
    return root


@pytest.mark.parametrize("kind,maker", [("gta5", make_gta5), ("synthia", make_synthia),
                                        ("cityscapes", make_cityscapes), ("folder", make_folder)])
def test_real_layouts_decode_to_train_ids(tmp_path, kind, maker):
    root = maker(tmp_path / kind)
    classes = 16 if kind == "synthia" else 19
    cfg = load_config("demo", [f"data.source.kind={kind}", f"data.source.root={root}",
                               f"data.classes={classes}"])
    ds = build_dataset(cfg, "source", "train", train=False)
    assert len(ds) == 3
    item = ds[0]
    image, ids = _scene(seed=0)
    expected = class_protocol(classes).label_id_lut()[ids]
    np.testing.assert_array_equal(item["label"].numpy(), expected)
    if kind != "folder":  # jpeg in the folder fixture is lossy
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image)


def test_joint_transform_keeps_labels_aligned():
    image, ids = _scene(48, 80)
    t = JointTransform(resize=(40, 64), crop=(24, 32), scale_range=(0.8, 1.4), flip=True)
    img = torch.from_numpy(image).permute(2, 0, 1)
    lab = torch.from_numpy(ids)
    colour_of = {int(i): torch.tensor([i * 7, i * 3, 255 - i * 5]) for i in np.unique(ids)}
    for seed in range(8):
        oi, ol = t(img, lab, seed)
        assert oi.shape == (3, 24, 32) and ol.shape == (24, 32)
        # away from class borders (where bilinear blends colours), colour still encodes the label
        inner = ol == torch.nn.functional.max_pool2d(ol[None, None].float(), 3, 1, 1)[0, 0].long()
        inner &= ol == -torch.nn.functional.max_pool2d(-ol[None, None].float(), 3, 1, 1)[0, 0].long()
        for cls, colour in colour_of.items():
            sel = inner & (ol == cls)
            if sel.any():
                assert (oi[:, sel].float().median(1).values - colour).abs().max() < 4
    # same seed, same output: randomness is a function of the seed only
    assert torch.equal(t(img, lab, 3)[1], t(img, lab, 3)[1])


def test_small_image_is_padded_with_ignore():
    t = JointTransform(crop=(16, 16))
    oi, ol = t(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.uint8), 0)
    assert oi.shape == (3, 16, 16) and (ol == 255).sum() == 16 * 16 - 64


def test_infinite_sampler_resumes_and_shards():
    full = InfiniteSampler(5, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(23)]
    resumed = iter(InfiniteSampler(5, seed=3, start=11))
    assert [next(resumed) for _ in range(12)] == stream[11:]
    # each epoch is a permutation
    assert sorted(i for i, _ in stream[:5]) == list(range(5))
    # two ranks interleave the global stream exactly
    r0, r1 = iter(InfiniteSampler(5, 3, rank=0, world_size=2)), iter(InfiniteSampler(5, 3, rank=1, world_size=2))
    merged = [x for pair in zip([next(r0) for _ in range(6)], [next(r1) for _ in range(6)], strict=True) for x in pair]
    assert merged == stream[:12]


def test_data_check_reports_every_problem(tmp_path):
    gta = make_gta5(tmp_path / "gta", n=4)
    (gta / "images" / "00000.png").write_bytes(b"not a png")  # corrupt image
    write_png(gta / "labels" / "00001.png", np.zeros((5, 5), np.uint8))  # wrong size
    write_png(gta / "labels" / "00002.png", np.full((24, 40), 200, np.uint8))  # unknown ids
    (gta / "labels" / "00003.png").unlink()  # missing label
    cs = tmp_path / "cs"
    (cs / "leftImg8bit" / "train").mkdir(parents=True)  # empty splits
    cfg = load_config("demo", ["data.source.kind=gta5", f"data.source.root={gta}",
                               "data.target.kind=cityscapes", f"data.target.root={cs}"])
    text, n = format_reports(check_datasets(cfg))
    assert "cannot decode image" in text and "00000.png" in text
    assert "is 5x5, its image 40x24" in text
    assert "unknown ids [200]" in text
    assert "label missing" in text and "00003.png" in text
    assert "split 'train' is empty" in text
    assert "folder" in text and "leftImg8bit/val" in text  # the val split folder is missing
    assert n == 6


def test_bad_files_raise_one_clear_error(tmp_path):
    gta = make_gta5(tmp_path / "gta", n=3)
    (gta / "images" / "00000.png").write_bytes(b"garbage")
    write_png(gta / "labels" / "00001.png", np.zeros((5, 5), np.uint8))
    write_png(gta / "labels" / "00002.png", np.full((24, 40), 99, np.uint8))
    cfg = load_config("demo", ["data.source.kind=gta5", f"data.source.root={gta}"])
    ds = build_dataset(cfg, "source", "train", train=False)
    with pytest.raises(UserError, match="cannot decode image .*00000.png"):
        ds[0]
    with pytest.raises(UserError, match="label .*00001.png is 5x5 but its image is 40x24"):
        ds[1]
    with pytest.raises(UserError, match="unknown gta5 label ids \\[99\\]"):
        ds[2]
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    cfg = load_config("demo", ["data.source.kind=gta5", f"data.source.root={empty}"])
    with pytest.raises(UserError, match="split 'train' of gta5 .* is empty"):
        build_dataset(cfg, "source", "train", train=True)


def test_builtin_dataset_items(tiny):
    cfg = load_config("demo", tiny)
    src = build_dataset(cfg, "source", "train", train=True)
    val = build_dataset(cfg, "target", "val", train=False)
    assert len(src) == 8 and len(val) == 4
    item = src[(0, 123)]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 64)
    assert item["label"].shape == (32, 64)
    assert set(item["label"].unique().tolist()) <= set(range(19)) | {255}


def _camera_folder(root: Path, splits=("train", "val"), n=3) -> Path:
    """Own camera images in the folder layout (``images/<split>/*``) and no ``labels/``."""
    rng = np.random.default_rng(0)
    for split in splits:
        for i in range(n):
            write_png(root / "images" / split / f"cam{i}.png",
                      rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    return root


def test_data_check_notes_an_unlabelled_target_and_exits_0(tmp_path):
    from typer.testing import CliRunner

    from diga.cli.app import app

    cam = _camera_folder(tmp_path / "cam")
    keys = ["data.target.kind=folder", f"data.target.root={cam}", "data.builtin.source_train=4"]
    result = CliRunner().invoke(app, ["data", "check", "demo", *keys])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert ("note: target val has no labels: training and export work; diga eval and the mIoU "
            "columns need labels") in lines
    assert ("note: target train has no labels: normal for domain adaptation (no stage trains "
            "on target labels)") in lines
    assert "target val (folder) at " + str(cam) + ": 3 images, 0 labelled, 0 problems" in lines
    assert "all datasets readable" in lines
    # some val labels but not all: a broken copy, each missing one a problem
    write_png(cam / "labels" / "val" / "cam0.png", np.zeros((24, 40), np.uint8))
    result = CliRunner().invoke(app, ["data", "check", "demo", *keys])
    assert result.exit_code == 1, result.output
    assert result.output.count("label missing for") == 2 and "note: target val" not in result.output
    # the same images as a source, or as an eval target, need their labels: problems
    cfg = load_config("demo", ["data.source.kind=folder", f"data.source.root={cam}",
                               "eval.targets=[{kind: folder, root: " + str(cam) + "}]"])
    reports = {r.name: r for r in check_datasets(cfg)}
    assert len(reports["source train (folder)"].problems) == 3
    assert not reports["source train (folder)"].notes
    assert len(reports["eval target folder val (folder)"].problems) == 2


@pytest.fixture(scope="module")
def every_layout(tmp_path_factory) -> dict[str, Path]:
    """Every kind's root, in its real layout: make-demo's five and a folder layout."""
    from diga.data.builtin import BuiltinSpec, write_demo

    base = tmp_path_factory.mktemp("layouts")
    spec = BuiltinSpec(seed=0, size=(32, 64), source_train=1, target_train=1, target_val=1)
    roots = write_demo(base / "demo", spec, dg_targets=True)
    return {"gta5": roots["source_root"], "synthia": roots["synthia_root"],
            "cityscapes": roots["target_root"], "bdd100k": roots["bdd100k_root"],
            "mapillary": roots["mapillary_root"], "folder": make_folder(base / "cam")}


# a folder one level inside each layout, where a root is often given by mistake
INSIDE = {"gta5": "images", "synthia": "RGB", "cityscapes": "leftImg8bit", "bdd100k": "images",
          "mapillary": "validation", "folder": "images"}


@pytest.mark.parametrize("kind", list(INSIDE))
def test_a_root_one_level_off_names_the_right_one(every_layout, tmp_path, kind):
    from diga.data.layouts import find_samples

    root, split = every_layout[kind], "train" if kind in ("gta5", "synthia") else "val"
    assert find_samples(kind, root, split, "data.target.root")  # the right root reads
    too_deep = root / INSIDE[kind]
    with pytest.raises(UserError) as err:
        find_samples(kind, too_deep, split, "data.target.root")
    assert str(err.value).endswith(f"; did you mean {root}? ({kind} layout found there)")
    (tmp_path / "all").mkdir()  # the folder of every dataset, this one among others
    (tmp_path / "all" / "datasets").symlink_to(root, target_is_directory=True)
    (tmp_path / "all" / "notes").mkdir()
    with pytest.raises(UserError) as err:
        find_samples(kind, tmp_path / "all", split, "data.target.root")
    assert err.value.hint == f"did you mean {tmp_path / 'all' / 'datasets'}? ({kind} layout found there)"
    empty = tmp_path / "elsewhere"  # neither up nor down: the error as before, no guess
    empty.mkdir()
    with pytest.raises(UserError) as err:
        find_samples(kind, empty, split, "data.target.root")
    assert "did you mean" not in str(err.value)


def test_data_check_names_the_cityscapes_root_one_level_up(every_layout):
    from typer.testing import CliRunner

    from diga.cli.app import app

    cs = every_layout["cityscapes"]
    result = CliRunner().invoke(app, ["data", "check", "demo", "data.target.kind=cityscapes",
                                      f"data.target.root={cs / 'leftImg8bit'}",
                                      "data.builtin.source_train=4"])
    assert result.exit_code == 1
    problem = [line for line in result.output.splitlines() if "leftImg8bit/leftImg8bit/val" in line]
    assert problem == [f"  - cityscapes layout: folder {cs}/leftImg8bit/leftImg8bit/val not found "
                       f"(data.target.root); did you mean {cs}? (cityscapes layout found there)"]
