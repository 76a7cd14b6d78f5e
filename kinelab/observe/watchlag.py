"""Watch lag across replicas: one watch per replica, every event timestamped on the run's clock, and
joined with the writes that caused it.

The physics to expect: the replica that served a write wakes its own poll loop at once and delivers
within milliseconds; every other replica sees the row only on its next poll of the table (1 s ticker),
so their lag is spread over 0-1 s, about 0.5 s on average.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..clock import Clock
from ..errors import EtcdError
from ..etcd import Etcd
from ..provision.wait import WaitTimeout, poll_until


@dataclass
class Observer:
    index: int
    endpoint: str
    prefix: str
    start_revision: int
    events: list = field(default_factory=list)  # (revision, key, type, t_observed)
    progress_notifies: int = 0
    last_revision: int = 0
    cancelled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0


class WatchProbe:
    """Watches `prefix` on every endpoint from `start_revision` until `stop()`."""

    def __init__(self, endpoints: Sequence[str], *, prefix: str = "/registry/", start_revision: int,
                 clock: Optional[Clock] = None):
        self.clock = clock or Clock()
        self.observers = [Observer(i, ep, prefix, start_revision) for i, ep in enumerate(endpoints)]
        self._clients = [Etcd(ep) for ep in endpoints]
        self._watches: list = []
        self._threads: list = []

    def start(self) -> "WatchProbe":
        try:
            for observer, client in zip(self.observers, self._clients):
                watch = client.watch_prefix(observer.prefix, start_revision=observer.start_revision)
                self._watches.append(watch)
                thread = threading.Thread(target=self._follow, args=(observer, watch), daemon=True,
                                          name=f"kinelab-watch-{observer.index}")
                thread.start()
                self._threads.append(thread)
        except EtcdError as exc:
            self.stop()
            if "compact" in str(exc):
                for observer in self.observers:
                    observer.cancelled, observer.cancel_reason = True, str(exc)
            raise
        return self

    def _follow(self, observer: Observer, watch) -> None:
        try:
            for batch in watch:
                t = self.clock.now()
                if batch.canceled:
                    observer.cancelled = True
                    observer.cancel_reason = batch.cancel_reason or "cancelled by the server"
                    observer.compact_revision = batch.compact_revision
                    return
                if batch.is_progress:
                    observer.progress_notifies += 1
                    observer.last_revision = max(observer.last_revision, batch.revision)
                for event in batch.events:
                    observer.events.append((event.mod_revision, event.key, event.type, t))
                    observer.last_revision = max(observer.last_revision, event.mod_revision)
        except EtcdError as exc:  # the replica went away: record it, the other watchers go on
            observer.cancelled, observer.cancel_reason = True, str(exc)

    def wait_for(self, revision: int, timeout_s: float) -> bool:
        """True once every live observer has seen `revision` (by an event or a progress notification)."""
        try:
            return poll_until(lambda: all(o.cancelled or o.last_revision >= revision for o in self.observers),
                              timeout_s=timeout_s, interval_s=0.05, what=f"every watch to reach {revision}",
                              transient=())
        except WaitTimeout:
            return False

    def stop(self) -> None:
        for watch in self._watches:
            watch.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        for client in self._clients:
            client.close()

    def __enter__(self) -> "WatchProbe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
