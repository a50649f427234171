"""A progress bar for the tuner (rich; a no-op when rich is missing or output is off)."""
from __future__ import annotations

import contextlib
from typing import Iterator


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, current: str, best: str | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, current=current, best=best or "-")


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True) -> Iterator[_Bar]:
    """``bar.advance(current, best)`` after each candidate: shows k/n, elapsed time, the
    candidate just run and the best so far. Drawn on stderr so stdout keeps the table."""
    if not enabled:
        yield _Bar(None, None)
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # the GPU machine has no network: tuning must not depend on a bar
        yield _Bar(None, None)
        return
    columns = (TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("last {task.fields[current]} | best {task.fields[best]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("tune", total=total, current="-", best="-")
        yield _Bar(progress, task)
