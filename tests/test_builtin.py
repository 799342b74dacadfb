"""The built-in benchmark: determinism, label sanity, domain statistics, on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diga.data.builtin import DOMAINS, SPLITS, BuiltinSpec, generate_scene, write_demo
from diga.data.classes import IGNORE_INDEX, class_protocol
from diga.errors import UserError

SMALL = BuiltinSpec(seed=3, size=(64, 128), source_train=30, target_train=30, target_val=10)
ROAD = 0


def _frequencies(spec: BuiltinSpec, domain: str, n: int) -> np.ndarray:
    counts = np.zeros(256)
    for i in range(n):
        counts += np.bincount(generate_scene(spec, domain, "train", i)[1].ravel(), minlength=256)
    return counts[:19] / counts[:19].sum()


def test_counts_and_unknown_splits() -> None:
    spec = BuiltinSpec(source_train=5, target_train=6, target_val=7)
    assert [spec.count(d, s) for d in DOMAINS for s in SPLITS[d]] == [5, 6, 7]
    with pytest.raises(ValueError):
        spec.count("source", "val")
    with pytest.raises(ValueError):
        spec.count("night", "train")
    with pytest.raises(IndexError):
        generate_scene(spec, "target", "val", 7)
    assert BuiltinSpec(size=[32, 48]).size == (32, 48)  # YAML lists become tuples
    with pytest.raises(ValueError):
        BuiltinSpec(size=(8, 8))


def test_deterministic_and_order_free() -> None:
    later = generate_scene(SMALL, "target", "train", 5)  # made first, out of order
    for domain, split in (("source", "train"), ("target", "train"), ("target", "val")):
        a_img, a_lbl = generate_scene(SMALL, domain, split, 2)
        b_img, b_lbl = generate_scene(SMALL, domain, split, 2)
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
        c_img, c_lbl = generate_scene(SMALL, domain, split, 3)
        assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lbl, c_lbl)
    again = generate_scene(SMALL, "target", "train", 5)
    assert all(np.array_equal(x, y) for x, y in zip(later, again, strict=True))
    other_seed = BuiltinSpec(seed=4, size=SMALL.size, source_train=30)
    assert not np.array_equal(generate_scene(other_seed, "source", "train", 2)[1],
                              generate_scene(SMALL, "source", "train", 2)[1])  # fmt: skip


@pytest.mark.parametrize("size", [(64, 128), (48, 80), (16, 40), (100, 100)])
@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_dtypes_and_label_values(size: tuple[int, int], domain: str) -> None:
    spec = BuiltinSpec(seed=1, size=size, source_train=4, target_train=4)
    for i in range(4):
        image, label = generate_scene(spec, domain, "train", i)
        assert image.shape == (*size, 3) and image.dtype == np.uint8
        assert label.shape == size and label.dtype == np.uint8
        assert set(np.unique(label)) <= set(range(19)) | {IGNORE_INDEX}


def test_typical_images_hold_many_classes() -> None:
    for domain in DOMAINS:
        per_image = [len(set(np.unique(generate_scene(SMALL, domain, "train", i)[1])) - {255})
                     for i in range(20)]  # fmt: skip
        assert np.mean(per_image) >= 6, (domain, per_image)


def test_source_and_target_share_class_statistics() -> None:
    source, target = _frequencies(SMALL, "source", 30), _frequencies(SMALL, "target", 30)
    assert 0.5 * np.abs(source - target).sum() < 0.15
    for freq in (source, target):  # street-scene shape: road and buildings dominate
        assert freq[ROAD] > 0.2 and freq[2] > 0.1 and (freq > 0).sum() >= 15


def test_domains_differ_in_appearance() -> None:
    def road_colour(domain: str) -> np.ndarray:
        pixels = [img[lbl == ROAD] for img, lbl in
                  (generate_scene(SMALL, domain, "train", i) for i in range(10))]  # fmt: skip
        return np.concatenate(pixels).astype(np.float64).mean(0)

    assert np.linalg.norm(road_colour("source") - road_colour("target")) > 20

    # The target is noisy: neighbouring road pixels differ far more than in the clean source.
    def roughness(domain: str) -> float:
        img, lbl = generate_scene(SMALL, domain, "train", 0)
        both = (lbl[:, 1:] == ROAD) & (lbl[:, :-1] == ROAD)
        return float(np.median(np.abs(np.diff(img.astype(np.int16), axis=1)).sum(-1)[both]))

    assert roughness("target") > 3 * roughness("source") + 5


def test_write_demo_layout_and_labels(tmp_path: Path) -> None:
    spec = BuiltinSpec(seed=2, size=(32, 64), source_train=2, target_train=3, target_val=2)
    calls: list[tuple[int, int]] = []
    roots = write_demo(tmp_path / "demo", spec, progress=lambda i, n: calls.append((i, n)))
    assert roots == {"source_root": tmp_path / "demo" / "gta5",
                     "synthia_root": tmp_path / "demo" / "synthia",
                     "target_root": tmp_path / "demo" / "cityscapes"}  # fmt: skip
    assert calls == [(i, 9) for i in range(1, 10)]
    written = sorted(
        str(p.relative_to(tmp_path / "demo")) for p in (tmp_path / "demo").rglob("*.png")
    )
    stems = {"train": ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                       "bochum/bochum_000000_000019"],
             "val": ["frankfurt/frankfurt_000000_000019", "frankfurt/frankfurt_000001_000019"]}  # fmt: skip
    expected = [f"gta5/{kind}/0000{i}.png" for kind in ("images", "labels") for i in (1, 2)]
    expected += [f"synthia/{kind}/0000{i}.png" for kind in ("RGB", "GT/LABELS") for i in (1, 2)]
    for split, names in stems.items():
        expected += [f"cityscapes/leftImg8bit/{split}/{s}_leftImg8bit.png" for s in names]
        expected += [f"cityscapes/gtFine/{split}/{s}_gtFine_labelIds.png" for s in names]
    assert written == sorted(expected)

    lut = class_protocol(19).label_id_lut()
    valid_ids = set(class_protocol(19).train_to_label_id.tolist()) | {0}
    gta = BuiltinSpec(seed=2, size=(35, 64), source_train=2, target_train=3, target_val=2)
    pairs = [(gta, "source", "train", 0, "gta5/images/00001.png", "gta5/labels/00001.png"),
             (spec, "target", "train", 1, "cityscapes/leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png",
              "cityscapes/gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png"),
             (spec, "target", "val", 1, "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png",
              "cityscapes/gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png")]  # fmt: skip
    for which, domain, split, index, image_name, label_name in pairs:
        image, label = generate_scene(which, domain, split, index)
        on_disk = Image.open(tmp_path / "demo" / label_name)
        assert on_disk.mode == "L"
        ids = np.asarray(on_disk)
        assert set(np.unique(ids)) <= valid_ids
        assert np.array_equal(lut[ids], label)  # ignore (255) was written as 0, read back as 255
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "demo" / image_name).convert("RGB")), image
        )


def test_write_demo_synthia_layout_reads_back_at_its_aspect_ratio(tmp_path: Path) -> None:
    """SYNTHIA: 16-bit RGB labels (class id in the first channel), read by the real loader into
    the 16-class protocol; sources at their datasets' aspect ratios, the target at its size."""
    from diga.data.layouts import LabelDecoder, find_samples, read_image

    spec = BuiltinSpec(seed=3, size=(64, 128), source_train=2, target_train=1, target_val=1)
    roots = write_demo(tmp_path / "demo", spec)
    assert read_image(roots["source_root"] / "images" / "00001.png").shape == (70, 128, 3)  # 1052/1914
    samples = find_samples("synthia", roots["synthia_root"], "train", "data.source.root")
    assert [s.image.name for s in samples] == ["00001.png", "00002.png"]
    import png

    width, height, _, info = png.Reader(filename=str(samples[1].label)).read()
    assert (width, height) == (128, 76) and info["bitdepth"] == 16 and info["planes"] == 3
    image, label19 = generate_scene(BuiltinSpec(seed=3, size=(76, 128), source_train=2,
                                                target_train=1, target_val=1), "source", "train", 1)
    assert np.array_equal(read_image(samples[1].image), image)
    protocol = class_protocol(16)
    decoded = LabelDecoder("synthia", protocol).decode(samples[1].label)
    assert np.array_equal(decoded, protocol.train19_to_train[label19])  # no terrain/truck/train
    cs = find_samples("cityscapes", roots["target_root"], "val", "data.target.root")
    assert read_image(cs[0].image).shape == (64, 128, 3)


def test_write_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    spec = BuiltinSpec(size=(16, 32), source_train=1, target_train=1, target_val=1)
    with pytest.raises(UserError) as err:
        write_demo(tmp_path, spec)
    assert err.value.hint and "empty" in err.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    write_demo(tmp_path / "fresh", spec)  # a new folder is fine, and so is an empty one
    (tmp_path / "empty").mkdir()
    write_demo(tmp_path / "empty", spec)
