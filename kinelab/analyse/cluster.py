"""What a cluster writes into Kine by itself: rows per second by resource and by writer (notebook 11).

A `runs.load` run through the apiservers records the table's revision before and after it; every row between
them was written during the run, by the load or by the cluster (kubelets or kwok's simulated nodes renewing
leases, controllers reconciling, the scheduler binding, apiservers' own leases). The writer of a row is the
manager of its newest managedFields entry (`kinelab.k8s.decode_writer`), decoded here for the run's rows only.
"""

from __future__ import annotations

import json
from typing import Optional

from ..k8s import decode_writer

# The kubernetes Python client (kinelab's own load) sends no field manager of its own
WRITER_NAMES = {"OpenAPI-Generator": "kinelab load"}


def run_window(con, run_id: int) -> tuple:
    """(first revision, last revision, seconds) of a load run: the rows it covers and how long it took."""
    summary, duration_s = con.execute("SELECT summary, duration_s FROM runs WHERE run_id = ?", [run_id]).fetchall()[0]
    before, after = json.loads(summary)["revisions"]
    return before, after, duration_s


def writes_by_writer(con, run_id: int) -> list:
    """Rows written during run `run_id`, per resource and writer: [{resource, writer, rows, rows_per_s}], the
    busiest first. Rows a later compaction removed still count: every snapshot's rows are read."""
    before, after, seconds = run_window(con, run_id)
    rows = con.execute("""SELECT any_value(coalesce(resource, '(' || name || ')')), any_value(value)
                          FROM kine_rows WHERE id > ? AND id <= ? GROUP BY id""", [before, after]).fetchall()
    counts: dict = {}
    for resource, value in rows:
        writer = decode_writer(value)
        key = (resource, WRITER_NAMES.get(writer, writer) or "(unknown)")
        counts[key] = counts.get(key, 0) + 1
    return sorted(({"resource": r, "writer": w, "rows": n, "rows_per_s": n / seconds}
                   for (r, w), n in counts.items()), key=lambda row: (-row["rows"], row["resource"]))


def lease_renewals_per_s(con, run_id: int, namespace: str = "kube-node-lease") -> float:
    """Updates of the Leases in `namespace` per second during run `run_id` (kube-node-lease: node heartbeats)."""
    before, after, seconds = run_window(con, run_id)
    renewals = con.execute("""SELECT count(DISTINCT id) FROM kine_rows WHERE id > ? AND id <= ? AND prev_revision > 0
                              AND deleted = 0 AND starts_with(name, ?)""",
                           [before, after, f"/registry/leases/{namespace}/"]).fetchall()[0][0]
    return renewals / seconds


def linear_fit(points: list) -> tuple:
    """Least squares through [(x, y), ...]: (slope, intercept)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return slope, mean_y - slope * mean_x


def store_writes(con, run_id: int, nodes: int, phase: str, table: Optional[list] = None) -> list:
    """Keep `writes_by_writer` of a run in the table `cluster_writes` of the results file (a notebook's replay
    reads it back), and return it."""
    table = writes_by_writer(con, run_id) if table is None else table
    con.execute("""CREATE TABLE IF NOT EXISTS cluster_writes (run_id INTEGER, nodes INTEGER, phase VARCHAR,
                   resource VARCHAR, writer VARCHAR, rows INTEGER, rows_per_s DOUBLE)""")
    con.execute("DELETE FROM cluster_writes WHERE run_id = ?", [run_id])
    con.executemany("INSERT INTO cluster_writes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, nodes, phase, r["resource"], r["writer"], r["rows"], r["rows_per_s"]) for r in table])
    return table
