"""One clock for a whole run: a single monotonic-to-wall mapping taken once, so that the commit time a
writer records and the time a watcher observes are differences on the same clock, immune to NTP steps."""

from __future__ import annotations

import time


class Clock:
    def __init__(self):
        self.wall0 = time.time()
        self.mono0 = time.perf_counter()

    def now(self) -> float:
        """Seconds since the epoch, advancing with the monotonic clock."""
        return self.wall0 + (time.perf_counter() - self.mono0)
