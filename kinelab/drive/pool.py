"""The one way kinelab drives operations over time: paced workers, and load running in the background.

`run_paced` numbers operations 0, 1, 2, ... and starts operation i at `i / rate` seconds (flat out without a
rate), spread over `workers` threads, until `ops` operations, `duration_s` or a `stop` event. Operations can be
split into `lanes` (operation i belongs to lane i % lanes, and worker w serves lane w % lanes), so that a lane
whose target hangs holds up only its own workers.

`Background` runs any load function in a thread for the length of a `with` block: the block measures or
injects faults meanwhile, leaving it stops the load, and `result()` returns what the load returned or raises
what it raised.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Callable, Generic, Optional, TypeVar

from .. import progress

T = TypeVar("T")


def run_paced(step: Callable[[int, int], None], *, workers: int = 1, rate: Optional[float] = None,
              ops: Optional[int] = None, duration_s: Optional[float] = None,
              stop: Optional[threading.Event] = None, lanes: int = 1, label: Optional[str] = None,
              done: Optional[Callable[[], int]] = None) -> float:
    """Call `step(worker, i)` for each operation i; returns the seconds it took.

    With `label`, a progress bar counts `done()` out of `ops` (or the seconds out of `duration_s`)."""
    stop = stop or threading.Event()
    lanes = max(1, lanes)
    streams = [iter(range(lane, ops, lanes)) if ops is not None else itertools.count(lane, lanes)
               for lane in range(lanes)]
    lock, finished = threading.Lock(), threading.Semaphore(0)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else float("inf")

    def work(worker: int) -> None:
        stream = streams[worker % lanes]
        try:
            while not stop.is_set():
                with lock:
                    i = next(stream, None)
                if i is None:
                    return
                if rate:
                    delay = started + i / rate - time.perf_counter()
                    if delay > 0:
                        stop.wait(delay)
                if time.perf_counter() >= deadline or stop.is_set():
                    return
                step(worker, i)
        finally:
            finished.release()

    threads = [threading.Thread(target=work, args=(w,), name=f"kinelab-load-{w}", daemon=True)
               for w in range(workers)]
    total = ops if ops is not None and done is not None else duration_s
    bar = progress.bar(label, total=total) if label else contextlib.nullcontext(lambda n=1, description=None: None)
    with bar as advance:
        for thread in threads:
            thread.start()
        shown, remaining = 0.0, workers
        try:
            while remaining:
                if finished.acquire(timeout=0.2):  # wakes as soon as a worker ends, so timing stays tight
                    remaining -= 1
                now = done() if ops is not None and done is not None else \
                    min(duration_s or 0.0, time.perf_counter() - started)
                advance(now - shown)
                shown = now
        except BaseException:
            stop.set()
            raise
        finally:
            for thread in threads:
                thread.join()
    return time.perf_counter() - started


class Background(Generic[T]):
    """`work(*args, stop=event, **kwargs)` in a thread while a `with` block runs.

    >>> with Background(run_load, clients, "configmaps", rate=50, duration_s=120) as load:  # doctest: +SKIP
    ...     report = check(endpoints, dsn)          # measured while the load runs
    >>> load.result()                               # the LoadResult, or the load's own error
    """

    def __init__(self, work: Callable[..., T], *args, name: str = "kinelab-background", **kwargs):
        self.stop = threading.Event()
        self._outcome: dict = {}

        def run() -> None:
            try:
                self._outcome["result"] = work(*args, stop=self.stop, **kwargs)
            except BaseException as exc:  # raised again in the caller's thread, not lost with this one
                self._outcome["error"] = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> "Background[T]":
        self._thread.start()
        return self

    def close(self) -> None:
        """Ask the work to stop, and wait until it has."""
        self.stop.set()
        self._thread.join()

    def __enter__(self) -> "Background[T]":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()  # an interrupted block must not leave its load running

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the work to end by itself; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> T:
        """What the work returned, once it ended; its exception if it raised one."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]
