"""Kine's Prometheus metrics, scraped from each replica's /metrics and parsed with prometheus_client."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from ..clock import Clock

KEPT_PREFIXES = ("kine_", "go_sql_")


def scrape(url: str, timeout_s: float = 2.0) -> list:
    """[(sample name, labels dict, value)] of Kine's own metrics and its SQL pool's."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8", "replace")
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text) if family.name.startswith(KEPT_PREFIXES)
            for sample in family.samples]


class MetricsSampler:
    """Scrapes every replica every `interval_s` in a background thread; rows are
    (t, replica, metric, labels JSON, value). A replica that does not answer is skipped and counted."""

    def __init__(self, urls: Sequence[str], clock: Optional[Clock] = None, interval_s: float = 1.0):
        self.urls, self.clock, self.interval_s = list(urls), clock or Clock(), interval_s
        self.rows: list = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kinelab-metrics", daemon=True)

    def sample_once(self) -> None:
        for replica, url in enumerate(self.urls):
            t = self.clock.now()
            try:
                samples = scrape(url)
            except OSError:
                self.failures += 1
                continue
            self.rows += [(t, replica, name, json.dumps(labels, sort_keys=True), value)
                          for name, labels, value in samples]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MetricsSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample_once()  # one last sample after the run, so counters show the totals
