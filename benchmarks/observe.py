"""Benchmarks of the observe layer, each measured side by side in one run on this (noisy, shared) machine.

1. generator: kinelab's create throughput against one Kine replica on embedded Postgres, against a raw Go
   etcd client doing the same work (benchmarks/etcdput: unique-key Puts from N concurrent clients, the shape of
   etcd's `benchmark put`, which the Go module proxy does not serve). Rounds alternate. Goal: >= 80%.
2. watch lag versus replica count (1-5) and write rate, with writes pinned to replica 0 and spread round-robin.

Writes benchmarks/results/observe.json and observe.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.drive.workload import run_load  # noqa: E402
from kinelab.observe import runs  # noqa: E402
from kinelab.provision.tools import cache_dir  # noqa: E402


def build_etcdput() -> Path:
    target = cache_dir() / "bin" / "etcdput"
    if not target.exists() or target.stat().st_mtime < (HERE / "etcdput" / "main.go").stat().st_mtime:
        print("building benchmarks/etcdput (go build)...", flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(target), "."], cwd=HERE / "etcdput", check=True)
    return target


def generator(rounds: int, ops: int, workers: int) -> dict:
    etcdput = build_etcdput()
    kinelab_rates, raw_rates = [], []
    with kl.Lab(replicas=1, datastore="postgres") as lab:
        endpoint = lab.endpoints[0]
        clients = [kl.Etcd(endpoint) for _ in range(workers)]
        run_load(clients[:1], "creates", ops=200, rate=None)  # warm-up, untimed
        for r in range(rounds):
            order = ["kinelab", "raw"] if r % 2 == 0 else ["raw", "kinelab"]
            for side in order:
                if side == "kinelab":
                    # one client per worker thread, as etcdput has one connection per client
                    result = run_load(clients, "creates", ops=ops, rate=None, workers=workers, seed=r)
                    assert not result.errors, result.errors[:1]
                    kinelab_rates.append(len(result.writes) / result.duration_s)
                else:
                    out = subprocess.run([str(etcdput), f"--endpoints={endpoint}", f"--total={ops}",
                                          f"--clients={workers}", "--val-size=1024",
                                          f"--prefix=/registry/configmaps/raw{r}/"],
                                         capture_output=True, text=True, check=True)
                    raw = json.loads(out.stdout)
                    assert raw["failed"] == 0, raw
                    raw_rates.append(raw["rate"])
                print(f"  round {r} {side}: {(kinelab_rates if side == 'kinelab' else raw_rates)[-1]:.0f} writes/s",
                      flush=True)
        for client in clients:
            client.close()
    k, g = statistics.median(kinelab_rates), statistics.median(raw_rates)
    return {"ops_per_round": ops, "workers": workers, "rounds": rounds, "kinelab_rates": kinelab_rates,
            "raw_rates": raw_rates, "kinelab_median": k, "raw_median": g, "ratio": k / g}


def watch_lag_curves(replica_counts, rates, duration_s: float) -> list:
    rows = []
    for replicas in replica_counts:
        with kl.Lab(replicas=replicas, datastore="postgres") as lab:
            for rate in rates:
                for spread in ("pinned-0", "round-robin"):
                    out = Path(tempfile.mkdtemp()) / "lag.duckdb"
                    summary = runs.watch_lag(lab, out, rate=rate, duration_s=duration_s,
                                             spread=0 if spread == "pinned-0" else "round-robin", idle_s=0.3)
                    con = kl.open_capture(out)
                    stats = con.execute("""
                        SELECT CASE WHEN writer = observer THEN 'same' ELSE 'other' END, count(*),
                               quantile_cont(lag_ms, 0.5), quantile_cont(lag_ms, 0.99), avg(lag_ms), max(lag_ms)
                        FROM watch_events WHERE writer IS NOT NULL GROUP BY 1""").fetchall()
                    con.close()
                    for locality, n, p50, p99, mean, worst in stats:
                        rows.append({"replicas": replicas, "rate": rate, "spread": spread, "locality": locality,
                                     "events": n, "p50_ms": p50, "p99_ms": p99, "mean_ms": mean, "max_ms": worst,
                                     "achieved_rate": summary["write_rate"], "missed": sum(summary["missed"].values())})
                    print(f"  {replicas} replicas, {rate}/s, {spread}: " + ", ".join(
                        f"{loc} p50 {p50:.1f} ms" for loc, _, p50, *_ in stats), flush=True)
    return rows


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_json("observe", results)
    g = results["generator"]
    lines = [
        "# kinelab observe-layer benchmarks", "",
        f"- date: {results['date']}; machine: {results['machine']}; Kine {kl.KINE_VERSION} on embedded Postgres",
        f"- command: `{results['command']}`", "",
        "## Generator throughput against a raw Go client", "",
        f"Creates of unique keys with 1 KiB values against one Kine replica, {g['workers']} concurrent clients, "
        f"{g['ops_per_round']} writes per round, {g['rounds']} rounds each, alternating.", "",
        "| side | median writes/s | all rounds |", "|---|---:|---|",
        f"| kinelab `run_load(mix=\"creates\", workers={g['workers']})` (Txn create, Python) | "
        f"{g['kinelab_median']:.0f} | {', '.join(f'{r:.0f}' for r in g['kinelab_rates'])} |",
        f"| raw Go client `benchmarks/etcdput` (plain Put, go.etcd.io/etcd/client/v3) | {g['raw_median']:.0f} | "
        f"{', '.join(f'{r:.0f}' for r in g['raw_rates'])} |", "",
        f"**Ratio kinelab / raw: {g['ratio']:.2f}** (goal >= 0.80).", "",
        "## Watch lag versus replicas and write rate", "",
        "Every replica watches `/registry/` while the configmaps mix writes; lag = observed time minus the "
        "writer's acknowledgement time, on one clock. `pinned-0`: every write goes to replica 0; `round-robin`: "
        "writes rotate over all replicas.", "",
        "| replicas | rate/s | spread | locality | events | p50 ms | p99 ms | mean ms | max ms | missed |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["watch_lag"]:
        lines.append(f"| {r['replicas']} | {r['rate']} | {r['spread']} | {r['locality']} | {r['events']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['missed']} |")
    lines += ["", "## Other-replica p50 by replicas, spread and rate (the README's grid)", "",
              *lag_grid(results["watch_lag"])]
    (RESULTS / "observe.md").write_text("\n".join(lines) + "\n")


def lag_grid(rows: list) -> list:
    """Other-replica p50 per replica count, pinned and round-robin, one column per rate: each cell rounded once,
    from the raw figure (rounding the table's 0.1 ms figures again moves x.45-x.5 up)."""
    rates = sorted({r["rate"] for r in rows})
    p50 = {(r["replicas"], r["spread"], r["rate"]): r["p50_ms"] for r in rows if r["locality"] == "other"}
    rate_names = " / ".join(str(rate) for rate in rates)
    lines = [f"| replicas | writes pinned to replica 0, {rate_names} writes/s | writes round-robin, {rate_names} "
             "writes/s |", "| ---: | --- | --- |"]
    for replicas in sorted({n for n, _, _ in p50}):
        cells = [" / ".join(f"{p50[replicas, spread, rate]:.0f}" for rate in rates) + " ms"
                 for spread in ("pinned-0", "round-robin")]
        lines.append(f"| {replicas} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script works")
    args = parser.parse_args()
    started = time.time()
    quick = args.quick
    print("generator throughput:", flush=True)
    gen = generator(rounds=2 if quick else 3, ops=500 if quick else 3000, workers=8)
    print("watch lag curves:", flush=True)
    lag = watch_lag_curves([1, 3] if quick else [1, 2, 3, 4, 5], [20] if quick else [10, 50, 200],
                           duration_s=2 if quick else 5)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
               "command": "benchmarks/observe.py" + (" --quick" if quick else ""),
               "duration_s": round(time.time() - started, 1), "generator": gen, "watch_lag": lag}
    write_results(results)
    print(f"ratio kinelab/raw {gen['ratio']:.2f}; results in {RESULTS / 'observe.md'} "
          f"({results['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
