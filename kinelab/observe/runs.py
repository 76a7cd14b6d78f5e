"""Measured runs against a lab, each stored in a DuckDB file next to a capture of the kine table:

  load(lab, out, ...)        drive a mix, record every acknowledged write and error, scrape metrics
  watch_lag(lab, out, ...)   the same, with a watch on every replica; lag per event and per observer
  compaction(lab, out, ...)  load while compacting (Kine's own interval, apiserver-style Compact, or none),
                             with incremental captures and table sizes over time, then check that reads
                             and watches below the compact revision fail with "compacted"
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Optional

from .. import progress
from ..clock import Clock
from ..db import table_bytes
from ..drive.kube import as_load_result, check_kube_load, run_kube_load
from ..drive.pool import Background
from ..drive.workload import LoadResult, check_load, require_positive, run_load
from ..errors import EtcdError, UsageError
from ..etcd import Etcd
from .capture import capture_into
from .metrics import MetricsSampler
from .store import finish_run, insert_rows, new_run, open_store
from .watchlag import WatchProbe

WRITE_COLUMNS = ["run_id", "key", "op", "revision", "replica", "t_commit", "latency_ms", "conflicts", "worker"]
ERROR_COLUMNS = ["run_id", "t", "replica", "op", "key", "error", "code", "value_sha256"]
METRIC_COLUMNS = ["run_id", "t", "replica", "metric", "labels", "value"]


def store_load(con, run_id: int, result: LoadResult) -> None:
    insert_rows(con, "writes", WRITE_COLUMNS, [(run_id, *asdict(w).values()) for w in result.writes])
    insert_rows(con, "load_errors", ERROR_COLUMNS, [(run_id, *asdict(e).values()) for e in result.errors])


def store_replicas(con, run_id: int, lab) -> None:
    """Which Kine release each replica ran during the run (a rolling upgrade runs two)."""
    insert_rows(con, "run_replicas", ["run_id", "replica", "component", "endpoint", "kine_version"],
                [(run_id, c.index, c.name, c.endpoint, version)
                 for c, version in zip(lab.model.replicas, lab.model.kine_versions)])


def store_metrics(con, run_id: int, sampler: MetricsSampler) -> None:
    insert_rows(con, "kine_metrics", METRIC_COLUMNS, [(run_id, *row) for row in sampler.rows])


def store_watch(con, run_id: int, probe: WatchProbe) -> None:
    """The probe's observers and events; each event joined with the write that caused it (stored first): same
    revision and key, since after a failover a revision can be acknowledged for two keys."""
    insert_rows(con, "watch_observers",
                ["run_id", "observer", "endpoint", "prefix", "start_revision", "last_revision", "events",
                 "progress_notifies", "cancelled", "cancel_reason", "compact_revision"],
                [(run_id, o.index, o.endpoint, o.prefix, o.start_revision, o.last_revision, len(o.events),
                  o.progress_notifies, o.cancelled, o.cancel_reason, o.compact_revision)
                 for o in probe.observers])
    raw = [(run_id, o.index, *event) for o in probe.observers for event in o.events]
    con.execute("CREATE TEMP TABLE watch_raw (run_id INTEGER, observer INTEGER, revision BIGINT, key VARCHAR, "
                "type VARCHAR, t_observed DOUBLE)")
    insert_rows(con, "watch_raw", ["run_id", "observer", "revision", "key", "type", "t_observed"], raw)
    con.execute("""INSERT INTO watch_events
                   SELECT r.run_id, r.observer, w.replica, r.revision, r.key, r.type, w.t_commit, r.t_observed,
                          (r.t_observed - w.t_commit) * 1000
                   FROM watch_raw r LEFT JOIN writes w
                        ON w.run_id = r.run_id AND w.revision = r.revision AND w.key = r.key""")
    con.execute("DROP TABLE watch_raw")


def load_summary(result: LoadResult) -> dict:
    return {"writes": len(result.writes), "errors": len(result.errors), "lists": result.lists,
            "write_rate": round(result.write_rate, 1),
            "conflict_retries": sum(w.conflicts for w in result.writes)}


@contextmanager
def measured_run(lab, out, kind: str, params: dict, timeout_s: float = 10.0, endpoints: Optional[list] = None):
    """Clients on every replica (or on `endpoints`), the results file (checked to belong to this lab), one clock,
    a run id."""
    clients = [Etcd(ep, timeout_s=timeout_s) for ep in endpoints or lab.endpoints]
    try:
        con = open_store(out, lab.dsn.identity)
        try:
            run_id = new_run(con, kind, params)
            store_replicas(con, run_id, lab)
            yield clients, con, Clock(), run_id
        finally:
            con.close()
    finally:
        for client in clients:
            client.close()


def load(lab, out, *, mix: str = "configmaps", rate: Optional[float] = None, duration_s: Optional[float] = 10.0,
         ops: Optional[int] = None, spread="round-robin", workers: int = 1, seed: int = 1, through: str = "kine",
         **mix_options) -> dict:
    """Drive `mix` through the lab's replicas (or, `through="apiservers"`, through its kube-apiservers); store
    writes, errors and metrics, then capture the table. The summary's `revisions` are the table's revision
    before and after the run: every row between them was written during it, by the load or by the cluster."""
    params = {"mix": mix, "rate": rate, "duration_s": duration_s, "ops": ops, "spread": spread,
              "workers": workers, "seed": seed, "through": through, **mix_options}
    if through == "apiservers":
        check_kube_load(lab, mix)
    elif through == "kine":
        check_load(len(lab.endpoints), mix, rate=rate, duration_s=duration_s, ops=ops, spread=spread,
                   workers=workers)
    else:
        raise UsageError(f"--through {through!r}: use kine (the etcd API of the replicas) or apiservers")
    with measured_run(lab, out, "load", params) as (clients, con, clock, run_id):
        before = max(c.revision() for c in clients)
        with MetricsSampler(lab.metrics_urls, clock) as sampler:
            if through == "apiservers":
                began = time.perf_counter()
                calls = run_kube_load(lab, mix, ops=ops, rate=rate, workers=workers, seed=seed,
                                      duration_s=duration_s, clock=clock, nodes=int(mix_options.get("nodes", 20)))
                result = as_load_result(mix, calls, time.perf_counter() - began)
            else:
                result = run_load(clients, mix, rate=rate, duration_s=duration_s, ops=ops, spread=spread,
                                  workers=workers, seed=seed, clock=clock, **mix_options)
        after = max(c.revision() for c in clients)
        store_load(con, run_id, result)
        store_metrics(con, run_id, sampler)
        snapshot = capture_into(con, lab.dsn, incremental=True)
        summary = {**load_summary(result), "snapshot_id": snapshot.snapshot_id, "run_id": run_id,
                   "revisions": [before, after]}
        finish_run(con, run_id, result.duration_s, summary)
        return summary


def watch_lag(lab, out, *, mix: str = "configmaps", rate: Optional[float] = 50.0, duration_s: float = 10.0,
              spread="round-robin", workers: int = 1, seed: int = 1, prefix: str = "/registry/",
              idle_s: float = 2.0, settle_s: float = 5.0, **mix_options) -> dict:
    """Load the lab while every replica watches `prefix`; store watch_events with the lag of each event
    and its writer, the observers (with cancellations), and a capture. Returns per-observer lag figures."""
    params = {"mix": mix, "rate": rate, "duration_s": duration_s, "spread": spread, "workers": workers,
              "seed": seed, "prefix": prefix, **mix_options}
    check_load(len(lab.endpoints), mix, rate=rate, duration_s=duration_s, spread=spread, workers=workers)
    with measured_run(lab, out, "watchlag", params) as (clients, con, clock, run_id):
        start_revision = max(c.revision() for c in clients) + 1
        with WatchProbe(lab.endpoints, prefix=prefix, start_revision=start_revision, clock=clock) as probe:
            # The probe's own cost: CPU this process spends with idle watches open (progress notifies only).
            cpu0, wall0 = time.process_time(), time.perf_counter()
            time.sleep(idle_s)
            idle_cpu_pct = 100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            with MetricsSampler(lab.metrics_urls, clock) as sampler:
                result = run_load(clients, mix, rate=rate, duration_s=duration_s, spread=spread, workers=workers,
                                  seed=seed, clock=clock, **mix_options)
            last = max((w.revision for w in result.writes), default=start_revision)
            settled = probe.wait_for(last, settle_s)
        store_load(con, run_id, result)
        store_metrics(con, run_id, sampler)
        store_watch(con, run_id, probe)
        snapshot = capture_into(con, lab.dsn, incremental=True)
        lag = con.execute("""SELECT observer, locality, events, p50_ms, p99_ms, max_ms FROM watch_lag_summary
                             WHERE run_id = ?""", [run_id]).fetchall()
        missed = con.execute("SELECT observer, count(*) FROM watch_missed WHERE run_id = ? GROUP BY ALL",
                             [run_id]).fetchall()
        summary = {**load_summary(result), "run_id": run_id, "snapshot_id": snapshot.snapshot_id,
                   "settled": settled, "idle_probe_cpu_pct": round(idle_cpu_pct, 2),
                   "lag": [dict(zip(("observer", "locality", "events", "p50_ms", "p99_ms", "max_ms"), row))
                           for row in lag],
                   "missed": {observer: n for observer, n in missed},
                   "cancelled": {o.index: o.cancel_reason for o in probe.observers if o.cancelled}}
        finish_run(con, run_id, result.duration_s, summary)
        return summary


COMPACTION_METHODS = ("interval", "explicit", "none")


def _compact_interval_set(lab) -> bool:
    args = [lab.kine_args_of(i) for i in range(len(lab.endpoints))]
    return any(str(a.get("compact-interval", "0")).strip() not in ("0", "0s", "") for a in args)


class ApiserverCompactor:
    """kube-apiserver's compaction loop (storage/etcd3/compact.go): each tick, a version-compare Txn on
    compact_rev_key records this tick's revision, and Compact is called with the previous tick's."""

    def __init__(self, client: Etcd):
        self.client, self.version, self.previous = client, 0, 0

    def tick(self) -> Optional[int]:
        current = self.client.revision()
        result = self.client.compact_txn(self.version, str(current).encode())
        if not result.succeeded:  # another apiserver compacted this interval
            self.version = result.current.version if result.current else self.version
            self.previous = current
            return None
        self.version += 1
        target, self.previous = self.previous, current
        if target:
            self.client.compact(target)
        return target or None


def _timeline_row(run_id, t, method, snapshot, current_revision, dsn) -> tuple:
    """One sample; what its rows are (superseded, tombstones, ...) the analyses read from its snapshot."""
    return (run_id, t, method, snapshot.snapshot_id, snapshot.compact_revision, current_revision,
            snapshot.row_count, table_bytes(dsn))


def _compacted_checks(client: Etcd, compact_revision: int, t: float) -> list:
    """Reads and watches below the compact revision must fail with "compacted" (Kine still serves the
    compact revision itself)."""
    checks, compact_revision = [], compact_revision - 1
    try:
        client.range(b"/registry/", b"/registry0", revision=compact_revision, limit=1)
        checks.append(("range-below-compact", compact_revision, False, "range succeeded"))
    except EtcdError as exc:
        checks.append(("range-below-compact", compact_revision, "compacted" in str(exc), str(exc)))
    try:
        watch = client.watch_prefix("/registry/", start_revision=compact_revision)
    except EtcdError as exc:
        checks.append(("watch-below-compact", compact_revision, "compact" in str(exc), str(exc)))
    else:
        # Kine accepts the watch, then cancels it at once with the compact revision.
        first: list = []
        reader = threading.Thread(target=lambda: first.extend(itertools.islice(watch, 1)), daemon=True)
        reader.start()
        reader.join(timeout=5)
        watch.cancel()
        batch = first[0] if first else None
        ok = bool(batch and batch.canceled and batch.compact_revision)
        detail = (f"cancelled: {batch.cancel_reason!r}, compact revision {batch.compact_revision}" if batch and
                  batch.canceled else "the watch stayed open")
        checks.append(("watch-below-compact", compact_revision, ok, detail))
    return [(t, *check) for check in checks]


def compaction(lab, out, *, method: str = "explicit", duration_s: float = 30.0, sample_every_s: float = 3.0,
               compact_every_s: float = 10.0, mix: str = "configmaps", rate: Optional[float] = 100.0,
               workers: int = 1, seed: int = 1, stall_samples: int = 3, **mix_options) -> dict:
    """Load the lab for `duration_s` while compaction happens by `method`; sample the table every
    `sample_every_s` (incremental capture, size, revisions) into compaction_timeline."""
    if method not in COMPACTION_METHODS:
        raise UsageError(f"unknown compaction method {method!r}: use {', '.join(COMPACTION_METHODS)}")
    if method == "interval" and not _compact_interval_set(lab):
        raise UsageError("method 'interval' needs Kine's own compactor: start the lab with "
                         "--kine-arg compact-interval=10s (and compact-min-retain=0 to see it on a small table)")
    check_load(len(lab.endpoints), mix, rate=rate, duration_s=duration_s, workers=workers)
    require_positive(("--sample-every", sample_every_s), ("--compact-every", compact_every_s))
    params = {"method": method, "duration_s": duration_s, "sample_every_s": sample_every_s,
              "compact_every_s": compact_every_s, "mix": mix, "rate": rate, "workers": workers, "seed": seed}
    with measured_run(lab, out, "compaction", params) as (clients, con, clock, run_id):
        timeline, compactions = [], []
        compactor = ApiserverCompactor(clients[0])
        with MetricsSampler(lab.metrics_urls, clock) as sampler, progress.bar(
                f"compaction ({method})", total=duration_s) as advance, \
                Background(run_load, clients, mix, rate=rate, duration_s=duration_s, workers=workers, seed=seed,
                           clock=clock, name="kinelab-compaction-load", **mix_options) as loader:
            started, shown, next_sample, next_compact = time.monotonic(), 0.0, 0.0, compact_every_s
            while True:
                elapsed = time.monotonic() - started
                if method == "explicit" and elapsed >= next_compact:
                    target = compactor.tick()
                    if target:
                        compactions.append((clock.now(), target))
                    next_compact += compact_every_s
                if elapsed >= next_sample or not loader.alive:
                    snapshot = capture_into(con, lab.dsn, incremental=True)
                    timeline.append(_timeline_row(run_id, clock.now(), method, snapshot,
                                                  clients[0].revision(), lab.dsn))
                    next_sample += sample_every_s
                advance(min(elapsed, duration_s) - shown)
                shown = min(elapsed, duration_s)
                if not loader.alive:
                    break
                time.sleep(0.05)
        result = loader.result()
        store_load(con, run_id, result)
        store_metrics(con, run_id, sampler)
        insert_rows(con, "compaction_timeline",
                    ["run_id", "t", "method", "snapshot_id", "compact_revision", "current_revision", "rows_total",
                     "table_bytes"], timeline)
        final_compact = timeline[-1][4]
        checks = _compacted_checks(clients[-1], final_compact, clock.now()) if final_compact else []
        insert_rows(con, "compaction_checks", ["run_id", "t", "check_name", "revision", "ok", "detail"],
                    [(run_id, *c) for c in checks])
        stalled = _stalled(timeline, stall_samples)
        summary = {**load_summary(result), "run_id": run_id, "samples": len(timeline),
                   "compact_revision": final_compact, "current_revision": timeline[-1][5],
                   "rows_first": timeline[0][6], "rows_last": timeline[-1][6],
                   "bytes_first": timeline[0][7], "bytes_last": timeline[-1][7],
                   "apiserver_compactions": len(compactions), "stalled": stalled,
                   "checks": {c[1]: c[3] for c in checks}}
        finish_run(con, run_id, result.duration_s, summary)
        return summary


def _stalled(timeline: list, samples: int) -> bool:
    """True when the compact revision stood still over the last `samples` samples while rows grew."""
    if len(timeline) < samples:
        return False
    tail = timeline[-samples:]
    return len({row[4] for row in tail}) == 1 and tail[-1][6] > tail[0][6]
