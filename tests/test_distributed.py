"""Data-parallel training and pseudo-labelling with world size 2 on the CPU (gloo).

The heavy checks share one ``torch.multiprocessing.spawn`` of two ranks (module fixture
``ddp``); each rank joins through the same RANK / WORLD_SIZE / LOCAL_RANK variables torchrun
sets, so the library takes its torchrun path. ``--devices 2`` is checked through the CLI.

Equivalence with one process (tolerance ``ATOL``). Each DDP rank draws its own augmentation
parameters, class-mix masks and dropout masks (ranks must not share draws), and those draws
cannot equal the ones a single process makes for the same samples in one batch. The
equivalence settings ``EQUIV`` therefore leave no draw that matters: deterministic
augmentation (blur only, fixed sigma), the ``none`` translator (the mixed view equals the
augmented view whatever the mask), dropout off (patched, in both runs), and frozen BatchNorm
(``model.freeze_bn``: per-sample normalisation; PyTorch's SyncBatchNorm has no CPU kernel, so
``run.sync_bn`` cannot be exercised here). Everything else is compared: the data shards,
the CE mean over the global batch's valid pixels, SymKD, DDP's gradient average, the EMA
teacher and the SGD step. What differs is float summation order only (the gradient
all-reduce, batch-of-1 vs batch-of-2 kernels): measured 3e-8 after one step and 6e-8 after
four (max abs weight difference, weights of order 0.1-1), asserted at ``ATOL`` = 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from diga.checkpoint import load_model, resolve_checkpoint
from diga.config import load_config
from diga.data.datasets import build_dataset, infinite_loader
from diga.errors import UserError
from diga.train import loop
from diga.train.distributed import Distributed, check_devices, check_world, torchrun_command
from diga.train.loop import train_stage

ATOL = 1e-6
EQUIV = TINY + [
    "model.freeze_bn=true", "train.optim.name=sgd", "train.optim.lr=0.05",
    "method.augment.jitter_p=0", "method.augment.grayscale_p=0", "method.augment.sharpness_p=0",
    "method.augment.blur_p=1", "warmup.translator=none",
]


class Interrupt(Exception):
    pass


def _no_dropout() -> None:
    torch.nn.Dropout2d.forward = lambda self, x: x  # dropout masks are per-rank draws


def _crash_at(step: int):
    real = loop.StepProgress.update

    def update(self, done, losses):
        if done == step:
            raise Interrupt
        real(self, done, losses)

    return update


def _ddp_worker(rank: int, port: int, tmp: str) -> None:
    """Rank ``rank`` of 2: every DDP scenario of this file, in one process group."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from diga.train import pseudo
    from diga.train.distributed import destroy_distributed, init_distributed

    tmp_path = Path(tmp)
    cfg = load_config("demo", TINY)
    dist, device = init_distributed(cfg.run)
    assert (dist.rank, dist.world_size) == (rank, 2)
    # per-image rows of every rank in the global batch's order (the per-image centroid update)
    rows = dist.gather_batch(torch.tensor([[10.0 * rank + i] for i in range(3)]))
    flags = dist.gather_batch(torch.tensor([rank == 0, True, False]))
    (tmp_path / f"gathered_rank{rank}.json").write_text(
        json.dumps({"rows": rows.flatten().tolist(), "flags": flags.tolist()}))

    # default warm-up (random augmentation, FDA mixture, per-rank BN): teachers kept for the test
    teachers = []
    real_teacher = loop.EMATeacher

    def recording_teacher(*args, **kwargs):
        teachers.append(real_teacher(*args, **kwargs))
        return teachers[-1]

    loop.EMATeacher = recording_teacher
    train_stage(cfg, "warmup", tmp_path / "ddp_default", show_progress=False)
    loop.EMATeacher = real_teacher
    save_file({k: v.contiguous() for k, v in teachers[0].state_dict().items()},
              str(tmp_path / f"teacher_rank{rank}.safetensors"))

    # sharded pseudo-labels and centroids of that run's student; record who writes what
    written = []
    real_write = pseudo.write_pseudo_label

    def recording_write(path, label):
        # written in the staging folder that then takes the final one's place
        written.append(str(Path(path).relative_to(tmp_path / ".pseudo_ddp.partial")))
        real_write(path, label)

    pseudo.write_pseudo_label = recording_write
    model, _, ckpt = load_model(tmp_path / "ddp_default", device)
    pseudo.make_pseudo_labels(model, cfg, ckpt, tmp_path / "pseudo_ddp", device)
    (tmp_path / f"written_rank{rank}.json").write_text(json.dumps(written))
    pseudo.make_centroids(model, cfg, ckpt, tmp_path / "centroids_ddp.safetensors", device)
    pseudo.write_pseudo_label = real_write

    # self-training from that run: its pseudo-labels and centroids made sharded, then 2 steps
    from diga.train.stages import run_selftrain

    teachers.clear()
    loop.EMATeacher = recording_teacher
    run_selftrain(load_config("demo", TINY + ["train.steps=2"]), tmp_path / "ddp_default",
                  tmp_path / "ddp_selftrain", show_progress=False)
    loop.EMATeacher = real_teacher
    save_file({k: v.contiguous() for k, v in teachers[0].state_dict().items()},
              str(tmp_path / f"st_teacher_rank{rank}.safetensors"))

    # equivalence settings: one step; a run cut after its step-2 checkpoint; a single-process
    # checkpoint resumed here
    _no_dropout()
    equiv = load_config("demo", EQUIV)
    train_stage(load_config("demo", EQUIV + ["train.steps=1"]), "warmup", tmp_path / "ddp_one",
                show_progress=False)
    loop.StepProgress.update, real_update = _crash_at(3), loop.StepProgress.update
    try:
        train_stage(equiv, "warmup", tmp_path / "ddp_cut", show_progress=False)
    except Interrupt:
        pass
    loop.StepProgress.update = real_update
    train_stage(equiv, "warmup", tmp_path / "single_cut_resumed_ddp", resume=True,
                show_progress=False)
    destroy_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Runs the two-rank scenarios once; the tests below read what they left."""
    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
        mp.setattr(loop.StepProgress, "update", _crash_at(3))
        with pytest.raises(Interrupt):  # a single-process run cut after its step-2 checkpoint
            train_stage(load_config("demo", EQUIV), "warmup", tmp / "single_cut",
                        show_progress=False)
    shutil.copytree(tmp / "single_cut", tmp / "single_cut_resumed_ddp")
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), str(tmp)), nprocs=2)
    return tmp


@pytest.fixture(scope="module")
def single_full(ddp):
    """The uninterrupted single-process run of the equivalence settings, global batch 2."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
        train_stage(load_config("demo", EQUIV), "warmup", ddp / "single_full", show_progress=False)
    return ddp / "single_full"


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---------------------------------------------------------------- fast checks, no processes


@pytest.mark.parametrize("world,per_rank", [(2, 1), (2, 2), (4, 1)])
def test_rank_batches_are_the_single_process_batch(tiny, world, per_rank):
    """Rank r's batches, interleaved by position, are the one-process batch of W * B."""
    ds = build_dataset(load_config("demo", tiny), "source", "train", train=True)
    single = infinite_loader(ds, world * per_rank, seed=3, start_step=1, num_workers=0)
    ranks = [infinite_loader(ds, per_rank, seed=3, start_step=1, num_workers=0, rank=r,
                             world_size=world) for r in range(world)]
    for _ in range(3):
        whole = next(single)
        parts = [next(it) for it in ranks]
        # position p of the global batch lives on rank p % W, at row p // W
        order = [(p % world, p // world) for p in range(world * per_rank)]
        images = torch.stack([parts[r]["image"][i] for r, i in order])
        labels = torch.stack([parts[r]["label"][i] for r, i in order])
        assert torch.equal(images, whole["image"]) and torch.equal(labels, whole["label"])


def test_world_checks_are_user_errors(monkeypatch):
    cfg = load_config("demo", TINY)
    with pytest.raises(UserError, match="train.batch_size=2 cannot be split over 4"):
        check_world(Distributed(world_size=4), cfg.run, 2, torch.device("cpu"))
    cfg.run.sync_bn = True
    with pytest.raises(UserError, match="sync_bn=true needs GPUs"):
        check_world(Distributed(world_size=2), cfg.run, 2, torch.device("cpu"))
    check_world(Distributed(), cfg.run, 2, torch.device("cpu"))  # one process: nothing to sync
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="already runs under it"):
        check_devices(2, cfg.run)


def test_torchrun_command_reruns_the_cli():
    cmd = torchrun_command(8, ["train", "warmup", "demo", "--out", "runs/w"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=8"]
    assert cmd[5:] == ["-m", "diga.cli.app", "train", "warmup", "demo", "--out", "runs/w"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tmp_path, amp):
    cfg = load_config("demo", TINY + [f"run.amp={amp}", "run.channels_last=true", "train.steps=2"])
    result = train_stage(cfg, "warmup", tmp_path / "r", show_progress=False)
    state = resolve_checkpoint(tmp_path / "r").state()
    assert result.step == 2 and ("scaler" in state) == (amp == "fp16")
    weights = resolve_checkpoint(tmp_path / "r").model()
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in weights.values())


# ---------------------------------------------------------------- two ranks (gloo)


@pytest.mark.slow
def test_one_ddp_step_equals_one_process_step(ddp, monkeypatch):
    monkeypatch.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
    train_stage(load_config("demo", EQUIV + ["train.steps=1"]), "warmup", ddp / "single_one",
                show_progress=False)
    one, two = resolve_checkpoint(ddp / "single_one"), resolve_checkpoint(ddp / "ddp_one")
    assert two.meta["world_size"] == 2 and one.meta["world_size"] == 1
    # the step moved the weights far more than the tolerance (teacher = the weights before it)
    assert _max_diff(one.model(), one.teacher()) > 1e3 * ATOL
    assert _max_diff(one.model(), two.model()) < ATOL
    assert _max_diff(one.teacher(), two.teacher()) < ATOL
    first = [json.loads(line) for line in (ddp / "ddp_one" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (ddp / "single_one" / "metrics.jsonl").read_text().splitlines()]
    assert len(first) == len(ref) == 2  # rank 0 alone writes: one step line, one final line
    for key in ("ce", "kd", "loss"):  # logged losses are the global batch's
        assert first[0][key] == pytest.approx(ref[0][key], abs=1e-6)
    assert first[1]["target_val_miou"] == pytest.approx(ref[1]["target_val_miou"], abs=1e-9)


@pytest.mark.slow
def test_ddp_checkpoint_resumes_in_one_process_and_back(ddp, single_full):
    full = resolve_checkpoint(single_full)
    assert resolve_checkpoint(ddp / "ddp_cut").step == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
        result = train_stage(load_config("demo", EQUIV), "warmup", ddp / "ddp_cut", resume=True,
                             show_progress=False)
    assert result.step == 4
    resumed = resolve_checkpoint(ddp / "ddp_cut")
    assert _max_diff(full.model(), resumed.model()) < ATOL
    assert _max_diff(full.teacher(), resumed.teacher()) < ATOL
    # ... and a single-process checkpoint resumed under DDP
    back = resolve_checkpoint(ddp / "single_cut_resumed_ddp")
    assert back.step == 4 and back.meta["world_size"] == 2
    assert _max_diff(full.model(), back.model()) < ATOL


@pytest.mark.slow
def test_teacher_identical_on_ranks_and_rank0_writes(ddp):
    t0 = load_file(str(ddp / "teacher_rank0.safetensors"))
    t1 = load_file(str(ddp / "teacher_rank1.safetensors"))
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    run = ddp / "ddp_default"
    assert all(torch.equal(t0[k], v) for k, v in resolve_checkpoint(run).teacher().items())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 4] and lines[-1]["final"]
    assert sorted(p.name for p in (run / "visuals").iterdir()) == ["step_000002.png",
                                                                  "step_000004.png"]
    state = resolve_checkpoint(run).state()
    assert len(state["rank_rng"]) == 2  # each rank's streams, for an exact DDP resume
    assert not torch.equal(state["rank_rng"][0]["mix_rng"], state["rank_rng"][1]["mix_rng"])


@pytest.mark.slow
def test_gather_batch_orders_rows_as_the_global_batch(ddp):
    for rank in (0, 1):  # row i of rank r is row i * W + r of the global batch, on every rank
        got = json.loads((ddp / f"gathered_rank{rank}.json").read_text())
        assert got == {"rows": [0.0, 10.0, 1.0, 11.0, 2.0, 12.0],
                       "flags": [True, False, True, True, False, False]}


@pytest.mark.slow
def test_selftrain_under_ddp(ddp):
    init = ddp / "ddp_default"
    assert (init / "pseudo" / "manifest.json").is_file() and (init / "centroids.safetensors").is_file()
    t0 = load_file(str(ddp / "st_teacher_rank0.safetensors"))
    t1 = load_file(str(ddp / "st_teacher_rank1.safetensors"))
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    ckpt = resolve_checkpoint(ddp / "ddp_selftrain" / "round1")
    assert ckpt.step == 2 and ckpt.meta["world_size"] == 2
    assert ckpt.extra()["centroids"].shape == (19, 64)
    lines = [json.loads(line) for line in
             (ddp / "ddp_selftrain" / "round1" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2]
    assert "ce_mix" in lines[0] and 0 < lines[0]["kept"] <= 1


@pytest.mark.slow
def test_pseudo_label_shards_cover_the_target_set_once(ddp, tiny):
    w0 = json.loads((ddp / "written_rank0.json").read_text())
    w1 = json.loads((ddp / "written_rank1.json").read_text())
    assert w0 and w1 and not set(w0) & set(w1)  # each image written by exactly one rank
    files = sorted(str(p.relative_to(ddp / "pseudo_ddp")) for p in (ddp / "pseudo_ddp").rglob("*.png"))
    assert sorted(w0 + w1) == files and len(files) == 8  # union = the target train split
    manifest = json.loads((ddp / "pseudo_ddp" / "manifest.json").read_text())
    assert manifest["dataset"]["images"] == 8
    # the same labels as one process makes, and centroids equal up to summation order
    from diga.train.pseudo import make_centroids, make_pseudo_labels

    cfg = load_config("demo", tiny)
    model, _, ckpt = load_model(ddp / "ddp_default")
    make_pseudo_labels(model, cfg, ckpt, ddp / "pseudo_one", torch.device("cpu"))
    for name in files:
        assert (ddp / "pseudo_one" / name).read_bytes() == (ddp / "pseudo_ddp" / name).read_bytes()
    one = make_centroids(model, cfg, ckpt, ddp / "centroids_one.safetensors", torch.device("cpu"))
    two = load_file(str(ddp / "centroids_ddp.safetensors"))
    assert torch.equal(two["counts"], load_file(str(ddp / "centroids_one.safetensors"))["counts"])
    assert torch.allclose(one, two["centroids"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_devices_flag_launches_torchrun(tmp_path):
    """diga run --devices 2: its training stage under torchrun (diga train warmup in each
    process), the job's status.json written by the launching process alone."""
    job = tmp_path / "job"
    out = job / "warmup"
    cmd = [sys.executable, "-m", "diga.cli.app", "run", "demo", *TINY, "train.steps=2",
           "pipeline.baseline=false", "--devices", "2", "--until", "warmup", "--out", str(job), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = resolve_checkpoint(out)
    assert ckpt.step == 2 and ckpt.meta["world_size"] == 2
    assert "warmup done" in proc.stdout and proc.stdout.count("warmup done") == 1
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "finished"
    assert [s["state"] for s in status["stages"][:2]] == ["finished", "pending"]
    assert not (out / "status.json").exists()  # the workers left it to the launcher
    model, cfg, _ = load_model(out)  # a DDP run loads in one process
    assert cfg.train.steps == 2 and not model.training
    proc = subprocess.run([sys.executable, "-m", "diga.cli.app", "pseudo", str(out), "--devices",
                           "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 8 pseudo-labels") == 1  # rank 0 reports
    assert len(list((out / "pseudo").rglob("*.png"))) == 8
