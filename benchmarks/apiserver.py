"""Benchmarks of the control plane on Kine, measured side by side in one run on this shared machine.

1. Time to a ready lab of 3 Kine replicas + 2 kube-apiservers (embedded Postgres), against the same lab
   without apiservers, rounds alternating. The apiserver build is reported apart (from the tool cache's record).
2. API call latency through the apiservers under the ConfigMap mix, p50/p99 per verb, against the
   clusterloader2 SLO (p99 <= 1 s for mutating calls, 30 s for cluster-wide LIST; a namespaced LIST 5 s).

The lab here is the local backend, which needs no Docker; kind clusters on Kine (the kind backend, with
kinelab's private Docker engine where none answers) are timed by benchmarks/kind.py (results/kind.md).
Writes benchmarks/results/apiserver.json (every run kept in results/runs/) and apiserver.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.drive.kube import run_kube_load  # noqa: E402
from kinelab.provision.apiserver import cached_apiserver_path, install_apiserver  # noqa: E402

SLO_MS = {"create": 1000, "update": 1000, "delete": 1000, "list": 5000}


def time_to_ready(rounds: int) -> dict:
    times = {"with 2 apiservers": [], "Kine only": []}
    for r in range(rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for side in order:
            started = time.perf_counter()
            with kl.Lab(replicas=3, datastore="postgres", apiservers=2 if side.startswith("with") else 0):
                times[side].append(time.perf_counter() - started)
            print(f"  round {r} {side}: {times[side][-1]:.1f} s", flush=True)
    return {side: {"median_s": statistics.median(v), "min_s": min(v), "rounds": v} for side, v in times.items()}


def api_latency(ops: int, rate: float) -> dict:
    with kl.Lab(replicas=3, datastore="postgres", apiservers=2, mode="shared-db") as lab:
        run_kube_load(lab, "configmaps", ops=50)  # warm-up
        started = time.perf_counter()
        calls = run_kube_load(lab, "configmaps", ops=ops, rate=rate, workers=4)
        elapsed = time.perf_counter() - started
    by_verb = {}
    for verb in ("create", "update", "delete", "list"):
        lat = sorted(c.latency_ms for c in calls if c.verb == verb and c.ok)
        if lat:
            by_verb[verb] = {"calls": len(lat), "p50_ms": lat[len(lat) // 2],
                             "p99_ms": lat[int(0.99 * (len(lat) - 1))], "slo_ms": SLO_MS[verb]}
    return {"ops": ops, "target_rate": rate, "achieved_rate": len(calls) / elapsed,
            "failed": sum(not c.ok for c in calls), "by_verb": by_verb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    binary = install_apiserver(log=print)
    sidecar = cached_apiserver_path().parent / (cached_apiserver_path().name + ".json")
    build = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    print("time to ready:", flush=True)
    ready = time_to_ready(2 if args.quick else 4)
    print("API latency:", flush=True)
    latency = api_latency(300 if args.quick else 2000, 50.0)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "apiserver": binary.version,
               "build": build, "ready": ready, "latency": latency, "machine": f"{os.cpu_count()} CPUs"}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    write_json("apiserver", results)
    with_api, kine_only = ready["with 2 apiservers"], ready["Kine only"]
    lines = ["# Control plane on Kine: benchmarks", "",
             f"- date: {results['date']}; {results['machine']}; kube-apiserver {binary.version}, "
             f"Kine {kl.KINE_VERSION}, embedded Postgres",
             f"- apiserver build (kept in the tool cache, not part of the figures below): {build}", "",
             "## Time to a ready lab (3 Kine replicas on embedded Postgres)", "",
             "| lab | median | min | rounds |", "|---|---:|---:|---|"]
    for side, r in ready.items():
        lines.append(f"| {side} | {r['median_s']:.1f} s | {r['min_s']:.1f} s | "
                     f"{', '.join(f'{v:.1f}' for v in r['rounds'])} |")
    lines += ["", f"**Ratio: {with_api['median_s'] / kine_only['median_s']:.1f}x** the Kine-only start; "
              "the local backend, no Docker; kind clusters on Kine are timed by `benchmarks/kind.py` "
              "([kind.md](kind.md)).", "",
              f"## API call latency, ConfigMap mix through 2 apiservers (shared-db), {latency['ops']} calls at "
              f"{latency['target_rate']:.0f}/s (achieved {latency['achieved_rate']:.0f}/s, "
              f"{latency['failed']} failed)", "",
              "| verb | calls | p50 ms | p99 ms | clusterloader2 SLO (p99) | within |",
              "|---|---:|---:|---:|---:|---|"]
    for verb, v in latency["by_verb"].items():
        lines.append(f"| {verb} | {v['calls']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['slo_ms']} ms | "
                     f"{'yes' if v['p99_ms'] <= v['slo_ms'] else 'NO'} |")
    (out / "apiserver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-8:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
