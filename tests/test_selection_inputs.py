"""What goes into the threshold-free selection, as the reference code computes it (issue 27):
the teacher features the consensus compares with the centroids, the online centroid update,
the offline centroid mean and the class-mix draw; each pinned on tiny hand-made tensors and
in a real self-training step against a transcription of the reference's loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from diga.config import load_config
from diga.data.pseudo_labels import StaleInputError
from diga.method import (
    CentroidAccumulator,
    EMATeacher,
    PhotometricAugment,
    class_mix_mask,
    consensus_pseudo_labels,
    per_image_class_means,
    update_centroids_per_image,
)
from diga.models import build_model
from diga.train import loop, steps
from diga.train.distributed import Distributed
from diga.train.loop import train_stage
from diga.train.speed import Precision
from diga.train.stages import ensure_centroids, run_selftrain
from diga.train.steps import Batch, StepSetup, selftrain_step
from diga.train.translate import build_translator

# the reference's centroid update and weighting (the schema's defaults; the demo preset pools)
REFERENCE = ["selftrain.centroid_update=per_image", "centroids.weighting=image"]

IGNORE = 255


# ---------------------------------------------------------------- the reference, transcribed


def reference_mean_vectors(feat: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                           num_classes: int) -> list[tuple[int, torch.Tensor]]:
    """``Class_Features.calculate_mean_vector`` of fy-vision/DiGA (calc_centroids.py), loop for
    loop: pixels where the label and the model's argmax are the class; (image, class) pairs
    with no or < 5 such pixels skipped; images in order, classes ascending."""
    argmax = logits.argmax(1)  # (N, h, w)
    out = []
    for n in range(feat.shape[0]):
        for t in range(num_classes):
            mask = ((labels[n] == t) & (argmax[n] == t)).float()  # (h, w)
            if mask.sum() == 0 or (mask > 0).sum() < 5:
                continue
            out.append((t, (feat[n] * mask).sum(dim=(1, 2)) / mask.sum()))
    return out


def reference_update(centroids: torch.Tensor, vectors: list[tuple[int, torch.Tensor]],
                     momentum: float) -> torch.Tensor:
    """``update_objective_SingleVector(..., start_mean=False)``: one moving-average update
    per vector, in order, skipping vectors that sum to 0."""
    mu = centroids.clone().double()
    for c, v in vectors:
        if v.sum().item() == 0:
            continue
        mu[c] = mu[c] * (1 - momentum) + momentum * v.double()
    return mu.float()


# ---------------------------------------------------------------- the method, hand-made tensors


def test_per_image_update_equals_the_reference_loop_order():
    torch.manual_seed(0)
    n, c, f = 6, 4, 3
    means = torch.randn(n, c, f)
    valid = torch.rand(n, c) > 0.4
    valid[:, 0] = True  # a class in every image: 6 updates in one step
    valid[:, 3] = False  # a class in none: its centroid stays
    start = torch.randn(c, f)
    for momentum in (1e-4, 0.3):  # 0.3: the order of the updates shows in the result
        loop = [(k, means[i, k]) for i in range(n) for k in range(c) if valid[i, k]]
        expected = reference_update(start, loop, momentum)
        got = update_centroids_per_image(start, means, valid, momentum)
        assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
        assert torch.equal(got[3], start[3])
    reversed_order = update_centroids_per_image(start, means.flip(0), valid.flip(0), 0.3)
    assert not torch.allclose(reversed_order[0], got[0], atol=1e-3)
    # A class present in all 2B images moves 2B times: ~6x the pooled update's step
    pooled_step = 1e-4 * (means[:, 0].mean(0) - start[0])
    moved = update_centroids_per_image(start, means, valid, 1e-4)[0] - start[0]
    assert torch.allclose(moved, 6 * pooled_step, rtol=1e-2, atol=1e-8)


def test_per_image_class_means_skip_small_and_zero_classes():
    feat = torch.zeros(2, 2, 4, 4)
    feat[0, 0] = 1.0
    feat[0, 1] = torch.arange(16.0).view(4, 4)
    labels = torch.full((2, 4, 4), IGNORE)
    labels[0, :2] = 0  # 8 pixels of class 0 in image 0
    labels[0, 3, :3] = 1  # 3 pixels of class 1: fewer than 5
    labels[1, :, :] = 2  # class 2 everywhere in image 1, whose features are all 0
    means, valid = per_image_class_means(feat, labels, num_classes=3, ignore_index=IGNORE)
    assert means.shape == (2, 3, 2)
    assert torch.allclose(means[0, 0], torch.tensor([1.0, torch.arange(8.0).mean()]))
    assert valid.tolist() == [[True, False, False], [False, False, False]]


def test_image_weighted_centroids_are_the_mean_of_per_image_means():
    # three images of 64 pixels, one a batch: class 0 on 50 pixels with feature 1, on 4 (< 5:
    # skipped) with feature 7, on 20 with feature 3; class 1 (feature 5) on the others.
    def batch(value: float, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
        feat = torch.full((1, 1, 8, 8), 5.0)
        logits = torch.zeros(1, 2, 8, 8)
        logits[0, 1] = 1.0
        flat = logits.view(1, 2, -1)
        flat[0, 0, :pixels] = 2.0
        feat.view(1, 1, -1)[0, 0, :pixels] = value
        return feat, logits

    image = CentroidAccumulator(2, 1, min_pixels=5, weighting="image")
    pixel = CentroidAccumulator(2, 1, min_pixels=5, weighting="pixel")
    for acc in (image, pixel):
        for value, pixels in ((1.0, 50), (7.0, 4), (3.0, 20)):
            acc.add(*batch(value, pixels))
    assert image.centroids()[0].item() == 2.0  # (1 + 3) / 2 images
    assert image.counts.tolist() == [2, 3]
    assert pixel.centroids()[0].item() == pytest.approx((50 * 1.0 + 20 * 3.0) / 70)
    assert pixel.counts.tolist() == [70, 14 + 60 + 44]
    assert image.centroids()[1].item() == pixel.centroids()[1].item() == 5.0


def test_class_mix_draw_with_ignore_as_the_reference():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    for k in range(4):  # classes 0-3, two rows each
        labels[0, 2 * k: 2 * k + 2] = k
    labels[0, 0, :3] = IGNORE  # IGNORE present too: n = 4 classes + IGNORE = 5 in the draw
    gen = torch.Generator().manual_seed(0)

    def pasted(lab: torch.Tensor, draw_ignore: bool) -> int:
        mask = class_mix_mask(lab, gen, IGNORE, num_classes=19, draw_ignore=draw_ignore)
        assert mask[lab == IGNORE].all()  # IGNORE is pasted whether drawn or not
        return len(set(lab[mask & (lab != IGNORE)].tolist()))

    drawn = [pasted(labels, True) for _ in range(400)]
    # floor(5 / 2) = 2 of 5 drawn; IGNORE among them with probability 2/5: one class pasted
    assert set(drawn) == {1, 2} and 0.3 < drawn.count(1) / len(drawn) < 0.5
    assert {pasted(labels, False) for _ in range(50)} == {2}  # METHOD: 2 of the 4 classes
    without_ignore = labels.clone()
    without_ignore[without_ignore == IGNORE] = 0
    assert {pasted(without_ignore, True) for _ in range(50)} == {2}  # nothing else to draw


def test_features_after_dropout_are_the_classifier_input():
    torch.manual_seed(0)
    model = build_model("deeplabv2_tiny", 19).train()
    model.head.dropout.p = 0.5
    x = torch.rand(2, 3, 32, 64)
    seen = []
    model.head.classifier.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    out = model(x)
    assert torch.equal(out.features, seen[-1])  # the map the 1x1 classifier received
    assert (out.features == 0).flatten(2).all(2).any()  # whole channels dropped
    model.features_after_dropout = False
    before = model(x)
    kept = seen[-1] != 0
    assert not torch.equal(before.features, seen[-1])
    assert torch.allclose(seen[-1][kept], 2 * before.features[kept])  # the same map, undropped
    model.eval()  # no dropout: one map either way
    pre = model.head.features(model.backbone(x))
    assert torch.equal(model(x).features, pre)
    model.features_after_dropout = True
    assert torch.equal(model(x).features, pre)


# ---------------------------------------------------------------- a real self-training step


def _step(freeze_bn: bool, *overrides: str):
    """One self-training step of the tiny model on a fixed 64x128 batch; returns the batch, the
    centroids before and after, the step's output and, for every forward of the teacher's
    head, its map before the dropout, after it, and its logits.

    The classifier is set so that the teacher predicts class 3 where feature channel 0 is above
    its median, else class 2, and the labels are 2 or 3: both agree on many pixels of every
    image, so the centroid update has (image, class) pairs to take.
    """
    cfg = load_config("demo", TINY + ["train.crop=64x128", "selftrain.centroid_momentum=0.5",
                                      *REFERENCE, *overrides])
    torch.manual_seed(0)
    student = build_model("deeplabv2_tiny", 19, freeze_bn=freeze_bn)
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(2, 4, (2, 64, 128), generator=g)
    labels[:, :8] = IGNORE
    batch = Batch(torch.rand(2, 3, 64, 128, generator=g), labels,
                  target=torch.rand(2, 3, 64, 128, generator=g),
                  pseudo_labels=torch.randint(2, 4, (2, 64, 128), generator=g))
    with torch.no_grad():
        classifier = student.head.classifier
        classifier.weight.zero_()
        classifier.bias.fill_(-10.0)
        channel0 = student.eval().head.features(student.backbone(batch.target))[:, 0]
        classifier.weight[3, 0] = 1.0
        classifier.bias[3] = -channel0.median()
        classifier.bias[2] = 0.0
    teacher = EMATeacher(student).train_mode(cfg.method.teacher_dropout, cfg.method.teacher_bn)
    teacher.model.features_after_dropout = cfg.selftrain.selection_features == "after_dropout"
    calls: list[dict[str, torch.Tensor]] = []
    head = teacher.model.head
    head.dropout.register_forward_hook(
        lambda m, i, o: calls.append({"pre": i[0].detach(), "post": o.detach()}))
    head.classifier.register_forward_hook(lambda m, i, o: calls[-1].update(logits=o.detach()))
    student.train()
    cpu = torch.device("cpu")
    setup = StepSetup(cfg, student, teacher.model, Precision.from_config(cfg.run, cpu),
                      PhotometricAugment.from_config(cfg.method.augment),
                      build_translator(cfg, cpu), torch.Generator().manual_seed(1), Distributed())
    centroids = torch.rand(19, student.feature_dim, generator=g)
    torch.manual_seed(3)  # the dropout masks
    out, updated = selftrain_step(setup, batch, centroids)
    return batch, centroids, updated, out, calls


def _small(labels: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def test_target_pass_alone_differs_from_the_joint_pass_only_with_batch_statistics():
    def teacher_on_target(freeze_bn: bool, target_pass: str) -> torch.Tensor:
        *_, calls = _step(freeze_bn, f"selftrain.teacher_target_pass={target_pass}",
                          "method.teacher_dropout=false")
        return calls[-1]["logits"][-2:]  # the teacher's logits on the 2 target images

    for freeze_bn, equal in ((True, True), (False, False)):
        alone, joint = teacher_on_target(freeze_bn, "separate"), teacher_on_target(freeze_bn, "joint")
        assert torch.allclose(alone, joint, atol=1e-5) == equal, freeze_bn


def test_step_selects_and_updates_as_the_reference_loops():
    """The reference (METHOD, the schema's defaults): the teacher on the target batch alone; features after
    its dropout; one centroid update per (image, class), target images then mixed sources."""
    batch, start, updated, out, calls = _step(False)
    views, target = calls  # the teacher on [clean; mixed] source views, then on x_t alone
    assert views["post"].shape[0] == 4 and target["post"].shape[0] == 2
    p = consensus_pseudo_labels(batch.pseudo_labels, target["post"], start, IGNORE)
    assert torch.equal(out.visuals["selected"], p)  # compared: the target pass's dropped map
    assert not torch.equal(consensus_pseudo_labels(batch.pseudo_labels, target["pre"], start,
                                                   IGNORE), p)  # the dropout matters here

    # the update, with every pseudo-label kept (selection=argmax) so both domains take part
    batch, start, updated, out, calls = _step(False, "selftrain.selection=argmax")
    views, target = calls
    size = target["post"].shape[-2:]
    vectors = (reference_mean_vectors(target["post"], target["logits"],
                                      _small(batch.pseudo_labels, size), 19)
               + reference_mean_vectors(views["post"][2:], views["logits"][2:],
                                        _small(batch.source_labels, size), 19))
    classes = [c for c, _ in vectors]
    assert classes.count(2) == 4 and classes.count(3) >= 2  # class 2 in all 4 images
    expected = reference_update(start, vectors, 0.5)
    assert torch.allclose(updated, expected, atol=1e-5), (updated - expected).abs().max()
    pooled = _step(False, "selftrain.selection=argmax", "selftrain.centroid_update=pooled")[2]
    assert not torch.allclose(pooled, expected, atol=1e-2)


def test_keys_give_the_earlier_inputs():
    """joint pass, features before the dropout, one pooled update: what diga did before."""
    earlier = ("selftrain.teacher_target_pass=joint", "selftrain.selection_features=before_dropout",
               "selftrain.centroid_update=pooled")
    batch, start, updated, out, calls = _step(False, *earlier)
    (joint,) = calls  # one teacher pass over [views; x_t]
    assert joint["pre"].shape[0] == 6
    p = consensus_pseudo_labels(batch.pseudo_labels, joint["pre"][4:], start, IGNORE)
    assert torch.equal(out.visuals["selected"], p)

    batch, start, updated, out, calls = _step(False, *earlier, "selftrain.selection=argmax")
    pre, logits = calls[0]["pre"], calls[0]["logits"]
    size = pre.shape[-2:]
    labels = torch.cat([_small(batch.pseudo_labels, size), _small(batch.source_labels, size)])
    feats, argmax = torch.cat([pre[4:], pre[2:4]]), torch.cat([logits[4:], logits[2:4]]).argmax(1)
    expected = start.clone()
    for c in range(19):  # one update per class, the mean over all its agreeing pixels
        mask = (labels == c) & (argmax == c)
        if mask.sum() >= 5:
            expected[c] = 0.5 * start[c] + 0.5 * feats.permute(0, 2, 3, 1)[mask].mean(0)
    assert not torch.equal(expected[2:4], start[2:4])
    assert torch.allclose(updated, expected, atol=1e-5)


def test_paper_presets_follow_the_reference():
    for preset in ("gta2cs-deeplabv2", "synthia2cs-deeplabv2"):
        cfg = load_config(preset, ["data.source.root=/d/s", "data.target.root=/d/t"])
        st = cfg.selftrain
        assert (st.teacher_target_pass, st.selection_features, st.centroid_update) == (
            "separate", "after_dropout", "per_image"), preset
        assert cfg.centroids.weighting == "image" and cfg.method.mix_draw_ignore, preset


# ---------------------------------------------------------------- through train_stage


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A 2-step warm-up run (self-training's init)."""
    run = tmp_path_factory.mktemp("selection") / "warm"
    train_stage(load_config("demo", TINY + ["train.steps=2"]), "warmup", run, show_progress=False)
    return run


@pytest.mark.parametrize("features", ["after_dropout", "before_dropout"])
def test_train_stage_gives_the_consensus_the_chosen_features(tmp_path, warm, monkeypatch,
                                                             features):
    inputs: list[torch.Tensor] = []

    class HookedTeacher(EMATeacher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model.head.classifier.register_forward_hook(
                lambda m, i, o: inputs.append(i[0].detach()))

    seen: list[torch.Tensor] = []
    real = steps.consensus_pseudo_labels

    def recording(p, f, c, ignore_index=255):
        seen.append(f)
        return real(p, f, c, ignore_index)

    monkeypatch.setattr(loop, "EMATeacher", HookedTeacher)
    monkeypatch.setattr(steps, "consensus_pseudo_labels", recording)
    cfg = load_config("demo", TINY + ["train.steps=1", f"selftrain.selection_features={features}"])
    run_selftrain(cfg, warm, tmp_path / "st", show_progress=False, regenerate=True)
    assert len(seen) == 1 and len(inputs) == 2  # one step: views pass, then the target pass
    assert torch.equal(seen[0], inputs[1]) == (features == "after_dropout")


def test_centroids_of_another_weighting_are_remade(tmp_path, warm):
    import shutil

    run = tmp_path / "warm"
    shutil.copytree(warm, run)
    (run / "centroids.safetensors").unlink(missing_ok=True)  # another test's
    cpu = torch.device("cpu")
    pixel = ensure_centroids(load_config("demo", TINY + ["centroids.weighting=pixel"]), run, cpu,
                             quiet=True)
    image_cfg = load_config("demo", TINY + ["centroids.weighting=image"])
    with pytest.raises(StaleInputError, match=r"weighting 'pixel'.*'image' \(centroids.weighting\)"):
        ensure_centroids(image_cfg, run, cpu, quiet=True)
    image = ensure_centroids(image_cfg, run, cpu, quiet=True, regenerate=True)
    assert not torch.allclose(pixel, image)
    assert torch.equal(ensure_centroids(image_cfg, run, cpu, quiet=True), image)  # kept now


@pytest.mark.parametrize("target_pass", ["separate", "joint"])
def test_auxiliary_logits_train_in_either_teacher_pass(target_pass):
    """HRNet + OCR's auxiliary logits take the CE, KD and class-mix terms whether the teacher
    sees the target batch alone or with the views (the joint pass split its outputs and dropped
    the auxiliary ones)."""
    cfg = load_config("demo", TINY + ["train.crop=32x64", "model.name=hrnet18_ocr",
                                      f"selftrain.teacher_target_pass={target_pass}"])
    torch.manual_seed(0)
    student = build_model("hrnet18_ocr", 19).train()
    teacher = EMATeacher(student).train_mode(cfg.method.teacher_dropout, cfg.method.teacher_bn)
    cpu = torch.device("cpu")
    setup = StepSetup(cfg, student, teacher.model, Precision.from_config(cfg.run, cpu),
                      PhotometricAugment.from_config(cfg.method.augment),
                      build_translator(cfg, cpu), torch.Generator().manual_seed(1), Distributed())
    g = torch.Generator().manual_seed(2)
    batch = Batch(torch.rand(2, 3, 32, 64, generator=g), torch.randint(0, 19, (2, 32, 64), generator=g),
                  target=torch.rand(2, 3, 32, 64, generator=g),
                  pseudo_labels=torch.randint(0, 19, (2, 32, 64), generator=g))
    out, _ = selftrain_step(setup, batch, torch.rand(19, student.feature_dim, generator=g))
    assert out.logs["aux"].item() > 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert student.head.aux[0].weight.grad.abs().sum() > 0  # the auxiliary branch learns
