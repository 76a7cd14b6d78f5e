"""The SQL views analyses share, each written once: charts, summaries, the datastore report and the notebooks
select from them. They sit on the capture contract (kinelab/observe/store.py: its tables, the snapshot views
kine_at and kine_latest, and the measurement views such as watch_deliveries, run_clock and metric_growth) and
are installed, as TEMP views of the connection, whenever a capture is opened for analysis:

    with kl.open_capture("run.duckdb") as con:
        con.sql("SELECT * FROM resource_ops")

  kine_classified(sid)   kine_at(sid) plus row_class: live, superseded (a later row names it as prev_revision),
                         tombstone, gap (a gap-fill row) or bookkeeping (compact_rev_key*, whose prev_revision
                         holds the compact revision and so supersedes nothing), from the stored op
  kine_class_counts(sid) per row_class of that snapshot: rows, value_bytes, old_value_bytes
  kine_ops               kine_latest, one row per id, with the columns stored at capture: op (create, update,
                         delete, gap, compact, other), resource, api_group, namespace, object_name, value_bytes,
                         encoding, api_version, kind
  resource_ops           rows and value bytes of the newest snapshot per resource, namespace and op; a row that
                         is no object's (Kine's own) has resource '(<op>)', cluster-scoped ones namespace
                         '(cluster-scoped)'
  kine_compacted         rows that a later snapshot found removed, with the snapshot that noticed (removed_in)
  availability           per run, replica and second since the run's t0: successful writes and errors
  error_kinds            errors per run and replica, sorted into kinds by the contract's error_kind (replica
                         unreachable, timeout, database connection lost, too many connections, serialization
                         failure, create refused, update refused, apiserver error, other)
  apiserver_watch_rows   apiserver_watch_events joined to the Kine row each resource_version names (the
                         resourceVersion is the Kine revision = kine_rows.id): row_name (= key), created, deleted,
                         create_revision, prev_revision, lease, encoding, api_version, kind
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..observe.store import create_views, ensure_current_views, open_capture_file

VIEWS = [
    # Two scans of the snapshot rather than one shared CTE: DuckDB would materialise a CTE used twice, blobs
    # and all.
    ("MACRO", "kine_classified(sid)", """TABLE
    SELECT s.*, CASE s.op WHEN 'compact' THEN 'bookkeeping' WHEN 'gap' THEN 'gap' WHEN 'delete' THEN 'tombstone'
                     ELSE CASE WHEN s.id IN (SELECT prev_revision FROM kine_at(sid)
                                             WHERE prev_revision > 0 AND op <> 'compact') THEN 'superseded'
                               ELSE 'live' END END AS row_class
    FROM kine_at(sid) s"""),
    ("MACRO", "kine_class_counts(sid)", """TABLE
    SELECT row_class, count(*) AS rows, coalesce(sum(value_bytes), 0)::BIGINT AS value_bytes,
           coalesce(sum(old_value_bytes), 0)::BIGINT AS old_value_bytes
    FROM kine_classified(sid) GROUP BY row_class"""),
    ("VIEW", "kine_ops", """
    SELECT id, name, op, resource, api_group, namespace, object_name, value_bytes, encoding, api_version, kind,
           created, deleted, create_revision, prev_revision, lease
    FROM kine_latest"""),
    ("VIEW", "resource_ops", """
    SELECT coalesce(resource, '(' || op || ')') AS resource, coalesce(namespace, '(cluster-scoped)') AS namespace,
           op, count(*) AS rows, sum(value_bytes)::BIGINT AS value_bytes
    FROM kine_ops GROUP BY ALL"""),
    ("VIEW", "kine_compacted", """
    SELECT x.snapshot_id AS removed_in, r.* EXCLUDE (snapshot_id)
    FROM kine_removed x JOIN kine_rows r ON r.id = x.id AND r.snapshot_id < x.snapshot_id
    QUALIFY row_number() OVER (PARTITION BY x.snapshot_id, x.id ORDER BY r.snapshot_id DESC) = 1"""),
    ("VIEW", "availability", """
    WITH outcomes AS (SELECT run_id, replica, t_commit AS t, 1 AS ok, 0 AS failed FROM writes
                      UNION ALL SELECT run_id, replica, t, 0, 1 FROM load_errors)
    SELECT o.run_id, o.replica, CAST(floor(o.t - c.t0) AS INTEGER) AS second, sum(o.ok) AS ok,
           sum(o.failed) AS errors
    FROM outcomes o JOIN run_clock c USING (run_id) WHERE c.t0 IS NOT NULL
    GROUP BY ALL ORDER BY ALL"""),
    ("VIEW", "error_kinds", """
    SELECT run_id, replica, error_kind(error, code) AS kind,
           count(*) AS errors, min(t) AS first_t, max(t) AS last_t, any_value(error) AS example
    FROM load_errors GROUP BY ALL ORDER BY run_id, replica, errors DESC"""),
    # resourceVersion is the Kine revision, i.e. the id of the row the write made. Kine never rewrites a row, so
    # any snapshot's copy of an id is that row (the newest is taken), even after compaction removed it.
    ("VIEW", "apiserver_watch_rows", """
    WITH stored AS (
        SELECT snapshot_id, id, name, created, deleted, create_revision, prev_revision, lease, encoding, api_version,
               kind
        FROM kine_rows WHERE id IN (SELECT resource_version FROM apiserver_watch_events)
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY snapshot_id DESC) = 1)
    SELECT e.*, s.snapshot_id, s.name AS row_name, s.created, s.deleted, s.create_revision, s.prev_revision,
           s.lease, s.encoding, s.api_version, s.kind
    FROM apiserver_watch_events e LEFT JOIN stored s ON s.id = e.resource_version"""),
]


def install(con) -> None:
    """Create the analyses' views on `con` as TEMP objects (a read-only file gets them too), with the capture
    contract's views as this kinelab defines them, whatever kinelab wrote the file."""
    ensure_current_views(con)
    create_views(con, VIEWS, temp=True)


def open_capture(path: Union[str, Path], read_only: bool = True, *, memory_limit: Union[str, int, None] = None):
    """Open a capture file for analysis (read-only by default) with the views above, refusing files that are
    not captures; a file of an older capture schema is upgraded once, in place. DuckDB stays within
    `memory_limit` (default: KINELAB_MEMORY_LIMIT, or 512MB) and spills to disk beyond it. The connection is a
    context manager: `with kl.open_capture(path) as con:` closes it."""
    con = open_capture_file(path, read_only=read_only, memory_limit=memory_limit)
    try:
        create_views(con, VIEWS, temp=True)
    except BaseException:
        con.close()
        raise
    return con
