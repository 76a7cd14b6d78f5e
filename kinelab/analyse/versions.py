"""What each Kine release did under a scenario, from a results file: the anomalies by release, the SQL errors
Kine counted, and the bisect against what Kine's source says each release does.

Everything here is computed from the stored tables (writes, load_errors, kine_rows, kine_metrics, run_replicas)
with today's definitions: `recompute` re-runs the reconciliation of every scenario run, so a recording made by
an older kinelab is judged by the current code, not by the verdicts it stored.
"""

from __future__ import annotations

import re
from typing import Optional

# How each release's `LogStructured.Create` (pkg/logstructured/logstructured.go) handles a failed insert, read
# from the module sources of every release the Go module proxy lists from v0.13.14 to v0.17.5:
#   read-first:   read the key, refuse if it exists, then `Append` and return its error (v0.13.14 - v0.16.5,
#                 v0.17.0 - v0.17.2);
#   append-first: `Append` first (a transaction on one pooled connection, the INSERT on another), and on any
#                 error read the key: absent -> (0, nil), acknowledged at the current revision; present ->
#                 "key exists", although the row may be this very insert (v0.16.6, v0.17.3 - v0.17.5).
APPEND_FIRST = ("v0.16.6", "v0.17.3", "v0.17.4", "v0.17.5")
READ_FIRST = ("v0.13.14", "v0.13.15", "v0.13.17", "v0.14.0", "v0.14.4", "v0.14.6", "v0.14.9", "v0.14.12",
              "v0.16.3", "v0.16.4", "v0.16.5", "v0.17.0", "v0.17.1", "v0.17.2")


def create_path(version: str) -> Optional[str]:
    """"append-first" or "read-first" for a release whose source was read, None for any other."""
    return "append-first" if version in APPEND_FIRST else "read-first" if version in READ_FIRST else None


def recompute(con, expect: Optional[dict] = None) -> None:
    """Reconcile every scenario run in `con` (a writable results file) again with today's code."""
    from ..observe.scenario import reconcile

    for (run_id,) in con.execute("SELECT run_id FROM runs WHERE kind = 'scenario' ORDER BY run_id").fetchall():
        reconcile(con, run_id, expect or {})


def by_version(con) -> list:
    """[{run_id, scenario, kine_version, writes, errors, acknowledged_but_missing, reported_failed_but_written}]"""
    cursor = con.execute("SELECT * FROM anomalies_by_version")
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


SQL_ERRORS = """
WITH m AS (SELECT replica, t, metric, value, json_extract_string(labels, '$.name') AS query,
                  coalesce(json_extract_string(labels, '$.error_code'), '') AS error_code,
                  json_extract_string(labels, '$.retriable') AS retriable
           FROM kine_metrics WHERE run_id = ? AND metric IN ('kine_sql_total', 'kine_insert_errors_total'))
SELECT metric, query, error_code, retriable, sum(grew) AS grew
FROM (SELECT replica, metric, query, error_code, retriable, arg_max(value, t) - arg_min(value, t) AS grew
      FROM m GROUP BY ALL)
WHERE (metric = 'kine_insert_errors_total' OR error_code <> '') AND grew > 0
GROUP BY ALL ORDER BY grew DESC
"""


def sqlstate(error_code: str) -> str:
    """Kine labels a query's error with the Postgres SQLSTATE, but a connection the server refused with the whole
    message ("failed to connect ... (SQLSTATE 53300)"): the SQLSTATE either way, else the label itself."""
    if re.fullmatch(r"[0-9A-Z]{5}", error_code):
        return error_code
    found = re.search(r"SQLSTATE ([0-9A-Z]{5})", error_code)
    return found.group(1) if found else error_code


def sql_errors(con, run_id: int) -> dict:
    """The growth over the run of what Kine counted failing, summed over the replicas:
    {"kine_sql_total": {(query, sqlstate): n}, "kine_insert_errors_total": {retriable: n}}."""
    found: dict = {"kine_sql_total": {}, "kine_insert_errors_total": {}}
    for metric, query, error_code, retriable, grew in con.execute(SQL_ERRORS, [run_id]).fetchall():
        if metric == "kine_insert_errors_total":
            found[metric][retriable] = found[metric].get(retriable, 0) + int(grew)
        else:
            key = (query, sqlstate(error_code))
            found[metric][key] = found[metric].get(key, 0) + int(grew)
    return found


def bisect(rows: list) -> dict:
    """Per release, over every run of it in `rows` (from `by_version`): {version: {"loses_acknowledged_writes",
    "reports_failed_but_written", "errors", "create_path"}}."""
    verdicts: dict = {}
    for row in rows:
        v = verdicts.setdefault(row["kine_version"], {"loses_acknowledged_writes": False,
                                                       "reports_failed_but_written": False, "errors": 0,
                                                       "create_path": create_path(row["kine_version"])})
        v["loses_acknowledged_writes"] |= row["acknowledged_but_missing"] > 0
        v["reports_failed_but_written"] |= row["reported_failed_but_written"] > 0
        v["errors"] += row["errors"]
    return verdicts
