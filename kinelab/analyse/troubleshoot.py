"""What Kine's own metrics say about its database, per run and replica: the numbers an SRE reads first when
writes slow down or fail.

Kine exports Go's database/sql pool (go_sql_*) and its own SQL timings (kine_sql_time_seconds). The counters
are cumulative since the replica started, so each figure here is the run's growth: last sample minus first.
"""

from __future__ import annotations

POOL = """
WITH m AS (SELECT replica, t, metric, value FROM kine_metrics
           WHERE run_id = ? AND metric IN ('go_sql_open_connections', 'go_sql_in_use_connections',
                                           'go_sql_max_open_connections', 'go_sql_wait_count_total',
                                           'go_sql_wait_duration_seconds_total')),
     grown AS (SELECT replica, metric, arg_max(value, t) - arg_min(value, t) AS grew, max(value) AS peak
               FROM m GROUP BY ALL)
SELECT replica,
       max(peak) FILTER (WHERE metric = 'go_sql_max_open_connections') AS max_open,
       max(peak) FILTER (WHERE metric = 'go_sql_open_connections') AS peak_open,
       max(peak) FILTER (WHERE metric = 'go_sql_in_use_connections') AS peak_in_use,
       max(grew) FILTER (WHERE metric = 'go_sql_wait_count_total') AS waits,
       max(grew) FILTER (WHERE metric = 'go_sql_wait_duration_seconds_total') * 1000 AS waited_ms
FROM grown GROUP BY replica ORDER BY replica
"""

SQL_TIME = """
WITH m AS (SELECT replica, t, metric, json_extract_string(labels, '$.name') AS query, value FROM kine_metrics
           WHERE run_id = ? AND metric IN ('kine_sql_time_seconds_sum', 'kine_sql_time_seconds_count')),
     grown AS (SELECT replica, query, metric, arg_max(value, t) - arg_min(value, t) AS grew FROM m GROUP BY ALL)
SELECT replica, query,
       max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_count') AS queries,
       1000 * max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_sum')
            / nullif(max(grew) FILTER (WHERE metric = 'kine_sql_time_seconds_count'), 0) AS mean_ms
FROM grown GROUP BY ALL HAVING queries > 0 ORDER BY replica, queries DESC
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
