"""What a database failover did to Kine, from a scenario's tables alone (so a replay recomputes it with today's
code): which acknowledged writes the new primary lacks and when they were acknowledged, the revisions it handed
out again, how far each replica's revision went back, what the watchers delivered and missed, and how long
writes took to come back.

The physics behind the numbers:
* Kine's revision is the row id, from a Postgres sequence. A standby replays the sequence as the primary WAL-logs
  it, 32 values ahead of the last id used, so after a promotion new ids start at most 32 above the last row the
  standby received. With asynchronous replication the primary acknowledges commits the standby has not received:
  if more than 32 ids were used in that window, the new primary hands the same ids out again, for other keys.
* A replica's poll loop remembers the highest id it delivered and reads only ids above it, so ids handed out
  again below that are never delivered to its watchers; a Range reports MAX(id), which goes down.
* With synchronous replication a commit waits for the standby's flush; a client that gives up cancels the wait,
  and the row is then committed and visible on the primary alone: watchers see it, the standby never gets it.
"""

from __future__ import annotations

import re

from ..errors import UsageError
from ..observe.scenario import measure

_PROMOTED = re.compile(r"rows up to id (\d+), its id sequence resumes at (\d+)")


def _one(con, sql: str, params: dict):
    return con.execute(sql, params).fetchall()[0][0]


def failover_times(con, run_id: int) -> dict:
    """{"t0": the load's start (clock seconds), "failover": seconds into the load, "lag": when WAL shipping was
    paused before it (None if it was not), "detail": what the failover reported}."""
    t0 = _one(con, "SELECT CAST(json_extract_string(summary, '$.t0') AS DOUBLE) FROM runs WHERE run_id = $run",
              {"run": run_id})
    rows = con.execute("SELECT t, fault, detail FROM fault_events WHERE run_id = ? AND ok ORDER BY t",
                       [run_id]).fetchall()
    failovers = [(t, detail) for t, fault, detail in rows if fault == "failover"]
    if t0 is None or not failovers:
        raise UsageError(f"run {run_id} has no successful failover; run a failover scenario (scenarios/failover-*)")
    t, detail = failovers[-1]
    lags = [lt for lt, fault, _ in rows if fault == "replication-pause" and lt <= t]
    return {"t0": t0, "failover": t, "lag": lags[-1] if lags else None, "detail": detail}


def failover_report(con, run_id: int) -> dict:
    """The failover of scenario run `run_id`, measured. Every time is in seconds since the failover unless named
    otherwise; `checks` are the reconciliation's (`observe.scenario.measure`)."""
    times = failover_times(con, run_id)
    at = times["t0"] + times["failover"]
    p = {"run": run_id, "at": at}
    kept = "EXISTS (SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key)"
    acknowledged = dict(con.execute(
        "SELECT w.t_commit < $at, count(*) FROM writes w WHERE run_id = $run GROUP BY 1", p).fetchall())
    lost = dict(con.execute(
        f"SELECT w.t_commit < $at, count(*) FROM writes w WHERE run_id = $run AND NOT {kept} GROUP BY 1", p).fetchall())
    first_lost = _one(con, f"SELECT min(t_commit) - $at FROM writes w WHERE run_id = $run AND t_commit < $at AND "
                      f"NOT {kept}", p)
    last_acknowledged = _one(con, "SELECT max(revision) FROM writes WHERE run_id = $run AND t_commit < $at", p)
    promoted = _PROMOTED.search(times["detail"] or "")
    # per replica: the highest revision it reported before the failover, the lowest after
    drops = con.execute("""SELECT replica, greatest(0, max(revision) FILTER (WHERE t < $at)
                                               - min(revision) FILTER (WHERE t >= $at))
                           FROM revision_samples WHERE run_id = $run AND revision IS NOT NULL GROUP BY 1 ORDER BY 1""",
                        p).fetchall()
    watchers = con.execute(f"""
        SELECT o.observer,
               (SELECT count(*) FROM watch_missed m WHERE m.run_id = o.run_id AND m.observer = o.observer),
               (SELECT count(*) FROM watch_missed w WHERE w.run_id = o.run_id AND w.observer = o.observer
                  AND {kept}),
               (SELECT count(*) FROM watch_events w WHERE w.run_id = o.run_id AND w.observer = o.observer
                  AND NOT {kept}),
               (SELECT min(e.t_observed) - $at FROM watch_events e JOIN writes w ON w.run_id = e.run_id
                  AND w.revision = e.revision AND w.key = e.key
                WHERE e.run_id = o.run_id AND e.observer = o.observer AND w.t_commit >= $at AND e.t_observed >= $at)
        FROM watch_observers o WHERE o.run_id = $run ORDER BY 1""", p).fetchall()
    errors_after = _one(con, "SELECT count(*) FROM load_errors WHERE run_id = $run AND t >= $at AND t < $at + 5", p)
    report = {
        "failover_s": round(times["failover"], 2),
        "detail": times["detail"],
        "acknowledged_before": int(acknowledged.get(True, 0)),
        "acknowledged_after": int(acknowledged.get(False, 0)),
        # acknowledged before the failover, then gone: what the standby had not received
        "lost_before": int(lost.get(True, 0)),
        # acknowledged after it, never written: Kine's Create answering success when its insert failed
        "lost_after": int(lost.get(False, 0)),
        "lost_since_s": None if first_lost is None else round(first_lost, 2),
        "last_acknowledged_revision": last_acknowledged,
        "standby_max_id": int(promoted[1]) if promoted else None,
        "sequence_resumed_at": int(promoted[2]) if promoted else None,
        "revision_drop": {int(r): int(d or 0) for r, d in drops},
        # missed: acknowledged writes its watch never delivered; missed_rows: those of them that are rows of the
        # table (a cache fed by the watch never learns of them); phantom_events: events for rows that are gone
        "watchers": {int(o): {"missed": int(m), "missed_rows": int(mr), "phantom_events": int(ph),
                              "resumed_s": None if res is None else round(res, 3)}
                     for o, m, mr, ph, res in watchers},
        "errors_in_5s_after": int(errors_after),
        "checks": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in measure(con, run_id).items()},
    }
    if times["lag"] is not None:
        lag_at = times["t0"] + times["lag"]
        q = {"run": run_id, "lag": lag_at, "at": at}
        report["lag_s"] = round(times["failover"] - times["lag"], 2)
        report["acknowledged_while_lagging"] = int(_one(
            con, "SELECT count(*) FROM writes WHERE run_id = $run AND t_commit >= $lag AND t_commit < $at", q))
        report["timeouts_while_lagging"] = int(_one(
            con, "SELECT count(*) FROM load_errors WHERE run_id = $run AND t >= $lag AND t < $at AND "
                 "code = 'DEADLINE_EXCEEDED'", q))
    return report


# Every acknowledged write of run $1 with its seconds since the load began ($2 is the load's start), revision,
# replica and fate: kept (a row of the table), lost (no row of its key at its revision), or reissued (kept, at a
# revision an earlier write of another key was acknowledged with).
FATES_SQL = """
    SELECT w.t_commit - $2 AS seconds, w.revision, 'replica ' || w.replica AS replica, w.op, w.key,
           CASE WHEN NOT EXISTS (SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key) THEN 'lost'
                WHEN EXISTS (SELECT 1 FROM writes e WHERE e.run_id = w.run_id AND e.revision = w.revision
                             AND e.key <> w.key AND e.t_commit < w.t_commit) THEN 'reissued'
                ELSE 'kept' END AS fate
    FROM writes w WHERE w.run_id = $1"""


def fates(con, run_id: int) -> dict:
    """{fate: how many acknowledged writes of the run} (FATES_SQL's kept, lost, reissued)."""
    t0 = failover_times(con, run_id)["t0"]
    return dict(con.execute(f"SELECT fate, count(*) FROM ({FATES_SQL}) GROUP BY 1", [run_id, t0]).fetchall())
