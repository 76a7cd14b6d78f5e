"""An SRE's first look at a Kine datastore, from a capture: size, churn, compaction health, leases, gaps.
Used by notebooks/08-investigate-your-datastore; every figure is a DuckDB query over the shared views of a capture
opened with `kinelab.open_capture` (columns only: no value is read)."""

from __future__ import annotations

from .summary import OP_COUNTS


def _one(con, sql: str, params=()):
    rows = con.execute(sql, list(params)).fetchall()
    return rows[0] if rows else None


def datastore_report(con, *, top: int = 10) -> dict:
    """A JSON-able summary of the newest snapshot in `con` (an open capture)."""
    snapshot_id, captured_at, source, max_id, compact_revision, row_count = _one(con, """
        SELECT snapshot_id, captured_at, source, max_id, compact_revision, row_count
        FROM snapshots ORDER BY snapshot_id DESC LIMIT 1""")
    value_bytes, old_bytes = _one(con, """
        SELECT coalesce(sum(value_bytes), 0)::BIGINT, coalesce(sum(old_value_bytes), 0)::BIGINT FROM kine_latest""")
    keys_live = _one(con, """
        SELECT count(*) FROM (SELECT name, arg_max(deleted, id) AS deleted FROM kine_latest GROUP BY name)
        WHERE deleted = 0 AND NOT starts_with(name, 'compact_rev_key')""")[0]
    churn = con.execute(f"""
        SELECT resource, sum(rows)::BIGINT AS rows, {OP_COUNTS}, sum(value_bytes)::BIGINT AS value_bytes
        FROM resource_ops GROUP BY 1 ORDER BY rows DESC, resource LIMIT ?""", [top]).fetchall()
    classes = dict(con.execute("SELECT row_class, rows FROM kine_class_counts(?)", [snapshot_id]).fetchall())
    superseded, tombstones, gap_fills = (classes.get(c, 0) for c in ("superseded", "tombstone", "gap"))
    missing_ids = _one(con, """
        SELECT count(*) FROM (SELECT id, lead(id) OVER (ORDER BY id) AS next FROM kine_latest
                              WHERE id > ?) WHERE next > id + 1""", [compact_revision])[0]
    leases = con.execute("""
        SELECT lease AS ttl_s, count(*) AS keys, min(resource) AS example_resource FROM kine_ops
        WHERE lease > 0 AND op IN ('create', 'update') GROUP BY 1 ORDER BY keys DESC""").fetchall()
    uncompacted = max_id - compact_revision
    return {
        "snapshot_id": snapshot_id, "captured_at": str(captured_at), "source": source,
        "size": {"rows": row_count, "live_keys": keys_live, "value_bytes": value_bytes, "old_value_bytes": old_bytes},
        "churn_by_resource": [dict(zip(("resource", "rows", "creates", "updates", "deletes", "value_bytes"), r))
                              for r in churn],
        "compaction": {"current_revision": max_id, "compact_revision": compact_revision,
                       "revisions_since_compaction": uncompacted, "superseded_rows": superseded,
                       "tombstones": tombstones,
                       "reclaimable_share": round((superseded + tombstones) / row_count, 3) if row_count else 0.0,
                       # kube-apiserver compacts every 5 minutes: a compact revision of 0 on a busy table, or
                       # most rows reclaimable, means nobody is compacting
                       "healthy": compact_revision > 0 or row_count < 1000},
        "leases": [dict(zip(("ttl_s", "keys", "example_resource"), r)) for r in leases],
        "gaps": {"gap_fill_rows": gap_fills, "missing_id_runs_above_compact": missing_ids},
    }


def report_markdown(report: dict) -> str:
    c, s = report["compaction"], report["size"]
    lines = [f"# Kine datastore report: {report['source']}", "",
             f"Snapshot {report['snapshot_id']} taken {report['captured_at']}.", "",
             f"- rows: {s['rows']:,} ({s['live_keys']:,} live keys), values {s['value_bytes']:,} bytes, "
             f"old values {s['old_value_bytes']:,} bytes",
             f"- compaction: compact revision {c['compact_revision']:,} of {c['current_revision']:,}; "
             f"{c['superseded_rows']:,} superseded rows and {c['tombstones']:,} tombstones "
             f"({c['reclaimable_share']:.0%} reclaimable); {'healthy' if c['healthy'] else 'NOT compacting'}",
             f"- gaps: {report['gaps']['gap_fill_rows']} gap-fill rows, "
             f"{report['gaps']['missing_id_runs_above_compact']} runs of missing ids above the compact revision",
             "", "| resource | rows | creates | updates | deletes | value bytes |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['resource']} | {r['rows']} | {r['creates']} | {r['updates']} | {r['deletes']} | "
              f"{r['value_bytes'] or 0} |" for r in report["churn_by_resource"]]
    lines += ["", "| lease TTL (s) | keys | example resource |", "|---:|---:|---|"]
    lines += [f"| {r['ttl_s']} | {r['keys']} | {r['example_resource']} |" for r in report["leases"]]
    return "\n".join(lines) + "\n"
