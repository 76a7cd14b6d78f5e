"""Progress bars shared by every long step (start-up, capture, load). Rich renders them in a terminal
and in Jupyter alike; KINELAB_PROGRESS=0 or a non-interactive pipe keeps logs clean."""

from __future__ import annotations

import os
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def enabled() -> bool:
    """On in a terminal and in Jupyter; off in pipes and CI logs, or with KINELAB_PROGRESS=0."""
    setting = os.environ.get("KINELAB_PROGRESS", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    return console.is_terminal or console.is_jupyter


@contextmanager
def bar(description: str, total: float | None):
    """Yield `advance(n=1, description=None)`; a no-op when progress is disabled."""
    if not enabled():
        yield lambda n=1, description=None: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(n=1, description=None):
            progress.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


def say(message: str) -> None:
    if enabled():
        console.print(message, highlight=False)
