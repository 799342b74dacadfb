"""A rich progress bar for training steps, with ETA and the current losses."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def bar_columns(title: str, field: str) -> tuple:
    """Title, bar, n/total, elapsed, ETA, then the text of the task's ``field``."""
    return (TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn(f"{{task.fields[{field}]}}"))


class StepProgress:
    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.progress = Progress(*bar_columns(name, "losses"), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=start, losses="")

    def update(self, done: int, losses: dict[str, float]) -> None:
        if self.enabled:
            text = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
            self.progress.update(self.task, completed=done, losses=text)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
