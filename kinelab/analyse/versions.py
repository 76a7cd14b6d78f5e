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


# What the releases that append first must show under each shipped scenario (the releases that read first must
# show neither anomaly, and errors instead): the bisect notebook 09 and the tests assert.
EXPECTED_ON_APPEND_FIRST = {
    "connection-refusal": ("acknowledged_but_missing",),
    "session-termination": ("acknowledged_but_missing", "reported_failed_but_written"),
}


def check_bisect(scenario: str, rows: list) -> list:
    """Where the measurement of `scenario` (rows of `by_version`) disagrees with the code reading: [] when the
    releases that read first returned errors and neither anomaly, and those that append first showed what
    EXPECTED_ON_APPEND_FIRST says (any anomaly at all for another scenario)."""
    disagreements = []
    for version, verdict in bisect(rows).items():
        anomalies = {"acknowledged_but_missing": verdict["loses_acknowledged_writes"],
                     "reported_failed_but_written": verdict["reports_failed_but_written"]}
        if verdict["create_path"] == "read-first":
            if any(anomalies.values()) or not verdict["errors"]:
                disagreements.append(f"{scenario} on {version} (reads first): {anomalies}, {verdict['errors']} errors")
        elif verdict["create_path"] == "append-first":
            wanted = EXPECTED_ON_APPEND_FIRST.get(scenario)
            if not (all(anomalies[a] for a in wanted) if wanted else any(anomalies.values())):
                disagreements.append(f"{scenario} on {version} (appends first): {anomalies}")
    return disagreements


def examples(con, per_anomaly: int = 2) -> list:
    """A few write anomalies of each kind with what the client was told, for a report."""
    cursor = con.execute("""SELECT r.kine_version, a.anomaly, a.op, a.key, a.revision, a.error
                            FROM write_anomalies a JOIN run_replicas r USING (run_id, replica)
                            QUALIFY row_number() OVER (PARTITION BY a.anomaly ORDER BY a.run_id DESC, a.t) <= ?
                            ORDER BY a.anomaly, a.t""", [per_anomaly])
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def markdown_table(rows: list, columns: list) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(measured: dict) -> str:
    """The measured part of the upstream write-up, as Markdown, from {scenario: open results file}: per release
    what the clients saw and what the table holds, what Kine's metrics counted, and an example of each anomaly."""
    parts = []
    for scenario, con in measured.items():
        rows = by_version(con)
        table = [{**r, "Create (code reading)": create_path(r["kine_version"]) or "not read"} for r in rows]
        parts += [f"### {scenario}", "", markdown_table(table, [
            "kine_version", "Create (code reading)", "writes", "errors", "acknowledged_but_missing",
            "reported_failed_but_written"]), ""]
        metrics = []
        for r in rows:
            counted = sql_errors(con, r["run_id"])
            inserts = {state: n for (query, state), n in counted["kine_sql_total"].items()
                       if query in ("Insert", "InsertReturning", "InsertLastInsertID")}
            metrics.append({"kine_version": r["kine_version"],
                            "kine_insert_errors_total (not retriable)":
                                counted["kine_insert_errors_total"].get("false", 0),
                            "failed INSERTs by SQLSTATE (kine_sql_total)":
                                ", ".join(f"{k}: {n}" for k, n in sorted(inserts.items())) or "none",
                            "all failed queries": sum(counted["kine_sql_total"].values())})
        parts += ["Growth of Kine's own counters over each run, summed over the replicas:", "",
                  markdown_table(metrics, list(metrics[0]) if metrics else []), ""]
        shown = examples(con)
        if shown:
            parts += ["Examples:", "", markdown_table(shown, ["kine_version", "anomaly", "op", "key", "revision",
                                                               "error"]), ""]
    return "\n".join(parts)
