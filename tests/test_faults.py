"""Faults made real (issue 29): a full disk is a full tmpfs, a read-only folder a read-only
tmpfs, a missing permission an immutable folder (``chattr +i``: root too is refused). Every
command family that writes is run into each: one line naming the folder, its free space and a
fix; exit 1; no traceback; the previous output intact and usable once the fault is lifted; no
partial file left where a reader would take it as complete. A disk quota cannot be made here
(no quota tools on a tmpfs): it is simulated, once, for its message.

Then a user's own cameras: a ``folder`` target whose frames have two sizes, through warm-up,
two self-training rounds, eval, export and predict.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diga.cli.app import app

runner = CliRunner()
TINY = ["data.builtin.size=32x64", "data.builtin.source_train=8", "data.builtin.target_train=8",
        "data.builtin.target_val=4", "data.num_workers=0", "train.batch_size=2",
        "train.crop=32x64", "train.log_every=1", "train.visual_every=0", "train.eval_every=0",
        "eval.batch_size=4", "pseudo.batch_size=4", "run.device=cpu", "warmup.fda_band=0.1",
        "export.parity_images=1", "export.exporter=torchscript"]
FAST_BENCH = ["bench.time_budget_s=0.1", "bench.min_iters=2", "bench.warmup=0",
              "bench.matmul_size=128", "bench.max_images=2"]
FAULTS = ("full", "readonly", "denied")


def _can_mount() -> bool:
    probe = Path("/tmp") / f"diga-mount-probe-{np.random.default_rng().integers(1 << 30)}"
    probe.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                              capture_output=True)
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return shutil.which("chattr") is not None
    except OSError:
        return False
    finally:
        probe.rmdir()


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs (root with "
                                 "CAP_SYS_ADMIN) and chattr are needed to make the faults real")]


class Fault:
    """A folder (a tmpfs for ``full`` and ``readonly``) that a command writes into: ``prepare``
    writes the previous output while it works; ``inject`` makes the fault; ``lift`` ends it."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        folder.mkdir(parents=True)
        if kind in ("full", "readonly"):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)],
                           check=True)

    def inject(self) -> None:
        if self.kind == "full":  # every block taken: the next write meets ENOSPC
            with open(self.folder / ".ballast", "wb") as fh:
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * (1 << 16))
                        fh.flush()
            with contextlib.suppress(OSError):
                while True:  # the last inodes and partial blocks too
                    (self.folder / f".b{np.random.default_rng().integers(1 << 40)}").write_bytes(b"\0" * 512)
        elif self.kind == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", str(self.folder)], check=True)
        else:  # every file and folder immutable: EPERM for root as for anyone
            subprocess.run(["chattr", "-R", "+i", str(self.folder)], check=True)

    def lift(self) -> None:
        if self.kind == "full":
            for ballast in self.folder.glob(".b*"):
                ballast.unlink()
        elif self.kind == "readonly":
            subprocess.run(["mount", "-o", "remount,rw", str(self.folder)], check=True)
        else:
            subprocess.run(["chattr", "-R", "-i", str(self.folder)], check=True)

    def close(self) -> None:
        if self.kind == "denied":
            subprocess.run(["chattr", "-R", "-i", str(self.folder)], capture_output=True)
        else:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


@pytest.fixture(params=FAULTS)
def fault(request, tmp_path) -> Iterator[Fault]:
    made = Fault(request.param, tmp_path / f"out-{request.param}")
    yield made
    made.close()


def ok(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def refused(fault: Fault, *args: object) -> str:
    """Run ``diga ARGS`` into the fault: exit 1, one error line naming the folder, its free
    space and a fix, no traceback; the line."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    line = errors[0]
    why = {"full": "no space left on the device", "readonly": "the file system is read-only",
           "denied": "permission denied"}[fault.kind]
    fix = {"full": "free space on that device", "readonly": "remount it read-write",
           "denied": "let this user write there"}[fault.kind]
    assert "cannot write " in line and str(fault.folder) in line and why in line, line
    assert "free there" in line and fix in line and "another output path" in line, line
    return line


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (ballast and dot-files aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".b")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A 2-step source-only run exported to ONNX, a frame and a short video of its target."""
    tmp = tmp_path_factory.mktemp("faults")
    ok("train", "source", "demo", *TINY, "train.steps=2", "-q", "--out", tmp / "run")
    ok("export", tmp / "run", *TINY)
    frame = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp / "frame.png")
    from diga.runtime.video import VideoWriter

    with VideoWriter(tmp / "clip.mp4", 5, (32, 64)) as writer:
        for _ in range(4):
            writer.write(frame)
    return {"run": tmp / "run", "onnx": tmp / "run" / "export" / "model.onnx",
            "frame": tmp / "frame.png", "clip": tmp / "clip.mp4"}


# ---------------------------------------------------------------- one family of writes each


def test_training_checkpoints_and_metrics(fault, trained):
    run = fault.folder / "run"
    shutil.copytree(trained["run"], run)  # the previous run: a checkpoint at step 2
    before = digest(run / "checkpoints")
    fault.inject()
    refused(fault, "train", "source", "--resume", "--out", run, "train.steps=4", "-q")
    fault.lift()
    assert digest(run / "checkpoints") == before  # the checkpoint at step 2, whole
    assert not list((run / "checkpoints").glob(".last*"))  # no temp folder left
    ok("train", "source", "--resume", "--out", run, "train.steps=4", "-q")  # and it resumes
    from diga.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run).step == 4


def test_pseudo_labels_and_centroids(fault, trained):
    pseudo, centroids = fault.folder / "pseudo", fault.folder / "centroids.safetensors"
    ok("pseudo", trained["run"], "--out", pseudo)
    ok("centroids", trained["run"], "--out", centroids)
    before = digest(fault.folder)
    fault.inject()
    refused(fault, "pseudo", trained["run"], "--out", pseudo)
    refused(fault, "centroids", trained["run"], "--out", centroids)
    fault.lift()
    assert digest(fault.folder) == before  # the labels, their manifest, the centroids: as they were
    assert not list(fault.folder.glob(".pseudo*"))


def test_export_files_and_reports(fault, trained):
    out = fault.folder / "export"
    shutil.copytree(trained["onnx"].parent, out)
    before = digest(out)
    fault.inject()
    refused(fault, "export", trained["run"], *TINY, "--openvino", "--out", out)
    fault.lift()
    assert digest(out) == before and not (out / ".partial").exists()
    from diga.runtime import Segmenter

    with Segmenter(out / "model.onnx", "cpu") as seg:  # the previous export still runs
        assert seg(np.zeros((32, 64, 3), np.uint8)).shape == (32, 64)


def test_eval_json_and_predictions(fault, trained):
    report, preds = fault.folder / "eval.json", fault.folder / "preds"
    ok("eval", trained["run"], "--json", report, "--save-predictions", preds)
    before = digest(fault.folder)
    fault.inject()
    refused(fault, "eval", trained["run"], "--json", report, "--save-predictions", preds)
    refused(fault, "eval", trained["onnx"], "--json", report)
    fault.lift()
    assert digest(fault.folder) == before
    assert json.loads(report.read_text())["images"] == 4


def test_predict_images_and_video(fault, trained):
    out = fault.folder / "pred"
    ok("predict", trained["onnx"], trained["frame"], trained["clip"], "--out", out)
    before = digest(out)
    fault.inject()
    refused(fault, "predict", trained["onnx"], trained["frame"], trained["clip"], "--out", out)
    fault.lift()
    assert digest(out) == before
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no partial video or JSON lines


def test_bench_reports(fault, trained):
    out = fault.folder / "bench"
    ok("bench", trained["onnx"], *FAST_BENCH, "-b", "ort-cpu", "--out", out)
    before = digest(out)
    fault.inject()
    refused(fault, "bench", trained["onnx"], *FAST_BENCH, "-b", "ort-cpu", "--out", out)
    fault.lift()
    assert digest(out) == before and json.loads((out / "bench.json").read_text())["rows"]


def test_demo(fault):
    fault.inject()
    refused(fault, "demo", "--quick", "--out", fault.folder / "demo")


def test_a_quota_is_one_line_too(tmp_path, trained, monkeypatch):
    """Simulated: quotas need quota tools and a file system that keeps them."""
    real = Path.write_bytes

    def over_quota(self: Path, data: bytes) -> int:
        if self.name.endswith(".tmp") and "bench" in str(self):
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", over_quota)
    result = runner.invoke(app, ["bench", str(trained["onnx"]), *FAST_BENCH, "-b", "ort-cpu",
                                 "--out", str(tmp_path / "bench")])
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("error:"))
    assert "disk quota exceeded" in line and "free space within the quota" in line


# ---------------------------------------------------------------- a user's own cameras


def write_cameras(root: Path) -> None:
    """A folder target of two cameras: 64x128 and 48x80 frames, train (unlabelled) and val."""
    from diga.data.builtin import BuiltinSpec, generate_scene

    for camera, size in (("a", (64, 128)), ("b", (48, 80))):
        spec = BuiltinSpec(seed=3, size=size, target_train=4, target_val=2)
        for split, count in (("train", 4), ("val", 2)):
            for i in range(count):
                image, label = generate_scene(spec, "target", split, i)
                (root / "images" / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / "images" / split / f"{camera}{i}.png")
                if split == "val":
                    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(label).save(root / "labels" / split / f"{camera}{i}.png")


def test_a_target_of_two_cameras_through_every_stage(tmp_path):
    cameras = tmp_path / "cameras"
    write_cameras(cameras)
    keys = [*TINY, "data.target.kind=folder", f"data.target.root={cameras}",
            "data.target.resize=null", "train.crop=32x64", "train.steps=3"]
    ok("data", "check", "demo", *keys)
    ok("train", "warmup", "demo", *keys, "-q", "--out", tmp_path / "warmup")  # FDA with both
    ok("train", "selftrain", "demo", *keys, "--init", tmp_path / "warmup", "--rounds", 2, "-q",
       "--out", tmp_path / "selftrain")
    from diga.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(tmp_path / "selftrain").step == 3
    labels = sorted((tmp_path / "warmup" / "pseudo").glob("*.png"))  # round 1's inputs
    sizes = {Image.open(p).size for p in labels}
    assert sizes == {(128, 64), (80, 48)}  # each frame's pseudo-label at its own size
    ok("eval", tmp_path / "selftrain", *keys, "--json", tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["images"] == 4
    ok("export", tmp_path / "selftrain", *keys, "--int8")
    export = tmp_path / "selftrain" / "export"  # the folder given, as README says
    frames = sorted((cameras / "images" / "val").glob("*.png"))
    ok("predict", export / "model.int8.onnx", *frames, "--out", tmp_path / "pred")
    for frame in frames:
        written = np.asarray(Image.open(tmp_path / "pred" / f"{frame.stem}_label.png"))
        assert written.shape == np.asarray(Image.open(frame)).shape[:2]
