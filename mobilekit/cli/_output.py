"""Console helpers for the CLI: results to stdout, everything else to stderr."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@functools.cache
def out_console() -> Console:
    """Console for results (stdout); wide when piped, so tables in CI logs don't wrap."""
    import sys

    return Console(width=None if sys.stdout.isatty() else 180)


@functools.cache
def err_console() -> Console:
    """Console for logs, hints and progress (stderr)."""
    return Console(stderr=True)


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (for --format json, Gradle and Xcode)."""
    out_console().print_json(json.dumps(obj, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table of results to stdout."""
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    out_console().print(table)


@contextmanager
def progress_callback(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """Yield an ``on_progress(stage, done, total)`` callback drawing a rich progress bar on stderr."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), console=err_console(),
                        transient=False)
    task = progress.add_task(description, total=None, stage="")

    def on_progress(stage: str, done: int, total: int) -> None:
        progress.update(task, completed=done, total=total, stage=stage)

    with progress:
        yield on_progress
