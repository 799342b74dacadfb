"""Training progress lines in an 80-column terminal: bar, step and ETA first, then the metrics
that fit, each whole."""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from rich.progress import Progress

from diga.train.progress import StepProgress, bar_columns, metrics_text

# self-training's metrics, wider than an 80-column line on their own
SELFTRAIN = {"ce": 1.334, "kd": 2.855, "ce_mix": 0.902, "kept": 0.854, "pl_acc_raw": 0.678,
             "pl_acc_kept": 0.712}
TIME = r"(\d+:\d\d:\d\d|-:--:--)"


def render(title: str, done: int, total: int, metrics: dict[str, float], width: int) -> str:
    console = Console(width=width, force_terminal=True, record=True, color_system=None)
    progress = Progress(*bar_columns(title, "losses"), console=console)
    progress.add_task(title, total=total, completed=done, losses=metrics_text(metrics))
    console.print(progress.get_renderable())
    return console.export_text().rstrip("\n")


@pytest.mark.parametrize("done,total", [(3, 10), (1234, 20000)])
def test_selftrain_line_keeps_bar_step_and_eta_in_80_columns(done, total):
    line = render("selftrain", done, total, SELFTRAIN, 80)
    assert "\n" not in line and len(line) <= 80, line
    assert "…" not in line, line
    head = re.match(rf"selftrain (━+) +{done}/{total} {TIME} eta {TIME} ?(.*)$", line)
    assert head, line
    assert len(head[1]) >= 1  # the bar is drawn (3/10 of at least 10 columns)
    shown = head[4].split()
    assert shown and shown == list(metrics_text(SELFTRAIN).split())[:len(shown)], line
    assert len(shown) < len(SELFTRAIN)  # the rest dropped, not cut


def test_wide_terminal_shows_every_metric_and_the_full_bar():
    line = render("selftrain", 3, 10, SELFTRAIN, 200)
    assert line.endswith(metrics_text(SELFTRAIN)), line
    assert "━" * 12 in line  # 3/10 of a 40-column bar


@pytest.mark.parametrize("title,metrics", [
    ("source", {"ce": 0.5}),
    ("translator", {"g_adv": 0.5, "d": 0.25, "nce": 3.2, "idt": 0.1}),
])
def test_other_stages(title, metrics):
    line = render(title, 3, 4000, metrics, 80)
    assert re.match(rf"{title} .* +3/4000 {TIME} eta {TIME} ", line), line
    assert "…" not in line and len(line) <= 80


def test_step_progress_renders_through_its_console():
    console = Console(width=80, force_terminal=True, record=True, color_system=None)
    progress = StepProgress("selftrain", 10, console=console)
    progress.update(3, SELFTRAIN)
    progress.close()
    last = "selftrain" + console.export_text().rstrip().rsplit("selftrain", 1)[1]  # the last draw
    assert re.match(rf"selftrain ━+ +3/10 {TIME} eta {TIME} ce=1.334 kd=2.855$", last), last


def test_each_round_is_reported_when_it_ends(tmp_path, monkeypatch):
    """``diga train selftrain``: "round 1 done" before round 2 trains, not after it."""
    from typer.testing import CliRunner

    import diga.train.stages as stages
    from diga.cli.app import app
    from diga.cli.common import console
    from diga.train.run import StageResult

    def fake_selftrain(cfg, init, out, resume=False, show_progress=True, regenerate=False,
                       on_round=None):
        results = []
        for r in (1, 2):
            on_round(r, False)
            console.print(f"training round {r}")
            results.append(StageResult(out / f"round{r}", 4, {"target_val_miou": 10.0 + r}))
        return results

    monkeypatch.setattr(stages, "run_selftrain", fake_selftrain)
    monkeypatch.setattr(stages, "finished_metrics", lambda run_dir, steps: {
        "target_val_miou": 10.0 + int(run_dir.name[5:])})
    result = CliRunner().invoke(app, ["train", "selftrain", "demo", "--init", str(tmp_path),
                                      "--rounds", "2", "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps the long lines
    said = ["training round 1", "selftrain round 1 done:", "mIoU 11.00", "training round 2",
            "selftrain round 2 done:", "mIoU 12.00"]
    where = [text.find(words) for words in said]
    assert -1 not in where and where == sorted(where), result.output
    assert text.count("done:") == 2, result.output
