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
    counts = con.execute("""
        WITH latest AS (SELECT * FROM kine_latest),
             superseded AS (SELECT DISTINCT prev_revision AS id FROM latest WHERE prev_revision > 0)
        SELECT count(*) AS rows,
               count(*) FILTER (WHERE name LIKE 'compact\\_rev\\_key%' ESCAPE '\\') AS bookkeeping,
               count(*) FILTER (WHERE deleted = 1 AND name LIKE 'gap-%') AS gap_fills,
               count(*) FILTER (WHERE deleted = 1 AND name NOT LIKE 'gap-%') AS tombstones,
               count(*) FILTER (WHERE deleted = 0 AND id IN (SELECT id FROM superseded)
                                AND name NOT LIKE 'compact\\_rev\\_key%' ESCAPE '\\') AS superseded
        FROM latest""").fetchall()[0]
    rows, bookkeeping, gaps, tombstones, superseded = counts
    snapshot = con.execute("""SELECT snapshot_id, max_id, compact_revision, mode FROM snapshots
                              ORDER BY snapshot_id DESC LIMIT 1""").fetchall()[0]
    return {"snapshot_id": snapshot[0], "max_id": snapshot[1], "compact_revision": snapshot[2], "mode": snapshot[3],
            "rows": rows, "live": rows - bookkeeping - gaps - tombstones - superseded, "superseded": superseded,
            "tombstones": tombstones, "gap_fills": gaps, "bookkeeping": bookkeeping}


def writes_by_replica(writes) -> list:
    """[(replica, writes, first revision, last revision)] from acknowledged writes."""
    by_replica = defaultdict(list)
    for write in writes:
        by_replica[write.replica].append(write.revision)
    return [(replica, len(revs), min(revs), max(revs)) for replica, revs in sorted(by_replica.items())]
