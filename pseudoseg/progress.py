"""Progress bars for long steps: loss, images per second, time left."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None, console: Console) -> None:
        self._progress, self._task, self._console = progress, task, console

    def update(self, completed: int, **fields: float) -> None:
        if self._progress is not None:
            info = "  ".join(f"{key} {value:.3g}" for key, value in fields.items())
            self._progress.update(self._task, completed=completed, info=info)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"  {text}", highlight=False)


@contextlib.contextmanager
def progress_bar(description: str, *, total: int, completed: int = 0, enabled: bool = True) -> Iterator[_Bar]:
    """A bar on stderr; disabled (a no-op) on other processes than the first."""
    console = Console(stderr=True)
    if not enabled:
        yield _Bar(None, None, console)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    # Off a terminal (CI logs) redraws would flood the log: print notes only.
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task, console)


class _TaskBars:
    """Callback ``report(done, total)`` or ``report(name, done, total)`` drawing one bar per task."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress, self._description, self._tasks = progress, description, {}

    def __call__(self, *args: object) -> None:
        *name, done, total = args
        label = f"{self._description} {name[0]}" if name else self._description
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total, info="")
        self._progress.update(self._tasks[label], completed=done, total=total)


@contextlib.contextmanager
def task_bars(description: str) -> Iterator[_TaskBars]:
    """Progress bars fed by a library callback (decoding a data set, evaluating test sets)."""
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        yield _TaskBars(progress, description)


def wide_console() -> Console:
    """Standard output; off a terminal (logs, pipes) wide enough for the metric tables."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def console_warn(message: str) -> None:
    """One line on standard error, whether or not progress bars are shown."""
    Console(stderr=True).print(message, style="yellow", highlight=False, soft_wrap=True)


def console_print(message: object) -> None:
    """Print text or a rich renderable (tables) to standard output."""
    wide_console().print(message)
