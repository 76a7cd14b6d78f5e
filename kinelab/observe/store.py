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
  kine_latest            kine_at(newest snapshot)
  kine_ops               kine_latest, one row per id, with op, resource, namespace, object_name, value_bytes,
                         encoding, api_version, kind
  kine_compacted         rows that a later snapshot found removed, with the snapshot that noticed
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
    prev_revision BIGINT, lease BIGINT, value BLOB, old_value BLOB);
CREATE TABLE IF NOT EXISTS kine_removed (snapshot_id INTEGER, id BIGINT);
CREATE TABLE IF NOT EXISTS kine_decoded (
    snapshot_id INTEGER, id BIGINT, encoding VARCHAR, api_version VARCHAR, kind VARCHAR);
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
"""


def ensure_schema(con) -> None:
    con.execute(TABLES)
    con.execute(VIEWS)
    con.execute("INSERT OR IGNORE INTO capture_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
