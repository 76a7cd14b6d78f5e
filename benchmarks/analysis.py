#!/usr/bin/env python3
"""Production-sized datastores: capture, every chart and report, and notebook 08, at 1M rows and more.

One run, side by side, on one `kine` table filled by the foundation benchmark's loader (benchmarks/run.py:
configmaps of 0.5-2 KB values, Kine's own row shapes) in an embedded Postgres with Kine stopped:

1. capture: `kinelab.capture` into a fresh DuckDB file against raw `COPY (SELECT * FROM kine) TO STDOUT (FORMAT
   binary)` read and discarded, rounds alternating; time, rows/s, peak RSS and file size.
2. analyses: every chart function that reads the kine table, the datastore report and the summaries, each in a
   process of its own on the capture: the call's time (open, query, the chart's Vega-Lite JSON) and the
   process's peak RSS.
3. notebook 08 end to end under papermill on the same table (KINELAB_DSN): wall time and peak RSS of papermill
   and its kernel.

`--before REV` adds the same measurements of an older kinelab (its package from `git archive REV`, its own
capture of the table, its own notebook), in the same run: the before/after table.

    .venv/bin/python benchmarks/analysis.py --before 43da2e9   # 1,000,002 rows -> results/analysis.{json,md}
    .venv/bin/python benchmarks/analysis.py --rows 10000000 --rounds 1 --name analysis-10m

Every measurement runs in a child process; its peak RSS is the child's own `ru_maxrss` from os.wait4 (for
papermill, that includes its kernel, which it waits for). Passwords stay in the children's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KINELAB_PROGRESS", "0")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import run as foundation  # noqa: E402  (the loader, the capture/raw-COPY children, the environment record)

# every function that reads the kine table of a capture: (module, function, what it takes: a path or a connection)
ANALYSES = {
    "charts.revision_timeline": ("kinelab.show.charts", "revision_timeline", "path"),
    "charts.key_chain": ("kinelab.show.charts", "key_chain", "path"),
    "charts.table_anatomy": ("kinelab.show.charts", "table_anatomy", "path"),
    "charts.ops_by_resource": ("kinelab.show.charts", "ops_by_resource", "path"),
    "report.datastore_report": ("kinelab.analyse.report", "datastore_report", "connection"),
    "summary.ops_by_resource": ("kinelab.analyse.summary", "ops_by_resource", "connection"),
    "summary.row_counts": ("kinelab.analyse.summary", "row_counts", "connection"),
}
GOAL_S, GOAL_RSS_MB = 1.0, 1000
CAPTURE_GOAL_RATIO, CAPTURE_GOAL_RSS_MB = 0.5, 500
NOTEBOOK_GOAL_S, NOTEBOOK_GOAL_RSS_MB = 60.0, 1500
NOTEBOOK = "notebooks/08-investigate-your-datastore.ipynb"


def log(message: str) -> None:
    foundation.log(message)


# ------------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------------
def analysis_child(name: str, path: str) -> None:
    import importlib

    import kinelab as kl

    module, function, takes = ANALYSES[name]
    call = getattr(importlib.import_module(module), function)
    started, cpu = time.perf_counter(), time.process_time()
    if takes == "path":
        result = call(path).to_dict()  # the chart as Vega-Lite JSON, what a notebook renders
    else:
        con = kl.open_capture(path)
        try:
            result = call(con)
        finally:
            con.close()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": len(json.dumps(result, default=str))}),
          flush=True)


def run_child(argv: list, env: dict) -> dict:
    return foundation.measure_child(argv, env, cwd=REPO)


class Side:
    """The kinelab measured: this checkout, or an older one exported from git."""

    def __init__(self, name: str, root: Path, env: dict):
        self.name, self.root, self.env = name, root, env

    @classmethod
    def current(cls) -> "Side":
        return cls("after", REPO, dict(os.environ))

    @classmethod
    def exported(cls, rev: str, work: Path) -> "Side":
        root = work / "before"
        root.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "kinelab", "notebooks", "benchmarks"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        return cls("before", root, {**os.environ, "PYTHONPATH": str(root)})

    def capture(self, dsn_url: str, out: Path) -> dict:
        argv = [sys.executable, str(self.root / "benchmarks" / "run.py"), "--child", "capture", "--out", str(out)]
        return run_child(argv, {**self.env, foundation.DSN_ENV: dsn_url})

    def analysis(self, name: str, path: Path) -> dict:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(path)]
        return run_child(argv, self.env)

    def notebook(self, dsn_url: str, work: Path) -> dict:
        out_dir = work / f"nb08-{self.name}"
        out_dir.mkdir()
        argv = [sys.executable, "-m", "papermill", str(self.root / NOTEBOOK), str(out_dir / "08.ipynb"),
                "-p", "report_dir", str(out_dir), "--no-progress-bar"]
        result = run_child(argv, {**self.env, "KINELAB_DSN": dsn_url})
        report = json.loads((out_dir / "report.json").read_text())
        shutil.rmtree(out_dir, ignore_errors=True)
        result["report_rows"] = report["size"]["rows"]
        return result


def raw_copy(dsn_url: str) -> dict:
    argv = [sys.executable, str(HERE / "run.py"), "--child", "raw-binary"]
    return run_child(argv, {**os.environ, foundation.DSN_ENV: dsn_url})


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def figures(samples: list) -> dict:
    seconds = [s["seconds"] for s in samples]
    cpu = [s.get("cpu_seconds", s["process_cpu_seconds"]) for s in samples]
    return {"seconds": foundation.summary(seconds), "cpu_seconds_median": statistics.median(cpu),
            "max_rss_mb": max(s["max_rss_mb"] for s in samples),
            "wall_seconds_median": statistics.median(s["wall_seconds"] for s in samples)}


def check_disk(work: Path, rows: int) -> None:
    """The table (2.7 KB a row in Postgres, indexes included), the capture kept for the analyses and the
    notebook's own (2.1 KB a row each)."""
    needed, free = rows * 6900, shutil.disk_usage(work).free
    if needed > free:
        raise SystemExit(f"{rows:,} rows need about {needed / 1e9:.0f} GB under {work}; {free / 1e9:.0f} GB are free")


def bench(args) -> dict:
    from kinelab import Lab
    from kinelab.db import connect_postgres
    from kinelab.provision.process import ProcessRecord

    work = Path(tempfile.mkdtemp(prefix="kinelab-bench-analysis-", dir=args.work))
    check_disk(work, args.rows)
    sides = [Side.current()] + ([Side.exported(args.before, work)] if args.before else [])
    result: dict = {"rows_requested": args.rows, "rounds": args.rounds, "before": args.before}
    try:
        # a directory of the run's own, not a temporary kinelab-* lab that another session's clean-up may sweep
        with Lab(replicas=1, datastore="postgres", dir=work / "lab", keep=False) as lab:
            ProcessRecord(**lab.manifest["replicas"][0]["process"]).stop()  # Kine out of the way, as in run.py
            with connect_postgres(lab.datastore.admin_dsn) as conn:
                result["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
            log(f"loading {args.rows:,} rows into the kine table")
            result["table"] = foundation.load_kine_table(lab.datastore.admin_dsn, args.rows, args.seed)
            log(f"loaded {result['table']['rows']:,} rows in {result['table']['load_seconds']:.0f} s")
            dsn_url = lab.dsn.url  # secret: only in the children's environment
            raw_copy(dsn_url)  # untimed warm-up
            captures: dict = {side.name: [] for side in sides}
            raws, kept = [], {}
            for round_ in range(args.rounds):
                order = [("raw", None)] + [("capture", side) for side in sides]
                for kind, side in (order if round_ % 2 == 0 else list(reversed(order))):
                    if kind == "raw":
                        raws.append(raw_copy(dsn_url))
                        log(f"round {round_ + 1}: raw binary COPY {raws[-1]['seconds']:.2f} s")
                        continue
                    out = work / f"{side.name}.duckdb"
                    out.unlink(missing_ok=True)
                    measured = side.capture(dsn_url, out)
                    measured["file_bytes"] = out.stat().st_size
                    captures[side.name].append(measured)
                    kept[side.name] = out
                    log(f"round {round_ + 1}: capture ({side.name}) {measured['seconds']:.2f} s, peak RSS "
                        f"{measured['max_rss_mb']:.0f} MB")
            raw = figures(raws)
            result["raw_binary_copy"] = {**raw, "stream_bytes": raws[0]["stream_bytes"]}
            result["capture"] = {}
            for name, samples in captures.items():
                entry = {**figures(samples), "file_bytes": samples[-1]["file_bytes"], "rows": samples[-1]["rows"]}
                # each round's capture against the raw COPY next to it: the machine's load drifts between rounds
                entry["ratio_to_raw_per_round"] = [r["seconds"] / c["seconds"] for r, c in zip(raws, samples)]
                entry["ratio_to_raw_median"] = statistics.median(entry["ratio_to_raw_per_round"])
                result["capture"][name] = entry
            result["notebook_08"] = {}
            for side in sides:
                measured = side.notebook(dsn_url, work)
                result["notebook_08"][side.name] = measured
                log(f"notebook 08 ({side.name}): {measured['wall_seconds']:.1f} s, peak RSS "
                    f"{measured['max_rss_mb']:.0f} MB")
        # with the database stopped: the older kinelab's analyses take up to 12 GB, and the machine is shared
        result["analyses"] = {}
        for side in sides:
            rounds = args.analysis_rounds if side.name == "after" else 1
            for name in ANALYSES:
                samples = [side.analysis(name, kept[side.name]) for _ in range(rounds)]
                result["analyses"].setdefault(name, {})[side.name] = figures(samples)
                log(f"{name} ({side.name}): {statistics.median(s['seconds'] for s in samples):.2f} s, "
                    f"peak RSS {max(s['max_rss_mb'] for s in samples):.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def markdown(results: dict) -> str:
    env, b = results["environment"], results["bench"]
    t, cap, raw = b["table"], b["capture"], b["raw_binary_copy"]
    sides = [s for s in ("before", "after") if s in cap]
    lines = [f"# kinelab on a {t['rows']:,}-row kine table: capture, analyses, notebook 08", "",
             f"- date: {env['date']}; the run took {results['duration_s'] / 60:.1f} min (load average "
             f"{env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at the end)",
             f"- machine: {env['nproc']} CPUs ({env['cpu_model']}), {env['ram_gb']} GiB RAM; shared with other jobs, "
             "so each figure is compared with its baseline measured in the same run",
             f"- versions: kinelab {env['kinelab']} (git {env['git_commit']}"
             f"{', kinelab/ modified' if env['kinelab_dirty'] else ''})"
             + (f", against `{b['before']}` (before)" if b.get("before") else "")
             + f", Postgres {b['postgres_version']}, DuckDB {env['duckdb']}, pyarrow {env['pyarrow']}",
             f"- memory setting: KINELAB_MEMORY_LIMIT unset, so the default {results['memory_limit']} (a capture's "
             "DuckDB gets a quarter of it)",
             f"- command: `{results['command']}`", "",
             f"Table: {t['rows']:,} rows ({t['creates']:,} creates, {t['updates']:,} updates, {t['deletes']:,} "
             f"deletes), value {t['value_bytes'] / 1e6:,.0f} MB + old_value {t['old_value_bytes'] / 1e6:,.0f} MB, "
             f"{t['table_bytes_incl_toast'] / 1e6:,.0f} MB with TOAST; loaded by benchmarks/run.py's loader.", "",
             "## capture", "",
             "| variant | median | runs | rows/s (median) | process CPU | peak RSS | file | vs raw binary COPY |",
             "|---|---:|---|---:|---:|---:|---:|---:|",
             f"| raw `COPY (SELECT * FROM kine) TO STDOUT (FORMAT binary)` -> discarded | "
             f"{raw['seconds']['median']:.2f} s | {', '.join(f'{s:.2f}' for s in raw['seconds']['samples'])} | "
             f"{t['rows'] / raw['seconds']['median']:,.0f} | {raw['cpu_seconds_median']:.1f} s | "
             f"{raw['max_rss_mb']:,.0f} MB | | 1 |"]
    for side in sides:
        c = cap[side]
        samples = ", ".join(f"{s:.2f}" for s in c["seconds"]["samples"])
        lines.append(f"| `kinelab.capture` ({side}) | {c['seconds']['median']:.2f} s | {samples} | "
                     f"{c['rows'] / c['seconds']['median']:,.0f} | {c['cpu_seconds_median']:.1f} s | "
                     f"{c['max_rss_mb']:,.0f} MB | {c['file_bytes'] / 1e9:.2f} GB | {c['ratio_to_raw_median']:.2f} |")
    after = cap["after"]
    lines += ["", f"**Capture: {after['ratio_to_raw_median']:.2f} of raw binary COPY's speed (median of the rounds' "
              f"ratios, each against the raw COPY of its round: "
              f"{', '.join(f'{r:.2f}' for r in after['ratio_to_raw_per_round'])}), goal >= {CAPTURE_GOAL_RATIO}: "
              f"{verdict(after['ratio_to_raw_median'] >= CAPTURE_GOAL_RATIO)}; peak RSS {after['max_rss_mb']:.0f} MB, "
              f"goal < {CAPTURE_GOAL_RSS_MB} MB: {verdict(after['max_rss_mb'] < CAPTURE_GOAL_RSS_MB)}.**", "",
              "## analyses, each in a process of its own", "",
              "Time: the call, from opening the capture to the chart's Vega-Lite JSON (the interpreter's start and "
              "imports excluded; the process's wall time is in the JSON), median of the runs, with the CPU time it "
              "used (DuckDB runs on both cores), which the machine's other jobs do not inflate. Peak RSS: the whole "
              "process.", ""]
    header = "| analysis | " + " | ".join(f"{s} time (CPU) | {s} peak RSS" for s in sides) + " |"
    lines += [header, "|---|" + "---:|---:|" * len(sides)]
    worst_s = worst_rss = 0.0
    for name, by_side in b["analyses"].items():
        cells = []
        for side in sides:
            a = by_side[side]
            cells += [f"{a['seconds']['median']:.2f} s ({a['cpu_seconds_median']:.2f} s)", f"{a['max_rss_mb']:,.0f} MB"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        worst_s = max(worst_s, by_side["after"]["seconds"]["median"])
        worst_rss = max(worst_rss, by_side["after"]["max_rss_mb"])
    lines += ["", f"**Every analysis: at most {worst_s:.2f} s (goal < {GOAL_S:.0f} s: {verdict(worst_s < GOAL_S)}), "
              f"peak RSS at most {worst_rss:.0f} MB (goal < {GOAL_RSS_MB} MB: {verdict(worst_rss < GOAL_RSS_MB)}).**",
              "", "## notebook 08 end to end (papermill, KINELAB_DSN)", "",
              "| kinelab | wall time | peak RSS (papermill and its kernel) |", "|---|---:|---:|"]
    for side in sides:
        n = b["notebook_08"][side]
        lines.append(f"| {side} | {n['wall_seconds']:.1f} s | {n['max_rss_mb']:,.0f} MB |")
    n = b["notebook_08"]["after"]
    lines += ["", f"**Notebook 08: {n['wall_seconds']:.1f} s (goal < {NOTEBOOK_GOAL_S:.0f} s: "
              f"{verdict(n['wall_seconds'] < NOTEBOOK_GOAL_S)}), peak RSS {n['max_rss_mb']:.0f} MB (goal < "
              f"{NOTEBOOK_GOAL_RSS_MB} MB: {verdict(n['max_rss_mb'] < NOTEBOOK_GOAL_RSS_MB)}).** It starts a kernel, "
              "captures the table, writes the report and draws two charts.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows loaded (Kine adds its own few)")
    parser.add_argument("--rounds", type=int, default=3, help="capture rounds, alternating with raw COPY")
    parser.add_argument("--analysis-rounds", type=int, default=3, help="runs of each analysis (today's kinelab)")
    parser.add_argument("--before", metavar="REV", help="also measure the kinelab of this git revision")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--name", default="analysis", help="results file stem")
    parser.add_argument("--work", help="where the captures go (default: the system's temporary directory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        analysis_child(args.child, args.out)
        return 0

    from kinelab import install_kine
    from kinelab.observe.store import DEFAULT_MEMORY, MEMORY_ENV

    kine = install_kine(log=lambda *_: None)
    results = {"command": " ".join(["benchmarks/analysis.py", *sys.argv[1:]]),
               "environment": foundation.environment(kine),
               "memory_limit": os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY}
    started = time.perf_counter()
    results["bench"] = bench(args)
    results["duration_s"] = time.perf_counter() - started
    results["environment"]["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(results))
    log(f"done in {results['duration_s'] / 60:.1f} min: {RESULTS / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
