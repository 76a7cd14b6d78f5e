"""How many simulated nodes one Kine replica on embedded Postgres serves with every node lease renewed on time,
against the same control plane on one etcd member, measured side by side in one run.

For each store and each node count (rising until a count fails, or the memory estimate refuses it): a lab with
one store member, one kube-apiserver, a controller-manager, a scheduler and kwok's N nodes; once they are Ready,
`observe_s` seconds idle, then

* renewals: node Lease updates in kube-node-lease during the window, over the N/10 per second a kubelet's 10 s
  renewal gives (1.0 = every renewal on time);
* stale: nodes whose Lease is older than its 40 s duration at the end (a node controller marks those NotReady),
  and nodes not Ready;
* CPU: percent of one core over the window, of the store (Kine, or etcd) and of Postgres (server and backends),
  and per 100 nodes; peak RSS of every component.

A count passes when no node is stale or not Ready and renewals are at least 0.8 (kwok jitters its 10 s). Writes
benchmarks/results/nodes.json (every run kept under benchmarks/results/runs/) and nodes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.errors import KinelabError  # noqa: E402
from kinelab.provision.controlplane import NODE_LEASE_DURATION_S, ready_nodes  # noqa: E402

STORES = {"kine-postgres": {"datastore": "postgres"}, "etcd": {"datastore": "etcd"}}


def _tree(pid: int) -> list:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_s(procs: list) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _rss_mib(procs: list) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += proc.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return total


def measure(store: str, nodes: int, observe_s: float) -> dict:
    from kubernetes import client

    started = time.perf_counter()
    with kl.Lab(replicas=1, nodes=nodes, **STORES[store]) as lab:
        ready_s = time.perf_counter() - started
        api = lab.kubernetes_client(0)
        groups = {c.name: [p for r in c.records for p in _tree(r.pid)] for c in lab.model.components}
        store_procs = groups.get("kine-0") or groups["etcd-0"]
        postgres = groups.get("postgres", [])
        leases = client.CoordinationV1Api(api)

        def renew_times() -> dict:
            return {item.metadata.name: item.spec.renew_time for item in
                    leases.list_namespaced_lease("kube-node-lease").items}

        before, cpu0 = renew_times(), (_cpu_s(store_procs), _cpu_s(postgres))
        t0 = time.perf_counter()
        renewals, last = 0, before
        while (elapsed := time.perf_counter() - t0) < observe_s:  # count renewals by polling renewTime
            time.sleep(min(5.0, observe_s - elapsed))  # each lease renews every 10 s: none is missed
            now = renew_times()
            renewals += sum(1 for name, t in now.items() if last.get(name) != t)
            last = now
        window = time.perf_counter() - t0
        cpu1 = (_cpu_s(store_procs), _cpu_s(postgres))
        age = [(datetime.now(timezone.utc) - t).total_seconds() for t in last.values() if t]
        stale = sum(a > NODE_LEASE_DURATION_S for a in age)
        not_ready = nodes - ready_nodes(api)
        rss = {name: round(_rss_mib(procs)) for name, procs in groups.items()}
    expected = nodes / 10 * window
    result = {"store": store, "nodes": nodes, "ready_s": round(ready_s, 1), "window_s": round(window, 1),
              "renewals_ratio": round(renewals / expected, 3) if expected else None,
              "max_lease_age_s": round(max(age), 1) if age else None, "stale": stale, "not_ready": not_ready,
              "store_cpu_pct": round(100 * (cpu1[0] - cpu0[0]) / window, 1),
              "postgres_cpu_pct": round(100 * (cpu1[1] - cpu0[1]) / window, 1) if postgres else None,
              "rss_mib": rss, "total_rss_mib": sum(rss.values())}
    result["store_cpu_pct_per_100_nodes"] = round(result["store_cpu_pct"] * 100 / nodes, 2)
    if postgres:
        result["postgres_cpu_pct_per_100_nodes"] = round(result["postgres_cpu_pct"] * 100 / nodes, 2)
    # kwok renews every 10 s plus a little jitter, and a window's edges cut renewals: 0.8 still means on time
    result["ok"] = stale == 0 and not_ready == 0 and (result["renewals_ratio"] or 0) >= 0.8
    return result


def write_report(results: dict, path: Path) -> str:
    machine, runs = results["machine"], results["runs"]
    lines = ["# Simulated nodes on one Kine replica (embedded Postgres) against one etcd member", "",
             f"- date: {results['date']}; {machine['cpus']} CPUs, {machine['memory_gib']} GiB; "
             f"{results['observe_s']:.0f} s idle per count; written by `benchmarks/nodes.py`", "",
             "| store | nodes | ready in | renewals on time | oldest lease | stale leases | not Ready | store CPU | "
             "per 100 nodes | Postgres CPU | per 100 nodes | RSS, all components | on schedule |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['store']} | {r['nodes']} | {r['error']} | | | | | | | | | | no |")
            continue
        pg = f"{r['postgres_cpu_pct']}%" if r["postgres_cpu_pct"] is not None else "-"
        pg100 = f"{r['postgres_cpu_pct_per_100_nodes']}%" if "postgres_cpu_pct_per_100_nodes" in r else "-"
        lines.append(f"| {r['store']} | {r['nodes']} | {r['ready_s']} s | {r['renewals_ratio']} | "
                     f"{r['max_lease_age_s']} s | {r['stale']} | {r['not_ready']} | {r['store_cpu_pct']}% | "
                     f"{r['store_cpu_pct_per_100_nodes']}% | {pg} | {pg100} | {r['total_rss_mib']} MiB | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    never_not_ready = {}
    for r in runs:
        if "error" not in r and r["stale"] == 0 and r["not_ready"] == 0:
            never_not_ready[r["store"]] = max(never_not_ready.get(r["store"], 0), r["nodes"])
    lines += ["", "Largest count with every lease renewed on schedule (renewals >= 0.8 of N/10 per second): " +
              ", ".join(f"{store} {n}" for store, n in results["largest_ok"].items()) + ".",
              "Largest count with no lease older than its 40 s (so no node NotReady): " +
              ", ".join(f"{store} {n}" for store, n in never_not_ready.items()) + "."]
    path.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,500,1000,2000,3000,4000",
                        help="node counts, rising (default %(default)s)")
    parser.add_argument("--observe", type=float, default=60.0, help="idle seconds measured at each count")
    parser.add_argument("--report", action="store_true", help="only write nodes.md again from nodes.json")
    args = parser.parse_args()
    if args.report:
        print(write_report(json.loads((HERE / "results" / "nodes.json").read_text()), HERE / "results" / "nodes.md"))
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    runs, largest = [], {}
    for count in counts:
        for store in STORES:  # side by side: both stores at one count before the next count
            if largest.get(store, 0) < 0:
                continue
            print(f"{store}: {count} nodes...", flush=True)
            try:
                result = measure(store, count, args.observe)
            except KinelabError as exc:  # the memory estimate, or a lab that did not come up
                result = {"store": store, "nodes": count, "ok": False, "error": str(exc).splitlines()[0]}
            print("  ", json.dumps(result), flush=True)
            runs.append(result)
            largest[store] = count if result["ok"] else -largest.get(store, 0)
    machine = {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
               "load_at_start": os.getloadavg()[0]}
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
               "observe_s": args.observe, "runs": runs,
               "largest_ok": {store: abs(n) for store, n in largest.items()}}
    out = HERE / "results"
    write_json("nodes", results)
    print(write_report(results, out / "nodes.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
