"""A rich progress bar for training steps, with ETA and the current losses."""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

BAR_WIDTH = (10, 40)  # the bar shrinks to this minimum before the metrics take its room


class _Shrinkable:
    """A renderable that rich's table may narrow from ``maximum`` down to ``minimum`` columns
    (it is drawn at the width it gets): the bar, in a line the metrics share."""

    def __init__(self, renderable: Any, minimum: int, maximum: int) -> None:
        self.renderable, self.minimum, self.maximum = renderable, minimum, maximum

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.minimum, self.maximum).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.renderable


class _WholeItems:
    """Space-separated items (``key=value``) shown whole, as many as fit the width the line
    leaves them, the rest dropped: its minimum width is 0, so a narrow terminal takes room from
    the metrics, never from the title, step or ETA, and a cut number is never shown."""

    def __init__(self, text: str) -> None:
        self.items = text.split()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(0, min(cell_len(" ".join(self.items)), options.max_width))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        shown = ""
        for item in self.items:
            longer = f"{shown} {item}" if shown else item
            if cell_len(longer) > options.max_width:
                break
            shown = longer
        yield Text(shown, no_wrap=True, overflow="crop")


class _Bar(BarColumn):
    def render(self, task: Task) -> _Shrinkable:
        return _Shrinkable(super().render(task), *BAR_WIDTH)


class _Fields(ProgressColumn):
    def __init__(self, field: str) -> None:
        super().__init__()  # a wrapping column: the one rich's table narrows first
        self.field = field

    def render(self, task: Task) -> _WholeItems:
        return _WholeItems(str(task.fields.get(self.field, "")))


def bar_columns(title: str, field: str) -> tuple:
    """Title, bar, n/total, elapsed, ETA, then the task's ``field`` (space-separated
    ``key=value`` items). In an 80-column terminal the metrics of self-training alone are
    wider than the line: the title, step and times keep their width (no-wrap columns), the bar
    narrows to 10, and the metrics show the items that fit whole."""
    fixed = Column(no_wrap=True)
    return (TextColumn(f"[bold]{title}[/]", table_column=fixed),
            _Bar(bar_width=None, table_column=Column()), MofNCompleteColumn(table_column=fixed),
            TimeElapsedColumn(table_column=fixed), TextColumn("eta", table_column=fixed),
            TimeRemainingColumn(table_column=fixed), _Fields(field))


def metrics_text(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in values.items())


class StepProgress:
    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.progress = Progress(*bar_columns(name, "losses"), transient=False, console=console)
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=start, losses="")

    def update(self, done: int, losses: dict[str, float]) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=done, losses=metrics_text(losses))

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
