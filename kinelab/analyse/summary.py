"""Small, honest summaries of a capture: what was written, by whom, and what the table holds."""

from __future__ import annotations

from collections import defaultdict


def ops_by_resource(con) -> list:
    """[(resource, creates, updates, deletes, other, rows)] for the newest snapshot, busiest first."""
    return con.execute("""
        SELECT coalesce(resource, '(' || op || ')') AS resource,
               count(*) FILTER (WHERE op = 'create') AS creates,
               count(*) FILTER (WHERE op = 'update') AS updates,
               count(*) FILTER (WHERE op = 'delete') AS deletes,
               count(*) FILTER (WHERE op NOT IN ('create', 'update', 'delete')) AS other,
               count(*) AS rows
        FROM kine_ops GROUP BY 1 ORDER BY rows DESC, resource""").fetchall()


def row_counts(con) -> dict:
    """What the newest snapshot holds: live versions, superseded versions, tombstones, gap fills, and
    Kine's own bookkeeping rows (compact_rev_key*)."""
    classes = dict(con.execute("""SELECT row_class, count(*) FROM kine_classified(
                                       (SELECT max(snapshot_id) FROM snapshots)) GROUP BY 1""").fetchall())
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
