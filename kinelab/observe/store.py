"""The DuckDB contract that notebooks and charts rely on.

Tables:
  capture_meta(key, value)          which source this file belongs to
  snapshots(snapshot_id, captured_at, source, max_id, compact_revision, row_count, mode, rows_stored, duration_s)
  kine_rows(snapshot_id, id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
      the rows each snapshot stored: all of them for a full capture, the new ones for an incremental one
  kine_removed(snapshot_id, id)     ids present at the previous snapshot and gone at this one (compaction)
  kine_decoded(snapshot_id, id, encoding, api_version, kind)   what each stored value holds
Macro and views:
  kine_at(snapshot_id)   the table as it was at that snapshot
  kine_classified(sid)   kine_at(sid) plus row_class: live, superseded, tombstone, gap or bookkeeping
  kine_latest            kine_at(newest snapshot)
  kine_ops               kine_latest, one row per id, with op, resource, namespace, object_name, value_bytes,
                         encoding, api_version, kind
  kine_compacted         rows that a later snapshot found removed, with the snapshot that noticed

Measurements (one `runs` row per load, watch-lag or compaction run; times are epoch seconds on the run's
single clock):
  runs(run_id, kind, started_at, duration_s, params, summary)           params and summary are JSON
  writes(run_id, key, op, revision, replica, t_commit, latency_ms, conflicts, worker)   acknowledged writes
  load_errors(run_id, t, replica, op, key, error, code, value_sha256)
      failed operations, and creates or updates the store refused (code KEY_EXISTS: a create of a name nobody
      wrote before; CONFLICT: a compare that failed although the key holds the value sent); value_sha256 is
      that of the value a failed create or update sent
  run_replicas(run_id, replica, component, endpoint, kine_version)   the Kine release each replica ran
  watch_observers(run_id, observer, endpoint, prefix, start_revision, last_revision, events, progress_notifies,
                  cancelled, cancel_reason, compact_revision)
  watch_events(run_id, observer, writer, revision, key, type, t_commit, t_observed, lag_ms)
  apiserver_watch_events(run_id, apiserver, writer, resource, namespace, name, key, type, resource_version,
                         t_commit, t_observed, lag_ms)
      what each kube-apiserver's watch delivered (kinelab.observe.apiprobe): `apiserver` watched, `writer` is the
      apiserver the probe wrote through (NULL for objects it did not create), `key` the etcd key of the object
  kine_metrics(run_id, t, replica, metric, labels, value)                 labels is JSON
  compaction_timeline(run_id, t, method, snapshot_id, compact_revision, current_revision, rows_total,
                      rows_superseded, rows_tombstones, rows_gap, table_bytes)
  compaction_checks(run_id, t, check_name, revision, ok, detail)
  fault_events(run_id, t, fault, target, detail, ok)                    t: seconds since the run's load began
  scenario_checks(run_id, check_name, value, ok, detail)                the reconciliation after a scenario
  revision_samples(run_id, t, replica, revision, error)                 each replica's reported revision, sampled
                                                                        through a scenario (NULL revision: the error)
  watch_lag_summary      p50/p90/p99/max lag per run, observer and locality (same-replica / other-replica)
  availability           per run, replica and second since the load began: successful writes and errors
  error_kinds            errors per run and replica, sorted into kinds (replica unreachable, timeout,
                         database connection lost, too many connections, serialization failure, other)
  fault_recovery         per fault: errors on its target until the next fault, and recovery_s, the time from the
                         fault to the first success after its last error (for a restart: to the first success)
  write_anomalies        one row per write the table contradicts: anomaly 'acknowledged but missing' (an
                         acknowledged write whose row is not in the newest snapshot) or 'reported failed but
                         written' (a create or update whose client saw an error or a refusal, yet a snapshot holds
                         a row of that key with that value), with replica, op, key, revision, error_kind, error, t
  anomalies_by_version   per run and Kine release: writes, errors, acknowledged_but_missing,
                         reported_failed_but_written (summed over the replicas that ran that release)
  watch_missed           acknowledged writes under an observer's prefix that its watch never delivered
  apiserver_watch_rows   apiserver_watch_events joined to the Kine row each resource_version names (the
                         resourceVersion is the Kine revision = kine_rows.id): row_name (= key), created,
                         deleted, create_revision, prev_revision, lease, encoding, api_version, kind
"""

from __future__ import annotations

SCHEMA_VERSION = "1"

TABLES = """
CREATE TABLE IF NOT EXISTS capture_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id INTEGER PRIMARY KEY, captured_at TIMESTAMPTZ, source VARCHAR, max_id BIGINT,
    compact_revision BIGINT, row_count BIGINT, mode VARCHAR, rows_stored BIGINT, duration_s DOUBLE);
CREATE TABLE IF NOT EXISTS kine_rows (
    snapshot_id INTEGER, id BIGINT, name VARCHAR, created INTEGER, deleted INTEGER, create_revision BIGINT,
    prev_revision BIGINT, lease BIGINT,
    -- DuckDB's default FSST compression of blobs costs 5x the capture time for ~5% of file size
    value BLOB USING COMPRESSION uncompressed, old_value BLOB USING COMPRESSION uncompressed);
CREATE TABLE IF NOT EXISTS kine_removed (snapshot_id INTEGER, id BIGINT);
CREATE TABLE IF NOT EXISTS kine_decoded (
    snapshot_id INTEGER, id BIGINT, encoding VARCHAR, api_version VARCHAR, kind VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, kind VARCHAR, started_at TIMESTAMPTZ, duration_s DOUBLE, params VARCHAR,
    summary VARCHAR);
CREATE TABLE IF NOT EXISTS writes (
    run_id INTEGER, key VARCHAR, op VARCHAR, revision BIGINT, replica INTEGER, t_commit DOUBLE, latency_ms DOUBLE,
    conflicts INTEGER, worker INTEGER);
CREATE TABLE IF NOT EXISTS load_errors (
    run_id INTEGER, t DOUBLE, replica INTEGER, op VARCHAR, key VARCHAR, error VARCHAR, code VARCHAR);
CREATE TABLE IF NOT EXISTS watch_observers (
    run_id INTEGER, observer INTEGER, endpoint VARCHAR, prefix VARCHAR, start_revision BIGINT,
    last_revision BIGINT, events BIGINT, progress_notifies BIGINT, cancelled BOOLEAN, cancel_reason VARCHAR,
    compact_revision BIGINT);
CREATE TABLE IF NOT EXISTS watch_events (
    run_id INTEGER, observer INTEGER, writer INTEGER, revision BIGINT, key VARCHAR, type VARCHAR,
    t_commit DOUBLE, t_observed DOUBLE, lag_ms DOUBLE);
CREATE TABLE IF NOT EXISTS apiserver_watch_events (
    run_id INTEGER, apiserver INTEGER, writer INTEGER, resource VARCHAR, namespace VARCHAR, name VARCHAR,
    key VARCHAR, type VARCHAR, resource_version BIGINT, t_commit DOUBLE, t_observed DOUBLE, lag_ms DOUBLE);
CREATE TABLE IF NOT EXISTS kine_metrics (
    run_id INTEGER, t DOUBLE, replica INTEGER, metric VARCHAR, labels VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS compaction_timeline (
    run_id INTEGER, t DOUBLE, method VARCHAR, snapshot_id INTEGER, compact_revision BIGINT,
    current_revision BIGINT, rows_total BIGINT, rows_superseded BIGINT, rows_tombstones BIGINT, rows_gap BIGINT,
    table_bytes BIGINT);
CREATE TABLE IF NOT EXISTS compaction_checks (
    run_id INTEGER, t DOUBLE, check_name VARCHAR, revision BIGINT, ok BOOLEAN, detail VARCHAR);
CREATE TABLE IF NOT EXISTS fault_events (
    run_id INTEGER, t DOUBLE, fault VARCHAR, target VARCHAR, detail VARCHAR, ok BOOLEAN);
CREATE TABLE IF NOT EXISTS scenario_checks (
    run_id INTEGER, check_name VARCHAR, value DOUBLE, ok BOOLEAN, detail VARCHAR);
CREATE TABLE IF NOT EXISTS run_replicas (
    run_id INTEGER, replica INTEGER, component VARCHAR, endpoint VARCHAR, kine_version VARCHAR);
ALTER TABLE load_errors ADD COLUMN IF NOT EXISTS value_sha256 VARCHAR;
CREATE TABLE IF NOT EXISTS revision_samples (
    run_id INTEGER, t DOUBLE, replica INTEGER, revision BIGINT, error VARCHAR);
"""

# Key layout of kube-apiserver: /registry/<resource>[/<namespace>]/<name>, with a few historical
# prefixes, and <group>/<resource> for CRDs and aggregated APIs.
VIEWS = """
CREATE OR REPLACE MACRO kine_at(sid) AS TABLE
    WITH base AS (SELECT max(snapshot_id) AS fid FROM snapshots WHERE mode = 'full' AND snapshot_id <= sid)
    SELECT r.* FROM kine_rows r, base
    WHERE r.snapshot_id BETWEEN base.fid AND sid
      AND NOT EXISTS (SELECT 1 FROM kine_removed x
                      WHERE x.id = r.id AND x.snapshot_id > base.fid AND x.snapshot_id <= sid)
    QUALIFY row_number() OVER (PARTITION BY r.id ORDER BY r.snapshot_id DESC) = 1;

-- Each row of a snapshot in one class: live, superseded (a later row names it as prev_revision), tombstone,
-- gap (a gap-fill row), or bookkeeping (compact_rev_key*, whose prev_revision holds the compact revision and
-- so supersedes nothing).
CREATE OR REPLACE MACRO kine_classified(sid) AS TABLE
    WITH s AS (SELECT * FROM kine_at(sid)),
         successors AS (SELECT DISTINCT prev_revision AS id FROM s
                        WHERE prev_revision > 0 AND NOT starts_with(name, 'compact_rev_key'))
    SELECT s.*, CASE WHEN starts_with(name, 'compact_rev_key') THEN 'bookkeeping'
                     WHEN deleted = 1 AND starts_with(name, 'gap-') THEN 'gap'
                     WHEN deleted = 1 THEN 'tombstone'
                     WHEN id IN (SELECT id FROM successors) THEN 'superseded'
                     ELSE 'live' END AS row_class
    FROM s;

CREATE OR REPLACE VIEW kine_latest AS
    SELECT * FROM kine_at((SELECT max(snapshot_id) FROM snapshots));

CREATE OR REPLACE VIEW kine_ops AS
WITH parts AS (
    SELECT r.*, string_split(r.name, '/') AS p FROM kine_latest r
), keyed AS (
    SELECT *,
        CASE WHEN len(p) >= 4 AND p[2] = 'registry'
                  AND ((p[3] = 'services' AND p[4] IN ('specs', 'endpoints')) OR contains(p[3], '.'))
             THEN 2 WHEN len(p) >= 3 AND p[2] = 'registry' THEN 1 ELSE 0 END AS res_len
    FROM parts
), located AS (
    SELECT *,
        CASE res_len WHEN 2 THEN p[3] || '/' || p[4] WHEN 1 THEN p[3] END AS raw_resource,
        CASE WHEN res_len > 0 THEN p[3 + res_len:] END AS rest
    FROM keyed
)
SELECT l.id, l.name,
    CASE
        WHEN l.name IN ('compact_rev_key', 'compact_rev_key_apiserver') THEN 'compact'
        WHEN l.name LIKE 'gap-%' AND l.deleted = 1 THEN 'gap'
        WHEN l.deleted = 1 THEN 'delete'
        WHEN l.created = 1 THEN 'create'
        WHEN l.prev_revision > 0 THEN 'update'
        ELSE 'other'
    END AS op,
    CASE l.raw_resource
        WHEN 'services/specs' THEN 'services' WHEN 'services/endpoints' THEN 'endpoints'
        WHEN 'minions' THEN 'nodes' WHEN 'controllers' THEN 'replicationcontrollers'
        WHEN 'ingress' THEN 'ingresses'
        ELSE CASE WHEN contains(l.raw_resource, '.') THEN split_part(l.raw_resource, '/', 2)
                  ELSE l.raw_resource END
    END AS resource,
    CASE WHEN l.res_len = 2 AND l.p[3] <> 'services' THEN l.p[3] END AS api_group,
    CASE WHEN len(l.rest) >= 2 THEN l.rest[1] END AS namespace,
    CASE WHEN len(l.rest) = 1 THEN l.rest[1]
         WHEN len(l.rest) >= 2 THEN array_to_string(l.rest[2:], '/') END AS object_name,
    octet_length(l.value) AS value_bytes,
    d.encoding, d.api_version, d.kind,
    l.created, l.deleted, l.create_revision, l.prev_revision, l.lease
FROM located l
LEFT JOIN kine_decoded d ON d.snapshot_id = l.snapshot_id AND d.id = l.id;

CREATE OR REPLACE VIEW kine_compacted AS
    SELECT x.snapshot_id AS removed_in, r.* EXCLUDE (snapshot_id)
    FROM kine_removed x JOIN kine_rows r ON r.id = x.id AND r.snapshot_id < x.snapshot_id
    QUALIFY row_number() OVER (PARTITION BY x.snapshot_id, x.id ORDER BY r.snapshot_id DESC) = 1;

CREATE OR REPLACE VIEW watch_lag_summary AS
    SELECT run_id, observer,
           CASE WHEN writer = observer THEN 'same-replica' ELSE 'other-replica' END AS locality,
           count(*) AS events,
           quantile_cont(lag_ms, 0.5) AS p50_ms, quantile_cont(lag_ms, 0.9) AS p90_ms,
           quantile_cont(lag_ms, 0.99) AS p99_ms, max(lag_ms) AS max_ms, avg(lag_ms) AS mean_ms
    FROM watch_events WHERE writer IS NOT NULL
    GROUP BY ALL ORDER BY run_id, observer, locality;

-- A scenario's summary holds t0, the clock time its load began; fault_events.t counts from it.
CREATE OR REPLACE VIEW availability AS
    WITH clock AS (SELECT run_id, CAST(json_extract_string(summary, '$.t0') AS DOUBLE) AS t0 FROM runs),
         outcomes AS (SELECT run_id, replica, t_commit AS t, 1 AS ok, 0 AS failed FROM writes
                      UNION ALL SELECT run_id, replica, t, 0, 1 FROM load_errors)
    SELECT o.run_id, o.replica, CAST(floor(o.t - c.t0) AS INTEGER) AS second, sum(o.ok) AS ok,
           sum(o.failed) AS errors
    FROM outcomes o JOIN clock c USING (run_id) WHERE c.t0 IS NOT NULL
    GROUP BY ALL ORDER BY ALL;

CREATE OR REPLACE MACRO error_kind(error, code) AS
    CASE WHEN code = 'KEY_EXISTS' THEN 'create refused: key exists'
         WHEN code = 'CONFLICT' THEN 'update refused: conflict'
         WHEN regexp_matches(lower(error), 'too many (clients|connections)|remaining connection slots|53300')
              THEN 'too many connections'
         WHEN code = 'UNAVAILABLE' THEN 'replica unreachable'
         WHEN regexp_matches(code, '^5[0-9][0-9]$') THEN 'apiserver error ' || code
         WHEN code = 'DEADLINE_EXCEEDED' THEN 'timeout'
         WHEN error ILIKE '%serializ%' OR error ILIKE '%deadlock%' THEN 'serialization failure'
         WHEN regexp_matches(lower(error),
                             'connection refused|terminat|broken pipe|bad connection|eof|reset by peer|shutting down')
              THEN 'database connection lost'
         ELSE 'other' END;

CREATE OR REPLACE VIEW error_kinds AS
    SELECT run_id, replica, error_kind(error, code) AS kind,
           count(*) AS errors, min(t) AS first_t, max(t) AS last_t, any_value(error) AS example
    FROM load_errors GROUP BY ALL ORDER BY run_id, replica, errors DESC;

CREATE OR REPLACE VIEW fault_recovery AS
    WITH clock AS (SELECT run_id, CAST(json_extract_string(summary, '$.t0') AS DOUBLE) AS t0 FROM runs),
    f AS (SELECT e.run_id, e.t, e.fault, e.target, c.t0,
                 row_number() OVER (PARTITION BY e.run_id ORDER BY e.t) AS n,
                 lead(e.t) OVER (PARTITION BY e.run_id ORDER BY e.t) AS next_t,
                 -- a component's name (replica=postgres-1) is no replica index: NULL, every replica's errors
                 CASE WHEN starts_with(e.target, 'replica=') THEN TRY_CAST(split_part(e.target, '=', 2) AS INTEGER)
                 END AS replica
          FROM fault_events e JOIN clock c USING (run_id)),
    errs AS (SELECT f.run_id, f.n, count(x.t) AS errors, max(x.t) - f.t0 AS last_error
             FROM f LEFT JOIN load_errors x ON x.run_id = f.run_id AND (f.replica IS NULL OR x.replica = f.replica)
                  AND x.t - f.t0 >= f.t AND x.t - f.t0 < coalesce(f.next_t, 1e18)
             GROUP BY f.run_id, f.n, f.t0)
    SELECT f.run_id, f.t, f.fault, f.target, errs.errors,
           (SELECT min(w.t_commit) - f.t0 FROM writes w
            WHERE w.run_id = f.run_id AND (f.replica IS NULL OR w.replica = f.replica)
              AND w.t_commit - f.t0 >= greatest(f.t, coalesce(errs.last_error, f.t))) - f.t AS recovery_s
    FROM f JOIN errs USING (run_id, n) ORDER BY f.run_id, f.t;

CREATE OR REPLACE VIEW watch_missed AS
    SELECT o.run_id, o.observer, w.revision, w.key, w.op, w.replica AS writer
    FROM watch_observers o JOIN writes w ON w.run_id = o.run_id
    WHERE w.revision >= o.start_revision AND starts_with(w.key, o.prefix)
      AND NOT EXISTS (SELECT 1 FROM watch_events e  -- revision and key: a failover can reuse a revision
                      WHERE e.run_id = o.run_id AND e.observer = o.observer AND e.revision = w.revision
                        AND e.key = w.key);

-- resourceVersion is the Kine revision, i.e. the id of the row the write made. Kine never rewrites a row, so
-- any snapshot's copy of an id is that row (the newest is taken), even after compaction removed it.
CREATE OR REPLACE VIEW apiserver_watch_rows AS
    WITH stored AS (
        SELECT * FROM kine_rows WHERE id IN (SELECT resource_version FROM apiserver_watch_events)
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY snapshot_id DESC) = 1)
    SELECT e.*, s.snapshot_id, s.name AS row_name, s.created, s.deleted, s.create_revision, s.prev_revision,
           s.lease, d.encoding, d.api_version, d.kind
    FROM apiserver_watch_events e
    LEFT JOIN stored s ON s.id = e.resource_version
    LEFT JOIN kine_decoded d ON d.snapshot_id = s.snapshot_id AND d.id = s.id;

-- What the table contradicts. Acknowledged but missing: the same test as the reconciliation's writes_lost. Reported
-- failed but written: the value a failed create or update sent is a row of its key in some snapshot (Kine never
-- rewrites a row, so any snapshot's copy counts, even one compaction removed later).
CREATE OR REPLACE VIEW write_anomalies AS
    SELECT w.run_id, w.replica, 'acknowledged but missing' AS anomaly, w.op, w.key, w.revision,
           NULL::VARCHAR AS error_kind, NULL::VARCHAR AS error, w.t_commit AS t
    FROM writes w
    WHERE NOT EXISTS (SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key)
    UNION ALL
    SELECT e.run_id, e.replica, 'reported failed but written', e.op, e.key, k.revision, error_kind(e.error, e.code),
           e.error, e.t
    FROM load_errors e
    JOIN (SELECT name, sha256(value) AS value_sha256, min(id) AS revision FROM kine_rows
          WHERE name IN (SELECT key FROM load_errors WHERE value_sha256 IS NOT NULL) GROUP BY ALL) k
      ON k.name = e.key AND k.value_sha256 = e.value_sha256;

CREATE OR REPLACE VIEW anomalies_by_version AS
    WITH per_replica AS (
        SELECT r.run_id, r.replica, r.kine_version,
               (SELECT count(*) FROM writes w WHERE w.run_id = r.run_id AND w.replica = r.replica) AS writes,
               (SELECT count(*) FROM load_errors e WHERE e.run_id = r.run_id AND e.replica = r.replica) AS errors,
               (SELECT count(*) FROM write_anomalies a WHERE a.run_id = r.run_id AND a.replica = r.replica
                  AND a.anomaly = 'acknowledged but missing') AS acknowledged_but_missing,
               (SELECT count(*) FROM write_anomalies a WHERE a.run_id = r.run_id AND a.replica = r.replica
                  AND a.anomaly = 'reported failed but written') AS reported_failed_but_written
        FROM run_replicas r)
    SELECT p.run_id, json_extract_string(runs.params, '$.scenario') AS scenario, p.kine_version,
           sum(p.writes)::BIGINT AS writes, sum(p.errors)::BIGINT AS errors,
           sum(p.acknowledged_but_missing)::BIGINT AS acknowledged_but_missing,
           sum(p.reported_failed_but_written)::BIGINT AS reported_failed_but_written
    FROM per_replica p JOIN runs USING (run_id)
    GROUP BY ALL ORDER BY p.run_id, p.kine_version;
"""


def open_store(path, identity: str | None = None):
    """Open (or create) a kinelab DuckDB file for writing, refusing corrupt files, files locked by another
    process and files that belong to another source than `identity`."""
    from pathlib import Path

    from ..errors import CaptureError

    path = Path(path).expanduser().resolve()
    if not path.parent.is_dir():
        raise CaptureError(f"directory {path.parent} does not exist; create it or choose another --out")
    con = connect_duckdb(path, busy=f"{path} is open in another process (another capture?); wait for it or use "
                                    "another --out",
                         unreadable=f"{path} is not a readable DuckDB file ({{reason}}); move it away or choose "
                                    "another --out")
    try:
        # Bound DuckDB's cache: a big capture is one transaction, and DuckDB would otherwise keep it in memory.
        con.execute("SET memory_limit = '1GB'")
        ensure_schema(con)
        if identity is not None:
            known = con.execute("SELECT value FROM capture_meta WHERE key = 'source'").fetchall()
            if known and known[0][0] != identity:
                raise CaptureError(f"{path} holds data of {known[0][0]}, not {identity}; use another --out")
            con.execute("INSERT OR IGNORE INTO capture_meta VALUES ('source', ?)", [identity])
    except BaseException:
        con.close()
        raise
    return con


def connect_duckdb(path, *, busy: str, unreadable: str, read_only: bool = False, probe: str | None = None):
    """A DuckDB connection to `path` (with `probe` run on it), or a one-line CaptureError: `busy` when another
    process holds the file, `unreadable` (with `{reason}` filled in) for anything else."""
    import duckdb

    from ..errors import CaptureError

    try:
        con = duckdb.connect(str(path), read_only=read_only)
        if probe:
            con.execute(probe).fetchall()
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        raise CaptureError(busy if "lock" in reason.lower() else unreadable.replace("{reason}", reason)) from None
    return con


def new_run(con, kind: str, params: dict) -> int:
    import json
    from datetime import datetime, timezone

    run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchall()[0][0]
    con.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, ?, NULL)",
                [run_id, kind, datetime.now(timezone.utc), json.dumps(params, default=str)])
    return run_id


def finish_run(con, run_id: int, duration_s: float, summary: dict) -> None:
    import json

    con.execute("UPDATE runs SET duration_s = ?, summary = ? WHERE run_id = ?",
                [duration_s, json.dumps(summary, default=str), run_id])


def insert_rows(con, table: str, columns: list, rows: list) -> None:
    """Append Python rows to `table` through Arrow (one round trip, typed by the table)."""
    if not rows:
        return
    import pyarrow as pa

    batch = pa.table({name: list(values) for name, values in zip(columns, zip(*rows))})
    con.register("kinelab_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM kinelab_batch")
    finally:
        con.unregister("kinelab_batch")


def ensure_schema(con) -> None:
    con.execute(TABLES)
    con.execute(VIEWS)
    con.execute("INSERT OR IGNORE INTO capture_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
