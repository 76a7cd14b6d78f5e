"""What Kine's own metrics say about its database, per run and replica: the numbers an SRE reads first when
writes slow down or fail.

Kine exports Go's database/sql pool (go_sql_*) and its own SQL timings (kine_sql_time_seconds). The counters
are cumulative since the replica started, so each figure here is the run's growth (the view metric_growth).
"""

from __future__ import annotations

from ..errors import UsageError

POOL = """
WITH grown AS (SELECT replica, metric, growth AS grew, peak FROM metric_growth
               WHERE run_id = ? AND metric IN ('go_sql_open_connections', 'go_sql_in_use_connections',
                                               'go_sql_max_open_connections', 'go_sql_wait_count_total',
                                               'go_sql_wait_duration_seconds_total'))
SELECT replica,
       max(peak) FILTER (WHERE metric = 'go_sql_max_open_connections') AS max_open,
       max(peak) FILTER (WHERE metric = 'go_sql_open_connections') AS peak_open,
       max(peak) FILTER (WHERE metric = 'go_sql_in_use_connections') AS peak_in_use,
       max(grew) FILTER (WHERE metric = 'go_sql_wait_count_total') AS waits,
       max(grew) FILTER (WHERE metric = 'go_sql_wait_duration_seconds_total') * 1000 AS waited_ms
FROM grown GROUP BY replica ORDER BY replica
"""

SQL_TIME = """
WITH grown AS (SELECT replica, json_extract_string(labels, '$.name') AS query, metric, sum(growth) AS grew
               FROM metric_growth
               WHERE run_id = ? AND metric IN ('kine_sql_time_seconds_sum', 'kine_sql_time_seconds_count')
               GROUP BY ALL)
SELECT replica, query,
       max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_count') AS queries,
       1000 * max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_sum')
            / nullif(max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_count'), 0) AS mean_ms
FROM grown GROUP BY ALL HAVING queries > 0 ORDER BY replica, queries DESC, query
"""


def pool_pressure(con, run_id: int) -> list:
    """Per replica: [{replica, max_open (0 = unlimited), peak_open, peak_in_use, waits, waited_ms}]. Waits are
    queries that found every allowed connection busy and queued for one: the mark of a pool too small."""
    columns = ("replica", "max_open", "peak_open", "peak_in_use", "waits", "waited_ms")
    return [dict(zip(columns, row)) for row in con.execute(POOL, [run_id]).fetchall()]


def sql_time(con, run_id: int) -> list:
    """Per replica and Kine query name: [{replica, query, queries, mean_ms}], busiest first. A slow database
    shows here before anywhere else: the insert's mean time grows while the poll's stays flat."""
    columns = ("replica", "query", "queries", "mean_ms")
    return [dict(zip(columns, row)) for row in con.execute(SQL_TIME, [run_id]).fetchall()]


def query_mean_ms(con, run_id: int, query: str) -> float:
    """The mean time of Kine's `query` (e.g. InsertReturning) over the run, over all replicas, each weighted by
    how many it ran."""
    rows = [r for r in sql_time(con, run_id) if r["query"] == query]
    if not rows:
        raise UsageError(f"run {run_id} has no timings of Kine's {query} query; name one of "
                         f"{', '.join(sorted({r['query'] for r in sql_time(con, run_id)})) or 'none recorded'}")
    return sum(r["mean_ms"] * r["queries"] for r in rows) / sum(r["queries"] for r in rows)
