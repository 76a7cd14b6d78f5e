"""Progress bars shared by every long step (start-up, capture, load). Rich draws them in a terminal; in a
notebook a bar is one output line updated in place and emptied when done. KINELAB_PROGRESS=0 or a
non-interactive pipe keeps logs clean."""

from __future__ import annotations

import html
import os
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
NOTEBOOK_REDRAW_S = 0.25  # a notebook bar redraws at most this often: each redraw is a message to the browser
_silenced: ContextVar[bool] = ContextVar("kinelab_progress_silenced", default=False)


def enabled() -> bool:
    """On in a terminal and in Jupyter; off in pipes and CI logs, or with KINELAB_PROGRESS=0."""
    if _silenced.get():
        return False
    setting = os.environ.get("KINELAB_PROGRESS", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    return console.is_terminal or console.is_jupyter


@contextmanager
def silenced():
    """No bars and no messages inside this block (this thread only), e.g. where a widget shows the progress."""
    token = _silenced.set(True)
    try:
        yield
    finally:
        _silenced.reset(token)


def _noop(n=1, description=None):
    return None


@contextmanager
def bar(description: str, total: float | None):
    """Yield `advance(n=1, description=None)`; a no-op when progress is disabled."""
    if not enabled():
        yield _noop
        return
    if console.is_jupyter:
        # Output from another thread would land in whichever cell runs then: only the kernel's main thread draws.
        if threading.current_thread() is not threading.main_thread():
            yield _noop
            return
        line = _NotebookBar(description, total)
        try:
            yield line.advance
        finally:
            line.close()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(n=1, description=None):
            progress.update(task, advance=n, **({"description": description} if description else {}))

        yield advance


class _NotebookBar:
    """One display output of the running cell, updated in place, and emptied when the step ends: the cell keeps
    no blank box (rich's own Jupyter bar is an ipywidgets Output that stays behind, empty, once closed)."""

    def __init__(self, description: str, total: float | None):
        from IPython.display import display

        self.description, self.total, self.done = description, total, 0.0
        self.started = self.drawn = time.monotonic()
        self.handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict:
        elapsed = int(time.monotonic() - self.started)
        count = f"{self.done:g}" + (f"/{self.total:g}" if self.total else "")
        meter = (f'<progress value="{min(self.done, self.total)}" max="{self.total}"></progress>' if self.total
                 else "<progress></progress>")  # no total: an indeterminate bar
        so_far = f"{count} {elapsed // 60}:{elapsed % 60:02d}"
        return {"text/html": f"<b>{html.escape(self.description)}</b> {meter} {so_far}",
                "text/plain": f"{self.description} {so_far}"}

    def advance(self, n=1, description=None) -> None:
        self.done += n
        if description:
            self.description = description
        if time.monotonic() - self.drawn >= NOTEBOOK_REDRAW_S:
            self.drawn = time.monotonic()
            self.handle.update(self._bundle(), raw=True)

    def close(self) -> None:
        self.handle.update({}, raw=True)  # an output with nothing to show takes no room in the cell


def say(message: str) -> None:
    if enabled():
        console.print(message, highlight=False)
