"""The DuckDB contract that captures and runs write, and the one way kinelab opens DuckDB.

Tables (capture schema 2):
  capture_meta(key, value)          which source this file belongs to, and its schema_version
  snapshots(snapshot_id, captured_at, source, max_id, compact_revision, row_count, mode, rows_stored, duration_s)
  kine_rows(snapshot_id, id, name, created, deleted, create_revision, prev_revision, lease, value, old_value,
            value_bytes, old_value_bytes, resource, api_group, namespace, object_name, op, encoding, api_version,
            kind)
      the rows each snapshot stored: all of them for a full capture, the new ones for an incremental one. The
      columns after old_value are computed once, as the rows are captured, so that analyses never read the
      blobs: octet_length of value and old_value (NULL when the blob is NULL); the key parsed as kube-apiserver
      lays it out, /registry/<resource>[/<namespace>]/<name> (with the historical prefixes services/specs,
      services/endpoints, minions, controllers, ingress, and <group>/<resource> for CRDs); the op that wrote the
      row (create, update, delete, gap for a gap fill, compact for compact_rev_key*, other); and what the value
      holds (kinelab.k8s): encoding protobuf (the `k8s\0` envelope), json, encrypted (`k8s:enc:`) or raw, with
      the apiVersion and kind of a Kubernetes object
  kine_removed(snapshot_id, id)     ids present at the previous snapshot and gone at this one (compaction)
Snapshot views:
  kine_decoded(snapshot_id, id, encoding, api_version, kind)   (a table in files of capture schema 1)
  kine_at(snapshot_id)   the table as it was at that snapshot
  kine_latest            kine_at(newest snapshot)

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
  compaction_timeline(run_id, t, method, snapshot_id, compact_revision, current_revision, rows_total, table_bytes)
      (files of capture schema 1 also have rows_superseded, rows_tombstones and rows_gap; the analyses count
      the row classes of each sample's snapshot instead: kinelab.analyse.views)
  compaction_checks(run_id, t, check_name, revision, ok, detail)
  fault_events(run_id, t, fault, target, detail, ok)                    t: seconds since the run's load began
  scenario_checks(run_id, check_name, value, ok, detail)                the reconciliation after a scenario
  revision_samples(run_id, t, replica, revision, error)                 each replica's reported revision, sampled
                                                                        through a scenario (NULL revision: the error)
Measurement views, the ones a run's own verdict rests on (a watch-lag run's lag and missed writes, a scenario's
reconciliation), so they live here with the tables rather than with the analyses above them:
  run_clock              per run, t0: the time its load began (a scenario records it), else its first write or error
  watch_deliveries       watch_events with locality (same-replica: the observer is the writer's replica, else
                         other-replica) and seconds since the run's t0
  watch_lag_summary      p50/p90/p99/max lag per run, observer and locality
  watch_missed           acknowledged writes under an observer's prefix that its watch never delivered
  metric_growth          per run, replica, metric and label set: the first and last sample, the peak, and growth,
                         what a counter added over the run (a drop is a restart: the counter began again at 0)
  fault_recovery         per fault: errors on its target until the next fault, and recovery_s, the time from the
                         fault to the first success after its last error (for a restart: to the first success)
  error_kind(error, code)  (a macro) an error sorted into its kind (replica unreachable, timeout, database
                         connection lost, too many connections, serialization failure, create refused: key exists,
                         update refused: conflict, apiserver error, other)
  write_anomalies        one row per write the table contradicts: anomaly 'acknowledged but missing' (an
                         acknowledged write whose row is not in the newest snapshot) or 'reported failed but
                         written' (a create or update whose client saw an error or a refusal, yet a snapshot holds
                         a row of that key with that value), with replica, op, key, revision, error_kind, error, t
  anomalies_by_version   per run and Kine release: writes, errors, acknowledged_but_missing,
                         reported_failed_but_written (summed over the replicas that ran that release, run_replicas)
The analyses' own views (row classes, kine_ops, ops per resource, availability, ...) are in
kinelab/analyse/views.py; `kinelab.open_capture` installs them.

Every DuckDB connection kinelab makes comes from `connect_duckdb`, bounded: memory_limit (KINELAB_MEMORY_LIMIT,
default DEFAULT_MEMORY, or the `memory_limit` argument), a temporary directory of its own to spill to (under
KINELAB_TEMP_DIR, default the system's), and no more threads than the CPUs it may use or the memory can feed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from .. import progress
from ..errors import CaptureError, MemoryLimitError, UsageError

SCHEMA_VERSION = "2"

MEMORY_ENV = "KINELAB_MEMORY_LIMIT"
TEMP_ENV = "KINELAB_TEMP_DIR"
# A quarter of a 2 GB Binder pod: a capture or analysis of any size stays near it and spills to disk beyond it.
DEFAULT_MEMORY = "512MB"
MEMORY_PER_THREAD = 128 * 2**20  # DuckDB's own advice: about 125 MB per thread for joins and aggregates
MIN_BOUND = 100 * 10**6
MIN_MEMORY = 24 * 2**20  # what a writer's DuckDB gets at least
TYPICAL_ROW_BYTES = 2048
VECTOR_ROWS = 2048  # a row group holds whole vectors
WRITER_DB = "kinelab_file"
UPGRADE_ROWS = 100_000

TABLES = """
CREATE TABLE IF NOT EXISTS capture_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id INTEGER PRIMARY KEY, captured_at TIMESTAMPTZ, source VARCHAR, max_id BIGINT,
    compact_revision BIGINT, row_count BIGINT, mode VARCHAR, rows_stored BIGINT, duration_s DOUBLE);
CREATE TABLE IF NOT EXISTS kine_rows (
    snapshot_id INTEGER, id BIGINT, name VARCHAR, created INTEGER, deleted INTEGER, create_revision BIGINT,
    prev_revision BIGINT, lease BIGINT,
    -- DuckDB's default FSST compression of blobs costs 5x the capture time for ~5% of file size
    value BLOB USING COMPRESSION uncompressed, old_value BLOB USING COMPRESSION uncompressed,
    value_bytes INTEGER, old_value_bytes INTEGER, resource VARCHAR, api_group VARCHAR, namespace VARCHAR,
    object_name VARCHAR, op VARCHAR, encoding VARCHAR, api_version VARCHAR, kind VARCHAR);
CREATE TABLE IF NOT EXISTS kine_removed (snapshot_id INTEGER, id BIGINT);
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
    current_revision BIGINT, rows_total BIGINT, table_bytes BIGINT);
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

# The columns computed in SQL as rows are captured, from the rows of {rows} (a batch, or kine_rows when an older
# file is upgraded); DECODED_COLUMNS come from kinelab.k8s.decode_values. Key layout of kube-apiserver:
# /registry/<resource>[/<namespace>]/<name>, with a few historical prefixes, and <group>/<resource> for CRDs and
# aggregated APIs.
FACT_COLUMNS = ("value_bytes", "old_value_bytes", "resource", "api_group", "namespace", "object_name", "op")
DECODED_COLUMNS = ("encoding", "api_version", "kind")
ROW_FACTS = """
WITH parts AS (SELECT *, string_split(name, '/') AS p FROM {rows}),
keyed AS (
    SELECT *,
        CASE WHEN len(p) >= 4 AND p[2] = 'registry'
                  AND ((p[3] = 'services' AND p[4] IN ('specs', 'endpoints')) OR contains(p[3], '.'))
             THEN 2 WHEN len(p) >= 3 AND p[2] = 'registry' THEN 1 ELSE 0 END AS res_len
    FROM parts),
located AS (
    SELECT *,
        CASE res_len WHEN 2 THEN p[3] || '/' || p[4] WHEN 1 THEN p[3] END AS raw_resource,
        CASE WHEN res_len > 0 THEN p[3 + res_len:] END AS rest
    FROM keyed)
SELECT {columns},
    octet_length(value)::INTEGER AS value_bytes, octet_length(old_value)::INTEGER AS old_value_bytes,
    CASE raw_resource
        WHEN 'services/specs' THEN 'services' WHEN 'services/endpoints' THEN 'endpoints'
        WHEN 'minions' THEN 'nodes' WHEN 'controllers' THEN 'replicationcontrollers'
        WHEN 'ingress' THEN 'ingresses'
        ELSE CASE WHEN contains(raw_resource, '.') THEN split_part(raw_resource, '/', 2) ELSE raw_resource END
    END AS resource,
    CASE WHEN res_len = 2 AND p[3] <> 'services' THEN p[3] END AS api_group,
    CASE WHEN len(rest) >= 2 THEN rest[1] END AS namespace,
    CASE WHEN len(rest) = 1 THEN rest[1] WHEN len(rest) >= 2 THEN array_to_string(rest[2:], '/') END AS object_name,
    -- compact_rev_key (Kine's) and compact_rev_key_apiserver are Kine's own bookkeeping, gap-<id> its gap fills
    CASE WHEN starts_with(name, 'compact_rev_key') THEN 'compact'
         WHEN deleted = 1 AND starts_with(name, 'gap-') THEN 'gap'
         WHEN deleted = 1 THEN 'delete'
         WHEN created = 1 THEN 'create'
         WHEN prev_revision > 0 THEN 'update'
         ELSE 'other' END AS op
FROM located
"""

# (kind, name, body): created in every file kinelab writes, and again as TEMP objects (the current definitions,
# whatever version of kinelab wrote the file) on every connection opened for analysis.
VIEWS = [
    # A full snapshot is its own rows; an incremental one is the newest copy of each id since the last full
    # snapshot, less what was removed since. Only the few ids that the later snapshots stored again can have an
    # older, stale copy, so those are found first and left out by anti joins, not by sorting every row. No CTE
    # and no UNION: in a table macro either makes DuckDB read every column for a query that needs none
    # (count(*)), blobs included.
    ("MACRO", "kine_at(sid)", """TABLE
    SELECT r.* FROM kine_rows r
    ANTI JOIN (SELECT o.snapshot_id, o.id FROM kine_rows o
               JOIN (SELECT id, max(snapshot_id) AS newest FROM kine_rows
                     WHERE snapshot_id > {full} AND snapshot_id <= sid GROUP BY id) n ON o.id = n.id
               WHERE o.snapshot_id >= {full} AND o.snapshot_id < n.newest) stale
         ON stale.id = r.id AND stale.snapshot_id = r.snapshot_id
    ANTI JOIN (SELECT id FROM kine_removed WHERE snapshot_id > {full} AND snapshot_id <= sid) gone ON gone.id = r.id
    WHERE r.snapshot_id BETWEEN {full} AND sid""".format(
        full="(SELECT max(snapshot_id) FROM snapshots WHERE mode = 'full' AND snapshot_id <= sid)")),
    ("VIEW", "kine_latest", "SELECT * FROM kine_at((SELECT max(snapshot_id) FROM snapshots))"),
    ("VIEW", "kine_decoded", "SELECT snapshot_id, id, encoding, api_version, kind FROM kine_rows"),
    # A scenario's summary holds t0, the clock time its load began (fault_events.t counts from it); other runs
    # begin with their first write or error.
    ("VIEW", "run_clock", """
    SELECT r.run_id, coalesce(CAST(json_extract_string(r.summary, '$.t0') AS DOUBLE),
                              least((SELECT min(t_commit) FROM writes w WHERE w.run_id = r.run_id),
                                    (SELECT min(t) FROM load_errors e WHERE e.run_id = r.run_id),
                                    (SELECT min(t) FROM compaction_timeline c WHERE c.run_id = r.run_id))) AS t0
    FROM runs r"""),
    ("VIEW", "watch_deliveries", """
    SELECT e.*, CASE WHEN e.writer = e.observer THEN 'same-replica' ELSE 'other-replica' END AS locality,
           e.t_commit - c.t0 AS seconds
    FROM watch_events e LEFT JOIN run_clock c USING (run_id)
    WHERE e.writer IS NOT NULL"""),
    ("VIEW", "watch_lag_summary", """
    SELECT run_id, observer, locality, count(*) AS events,
           quantile_cont(lag_ms, 0.5) AS p50_ms, quantile_cont(lag_ms, 0.9) AS p90_ms,
           quantile_cont(lag_ms, 0.99) AS p99_ms, max(lag_ms) AS max_ms, avg(lag_ms) AS mean_ms
    FROM watch_deliveries GROUP BY ALL ORDER BY run_id, observer, locality"""),
    ("VIEW", "watch_missed", """
    SELECT o.run_id, o.observer, w.revision, w.key, w.op, w.replica AS writer
    FROM watch_observers o JOIN writes w ON w.run_id = o.run_id
    WHERE w.revision >= o.start_revision AND starts_with(w.key, o.prefix)
      AND NOT EXISTS (SELECT 1 FROM watch_events e  -- revision and key: a failover can reuse a revision
                      WHERE e.run_id = o.run_id AND e.observer = o.observer AND e.revision = w.revision
                        AND e.key = w.key)"""),
    # A series first seen after the replica's first scrape of the run began during it (Prometheus exports a
    # labelled counter from its first increment): its first value is growth too.
    ("VIEW", "metric_growth", """
    WITH scrapes AS (SELECT run_id, replica, min(t) AS first_scrape FROM kine_metrics GROUP BY ALL),
    s AS (SELECT m.*, lag(m.value) OVER (PARTITION BY m.run_id, m.replica, m.metric, m.labels ORDER BY m.t)
                      AS previous, c.first_scrape
          FROM kine_metrics m JOIN scrapes c USING (run_id, replica))
    SELECT run_id, replica, metric, labels, min(t) AS first_t, max(t) AS last_t,
           arg_min(value, t) AS first_value, arg_max(value, t) AS last_value, max(value) AS peak,
           sum(CASE WHEN previous IS NULL THEN CASE WHEN t > first_scrape THEN value ELSE 0 END
                    WHEN value >= previous THEN value - previous
                    ELSE value END) AS growth
    FROM s GROUP BY ALL"""),
    ("VIEW", "fault_recovery", """
    WITH f AS (SELECT e.run_id, e.t, e.fault, e.target, c.t0,
                      row_number() OVER (PARTITION BY e.run_id ORDER BY e.t) AS n,
                      lead(e.t) OVER (PARTITION BY e.run_id ORDER BY e.t) AS next_t,
                      -- a component's name (replica=postgres-1) is no replica index: NULL, every replica's errors
                      CASE WHEN starts_with(e.target, 'replica=')
                           THEN TRY_CAST(split_part(e.target, '=', 2) AS INTEGER) END AS replica
               FROM fault_events e JOIN run_clock c USING (run_id)),
    errs AS (SELECT f.run_id, f.n, count(x.t) AS errors, max(x.t) - f.t0 AS last_error
             FROM f LEFT JOIN load_errors x ON x.run_id = f.run_id AND (f.replica IS NULL OR x.replica = f.replica)
                  AND x.t - f.t0 >= f.t AND x.t - f.t0 < coalesce(f.next_t, 1e18)
             GROUP BY f.run_id, f.n, f.t0)
    SELECT f.run_id, f.t, f.fault, f.target, errs.errors,
           (SELECT min(w.t_commit) - f.t0 FROM writes w
            WHERE w.run_id = f.run_id AND (f.replica IS NULL OR w.replica = f.replica)
              AND w.t_commit - f.t0 >= greatest(f.t, coalesce(errs.last_error, f.t))) - f.t AS recovery_s
    FROM f JOIN errs USING (run_id, n) ORDER BY f.run_id, f.t"""),
    ("MACRO", "error_kind(error, code)", """
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
         ELSE 'other' END"""),
    # What the table contradicts. Acknowledged but missing: the same test as the reconciliation's writes_lost.
    # Reported failed but written: the value a failed create or update sent is a row of its key in some snapshot
    # (Kine never rewrites a row, so any snapshot's copy counts, even one compaction removed later).
    ("VIEW", "write_anomalies", """
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
      ON k.name = e.key AND k.value_sha256 = e.value_sha256"""),
    # The verdict of one scenario run across Kine releases (`kinelab scenario --kine-versions`).
    ("VIEW", "anomalies_by_version", """
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
    GROUP BY ALL ORDER BY p.run_id, p.kine_version"""),
]

# Which definitions a file's views have: when they are this kinelab's, reading it need not create them again.
VIEWS_DIGEST = hashlib.sha256(repr(VIEWS).encode()).hexdigest()[:16]

# Objects that files of capture schema 1 kept and that are now the analyses' own (kinelab/analyse/views.py).
MOVED_TO_ANALYSES = [("MACRO TABLE", "kine_classified"), ("VIEW", "kine_ops"), ("VIEW", "kine_compacted"),
                     ("VIEW", "availability"), ("VIEW", "error_kinds"), ("VIEW", "apiserver_watch_rows")]


def create_views(con, views, *, temp: bool = False) -> None:
    """Create `views` ([(kind, name, body)]) on `con`, replacing older definitions; as TEMP objects, visible to
    this connection only, when `temp` (the way to add views to a read-only file)."""
    for kind, name, body in views:
        con.execute(f"CREATE OR REPLACE {'TEMP ' if temp else ''}{kind} {name} AS {body}")


# --- bounded DuckDB ------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class Bounds:
    """How much of the machine one DuckDB connection may use."""

    memory_bytes: int
    threads: int
    temp_root: Path


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _to_bytes(text: str) -> Optional[int]:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_bytes(text: Union[str, int], what: str = MEMORY_ENV) -> int:
    """Bytes from "512MB", "2 GB", "1.5GiB", "800M" (binary) or a plain number of bytes."""
    value = text if isinstance(text, int) else _to_bytes(str(text))
    if value is None:
        raise UsageError(f"{what}={text!r} is not a size: write it like 512MB, 2GB or 1.5GiB")
    if value < MIN_BOUND:
        raise UsageError(f"{what}={text!r} is too small: give kinelab at least {MIN_BOUND // 10**6}MB")
    return value


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bounds(memory_limit: Union[str, int, None] = None, *, writer: bool = False) -> Bounds:
    """The bounds for a connection: `memory_limit` if given, else KINELAB_MEMORY_LIMIT, else DEFAULT_MEMORY. A
    `writer` (a capture, a run) streams rows into the file: DuckDB only buffers what it is about to write, so it
    gets a quarter of the bound and one thread, and the rows in flight and the reading thread fit in the rest."""
    setting = memory_limit if memory_limit is not None else os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY
    what = "memory_limit" if memory_limit is not None else MEMORY_ENV
    memory = parse_bytes(setting, what)
    temp_root = Path(os.environ.get(TEMP_ENV) or tempfile.gettempdir()).expanduser()
    if writer:
        return Bounds(max(memory // 4, MIN_MEMORY), 1, temp_root)
    return Bounds(memory, max(1, min(_cpus(), memory // MEMORY_PER_THREAD)), temp_root)


def rows_per_group(limits: Bounds) -> int:
    """A writer's row-group size: DuckDB holds a row group in memory until it is full, so one of typical rows
    (2 KB of value and old_value) takes at most a quarter of the writer's memory (DuckDB's own size, 122,880
    rows, is 250 MB of such rows)."""
    rows = limits.memory_bytes // 4 // TYPICAL_ROW_BYTES
    return max(VECTOR_ROWS, min(122_880, rows // VECTOR_ROWS * VECTOR_ROWS))


def apply_bounds(con, limits: Bounds) -> None:
    # A directory of this connection's own: DuckDB makes it when it first spills and removes it on close.
    spill = limits.temp_root / f"kinelab-duckdb-{os.getpid()}-{secrets.token_hex(3)}"
    con.execute(f"SET memory_limit = '{limits.memory_bytes // 1024}KiB'")
    con.execute(f"SET threads = {limits.threads}")
    con.execute("SET temp_directory = ?", [str(spill)])
    con.execute(f"SET enable_progress_bar = {'true' if progress.enabled() else 'false'}")


@contextmanager
def within_bounds(con, what: str) -> Iterator[None]:
    """Turn DuckDB running out of memory on `con`, with no room to spill the rest, into one line that names the
    settings to raise."""
    import duckdb

    try:
        yield
    except (duckdb.OutOfMemoryException, duckdb.IOException) as exc:
        limit, spill = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')"
                                   ).fetchall()[0]
        detail = str(exc).splitlines()[0]
        if isinstance(exc, duckdb.IOException) and spill not in detail:
            raise
        raise MemoryLimitError(f"{what} needs more memory than the {limit} DuckDB may use here, and could not spill "
                               f"the rest to {Path(spill).parent} ({detail}); raise {MEMORY_ENV} (e.g. "
                               f"{MEMORY_ENV}=2GB, or memory_limit='2GB') or point {TEMP_ENV} at a disk with room"
                               ) from exc


def connect_duckdb(path, *, busy: str, unreadable: str, read_only: bool = False, writer: bool = False,
                   probe: Optional[str] = None, memory_limit: Union[str, int, None] = None):
    """A DuckDB connection to `path` (None: in memory) within `bounds(memory_limit, writer=writer)`, with `probe`
    run on it, or a one-line CaptureError: `busy` when another process holds the file, `unreadable` (with
    `{reason}` filled in) otherwise. A writer's file is attached to an in-memory DuckDB, the one way to choose
    its row-group size, and made the connection's default database."""
    import duckdb

    limits = bounds(memory_limit, writer=writer)  # a bad setting fails before anything is opened
    con = None
    try:
        if writer and path is not None:
            con = duckdb.connect()
            apply_bounds(con, limits)
            # blocks from one allocation, reused: a capture writes gigabytes through a few megabytes of blocks,
            # and fresh pages for each cost the kernel more than DuckDB's own work
            con.execute(f"SET block_allocator_memory = '{limits.memory_bytes // 1024}KiB'")
            _attach(con, path, limits)
        else:
            con = duckdb.connect(str(path) if path is not None else ":memory:", read_only=read_only)
            apply_bounds(con, limits)
    except duckdb.Error as exc:
        if con is not None:
            con.close()
        reason = str(exc).splitlines()[0]
        raise CaptureError(busy if "lock" in reason.lower() else unreadable.replace("{reason}", reason)) from exc
    try:
        if probe:
            con.execute(probe).fetchall()
    except duckdb.Error as exc:
        con.close()
        reason = str(exc).splitlines()[0]
        raise CaptureError(unreadable.replace("{reason}", reason)) from exc
    return con


def reattach(con) -> None:
    """Detach a writer's file and attach it again. DuckDB keeps some memory for every block a database has
    written (about 8 MB per GB) for as long as it stays attached: a capture of ten million rows would grow
    past any small bound. Between the two, the file is closed for a few milliseconds."""
    attached = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = ?", [WRITER_DB]).fetchall()
    if not attached:  # not a writer's connection (an in-memory one): nothing to let go of
        return
    path, memory = attached[0][0], con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    con.execute("USE memory")
    con.execute(f"DETACH {WRITER_DB}")
    _attach(con, path, Bounds(_to_bytes(memory), 1, Path()))


def _attach(con, path, limits: Bounds) -> None:
    quoted = str(path).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS {WRITER_DB} (ROW_GROUP_SIZE {rows_per_group(limits)})")
    con.execute(f"USE {WRITER_DB}")


def discard_unfinished(con) -> None:
    """Remove the rows that a capture which did not finish committed in parts: they belong to no snapshot."""
    newest = "(SELECT coalesce(max(snapshot_id), 0) FROM snapshots)"
    for table in ("kine_rows", "kine_removed"):
        con.execute(f"DELETE FROM {table} WHERE snapshot_id > {newest}")


# --- opening files ---------------------------------------------------------------------------------------------

def open_store(path, identity: Optional[str] = None, *, memory_limit: Union[str, int, None] = None):
    """Open (or create) a kinelab DuckDB file for writing, refusing corrupt files, files locked by another
    process and files that belong to another source than `identity`; a file of an older capture schema is
    upgraded first."""
    path = Path(path).expanduser().resolve()
    if not path.parent.is_dir():
        raise CaptureError(f"directory {path.parent} does not exist; create it or choose another --out")
    con = connect_duckdb(path, memory_limit=memory_limit, writer=True,
                         busy=f"{path} is open in another process (another capture?); wait for it or use "
                              "another --out",
                         unreadable=f"{path} is not a readable DuckDB file ({{reason}}); move it away or choose "
                                    "another --out")
    try:
        say_upgraded(path, ensure_schema(con))
        if identity is not None:
            known = con.execute("SELECT value FROM capture_meta WHERE key = 'source'").fetchall()
            if known and known[0][0] != identity:
                raise CaptureError(f"{path} holds data of {known[0][0]}, not {identity}; use another --out")
            con.execute("INSERT OR IGNORE INTO capture_meta VALUES ('source', ?)", [identity])
    except BaseException:
        con.close()
        raise
    return con


def open_capture_file(path, *, read_only: bool = True, memory_limit: Union[str, int, None] = None):
    """Open a capture file to read it, refusing files that are not captures. A file of capture schema 1
    (kinelab before sizes and keys were stored) is upgraded in place once, with one line saying so. The
    contract's views are this kinelab's: the file's own, or TEMP views when another kinelab wrote the file."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"no capture at {path}; make one with `kinelab capture --out {path}`")
    busy = f"{path} is open for writing in another process; wait for it to finish or open a copy"
    unreadable = f"{path} is not a kinelab capture ({{reason}}); name a file made by `kinelab capture`"
    con = connect_duckdb(path, read_only=read_only, memory_limit=memory_limit, busy=busy, unreadable=unreadable,
                         probe="SELECT value FROM capture_meta WHERE key = 'schema_version'")
    if schema_version(con) != SCHEMA_VERSION:  # older: upgraded; newer: refused by ensure_schema
        con.close()
        say_upgraded(path, upgrade(path, memory_limit=memory_limit))
        con = connect_duckdb(path, read_only=read_only, memory_limit=memory_limit, busy=busy, unreadable=unreadable)
    try:
        ensure_current_views(con)
    except BaseException:
        con.close()
        raise
    return con


def ensure_current_views(con) -> None:
    """The contract's views as this kinelab defines them on `con`: the file's own when it has them, else TEMP
    views over them (a file written by another kinelab, or opened read-only)."""
    stored = con.execute("SELECT value FROM capture_meta WHERE key = 'views'").fetchall()
    if stored != [(VIEWS_DIGEST,)]:
        create_views(con, VIEWS, temp=True)


def schema_version(con) -> Optional[str]:
    rows = con.execute("SELECT value FROM capture_meta WHERE key = 'schema_version'").fetchall()
    return rows[0][0] if rows else None


def upgrade(path, *, memory_limit: Union[str, int, None] = None) -> Optional[float]:
    """Bring the capture at `path` up to this schema in place (see ensure_schema); the seconds it took, or None
    when it was current. A file that cannot be written is refused with one line."""
    needs = (f"{path} was captured by an older kinelab (capture schema 1) and must be upgraded once, which needs "
             "write access")
    con = connect_duckdb(path, memory_limit=memory_limit, writer=True,
                         busy=f"{needs}, but another process has it open; close that, or copy the file and open "
                              "the copy",
                         unreadable=f"{needs} ({{reason}}); copy it somewhere writable and open the copy")
    try:
        return ensure_schema(con)
    finally:
        con.close()


def ensure_schema(con) -> Optional[float]:
    """Create the contract's tables and views, or bring a file of an older schema up to this one. The rows of an
    older file are brought up a slice at a time, each in a transaction of its own, so memory stays bounded however
    big the file: an interrupted upgrade leaves the file readable by nothing but the next upgrade, which carries
    on where it stopped. Returns the seconds an upgrade took, or None."""
    import time

    started = time.monotonic()
    tables = _tables(con)
    written = schema_version(con) if "capture_meta" in tables else None
    if written is not None and int(written) > int(SCHEMA_VERSION):
        raise CaptureError(f"this file was written by a newer kinelab (capture schema {written}, this one "
                           f"knows {SCHEMA_VERSION}); upgrade kinelab to read it")
    upgrade = "kine_rows" in tables and written != SCHEMA_VERSION
    if upgrade:
        _add_row_facts(con)
    con.begin()
    try:
        con.execute(TABLES)
        if upgrade:
            con.execute("DROP TABLE IF EXISTS kine_decoded")
            for kind, name in MOVED_TO_ANALYSES:
                con.execute(f"DROP {kind} IF EXISTS {name}")
            con.execute("DELETE FROM capture_meta WHERE key = 'upgraded_below_id'")
        create_views(con, VIEWS)
        con.execute("INSERT OR REPLACE INTO capture_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
        con.execute("INSERT OR REPLACE INTO capture_meta VALUES ('views', ?)", [VIEWS_DIGEST])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return time.monotonic() - started if upgrade else None


def _tables(con) -> set:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                      "current_database()").fetchall()}


def say_upgraded(path, seconds: Optional[float]) -> None:
    if seconds is not None:
        progress.say(f"upgraded {path} to capture schema {SCHEMA_VERSION} in {seconds:.1f} s: the sizes, keys and "
                     "encodings of its rows are stored, so analyses no longer read the values")


def _add_row_facts(con) -> None:
    """Schema 1 to 2: the facts computed from the stored rows, and kine_decoded's columns moved into kine_rows,
    UPGRADE_ROWS rows at a time (DuckDB keeps an update in memory until it commits)."""
    types = {"value_bytes": "INTEGER", "old_value_bytes": "INTEGER"}
    for column in FACT_COLUMNS + DECODED_COLUMNS:
        con.execute(f"ALTER TABLE kine_rows ADD COLUMN IF NOT EXISTS {column} {types.get(column, 'VARCHAR')}")
    low, high, rows = con.execute("SELECT min(id), max(id), count(*) FROM kine_rows").fetchall()[0]
    if not rows:
        return
    done = con.execute("SELECT value FROM capture_meta WHERE key = 'upgraded_below_id'").fetchall()
    step = max(1, (high - low + 1) * UPGRADE_ROWS // rows)
    pending = range(int(done[0][0]) if done else low, high + 1, step)
    sliced = "kine_rows.id >= $1 AND kine_rows.id < $2 AND f.id >= $1 AND f.id < $2"
    facts = ROW_FACTS.format(rows="kine_rows WHERE id >= $1 AND id < $2", columns="snapshot_id, id")
    with progress.bar("upgrading the capture to schema 2", total=len(pending)) as advance:
        for start in pending:
            con.begin()
            for columns, source in ((FACT_COLUMNS, f"({facts})"), (DECODED_COLUMNS, "kine_decoded")):
                con.execute(f"""UPDATE kine_rows SET {', '.join(f'{c} = f.{c}' for c in columns)} FROM {source} f
                                WHERE kine_rows.snapshot_id = f.snapshot_id AND kine_rows.id = f.id AND {sliced}""",
                            [start, start + step])
            con.execute("INSERT OR REPLACE INTO capture_meta VALUES ('upgraded_below_id', ?)", [str(start + step)])
            con.commit()
            con.execute("CHECKPOINT")  # the slice's updates leave memory for the file
            advance()


# --- runs ------------------------------------------------------------------------------------------------------

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
