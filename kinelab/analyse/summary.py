"""Small, honest summaries of a capture: what was written, by whom, and what the table holds. Each selects from
the shared views (kinelab/analyse/views.py) of a connection from `kinelab.open_capture`."""

from __future__ import annotations

from collections import defaultdict

# creates, updates and deletes of a resource, summed over resource_ops
OP_COUNTS = ", ".join(f"coalesce(sum(rows) FILTER (WHERE op = '{op}'), 0)::BIGINT AS {op}s"
                      for op in ("create", "update", "delete"))


def ops_by_resource(con) -> list:
    """[(resource, creates, updates, deletes, other, rows)] for the newest snapshot, busiest first."""
    return con.execute(f"""
        SELECT resource, {OP_COUNTS}, coalesce(sum(rows) FILTER (WHERE op NOT IN ('create', 'update', 'delete')),
                                               0)::BIGINT AS other, sum(rows)::BIGINT AS rows
        FROM resource_ops GROUP BY 1 ORDER BY rows DESC, resource""").fetchall()


def row_counts(con) -> dict:
    """What the newest snapshot holds: live versions, superseded versions, tombstones, gap fills, and
    Kine's own bookkeeping rows (compact_rev_key*)."""
    classes = dict(con.execute("SELECT row_class, rows FROM kine_class_counts((SELECT max(snapshot_id) FROM snapshots))"
                               ).fetchall())
    snapshot = con.execute("""SELECT snapshot_id, max_id, compact_revision, mode FROM snapshots
                              ORDER BY snapshot_id DESC LIMIT 1""").fetchall()[0]
    return {"snapshot_id": snapshot[0], "max_id": snapshot[1], "compact_revision": snapshot[2], "mode": snapshot[3],
            "rows": sum(classes.values()), "live": classes.get("live", 0), "superseded": classes.get("superseded", 0),
            "tombstones": classes.get("tombstone", 0), "gap_fills": classes.get("gap", 0),
            "bookkeeping": classes.get("bookkeeping", 0)}


def writes_by_replica(writes) -> list:
    """[(replica, writes, first revision, last revision)] from acknowledged writes."""
    by_replica = defaultdict(list)
    for write in writes:
        by_replica[write.replica].append(write.revision)
    return [(replica, len(revs), min(revs), max(revs)) for replica, revs in sorted(by_replica.items())]
