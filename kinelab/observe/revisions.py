"""The revision each replica reports, sampled through a run: an etcd client (a kube-apiserver's watch cache, a
controller's informer) expects it never to go down, and a database failover can make it go down.

A Range's header revision is what Kine's read query found as MAX(id) in the table at that moment, so a replica
reports a lower revision as soon as the rows above it are gone, i.e. when a standby that had not received them
became the primary.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

from ..clock import Clock
from ..errors import EtcdError
from ..etcd import Etcd

COLUMNS = ["run_id", "t", "replica", "revision", "error"]


class RevisionSampler:
    """Asks every endpoint for its revision every `interval_s` in a background thread; rows are
    (t, replica, revision or None, error or None)."""

    def __init__(self, endpoints: Sequence[str], clock: Optional[Clock] = None, interval_s: float = 0.2,
                 timeout_s: float = 1.0):
        self.clock, self.interval_s = clock or Clock(), interval_s
        self._clients = [Etcd(endpoint, timeout_s=timeout_s) for endpoint in endpoints]
        self.rows: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kinelab-revisions", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for replica, client in enumerate(self._clients):
                t = self.clock.now()
                try:
                    self.rows.append((t, replica, client.revision(), None))
                except EtcdError as exc:
                    self.rows.append((t, replica, None, str(exc).splitlines()[0][:200]))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RevisionSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for client in self._clients:
            client.close()
