"""The six fault scenarios of issue #6, run from the files in scenarios/ on real Kine, Postgres, MariaDB and
kube-apiservers, with the figures the README quotes.

1. kill 1 of 3 replicas during load          scenarios/kill-one-of-three.yaml
2. database restart during load              scenarios/database-restart.yaml
3. the three deployment modes, same kill     scenarios/modes-kill.yaml, once per mode, through 3 apiservers
4. connection starvation                     scenarios/connection-starvation.yaml, max-open 4 / 8 / unlimited
5. isolation levels, Postgres and MariaDB    scenarios/isolation.yaml, every level on both engines
6. the TTL race                              scenarios/ttl-race.yaml

Every run keeps its DuckDB file under benchmarks/results/faults/ (tables fault_events, availability,
error_kinds, fault_recovery, scenario_checks). Writes benchmarks/results/faults.json (every run kept in
results/runs/) and faults.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "faults"
SCENARIOS = HERE.parent / "scenarios"
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")


from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.analyse.troubleshoot import pool_pressure  # noqa: E402
from kinelab.observe.scenario import Scenario, run_scenario  # noqa: E402

PG_LEVELS = ("read uncommitted", "read committed", "repeatable read", "serializable")


def run(name: str, label: str, *, lab: dict | None = None, load: dict | None = None) -> tuple:
    """Run scenarios/<name>.yaml on a lab of its own (its `lab:` section updated by `lab`); returns the summary
    and a read-only connection to the run's DuckDB file."""
    scenario = Scenario.from_file(SCENARIOS / f"{name}.yaml")
    scenario.load.update(load or {})
    out = RUNS / f"{label}.duckdb"
    out.unlink(missing_ok=True)
    print(f"  {label}...", flush=True)
    with kl.Lab(**{**scenario.lab, **(lab or {})}) as started:
        summary = run_scenario(started, out, scenario)
    return summary, kl.open_capture(out)


def checks(summary: dict) -> dict:
    return {name: check["value"] for name, check in summary["checks"].items()}


def one(con, sql: str):
    return con.execute(sql).fetchall()[0][0]


def per_target(con, fault: str, what: str = "replica") -> dict:
    """Errors and success share per replica (or apiserver) while `fault` was in effect, and after it."""
    rows = con.execute("""
        WITH f AS (SELECT t, lead(t) OVER (ORDER BY t) AS next_t, fault FROM fault_events)
        SELECT a.replica, sum(a.ok) FILTER (WHERE a.second >= f.t AND a.second < f.next_t) AS ok_during,
               sum(a.errors) FILTER (WHERE a.second >= f.t AND a.second < f.next_t) AS errors_during,
               sum(a.ok) FILTER (WHERE a.second >= f.next_t) AS ok_after
        FROM availability a, f WHERE f.fault = ? GROUP BY 1 ORDER BY 1""", [fault]).fetchall()
    return {f"{what} {r}": {"ok_during": int(ok or 0), "errors_during": int(err or 0), "ok_after": int(after or 0),
                            "served_during": round((ok or 0) / max(1, (ok or 0) + (err or 0)), 2)}
            for r, ok, err, after in rows}


def kill_one_of_three() -> dict:
    summary, con = run("kill-one-of-three", "1-kill-one-of-three")
    recovery = dict(con.execute("SELECT fault, recovery_s FROM fault_recovery").fetchall())
    return {"writes": summary["writes"], "errors": summary["errors"], "checks": checks(summary),
            "per_replica": per_target(con, "kill"), "outage_s": recovery["kill"],
            "recovery_after_restart_s": recovery["restart"]}


def database_restart() -> dict:
    summary, con = run("database-restart", "2-database-restart")
    # time until every replica served again: per replica, the first success after its last error
    back = one(con, """
        WITH c AS (SELECT CAST(json_extract_string(summary, '$.t0') AS DOUBLE) AS t0 FROM runs),
             f AS (SELECT e.t AS t_fault, c.t0 FROM fault_events e, c WHERE e.fault = 'db-restart'),
             last_error AS (SELECT x.replica, max(x.t) AS t_last FROM load_errors x, f
                            WHERE x.t - f.t0 BETWEEN f.t_fault AND f.t_fault + 9 GROUP BY 1)
        SELECT max((SELECT min(w.t_commit) FROM writes w WHERE w.replica = l.replica AND w.t_commit > l.t_last))
               - max(f.t0 + f.t_fault)
        FROM last_error l, f""")
    kinds = con.execute("SELECT kind, sum(errors) FROM error_kinds GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {"writes": summary["writes"], "errors": summary["errors"], "checks": checks(summary),
            "all_serving_again_s": back, "error_kinds": dict(kinds),
            "faults": summary["faults"]}


def modes() -> dict:
    results = {}
    for mode in ("shared-db", "single-kine", "hybrid"):
        summary, con = run("modes-kill", f"3-modes-{mode}", lab={"mode": mode})
        results[mode] = {"writes": summary["writes"], "errors": summary["errors"], "checks": checks(summary),
                         "per_apiserver": per_target(con, "kill", "apiserver")}
    return results


def starvation() -> dict:
    results = {}
    for cap in (4, 8, 0):
        summary, con = run("connection-starvation", f"4-max-open-{cap or 'unlimited'}",
                           lab={"kine_args": {"datastore-max-open-connections": cap,
                                              "datastore-max-idle-connections": 2}})
        p50, p99 = con.execute("SELECT quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99) "
                               "FROM writes").fetchall()[0]
        pool = pool_pressure(con, summary["run_id"])
        results["unlimited" if not cap else str(cap)] = {
            "writes_per_s": summary["write_rate"], "p50_ms": round(p50 or 0, 1), "p99_ms": round(p99 or 0, 1),
            "errors": summary["errors"], "checks": checks(summary),
            "too_many_connections": int(one(con, "SELECT coalesce(sum(errors), 0) FROM error_kinds "
                                                 "WHERE kind = 'too many connections'")),
            "timeouts": int(one(con, "SELECT coalesce(sum(errors), 0) FROM error_kinds WHERE kind = 'timeout'")),
            "peak_open_connections": sum(int(r["peak_open"] or 0) for r in pool),
            "pool_waits": sum(r["waits"] or 0 for r in pool), "waited_s": sum(r["waited_ms"] or 0 for r in pool) / 1000}
    return results


def isolation(duration_s: float) -> dict:
    results = {}
    engines = [("postgres", "default_transaction_isolation", level) for level in PG_LEVELS]
    engines += [("mysql", "transaction_isolation", level.upper().replace(" ", "-")) for level in PG_LEVELS]
    for datastore, setting, level in engines:
        label = f"5-isolation-{datastore}-{level.lower().replace(' ', '-')}"
        summary, con = run("isolation", label, lab={"datastore": datastore, "datastore_settings": {setting: level}},
                           load={"duration_s": duration_s})
        kinds = con.execute("SELECT kind, sum(errors) FROM error_kinds GROUP BY 1").fetchall()
        results[f"{datastore} {level.lower().replace('-', ' ')}"] = {
            "writes": summary["writes"], "errors": summary["errors"], "error_kinds": dict(kinds),
            "checks": checks(summary)}
    return results


def ttl_race() -> dict:
    summary, con = run("ttl-race", "6-ttl-race")
    expired = one(con, "SELECT count(*) FROM kine_latest WHERE deleted = 1 AND starts_with(name, '/registry/events/')")
    return {"writes": summary["writes"], "errors": summary["errors"], "checks": checks(summary),
            "expiry_deletes": int(expired)}


def write_results(results: dict) -> None:
    write_json("faults", results)
    s1, s2, s3, s4, s5, s6 = (results[k] for k in ("kill", "db_restart", "modes", "starvation", "isolation", "ttl"))
    lines = [
        "# Faults: what HA with Kine survives", "",
        f"{results['date']}, {results['machine']}; `{results['command']}` in {results['duration_s']:.0f} s. Kine "
        f"{results['kine_version']}, embedded Postgres, Debian's MariaDB. Each run's DuckDB file is kept in "
        "`benchmarks/results/faults/` (git-ignored).", "",
        "## 1. Kill 1 of 3 replicas during load (`scenarios/kill-one-of-three.yaml`)", "",
        "| replica | writes while down | errors while down | share served | writes after restart |",
        "|---|---:|---:|---:|---:|"]
    for target, row in s1["per_replica"].items():
        lines.append(f"| {target} | {row['ok_during']} | {row['errors_during']} | {row['served_during']:.0%} | "
                     f"{row['ok_after']} |")
    lines += ["", f"Writes lost: **{s1['checks']['writes_lost']:g}**; writes missed by the survivors' watches: "
              f"{s1['checks']['missed_by_survivors']:g}; the killed replica served again "
              f"{s1['recovery_after_restart_s']:.2f} s after its restart.", "",
              "## 2. Database restart during load (`scenarios/database-restart.yaml`)", "",
              f"Errors: {s2['errors']} ({', '.join(f'{k}: {v}' for k, v in s2['error_kinds'].items())}); every "
              f"replica served again {s2['all_serving_again_s']:.2f} s after the restart began. Writes lost: "
              f"**{s2['checks']['writes_lost']:g}** (the run also ends Kine's sessions with pg_terminate_backend "
              "at 20 s).", "",
              "## 3. Deployment modes under the same kill (`scenarios/modes-kill.yaml`, 3 kube-apiservers)", "",
              "Kine replica 0 is killed at 8 s and restarted at 18 s; ConfigMap writes go round-robin through the "
              "apiservers. Share of each apiserver's calls that succeeded while replica 0 was down:", "",
              "| mode | apiserver 0 | apiserver 1 | apiserver 2 | writes lost |", "|---|---:|---:|---:|---:|"]
    for mode, row in s3.items():
        shares = [row["per_apiserver"].get(f"apiserver {i}", {}).get("served_during", 0) for i in range(3)]
        lines.append(f"| {mode} | " + " | ".join(f"{s:.0%}" for s in shares) +
                     f" | {row['checks']['writes_lost']:g} |")
    lines += ["", "## 4. Connection starvation (`scenarios/connection-starvation.yaml`)", "",
              "Postgres `max_connections=30`, 3 replicas, 15 workers flat out for 15 s (5 concurrent requests "
              "per replica); the client gives up on a request after 2 s. `waits` and `waited` are the growth of "
              "Go's `go_sql_wait_count_total` and `go_sql_wait_duration_seconds_total` over the run, all replicas.", "",
              "| --datastore-max-open-connections | writes/s | p50 ms | p99 ms | errors | timeouts | too many "
              "connections | peak open | pool waits | waited s | writes lost |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cap, row in s4.items():
        lines.append(f"| {cap} | {row['writes_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} | "
                     f"{row['timeouts']} | {row['too_many_connections']} | {row['peak_open_connections']} | "
                     f"{row['pool_waits']:g} | {row['waited_s']:.0f} | **{row['checks']['writes_lost']:g}** |")
    lines += ["", "## 5. Isolation levels (`scenarios/isolation.yaml`)", "",
              "| engine and default level | writes | errors | writes lost | missed | phantom events |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, row in s5.items():
        c = row["checks"]
        lines.append(f"| {name} | {row['writes']} | {row['errors']} | {c['writes_lost']:g} | "
                     f"{c['missed_by_survivors']:g} | {c['phantom_events']:g} |")
    lines += ["", "## 6. The TTL race (`scenarios/ttl-race.yaml`)", "",
              f"{s6['writes']} event writes with a 5 s lease over 3 replicas; {s6['expiry_deletes']} expiry "
              f"deletes in the table; `kine_insert_errors_total` grew by **{s6['checks']['insert_errors']:g}** "
              f"across the replicas; writes lost: {s6['checks']['writes_lost']:g}."]
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isolation-seconds", type=float, default=12, help="load per isolation level (default 12)")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "command": "benchmarks/faults.py",
               "kine_version": kl.install_kine().version}
    for key, step in (("kill", kill_one_of_three), ("db_restart", database_restart), ("modes", modes),
                      ("starvation", starvation), ("isolation", lambda: isolation(args.isolation_seconds)),
                      ("ttl", ttl_race)):
        print(f"{key}:", flush=True)
        results[key] = step()
    results["duration_s"] = round(time.time() - started, 1)
    write_results(results)
    print(f"results in {RESULTS / 'faults.md'} ({results['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
