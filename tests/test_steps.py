"""The training steps: no host sync between log points, and the sync-free method pieces.

Host syncs are counted by ``diga.benchmarks.syncs.count_host_syncs``: on the CPU every read of
a tensor by Python in the main process, from our code or any library's (kornia's augmentation
modules made a dozen a step); on a GPU, ``torch.cuda.set_sync_debug_mode``'s warnings. Runs of
N and N + 20 steps differ by the syncs of 20 steps between log points. Data transforms run in a
DataLoader worker, as in every preset (``data.num_workers`` >= 1), not in the main process.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from diga.benchmarks.syncs import count_host_syncs
from diga.config import load_config
from diga.method import PhotometricAugment, class_mix_mask
from diga.train.loop import train_stage
from diga.train.run import SelftrainInputs
from diga.train.stages import ensure_centroids, ensure_pseudo_labels

# 64 source / target images: no epoch boundary (one permutation read each) inside 22 steps
QUIET = TINY + ["data.builtin.source_train=64", "data.builtin.target_train=64",
                "data.num_workers=1", "train.log_every=1000", "train.visual_every=0",
                "train.checkpoint_every=1000", "train.eval_every=0"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A 2-step warm-up run with its pseudo-labels and centroids (self-training's inputs)."""
    run = tmp_path_factory.mktemp("steps") / "warm"
    cfg = load_config("demo", QUIET + ["train.steps=2"])
    train_stage(cfg, "warmup", run, show_progress=False)
    device = torch.device("cpu")
    return run, ensure_pseudo_labels(cfg, run, device, quiet=True), ensure_centroids(
        cfg, run, device, quiet=True)


@pytest.mark.parametrize("stage,extra", [("source", []), ("warmup", []), ("selftrain", []),
                                         ("warmup", ["run.amp=bf16"])])
def test_no_host_sync_between_log_points(tmp_path, warm, stage, extra):
    from diga.checkpoint import resolve_checkpoint

    counts = {}
    for steps in (2, 22):
        cfg = load_config("demo", QUIET + extra + [f"train.steps={steps}"])
        inputs = (SelftrainInputs(resolve_checkpoint(warm[0]), warm[1], warm[2])
                  if stage == "selftrain" else None)
        with count_host_syncs() as counter:
            train_stage(cfg, stage, tmp_path / f"{stage}{steps}", selftrain=inputs,
                        show_progress=False)
        counts[steps] = counter
    extra_reads = counts[22] - counts[2]  # what 20 more steps read; setup and the end cancel
    # The goal is at most one per step; one process makes none (DDP adds its stop agreement).
    assert sum(extra_reads.values()) == 0, extra_reads.most_common(8)
    assert sum(counts[2].values()) > 0  # the counter sees the reads of setup and evaluation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stage", ["source", "warmup", "selftrain"])
def test_no_cuda_sync_between_log_points(tmp_path, warm, stage):
    from diga.checkpoint import resolve_checkpoint

    counts = {}
    for steps in (2, 22):
        cfg = load_config("demo", QUIET + ["run.device=cuda", "run.amp=bf16", f"train.steps={steps}"])
        inputs = (SelftrainInputs(resolve_checkpoint(warm[0]), warm[1], warm[2].cuda())
                  if stage == "selftrain" else None)
        with count_host_syncs("cuda") as counter:
            train_stage(cfg, stage, tmp_path / f"{stage}{steps}", selftrain=inputs,
                        show_progress=False)
        counts[steps] = counter
    extra = counts[22] - counts[2]
    assert sum(extra.values()) <= 20, extra.most_common(8)  # at most one a step


def test_class_mix_mask_with_num_classes_reads_nothing():
    labels = torch.randint(0, 19, (3, 16, 32))
    labels[:, :2] = 255
    with count_host_syncs() as counter:
        mask = class_mix_mask(labels, torch.Generator().manual_seed(0), 255, num_classes=19)
    assert not counter, counter
    assert mask[:, :2].all()
    for i in range(3):  # half of the classes present, each taken whole
        present = labels[i][labels[i] != 255].unique()
        taken = [c for c in present.tolist() if mask[i][labels[i] == c].all()]
        assert len(taken) == len(present) // 2
        assert all(not mask[i][labels[i] == c].any() for c in present.tolist() if c not in taken)
    with count_host_syncs() as counter:
        class_mix_mask(labels, torch.Generator().manual_seed(0), 255)  # without: reads the max
    assert sum(counter.values()) == 1


def _only(**probs) -> PhotometricAugment:
    p = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "sharpness_p": 0.0, **probs}
    return PhotometricAugment(**p)


def test_augment_operations_are_kornias():
    import kornia

    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 24)
    with count_host_syncs() as counter:
        blurred = _only(blur_p=1.0).transform(x)
    assert not counter, counter
    assert torch.allclose(blurred, kornia.filters.gaussian_blur2d(x, (3, 3), (2.0, 2.0)),
                          atol=1e-6)
    gray = _only(grayscale_p=1.0).transform(x)
    assert torch.allclose(gray, kornia.color.rgb_to_grayscale(x).expand_as(x))
    assert torch.equal(_only().transform(x), x)  # every probability 0: the identity
    # kornia's RandomSharpness(0.5) on a batch whose draws we know: same factors, same images
    torch.manual_seed(1)
    sharp = _only(sharpness_p=1.0).transform(x)
    torch.manual_seed(1)
    factors = torch.rand(4, 9)[:, 8] * 0.5
    assert torch.allclose(sharp, kornia.enhance.sharpness(x, factors), atol=1e-6)


def test_augment_draws_per_sample_with_its_probability():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 4, 4)
    out = _only(grayscale_p=0.3).transform(x)
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(gray.double().mean().item() - 0.3) < 0.03
    jitter = PhotometricAugment(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0, sharpness_p=0.0,
                                saturation=0.0, hue=0.0, contrast=0.0, brightness=0.4)
    ratio = jitter.transform(torch.full((4000, 3, 4, 4), 0.5))[:, 0, 0, 0] / 0.5
    assert 0.6 - 1e-4 <= ratio.min() and ratio.max() <= 1.4 + 1e-4  # factors in [1-b, 1+b]
    assert abs(ratio.mean().item() - 1.0) < 0.02 and ratio.std() > 0.2  # per sample


def test_sharpness_as_the_reference_draws_it_or_a_range():
    """The reference's RandomSharpness(0.5) (kornia 0.5, as today) draws factors in [0, 0.5]:
    it only ever blurs; a [low, high] range above 1 sharpens."""
    from diga.config import load_config
    from diga.errors import UserError

    def edge_energy(images: torch.Tensor) -> torch.Tensor:  # per image, high frequencies
        return (images[..., 1:] - images[..., :-1]).abs().mean(dim=(1, 2, 3))

    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 24)
    blurred = _only(sharpness_p=1.0).transform(x)
    sharpened = _only(sharpness_p=1.0, sharpness=(1.5, 2.0)).transform(x)
    assert (edge_energy(blurred) < edge_energy(x)).all()
    assert (edge_energy(sharpened) > edge_energy(x)).all()
    assert load_config("demo", ["method.augment.sharpness=[0.5,1.5]"]).method.augment.sharpness \
        == (0.5, 1.5)
    with pytest.raises(UserError, match="sharpness range"):
        load_config("demo", ["method.augment.sharpness=[1.5,0.5]"])
