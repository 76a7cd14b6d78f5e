"""The etcd baseline: the same load and the same watch-lag probe against real etcd and Kine, side by side in one run
on this (noisy, shared) machine.

Targets, all up for the whole run and measured in turn, the order rotating each round:
  etcd-1       one etcd member
  etcd-3       three etcd members on loopback (Raft)
  kine-sqlite  one Kine replica on SQLite
  kine-pg-3    three Kine replicas on embedded Postgres
Each round, on each target, with the same workers and seed:
  - the `configmaps` mix at a fixed rate with a WatchProbe on every member or replica, writes round-robin, then
    (with several members) pinned to member 0;
  - the `configmaps` and `creates` mixes flat out, round-robin.
Ratios pair like with like: Kine on SQLite / etcd-1, and 3 Kine replicas on Postgres / etcd-3.

Writes benchmarks/results/etcd_baseline.json (every run kept in results/runs/) and etcd_baseline.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.clock import Clock  # noqa: E402
from kinelab.drive.workload import run_load  # noqa: E402
from kinelab.observe.watchlag import WatchProbe  # noqa: E402
from kinelab.provision.tools import ETCD, ensure  # noqa: E402

TARGETS = ("etcd-1", "etcd-3", "kine-sqlite", "kine-pg-3")
PAIRS = (("kine-sqlite", "etcd-1"), ("kine-pg-3", "etcd-3"))
SPREADS = ("round-robin", "pinned-0")
WORKERS = 8


def start_targets(stack: ExitStack) -> dict:
    """Every target's endpoints; the stack stops them all, also on error or Ctrl-C."""
    return {"etcd-1": stack.enter_context(kl.Lab(replicas=1, datastore="etcd")).endpoints,
            "etcd-3": stack.enter_context(kl.Lab(replicas=3, datastore="etcd")).endpoints,
            "kine-sqlite": stack.enter_context(kl.Lab(replicas=1, datastore="sqlite")).endpoints,
            "kine-pg-3": stack.enter_context(kl.Lab(replicas=3, datastore="postgres")).endpoints}


def clients_for(endpoints: list, stack: ExitStack) -> list:
    return [stack.enter_context(kl.Etcd(endpoint)) for endpoint in endpoints]


def flat_out(endpoints: list, mix: str, duration_s: float, seed: int) -> dict:
    with ExitStack() as stack:
        result = run_load(clients_for(endpoints, stack), mix, duration_s=duration_s, workers=WORKERS, seed=seed)
    return {"rate": result.write_rate, "latencies": [w.latency_ms for w in result.writes],
            "errors": len(result.errors)}


def watched_load(endpoints: list, spread, rate: float, duration_s: float, seed: int, settle_s: float) -> dict:
    """The configmaps mix at `rate` while every member watches /registry/; each event's lag behind the
    acknowledgement of the write that made it, split by whether the observer served that write."""
    clock = Clock()
    with ExitStack() as stack:
        clients = clients_for(endpoints, stack)
        start_revision = max(client.revision() for client in clients) + 1
        with WatchProbe(endpoints, start_revision=start_revision, clock=clock) as probe:
            result = run_load(clients, "configmaps", rate=rate, duration_s=duration_s, spread=spread,
                              workers=WORKERS, seed=seed, clock=clock)
            probe.wait_for(max((w.revision for w in result.writes), default=start_revision), settle_s)
    writes = {w.revision: w for w in result.writes}
    lags, missed = {"same": [], "other": []}, 0
    for observer in probe.observers:
        for revision, _key, _type, t_observed in observer.events:
            if revision in writes:
                write = writes[revision]
                locality = "same" if write.replica == observer.index else "other"
                lags[locality].append((t_observed - write.t_commit) * 1000)
        missed += len(writes.keys() - {event[0] for event in observer.events})
    return {"rate": result.write_rate, "latencies": [w.latency_ms for w in result.writes],
            "errors": len(result.errors), "lags": lags, "missed": missed}


def quantiles(values: list) -> dict:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50_ms": cuts[49], "p99_ms": cuts[98], "max_ms": max(values)}


def measure(targets: dict, rounds: int, phase_s: float, rate: float, settle_s: float) -> dict:
    runs = {name: {phase: [] for phase in (*SPREADS, "configmaps", "creates")} for name in targets}
    for r in range(rounds):
        for name in TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]:
            endpoints, seed = targets[name], r + 1
            runs[name]["round-robin"].append(watched_load(endpoints, "round-robin", rate, phase_s, seed, settle_s))
            if len(endpoints) > 1:  # with one member, pinned to it is round-robin
                runs[name]["pinned-0"].append(watched_load(endpoints, 0, rate, phase_s, seed, settle_s))
            for mix in ("configmaps", "creates"):
                runs[name][mix].append(flat_out(endpoints, mix, phase_s, seed))
            other = quantiles(runs[name]["round-robin"][-1]["lags"]["other"])
            print(f"  round {r} {name}: configmaps {runs[name]['configmaps'][-1]['rate']:.0f} writes/s, creates "
                  f"{runs[name]['creates'][-1]['rate']:.0f} writes/s, other-member lag p50 "
                  f"{other.get('p50_ms', float('nan')):.1f} ms", flush=True)
    return {name: summarise(by_phase) for name, by_phase in runs.items()}


def summarise(by_phase: dict) -> dict:
    """Throughput: median over rounds. Latency and lag: every sample of every round pooled. The round-robin
    watched runs give the write latency at the fixed rate."""
    pooled = lambda runs, pick: [x for run in runs for x in pick(run)]  # noqa: E731
    summary = {}
    for phase, name in (("configmaps", "configmaps"), ("creates", "creates"), ("round-robin", "at_rate")):
        runs = by_phase[phase]
        summary[name] = {"writes_per_s": statistics.median(run["rate"] for run in runs),
                         "rounds": [run["rate"] for run in runs], "errors": sum(run["errors"] for run in runs),
                         "latency": quantiles(pooled(runs, lambda run: run["latencies"]))}
    summary["watch_lag"] = {spread: {"same": quantiles(pooled(runs, lambda run: run["lags"]["same"])),
                                     "other": quantiles(pooled(runs, lambda run: run["lags"]["other"])),
                                     "missed": sum(run["missed"] for run in runs)}
                            for spread, runs in by_phase.items() if spread in SPREADS and runs}
    return summary


def ratios(results: dict) -> list:
    """Kine / etcd for each pair, from figures measured in the same run. etcd's other-member watch lag is about
    zero (it can be negative: a member may deliver the event before the writer's client reads its ack), so a
    ratio of lags means nothing: lag is compared as Kine minus etcd, in ms."""
    rows = []
    for kine, etcd in PAIRS:
        k, e = results[kine], results[etcd]
        row = {"kine": kine, "etcd": etcd,
               "configmaps_writes_per_s": k["configmaps"]["writes_per_s"] / e["configmaps"]["writes_per_s"],
               "creates_writes_per_s": k["creates"]["writes_per_s"] / e["creates"]["writes_per_s"],
               "p50_latency_at_rate": k["at_rate"]["latency"]["p50_ms"] / e["at_rate"]["latency"]["p50_ms"],
               "p99_latency_at_rate": k["at_rate"]["latency"]["p99_ms"] / e["at_rate"]["latency"]["p99_ms"]}
        for spread in SPREADS:
            kine_lag, etcd_lag = (side["watch_lag"].get(spread, {}).get("other", {}) for side in (k, e))
            if "p50_ms" in kine_lag and "p50_ms" in etcd_lag:
                row[f"other_lag_{spread}_ms_more"] = {q: kine_lag[q] - etcd_lag[q] for q in ("p50_ms", "p99_ms")}
        rows.append(row)
    return rows


def findings(results: dict) -> list:
    """What the table says, with this run's figures."""
    t = results["targets"]
    lag = lambda name, spread, locality, q: t[name]["watch_lag"][spread][locality][q]  # noqa: E731
    writes = lambda name, mix: t[name][mix]["writes_per_s"]  # noqa: E731
    sqlite, pg = results["ratios"]
    # Each sentence says what this run measured: the verdict words follow the numbers.
    differ = lag("kine-pg-3", "pinned-0", "other", "p50_ms") > 5 * max(1.0, lag("etcd-3", "pinned-0", "other",
                                                                               "p50_ms"))
    same_fast = max(lag(n, "round-robin", "same", "p99_ms") for n in ("etcd-3", "kine-pg-3")) < 50
    etcd3_slower = writes("etcd-3", "configmaps") < writes("etcd-1", "configmaps")
    return [
        ("- **Watch lag across members is where Kine and etcd differ.**" if differ else
         "- **In this run watch lag across members did not set Kine and etcd apart** (Kine's other-replica p50 "
         "was within 5x of etcd's).") + " In etcd every member applies a write as "
        f"soon as Raft commits it and fires its watches then, whoever served the write: other-member lag p50 "
        f"{lag('etcd-3', 'pinned-0', 'other', 'p50_ms'):.1f} ms, p99 {lag('etcd-3', 'pinned-0', 'other', 'p99_ms'):.1f}"
        f" ms with writes pinned to member 0 (a negative lag means a member delivered the event before the writer's "
        f"client had read its acknowledgement). Kine's replicas share only the table: a replica that did not serve "
        f"the write sees it on its next poll, every 1 s, so with writes pinned to replica 0 the others lag p50 "
        f"{lag('kine-pg-3', 'pinned-0', 'other', 'p50_ms'):.0f} ms and up to "
        f"{lag('kine-pg-3', 'pinned-0', 'other', 'max_ms'):.0f} ms. Spread round-robin, each replica's own inserts "
        f"wake its poll loop, which then reads everyone's rows: p50 "
        f"{lag('kine-pg-3', 'round-robin', 'other', 'p50_ms'):.0f} ms, p99 "
        f"{lag('kine-pg-3', 'round-robin', 'other', 'p99_ms'):.0f} ms.",
        ("- **On the member that served the write both deliver within milliseconds**" if same_fast else
         "- **On the member that served the write, a p99 reached 50 ms or more in this run**")
        + ": same-member p50 / p99 "
        f"{lag('etcd-3', 'round-robin', 'same', 'p50_ms'):.1f} / {lag('etcd-3', 'round-robin', 'same', 'p99_ms'):.1f}"
        f" ms on etcd-3, {lag('kine-pg-3', 'round-robin', 'same', 'p50_ms'):.1f} / "
        f"{lag('kine-pg-3', 'round-robin', 'same', 'p99_ms'):.1f} ms on Kine on Postgres: watchers on the replica "
        "that takes the writes (or on a single Kine) see no poll lag.",
        f"- **Throughput**: flat out, Kine on SQLite wrote {writes('kine-sqlite', 'configmaps'):.0f} configmaps "
        f"writes/s against etcd-1's {writes('etcd-1', 'configmaps'):.0f} ({sqlite['configmaps_writes_per_s']:.2f}x), "
        f"3 Kine replicas on Postgres {writes('kine-pg-3', 'configmaps'):.0f} against etcd-3's "
        f"{writes('etcd-3', 'configmaps'):.0f} ({pg['configmaps_writes_per_s']:.2f}x)." + (
            " etcd-3 is slower than etcd-1: a write commits only once a majority of members has it in its fsynced "
            "log, the writes sent to a follower are forwarded to the leader, and the three members share the 2 CPUs "
            "with the client." if etcd3_slower else " etcd-3 kept up with etcd-1 in this run."),
        "- **Limits of the comparison**: both sides are driven by kinelab's Python client from one process on the "
        "same CPUs as the servers, so the flat-out figures say what kinelab pushes through each server, not the "
        "server's ceiling; every server keeps its durable defaults (fsync on). The machine is shared (its load "
        "average is at the top), so p99s, a few slow writes out of hundreds, move from run to run more than "
        "medians do.",
    ]


def lag_cell(stats: dict) -> str:
    if "p50_ms" not in stats:
        return "-"
    return f"{stats['p50_ms']:.1f} / {stats['p99_ms']:.1f} / {stats['max_ms']:.1f}"


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_json("etcd_baseline", results)
    p, t = results["params"], results["targets"]
    lines = [
        "# The etcd baseline: Kine next to real etcd, same load, same probe, one run", "",
        f"- date: {results['date']}; machine: {results['machine']}; load average {results['load_average'][0]:.1f} "
        f"at the start, {results['load_average'][1]:.1f} at the end",
        f"- etcd {results['etcd_version']} (Debian `etcd-server`); Kine {kl.KINE_VERSION}; embedded Postgres",
        f"- command: `{results['command']}` ({results['duration_s']:.0f} s); {p['rounds']} rounds, each target in "
        f"turn, the order rotating; {p['phase_s']} s per phase; {WORKERS} workers and the same seed on every target; "
        "kinelab's Python client (`run_load`, `WatchProbe`) on both sides", "",
        "## Throughput and write latency", "",
        f"Flat out: the mix as fast as {WORKERS} workers go, writes round-robin over the members or replicas "
        f"(writes/s: median of the rounds; latency: every write of every round). At rate: the `configmaps` mix at "
        f"{p['rate']:.0f} ops/s (10% are lists), round-robin, with the watches open.", "",
        "| target | configmaps flat out, writes/s | p50 / p99 ms | creates flat out, writes/s | p50 / p99 ms "
        f"| configmaps at {p['rate']:.0f} ops/s, p50 / p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for name in TARGETS:
        r = t[name]
        lat = lambda phase: f"{r[phase]['latency']['p50_ms']:.1f} / {r[phase]['latency']['p99_ms']:.1f}"  # noqa: E731
        errors = sum(r[phase]["errors"] for phase in ("configmaps", "creates", "at_rate"))
        lines.append(f"| {name} | {r['configmaps']['writes_per_s']:.0f} | {lat('configmaps')} | "
                     f"{r['creates']['writes_per_s']:.0f} | {lat('creates')} | {lat('at_rate')} | {errors} |")
    lines += [
        "", "## Watch lag", "",
        f"Every member or replica watches `/registry/` while the `configmaps` mix writes at {p['rate']:.0f} ops/s; "
        "lag = the time an observer got the event minus the time the writer's client got its acknowledgement, on "
        "one clock. Same: the observer served the write; other: another member or replica did. p50 / p99 / max, "
        "in ms, every event of every round.", "",
        "| target | writes | same-member lag | other-member lag | missed events |", "|---|---|---:|---:|---:|"]
    for name in TARGETS:
        for spread, lag in t[name]["watch_lag"].items():
            lines.append(f"| {name} | {spread} | {lag_cell(lag['same'])} | {lag_cell(lag['other'])} | "
                         f"{lag['missed']} |")
    lines += ["", "## Kine next to etcd, measured in the same run", "",
              "Throughput and latency as ratios Kine / etcd; other-member watch lag as Kine minus etcd (p50 / p99, "
              "ms), since etcd's is about zero.", "",
              "| pair | configmaps writes/s | creates writes/s | write latency at rate, p50 / p99 | other-member "
              "lag, round-robin | other-member lag, pinned to 0 |", "|---|---:|---:|---:|---:|---:|"]
    for row in results["ratios"]:
        more = lambda key: (f"+{row[key]['p50_ms']:.0f} / +{row[key]['p99_ms']:.0f} ms"  # noqa: E731
                            if key in row else "-")
        lines.append(f"| {row['kine']} / {row['etcd']} | {row['configmaps_writes_per_s']:.2f}x | "
                     f"{row['creates_writes_per_s']:.2f}x | {row['p50_latency_at_rate']:.2f}x / "
                     f"{row['p99_latency_at_rate']:.2f}x | {more('other_lag_round-robin_ms_more')} | "
                     f"{more('other_lag_pinned-0_ms_more')} |")
    lines += ["", "## What the numbers show", "", *results["findings"]]
    (RESULTS / "etcd_baseline.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round, to check the script works")
    args = parser.parse_args()
    params = {"rounds": 1, "phase_s": 1.5, "rate": 100.0, "settle_s": 3.0} if args.quick else \
        {"rounds": 3, "phase_s": 4.0, "rate": 100.0, "settle_s": 3.0}
    started, load_at_start = time.time(), os.getloadavg()[0]
    etcd_version = ensure(ETCD).version.lstrip("v")
    with ExitStack() as stack:
        print("starting etcd 1 and 3 members, Kine on SQLite, 3 Kine replicas on Postgres...", flush=True)
        targets = start_targets(stack)
        measured = measure(targets, **params)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "etcd_version": etcd_version,
               "kine_version": kl.KINE_VERSION,
               "command": "benchmarks/etcd_baseline.py" + (" --quick" if args.quick else ""),
               "duration_s": round(time.time() - started, 1), "params": params, "workers": WORKERS,
               "load_average": [load_at_start, os.getloadavg()[0]], "targets": measured}
    results["ratios"] = ratios(measured)
    results["findings"] = findings(results)
    write_results(results)
    print(f"results in {RESULTS / 'etcd_baseline.md'} ({results['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
