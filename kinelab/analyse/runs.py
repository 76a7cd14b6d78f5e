"""Figures of measured runs (kinelab.observe.runs, scenarios, apiserver probes), as the notebooks state their
claims: each selects from the shared views of a connection from `kinelab.open_capture`."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from ..errors import UsageError

ROW_CLASS_COLUMNS = {"superseded": "rows_superseded", "tombstone": "rows_tombstones", "gap": "rows_gap"}


def lag_by_locality(con, run_id: int) -> dict:
    """Watch lag of a run over every observer, split by locality (watch_deliveries): {"same-replica": {...},
    "other-replica": {...}}, each with events, mean_ms, p50_ms, p99_ms and max_ms."""
    rows = con.execute("""
        SELECT locality, count(*), avg(lag_ms), quantile_cont(lag_ms, 0.5), quantile_cont(lag_ms, 0.99), max(lag_ms)
        FROM watch_deliveries WHERE run_id = ? GROUP BY locality""", [run_id]).fetchall()
    if not rows:
        raise UsageError(f"run {run_id} has no watch events of its own writes; record some with `kinelab watchlag`")
    return {locality: dict(zip(("events", "mean_ms", "p50_ms", "p99_ms", "max_ms"), figures))
            for locality, *figures in rows}


def error_counts(con, run_id: int) -> dict:
    """{kind: errors} of a run's failed operations (error_kinds), over its replicas."""
    return dict(con.execute("SELECT kind, sum(errors)::BIGINT FROM error_kinds WHERE run_id = ? GROUP BY kind",
                            [run_id]).fetchall())


def mean_write_ms(con, run_id: int) -> float:
    """The mean latency of a run's acknowledged writes (the mean, not a quantile, so that a fault that delays only
    some writes still moves it)."""
    mean = con.execute("SELECT avg(latency_ms) FROM writes WHERE run_id = ?", [run_id]).fetchall()[0][0]
    if mean is None:
        raise UsageError(f"run {run_id} has no acknowledged writes")
    return mean


def accepted_share(attempts: Sequence, apiserver: int, since_s: float) -> float:
    """The share of the writes tried through `apiserver` from `since_s` on that it accepted
    (kinelab.observe.apiprobe.availability's attempts)."""
    window = [a for a in attempts if a.apiserver == apiserver and a.t >= since_s]
    if not window:
        raise UsageError(f"no writes were tried through apiserver {apiserver} after {since_s} s")
    return sum(a.ok for a in window) / len(window)


def compaction_samples(con, run_id: int) -> pa.Table:
    """A compaction run's samples (compaction_timeline), each with the row classes of its snapshot counted
    (kine_class_counts): rows_superseded, rows_tombstones and rows_gap, and seconds since the run's t0."""
    snapshots = [r[0] for r in con.execute("SELECT DISTINCT snapshot_id FROM compaction_timeline WHERE run_id = ? "
                                           "ORDER BY 1", [run_id]).fetchall()]
    counted = [(sid, *(dict(con.execute("SELECT row_class, rows FROM kine_class_counts(?)", [sid]).fetchall())
                       .get(kind, 0) for kind in ROW_CLASS_COLUMNS)) for sid in snapshots]
    classes = pa.table({"snapshot_id": pa.array([c[0] for c in counted], pa.int32()),
                        **{column: pa.array([c[i + 1] for c in counted], pa.int64())
                           for i, column in enumerate(ROW_CLASS_COLUMNS.values())}})
    con.register("kinelab_sample_classes", classes)
    try:
        return con.sql("""
            SELECT t.t - c.t0 AS seconds, t.method, t.snapshot_id, t.compact_revision, t.current_revision,
                   t.rows_total, k.rows_superseded, k.rows_tombstones, k.rows_gap, t.table_bytes
            FROM compaction_timeline t JOIN run_clock c USING (run_id)
            JOIN kinelab_sample_classes k USING (snapshot_id)
            WHERE t.run_id = ? ORDER BY t.t""", params=[run_id]).to_arrow_table()
    finally:
        con.unregister("kinelab_sample_classes")
