"""The method's maths on tiny, hand-computed tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diga.method import (
    CentroidAccumulator,
    EMATeacher,
    PhotometricAugment,
    centroid_weights,
    class_feature_sums,
    class_mix_mask,
    consensus_pseudo_labels,
    fda,
    mix,
    segmentation_ce,
    soft_ce,
    symmetric_distillation,
    threshold_pseudo_labels,
    update_centroids,
)

IGNORE = 255
LN3 = math.log(3.0)


# ---------------------------------------------------------------- distillation


def _views(t_a, t_b, s_a, s_b, requires_grad=False):
    """Stack 1x1-pixel, 2-class logits as [a; b] for teacher and student: (2, 2, 1, 1)."""
    teacher = torch.tensor([t_a, t_b], dtype=torch.float64).view(2, 2, 1, 1)
    student = torch.tensor([s_a, s_b], dtype=torch.float64).view(2, 2, 1, 1)
    return teacher.requires_grad_(requires_grad), student.requires_grad_(requires_grad)


def test_symmetric_distillation_matches_hand_computation():
    # T(a) -> p = (1/4, 3/4); S(b) uniform -> H = ln 2.
    # T(b) uniform -> p = (1/2, 1/2); S(a) -> log-probs (ln 3/4, ln 1/4) -> H = 0.5 ln(16/3).
    teacher, student = _views([0.0, LN3], [0.0, 0.0], [LN3, 0.0], [0.0, 0.0])
    expected = math.log(2.0) + 0.5 * 0.5 * math.log(16.0 / 3.0)
    assert symmetric_distillation(teacher, student).item() == pytest.approx(expected, rel=1e-12)
    assert symmetric_distillation(teacher, student, weight=0.0).item() == pytest.approx(
        math.log(2.0), rel=1e-12
    )
    # soft_ce alone: H(softmax(T(a)), S(a)) = -(1/4 ln 3/4 + 3/4 ln 1/4)
    self_pair = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert soft_ce(teacher[:1], student[:1]).item() == pytest.approx(self_pair, rel=1e-12)


def test_symmetric_distillation_is_cross_view_only():
    base = symmetric_distillation(*_views([0.0, LN3], [0.0, 0.0], [LN3, 0.0], [0.0, 0.0]))
    # Changing T(a) only changes H(T(a), S(b)): S(b) is uniform, so that term stays ln 2
    # whatever T(a) is. A self-pair H(T(a), S(a)) would have changed.
    changed_ta = symmetric_distillation(*_views([5.0, -1.0], [0.0, 0.0], [LN3, 0.0], [0.0, 0.0]))
    assert changed_ta.item() == pytest.approx(base.item(), rel=1e-12)
    # With weight 0 the loss depends on T(a) and S(b) only.
    w0 = symmetric_distillation(*_views([0.0, LN3], [0.0, 0.0], [LN3, 0.0], [0.0, 0.0]), 0.0)
    w0_other = symmetric_distillation(
        *_views([0.0, LN3], [7.0, -2.0], [-3.0, 4.0], [0.0, 0.0]), 0.0
    )
    assert w0.item() == pytest.approx(w0_other.item(), rel=1e-12)
    teacher, student = _views([0.0, LN3], [1.0, 2.0], [LN3, 0.0], [0.5, -0.5], requires_grad=True)
    symmetric_distillation(teacher, student, weight=0.0).backward()
    assert torch.all(student.grad[0] == 0) and torch.any(student.grad[1] != 0)


def test_symmetric_distillation_gradients_reach_student_only():
    torch.manual_seed(0)
    teacher = torch.randn(4, 3, 2, 2, requires_grad=True)
    student = torch.randn(4, 3, 2, 2, requires_grad=True)
    symmetric_distillation(teacher, student).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.all(student.grad.abs().sum(dim=(1, 2, 3)) > 0)
    with pytest.raises(ValueError):
        symmetric_distillation(torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2))


# ---------------------------------------------------------------- segmentation CE


def test_segmentation_ce_matches_cross_entropy_and_survives_all_ignore():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    labels = torch.randint(0, 4, (2, 3, 5))
    labels[0, 0] = IGNORE
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(segmentation_ce(logits, labels), expected, atol=1e-6)

    all_ignore = torch.full((2, 3, 5), IGNORE)
    loss = segmentation_ce(logits, all_ignore)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)

    small = torch.randn(1, 4, 2, 3)
    big_labels = torch.randint(0, 4, (1, 4, 5))
    up = F.interpolate(small, size=(4, 5), mode="bilinear", align_corners=True)
    assert torch.allclose(segmentation_ce(small, big_labels), F.cross_entropy(up, big_labels))


# ---------------------------------------------------------------- class mix


def _labels_with_known_classes() -> torch.Tensor:
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [2, 2, 3, 3], [IGNORE, 0, 1, 2], [3, 3, 3, IGNORE]],  # {0,1,2,3}
            [[5, 5, 5, 5], [5, IGNORE, 5, 5], [5, 5, 5, 5], [5, 5, 5, 5]],  # {5}
            [[1, 4, 6, 6], [1, 4, 6, 6], [1, 4, 6, 6], [1, 4, 6, 6]],  # {1,4,6}
            [[IGNORE] * 4] * 4,  # nothing
        ]
    )
    return labels


@pytest.mark.parametrize("num_classes", [None, 19])  # 19: the training step's, no host read
def test_class_mix_mask_takes_half_the_classes_plus_ignore(num_classes):
    labels = _labels_with_known_classes()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        mask = class_mix_mask(labels, generator=gen, num_classes=num_classes)
        assert mask.dtype == torch.bool and mask.shape == labels.shape
        assert torch.all(mask[labels == IGNORE])
        for img, n_expected in zip(range(4), [2, 0, 1, 0], strict=True):
            lab, m = labels[img], mask[img]
            chosen = set()
            for c in lab[lab != IGNORE].unique().tolist():
                values = m[lab == c]
                assert values.all() or not values.any()  # a class is taken whole or not at all
                if values.all():
                    chosen.add(c)
            assert len(chosen) == n_expected
    assert mask[1].sum().item() == 1  # one class only: the ignore pixel alone


@pytest.mark.parametrize("num_classes", [None, 19])
def test_class_mix_mask_is_seeded_and_uniform(num_classes):
    labels = _labels_with_known_classes()

    def draw(labels, seed):
        return class_mix_mask(labels, torch.Generator().manual_seed(seed), num_classes=num_classes)

    assert torch.equal(draw(labels, 3), draw(labels, 3))
    draws = {tuple(draw(labels, s).flatten().tolist()) for s in range(20)}
    assert len(draws) > 1

    many = labels[:1].expand(4000, -1, -1)  # image 0, 4000 times: 2 of {0,1,2,3} each
    mask = draw(many, 0)
    first_pixel = {0: (0, 0), 1: (0, 2), 2: (1, 0), 3: (1, 2)}
    picked = torch.stack([mask[:, r, c] for r, c in first_pixel.values()], dim=1).double()
    assert torch.all(picked.sum(dim=1) == 2)
    assert torch.allclose(picked.mean(dim=0), torch.full((4,), 0.5, dtype=torch.float64), atol=0.04)


def test_mix_images_and_labels():
    mask = torch.tensor([[[True, False]]])  # (1, 1, 2)
    a = torch.ones(1, 3, 1, 2)
    b = torch.zeros(1, 3, 1, 2)
    assert torch.equal(mix(mask, a, b), torch.tensor([[1.0, 0.0]]).expand(1, 3, 1, 2))
    soft = mix(torch.tensor([[[0.25, 1.0]]]), a, b)
    assert torch.allclose(soft[0, :, 0], torch.tensor([0.25, 1.0]).expand(3, 2))
    ya, yb = torch.tensor([[[3, 3]]]), torch.tensor([[[7, 7]]])
    mixed = mix(mask, ya, yb)
    assert mixed.dtype == ya.dtype and mixed.tolist() == [[[3, 7]]]


# ---------------------------------------------------------------- EMA teacher


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(2, 3, 4, 4))  # moves BN running statistics


def test_ema_teacher_update_formula_and_buffers():
    torch.manual_seed(0)
    student = _tiny_net()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert all(p.requires_grad for p in student.parameters())

    _perturb(student)
    teacher.update(student, step=0)  # a = 0: a plain copy
    for t, s in zip(
        teacher.model.state_dict().values(), student.state_dict().values(), strict=True
    ):
        assert torch.equal(t, s)

    for step, a in [(3, 0.75), (10**6, 0.999)]:
        old = [p.clone() for p in teacher.model.parameters()]
        _perturb(student)
        teacher.update(student, step=step)
        for t, t_old, s in zip(teacher.model.parameters(), old, student.parameters(), strict=True):
            assert torch.allclose(t, a * t_old + (1 - a) * s, atol=1e-6)
        for t, s in zip(teacher.model.buffers(), student.buffers(), strict=True):
            assert torch.equal(t, s)
    assert teacher.model[1].num_batches_tracked.item() == 3
    assert all(not p.requires_grad for p in teacher.model.parameters())

    out = teacher(torch.randn(1, 3, 4, 4))
    assert out.shape == (1, 2, 4, 4) and not out.requires_grad
    state = teacher.state_dict()
    other = EMATeacher(_tiny_net())
    other.load_state_dict(state)
    assert all(
        torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values(), strict=True)
    )


class _CompiledLike(nn.Module):
    """Stands in for torch.compile's OptimizedModule (importing dynamo takes seconds)."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod


def test_ema_teacher_unwraps_compiled_and_data_parallel():
    torch.manual_seed(0)
    student = _tiny_net()
    teacher = EMATeacher(_CompiledLike(student))
    assert not any(k.startswith("_orig_mod") for k in teacher.state_dict())
    _perturb(student)
    teacher.update(nn.DataParallel(student), step=0)
    assert all(
        torch.equal(t, s)
        for t, s in zip(teacher.model.parameters(), student.parameters(), strict=True)
    )


def test_ema_teacher_unwraps_ddp(tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        student = _tiny_net()
        ddp = nn.parallel.DistributedDataParallel(student)
        teacher = EMATeacher(ddp)
        assert not any(k.startswith("module.") for k in teacher.state_dict())
        _perturb(student)
        teacher.update(ddp, step=0)
        assert all(
            torch.equal(t, s)
            for t, s in zip(teacher.model.parameters(), student.parameters(), strict=True)
        )
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- FDA


def test_fda_swaps_low_frequency_amplitude_and_keeps_phase():
    torch.manual_seed(0)
    source = 0.5 + 0.05 * torch.randn(2, 3, 16, 12, dtype=torch.float64)
    target = 0.4 + 0.05 * torch.randn(2, 3, 16, 12, dtype=torch.float64)
    out = fda(source, target, beta=0.2)  # b = floor(12 * 0.2) = 2: |k_y| < 2 and |k_x| < 2
    assert out.shape == source.shape and out.dtype == source.dtype
    assert 0 < out.min() and out.max() < 1  # no clamping happened

    spec_o, spec_s, spec_t = (torch.fft.fft2(x) for x in (out, source, target))
    k_y = (torch.fft.fftfreq(16) * 16).abs()
    k_x = (torch.fft.fftfreq(12) * 12).abs()
    band = (k_y < 2)[:, None] & (k_x < 2)[None, :]
    assert band.sum() == 9
    assert torch.allclose(spec_o.abs()[..., band], spec_t.abs()[..., band], atol=1e-9)
    assert torch.allclose(spec_o.abs()[..., ~band], spec_s.abs()[..., ~band], atol=1e-9)
    strong = spec_s.abs() > 1e-6
    phase_gap = (spec_o / spec_o.abs() - spec_s / spec_s.abs())[strong].abs()
    assert phase_gap.max() < 1e-9


def test_fda_dc_only_band_moves_the_mean():
    # b = floor(16 * 0.07) = 1: only the DC amplitude is swapped, so each channel's mean
    # becomes the target's and nothing else changes.
    source = 0.5 + 0.1 * torch.rand(1, 3, 16, 16, dtype=torch.float64)
    target = 0.3 + 0.1 * torch.rand(1, 3, 16, 16, dtype=torch.float64)
    out = fda(source, target, beta=0.07)
    shift = target.mean(dim=(2, 3), keepdim=True) - source.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, source + shift, atol=1e-12)


def test_fda_empty_band_and_bad_shapes():
    source = torch.rand(2, 3, 8, 8)
    target = torch.rand(2, 3, 8, 8)
    assert torch.equal(fda(source, target, beta=0.0), source)
    assert torch.equal(fda(source, target, beta=0.1), source)  # floor(0.8) = 0
    assert fda(source, target, beta=0.5).min() >= 0 and fda(source, target, beta=0.5).max() <= 1
    with pytest.raises(ValueError, match="same shape"):
        fda(source, torch.rand(1, 3, 8, 8), beta=0.1)
    with pytest.raises(ValueError, match="same shape"):
        fda(source, torch.rand(2, 3, 8, 6), beta=0.1)


# ---------------------------------------------------------------- augmentation


def test_photometric_augment_range_shape_and_identity():
    torch.manual_seed(0)
    aug = PhotometricAugment.from_config(
        SimpleNamespace(
            brightness=0.4,
            contrast=0.4,
            saturation=0.2,
            hue=0.1,
            jitter_p=1.0,
            grayscale_p=0.3,
            blur_kernel=3,
            blur_sigma=2.0,
            blur_p=0.8,
            sharpness=0.5,
            sharpness_p=0.3,
        )  # fmt: skip
    )
    x = torch.rand(4, 3, 8, 8)
    out = aug(x, beta=0.4)
    assert out.shape == x.shape and not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(aug(x, beta=0.0), x)
    assert PhotometricAugment()(x, beta=1.0).shape == x.shape


# ---------------------------------------------------------------- centroids


def test_centroid_weights_equal_direct_distance_softmax():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 3, 4)
    centroids = torch.randn(6, 5)
    dist = (features.unsqueeze(1) - centroids.view(1, 6, 5, 1, 1)).norm(dim=2)  # (B, C, h, w)
    assert torch.allclose(centroid_weights(features, centroids), (-dist).softmax(dim=1), atol=1e-5)
    # hand value: f = mu_0 = (1, 0), mu_1 = (0, 1) -> distances (0, sqrt 2)
    w = centroid_weights(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.eye(2))
    p0 = 1 / (1 + math.exp(-math.sqrt(2)))
    assert torch.allclose(w.flatten(), torch.tensor([p0, 1 - p0]), atol=1e-6)


def test_consensus_keeps_only_agreeing_pixels():
    centroids = torch.eye(2)  # mu_0 = (1, 0), mu_1 = (0, 1)
    mu0, mu1 = centroids[0], centroids[1]
    features = torch.stack([torch.stack([mu0, mu1]), torch.stack([mu0, mu1])])  # (h, w, F)
    features = features.permute(2, 0, 1).unsqueeze(0)  # (1, 2, 2, 2): p_feat = [[0, 1], [0, 1]]
    pseudo = torch.tensor([[[0, 0], [IGNORE, 1]]])
    out = consensus_pseudo_labels(pseudo, features, centroids)
    assert out.dtype == torch.long and out.tolist() == [[[0, IGNORE], [IGNORE, 1]]]

    # upsampled: features 1x2 (mu_0 | mu_1) -> 2x4, columns at 0, 1/3, 2/3, 1
    small = torch.stack([mu0, mu1], dim=1).view(1, 2, 1, 2)
    pseudo = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]]])
    out = consensus_pseudo_labels(pseudo, small, centroids)
    assert out.tolist() == [[[0, 0, IGNORE, IGNORE], [IGNORE, IGNORE, 1, 1]]]


def test_threshold_pseudo_labels():
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)  # max probs 3/4, 1/2
    assert threshold_pseudo_labels(logits, 0.7).tolist() == [[[0, IGNORE]]]
    assert threshold_pseudo_labels(logits, 0.5).tolist() == [[[0, 0]]]


def test_class_feature_sums_and_update_centroids():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 3, (2, 3, 5))
    labels[1, 0] = IGNORE
    sums, counts = class_feature_sums(features, labels, num_classes=3)
    flat_f = features.permute(0, 2, 3, 1).reshape(-1, 4)
    flat_l = labels.reshape(-1)
    for c in range(3):  # a loop is fine in a test
        assert torch.allclose(sums[c], flat_f[flat_l == c].sum(dim=0), atol=1e-5)
        assert counts[c].item() == (flat_l == c).sum().item()
    assert counts.sum().item() == 30 - 5

    centroids = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    sums = torch.tensor([[10.0, 20.0], [4.0, 4.0], [0.0, 0.0]])
    counts = torch.tensor([10, 4, 0])  # class 1 has 4 < 5 pixels, class 2 none
    new = update_centroids(centroids, sums, counts, momentum=0.1)
    assert torch.allclose(new, torch.tensor([[1.0, 1.1], [2.0, 2.0], [3.0, 3.0]]))
    assert torch.equal(centroids, torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))  # pure
    assert torch.allclose(update_centroids(centroids, sums, counts, 0.1, min_pixels=4)[1],
                          torch.tensor([1.9, 1.9]))  # fmt: skip


@pytest.mark.parametrize("weighting", ["pixel", "image"])
def test_centroid_accumulator_skips_small_classes_per_image(weighting):
    # 8 pixels per image; image 0: 6 x class 0, 2 x class 1 (skipped);
    # image 1: 3 x class 0 (skipped), 5 x class 1. Class 2 never predicted.
    preds = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]]).view(2, 2, 4)
    logits = F.one_hot(preds, 3).permute(0, 3, 1, 2).float()  # (2, 3, 2, 4)
    features = torch.arange(16, dtype=torch.float32).view(2, 1, 2, 4)  # F = 1
    acc = CentroidAccumulator(num_classes=3, feat_dim=1, weighting=weighting)
    acc.add(features, logits)
    # pixels, or images, per class
    assert acc.counts.tolist() == ([6, 5, 0] if weighting == "pixel" else [1, 1, 0])
    # class 0: mean(0..5) = 2.5; class 1: mean(11..15) = 13
    assert torch.allclose(acc.centroids(), torch.tensor([[2.5], [13.0], [0.0]]))

    # a second batch at half resolution of the logits -> upsampled to the features
    acc.add(
        torch.full((1, 1, 2, 4), 100.0),
        torch.tensor([5.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2),
    )
    if weighting == "pixel":  # 6 pixels of 0..5 and 8 of 100
        assert acc.counts.tolist() == [14, 5, 0]
        assert torch.allclose(acc.centroids()[0], torch.tensor([(15.0 + 800.0) / 14]))
    else:  # two images' means
        assert acc.counts.tolist() == [2, 1, 0]
        assert torch.allclose(acc.centroids()[0], torch.tensor([(2.5 + 100.0) / 2]))
    assert acc.centroids().dtype == torch.float32
