from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diga.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_the_verbs():
    result = run("--help")
    assert result.exit_code == 0
    for verb in ("train", "eval", "data", "pseudo", "centroids"):
        assert verb in result.output


def _commands(group=None, path=()):
    """Every command path of the app (groups included), from Typer's click tree."""
    import typer

    group = group or typer.main.get_command(app)
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


HELP_WIDTH = 78  # an 80-column terminal less rich's padding


@pytest.mark.parametrize("path", list(_commands()), ids=lambda p: " ".join(p) or "diga")
def test_help_reads_as_sentences_in_80_columns(path):
    """`diga X --help` at 80 columns: paragraphs wrapped once by rich (no line ends where the
    next word would still fit: a line break of the docstring's source), and examples, one
    command a line, each fitting on its line."""
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    body = result.output.split("╭")[0].split("\n")
    body = [line.strip() for line in body if not line.strip().startswith("Usage:")]
    paragraphs, current = [], []
    for line in [*body, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    examples = [p for p in paragraphs if p[0].startswith("Example")]
    assert len(examples) == 1, result.output  # then one command a line, none wrapped
    for before, line in zip(["Example", *examples[0]], examples[0], strict=False):  # or continued
        assert line.startswith(("Example", "diga ")) or before.endswith("\\"), examples[0]
    for lines in paragraphs:
        if lines is not examples[0]:
            for a, b in zip(lines, lines[1:], strict=False):
                assert len(a) + 1 + len(b.split()[0]) > HELP_WIDTH, f"broken after {a!r}"


@pytest.mark.parametrize("args,message", [
    (["train", "source", "train.stpes=3"], "did you mean 'train.steps'"),
    (["train", "source", "train.steps=abc"], "train.steps='abc'"),
    (["train", "source", "nonexistent.yaml"], "config 'nonexistent.yaml' not found"),
    (["train", "source", "data.source.kind=gta5", "data.source.root=/nonexistent/gta"],
     "dataset folder not found: /nonexistent/gta"),
    (["train", "source", "data.source.kind=gta5"], "needs a dataset folder"),
    (["train", "source", "model.pretrained=/nonexistent/w.safetensors", "train.steps=1"],
     "weights file not found"),
    (["eval", "/nonexistent/run"], "model not found: /nonexistent/run"),
    (["train", "selftrain", "train.steps=1"], "needs a warm-up run"),
    (["train", "selftrain", "--init", "/nonexistent/warm"], "model not found: /nonexistent/warm"),
    (["pseudo", "/nonexistent/warm"], "model not found"),
    (["train", "warmup", "train.crop=64x128", "warmup.fda_band=0.01", "train.steps=1"],
     "warmup.fda_band=0.01 selects no frequency at crop 64x128"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    line = one_error_line(run(*args, "--out", tmp_path / "o") if args[0] == "train" else run(*args))
    assert message in line


def test_existing_run_is_not_overwritten(tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    line = one_error_line(run("train", "source", *tiny, "--out", out, "-q"))
    assert "already exists" in line and "--resume" in line
    assert (out / "keep.txt").read_text() == "precious"
    line = one_error_line(run("train", "source", *tiny, "--out", tmp_path / "new", "--resume"))
    assert "nothing to resume" in line


def test_train_eval_roundtrip(tmp_path, tiny):
    out = tmp_path / "run"
    result = run("train", "source", *tiny, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "target-val mIoU" in result.output
    result = run("eval", out, "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    meta = json.loads((out / "checkpoints/last/meta.json").read_text())
    assert metrics["miou"] == pytest.approx(meta["metrics"]["target_val_miou"], abs=1e-6)
    assert "road" in result.output and "mIoU" in result.output
    # a damaged weights file: one line, and nothing else touched
    (out / "checkpoints/last/model.safetensors").write_bytes(b"\x00broken")
    line = one_error_line(run("eval", out))
    assert "cannot read weights file" in line
    assert (out / "config.yaml").is_file()


@pytest.mark.slow
def test_make_demo_then_train_from_real_layouts(tmp_path):
    d = tmp_path / "d"
    result = run("data", "make-demo", d, "--size", "32x64", "--source-train", "6",
                 "--target-train", "6", "--target-val", "4")
    assert result.exit_code == 0, result.output
    line = one_error_line(run("data", "make-demo", d))
    assert "not empty" in line or "empty folder" in line
    keys = ["data.source.kind=gta5", f"data.source.root={d / 'gta5'}",
            "data.target.kind=cityscapes", f"data.target.root={d / 'cityscapes'}",
            "train.steps=3", "train.batch_size=2", "train.crop=32x64", "data.num_workers=0",
            "run.device=cpu", "train.visual_every=0"]
    assert run("data", "check", *keys).exit_code == 0
    out = tmp_path / "run"
    result = run("train", "source", *keys, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    result = run("eval", out, "--json", tmp_path / "m.json", "--save-predictions", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 4
    preds = sorted((tmp_path / "pred").rglob("*.png"))
    assert len(preds) == 4 and all("_pred_labelIds" in p.name for p in preds)
    # a corrupt image in the target val split: one line naming the file
    victim = sorted((d / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    victim.write_bytes(b"broken")
    line = one_error_line(run("eval", out))
    assert "cannot decode image" in line and victim.name in line
    result = run("data", "check", *keys)
    assert result.exit_code == 1 and victim.name in result.output
