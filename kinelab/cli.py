"""`kinelab`: a thin command line over the same calls the notebooks make.

Exit codes: 0 success, 1 a finding (e.g. a divergence), 2 bad input or environment, 130 interrupted.
Expected errors, usage mistakes included, print one line that says what to do; `-v` adds the details and
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .drive.faults import ISOLATION_LEVELS
from .dsn import Dsn
from .errors import KinelabError, UsageError

out = Console(highlight=False)


def _kv(pairs: list, what: str) -> dict:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {pair!r} is not KEY=VALUE (for example compact-interval=5m)")
        result[key] = True if value == "" else value
    return result


def _replica_args(pairs: list, replicas: int) -> list:
    per = [{} for _ in range(replicas)]
    for pair in pairs or []:
        index, sep, rest = pair.partition(":")
        if not sep or not index.isdigit() or int(index) >= replicas:
            raise UsageError(f"--replica-arg {pair!r} must be INDEX:KEY=VALUE with INDEX below {replicas}")
        per[int(index)].update(_kv([rest], "--replica-arg"))
    return per


def _dir(args) -> Path:
    from .provision.lab import default_dir

    return Path(args.dir).expanduser() if args.dir else default_dir()


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_install(args) -> int:
    from . import progress
    from .provision.tools import install_kine

    kine = install_kine(args.kine_bin, log=progress.say)
    if args.json:
        _print_json(kine.to_json())
    else:
        out.print(f"kine {kine.version}: {kine.path}")
    return 0


def cmd_doctor(args) -> int:
    from .provision.tools import doctor

    checks = doctor()
    if args.json:
        _print_json([c.to_json() for c in checks])
        return 0
    table = Table("tool", "", "found", "how to get it", box=None)
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[yellow]--[/]", check.detail,
                      "" if check.ok else check.hint)
    out.print(table)
    return 0


def _status_table(status: dict) -> Table:
    if status.get("backend") == "kind":
        return _kind_status_table(status)
    table = Table("replica", "endpoint", "pid", "alive", "revision", "note", box=None,
                  title=f"lab {status['dir']} ({status['state']}) on {status['datastore'].get('dsn', '?')}, "
                        f"Kine {status.get('kine_version')}")
    for r in status["replicas"]:
        table.add_row(str(r["index"]), r["endpoint"], str(r["pid"]), "yes" if r["alive"] else "[red]no[/]",
                      str(r.get("revision", "")), r.get("last_log_line", "") or r.get("error", ""))
    for a in status.get("apiservers", []):
        table.add_row(f"apiserver {a['index']}", a["url"], str(a["pid"]), "yes" if a["alive"] else "[red]no[/]",
                      "ready" if a["ready"] else "[red]not ready[/]", f"etcd: {', '.join(a['etcd_servers'])}")
    return table


def _kind_status_table(status: dict) -> Table:
    table = Table("container", "role", "state", "status", box=None,
                  title=f"kind lab {status['dir']} ({status['state']}, {status['mode']}) on "
                        f"{status['datastore']['dsn']}, Kine {status['kine_version']}")
    for c in status["containers"]:
        table.add_row(c["name"], c["role"], c["state"], c.get("status", ""))
    for n in status["nodes"]:
        table.add_row(n["name"], f"kind {n['role']}", n["state"], n.get("status", ""))
    if status.get("error"):
        table.caption = f"[yellow]{status['error']}[/]"
    return table


def cmd_up(args) -> int:
    from .provision.lab import Lab

    if args.backend == "kind":
        from .provision.kind import KindLab, require_docker

        require_docker()  # before anything is planned or written
        lab = KindLab(dir=_dir(args), control_planes=max(1, args.control_planes), replicas=args.replicas,
                      mode=args.mode, datastore=args.datastore).create()
    else:
        lab = Lab(replicas=args.replicas, datastore=args.datastore, dir=_dir(args), kine_bin=args.kine_bin,
                  datastore_settings=_kv(args.datastore_setting, "--datastore-setting"),
                  kine_args=_kv(args.kine_arg, "--kine-arg"),
                  replica_args=_replica_args(args.replica_arg, args.replicas),
                  allow_shared_sqlite=args.allow_shared_sqlite, base_port=args.base_port, apiservers=args.apiservers,
                  mode=args.mode, apiserver_args=_kv(args.apiserver_arg, "--apiserver-arg"))
        lab.start(owned=False)
    status = lab.status()
    if args.json:
        _print_json(status)
    else:
        out.print(_status_table(status))
        out.print(f"stop it with: kinelab down --dir {lab.dir}")
    return 0


def cmd_status(args) -> int:
    from .provision.backends import attach_lab

    status = attach_lab(_dir(args)).status()
    if args.json:
        _print_json(status)
    else:
        out.print(_status_table(status))
    return 0


def cmd_down(args) -> int:
    from .provision.backends import attach_lab
    from .provision.lab import purge, read_manifest

    path = _dir(args).resolve()
    manifest = read_manifest(path)
    if manifest is None:
        raise UsageError(f"no lab in {path}: nothing to stop (already removed?)")
    stopped = attach_lab(path).down()
    if args.purge:
        purge(path)
    what = "container(s)" if manifest.get("backend") == "kind" else "process(es)"
    out.print(f"stopped {stopped} {what} of the lab in {path}" + ("; removed it" if args.purge else ""))
    return 0


def cmd_dsn(args) -> int:
    from .provision.lab import Lab

    print(Lab.attach(_dir(args)).dsn.url)
    return 0


def cmd_capture(args) -> int:
    from .observe.capture import capture

    sources = [s for s in (args.dir, args.dsn, args.sqlite) if s]
    if len(sources) != 1:
        raise UsageError("name exactly one source: --dir LAB, --dsn DSN or --sqlite PATH")
    if args.dir:
        from .provision.backends import attach_lab

        snap = attach_lab(args.dir).capture(args.out, incremental=args.incremental)
    else:
        source = Dsn.parse(args.dsn) if args.dsn else Dsn.sqlite(Path(args.sqlite))
        snap = capture(source, args.out, incremental=args.incremental)
    if args.json:
        _print_json(snap.to_json())
    else:
        out.print(f"snapshot {snap.snapshot_id} ({snap.mode}) -> {snap.path}: {snap.row_count} rows in the table, "
                  f"{snap.rows_stored} stored, {snap.removed} removed since the last snapshot, max id {snap.max_id}, "
                  f"compact revision {snap.compact_revision}, {snap.duration_s:.2f}s")
    return 0


def _lab(args):
    from .provision.lab import Lab

    lab = Lab.attach(_dir(args))
    if lab.manifest.get("state") != "running":
        raise UsageError(f"the lab in {lab.dir} is not running; start it with `kinelab up --dir {lab.dir}`")
    return lab


def _spread(value: str):
    return int(value) if value.isdigit() else value


def _print_lag(summary: dict) -> None:
    table = Table("observer", "writes from", "events", "p50 ms", "p99 ms", "max ms", box=None,
                  title=f"watch lag (run {summary['run_id']}, {summary['writes']} writes, "
                        f"{summary['write_rate']}/s)")
    for row in summary["lag"]:
        table.add_row(str(row["observer"]), row["locality"], str(row["events"]), f"{row['p50_ms']:.1f}",
                      f"{row['p99_ms']:.1f}", f"{row['max_ms']:.1f}")
    out.print(table)
    out.print(f"missed revisions per observer: {summary['missed'] or 'none'}; cancelled watches: "
              f"{summary['cancelled'] or 'none'}; idle probe CPU {summary['idle_probe_cpu_pct']}%")


def cmd_load(args) -> int:
    from .observe.runs import load

    summary = load(_lab(args), args.out, mix=args.mix, rate=args.rate, duration_s=args.duration, ops=args.ops,
                   spread=_spread(args.spread), workers=args.workers, seed=args.seed)
    if args.json:
        _print_json(summary)
    else:
        out.print(f"run {summary['run_id']}: {summary['writes']} writes ({summary['write_rate']}/s), "
                  f"{summary['lists']} lists, {summary['errors']} errors, {summary['conflict_retries']} conflict "
                  f"retries -> {args.out} (tables writes, load_errors, kine_metrics; snapshot "
                  f"{summary['snapshot_id']})")
    return 0 if not summary["errors"] else 1


def cmd_watchlag(args) -> int:
    from .observe.runs import watch_lag

    summary = watch_lag(_lab(args), args.out, mix=args.mix, rate=args.rate, duration_s=args.duration,
                        spread=_spread(args.spread), workers=args.workers, seed=args.seed, prefix=args.prefix)
    if args.json:
        _print_json(summary)
    else:
        _print_lag(summary)
    return 1 if summary["missed"] or summary["cancelled"] else 0


def cmd_compaction(args) -> int:
    from .observe.runs import compaction

    summary = compaction(_lab(args), args.out, method=args.method, duration_s=args.duration,
                         sample_every_s=args.sample_every, compact_every_s=args.compact_every, mix=args.mix,
                         rate=args.rate, seed=args.seed)
    if args.json:
        _print_json(summary)
    else:
        out.print(f"run {summary['run_id']} ({args.method}): compact revision {summary['compact_revision']} of "
                  f"{summary['current_revision']}; rows {summary['rows_first']} -> {summary['rows_last']}; bytes "
                  f"{summary['bytes_first']} -> {summary['bytes_last']}; stalled: {summary['stalled']}; "
                  f"compacted-read checks: {summary['checks'] or 'none (nothing compacted)'}")
    return 1 if not all(summary["checks"].values()) else 0


def cmd_check(args) -> int:
    from .observe.check import check

    if args.endpoints:
        endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
        if not endpoints:
            raise UsageError(f"--endpoints {args.endpoints!r} names no replica; use HOST:PORT,HOST:PORT")
        dsn = Dsn.parse(args.dsn) if args.dsn else None
    else:
        lab = _lab(args)
        endpoints, dsn = lab.endpoints, lab.dsn
    report = check(endpoints, dsn, prefix=args.prefix, baseline=args.baseline)
    if args.json:
        _print_json(report.to_json())
    else:
        table = Table("source", "revision", "keys", "hash", "error", box=None,
                      title=f"keyspace {report.prefix!r} at revision {report.revision}")
        for view in report.views:
            table.add_row(view.source, str(view.revision), str(len(view.keys)), view.digest, view.error)
        out.print(table)
        for item in report.divergent[:20]:
            out.print(f"[red]divergent[/] {item['key']}: " + "; ".join(
                f"{k}={v}" for k, v in item.items() if k != "key"))
        for item in report.history_breaks[:20]:
            out.print(f"[red]history break[/] row {item['id']} ({item['name']}) no longer matches the old_value "
                      f"of row {item['successor']}: changed behind Kine's back")
        for item in report.changed_rows[:20]:
            out.print(f"[red]changed since the baseline[/] row {item['id']} ({item['name']})")
        out.print("[green]consistent[/]" if report.consistent else
                  f"[red]NOT consistent[/]: {len(report.divergent)} divergent keys, {len(report.history_breaks)} "
                  f"history breaks, {len(report.changed_rows)} changed rows")
    return 0 if report.consistent else 1


REPLICA_FAULTS = ("kill", "pause", "resume", "restart")


def cmd_fault(args) -> int:
    import time

    from .drive.faults import FaultInjector

    if (args.action in REPLICA_FAULTS) != (args.replica is not None):
        raise UsageError(f"`fault {args.action}` " + ("needs --replica INDEX" if args.action in REPLICA_FAULTS
                                                      else "acts on the database; drop --replica"))
    if (args.action == "isolation") != (args.level is not None):
        raise UsageError("`fault isolation` needs --level" if args.action == "isolation"
                         else f"--level applies to `fault isolation` only, not {args.action}")
    injector = FaultInjector(_lab(args))
    options = {"replica": args.replica} if args.action in REPLICA_FAULTS else \
        {"level": args.level} if args.action == "isolation" else \
        {"hold_ms": args.hold_ms, "period_ms": args.period_ms} if args.action == "slow" else {}
    detail = injector.inject(args.action, **options)
    try:
        if args.action == "slow":  # the lock lives in this process: hold it for --seconds, or until Ctrl-C
            out.print(f"database slowed ({detail}) for {args.seconds:g} s; Ctrl-C ends it sooner")
            time.sleep(args.seconds)
    finally:
        detail = injector.inject("slow-stop") if args.action == "slow" else detail
    target = f"replica {args.replica}" if args.replica is not None else "database"
    out.print(f"{target}: {args.action} done" + (f" ({detail})" if detail else ""))
    return 0


def cmd_scenario(args) -> int:
    from .observe.scenario import Scenario, run_scenario
    from .provision.lab import Lab

    scenario = Scenario.from_file(args.file)
    if args.dir:
        summary = run_scenario(_lab(args), args.out, scenario)
    else:
        with Lab(**scenario.lab) as lab:  # a lab of the scenario's own, gone when the run ends
            summary = run_scenario(lab, args.out, scenario)
    if args.json:
        _print_json(summary)
        return 1 if summary["failed"] else 0
    table = Table("check", "value", "verdict", box=None,
                  title=f"scenario {scenario.name}: run {summary['run_id']}, {summary['writes']} writes, "
                        f"{summary['errors']} errors -> {args.out}")
    for name, check in summary["checks"].items():
        verdict = {True: "[green]ok[/]", False: "[red]failed[/]", None: ""}[check["ok"]]
        table.add_row(name, f"{check['value']:g}", verdict)
    out.print(table)
    out.print("faults: " + ("; ".join(f"{t} s {fault} {target}" + ("" if ok else " (failed)")
                                      for t, fault, target, ok in summary["faults"]) or "none"))
    if summary["failed"]:
        out.print(f"[red]expectations not met: {'; '.join(summary['failed'])}[/] (tables scenario_checks, "
                  f"fault_recovery, error_kinds in {args.out})")
        return 1
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(replicas=args.replicas, datastore=args.datastore, out=args.out, seed=args.seed, console=out)
    return 0


EXIT_CODES = "exit codes: 0 success, 1 a finding (e.g. a divergence), 2 bad input or environment, 130 interrupted"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get one line and exit 2, like every other expected error."""

    def error(self, message):
        self.exit(2, f"kinelab: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kinelab", description="See how Kine behaves when replicas share a database.",
                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"kinelab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show details and tracebacks of errors")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="what DuckDB may use, e.g. 2GB (also KINELAB_MEMORY_LIMIT; default 512MB)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    def lab_dir(p):
        p.add_argument("--dir", help="lab directory (default: ~/.kinelab/labs/default, or $KINELAB_HOME/labs/default)")

    p = add("install", cmd_install, "build the pinned Kine into the tool cache (or check --kine-bin)")
    p.add_argument("--kine-bin", help="use this Kine binary instead (also KINELAB_KINE_BIN)")
    p.add_argument("--json", action="store_true")

    p = add("doctor", cmd_doctor, "list the tools kinelab can use here, and how to get the missing ones")
    p.add_argument("--json", action="store_true")

    p = add("up", cmd_up, "start Kine replicas on a shared datastore; they run until `kinelab down`")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--datastore", default="postgres", help="postgres (embedded, default), sqlite, mysql, or a DSN")
    lab_dir(p)
    p.add_argument("--kine-arg", action="append", metavar="KEY=VALUE", help="a Kine flag for every replica")
    p.add_argument("--replica-arg", action="append", metavar="INDEX:KEY=VALUE", help="a Kine flag for one replica")
    p.add_argument("--datastore-setting", action="append", metavar="KEY=VALUE",
                   help="a server setting of the embedded postgres or mysql, e.g. max_connections=20")
    p.add_argument("--base-port", type=int, help="use consecutive ports from here instead of free ones")
    p.add_argument("--allow-shared-sqlite", action="store_true",
                   help="allow several replicas on one SQLite file (unsupported, k3s-io/kine#499; for the lesson)")
    p.add_argument("--kine-bin", help="use this Kine binary (also KINELAB_KINE_BIN)")
    p.add_argument("--backend", default="local", choices=["local", "kind"],
                   help="local: processes on loopback (default); kind: containers, needs a Docker engine")
    p.add_argument("--control-planes", type=int, default=2, help="kind backend: control-plane nodes")
    p.add_argument("--apiservers", type=int, default=0, help="real kube-apiservers in front of the replicas")
    p.add_argument("--mode", default="shared-db", choices=["shared-db", "single-kine", "hybrid"],
                   help="shared-db: apiserver i on replica i; single-kine: all on replica 0; hybrid: all on all")
    p.add_argument("--apiserver-arg", action="append", metavar="KEY=VALUE",
                   help="a kube-apiserver flag, e.g. watch-cache=false")
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "show each replica of a lab: alive, revision, last log line if dead")
    lab_dir(p)
    p.add_argument("--json", action="store_true")

    p = add("down", cmd_down, "stop every process of a lab")
    lab_dir(p)
    p.add_argument("--purge", action="store_true", help="also delete the lab directory and its data")

    p = add("dsn", cmd_dsn, "print the lab datastore's full DSN, password included (for psql or mysql)")
    lab_dir(p)

    p = add("capture", cmd_capture, "capture the kine table into a DuckDB file (one snapshot per run)")
    p.add_argument("--dir", help="capture the datastore of this lab")
    p.add_argument("--dsn", help="capture a Postgres or MySQL datastore, read-only")
    p.add_argument("--sqlite", help="capture a Kine SQLite file, read-only")
    p.add_argument("--out", required=True, help="DuckDB file to create or append to")
    p.add_argument("--incremental", action="store_true", help="store only rows new since the previous snapshot")
    p.add_argument("--json", action="store_true")

    from .drive.workload import MIXES

    def run_flags(p, rate, duration):
        lab_dir(p)
        p.add_argument("--out", required=True, help="DuckDB file for the results (and a capture of the table)")
        p.add_argument("--mix", default="configmaps", choices=list(MIXES))
        p.add_argument("--rate", type=float, default=rate, help="target operations per second, default "
                       + ("flat out" if rate is None else f"{rate:g}"))
        p.add_argument("--duration", type=float, default=duration, help="seconds")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--json", action="store_true")

    p = add("load", cmd_load, "drive a Kubernetes-shaped mix through the lab; record every acknowledged write")
    run_flags(p, None, 10.0)
    p.add_argument("--ops", type=int, help="stop after this many operations instead of --duration")
    p.add_argument("--spread", default="round-robin", help="round-robin, random, or a replica index to pin to")
    p.add_argument("--workers", type=int, default=1, help="concurrent writers")

    p = add("watchlag", cmd_watchlag, "load the lab while every replica watches; lag per event and replica")
    run_flags(p, 50.0, 10.0)
    p.add_argument("--spread", default="round-robin", help="round-robin, random, or a replica index to pin to")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--prefix", default="/registry/")

    p = add("compaction", cmd_compaction, "load while compacting; record the compaction timeline")
    run_flags(p, 100.0, 30.0)
    p.add_argument("--method", default="explicit", choices=["interval", "explicit", "none"],
                   help="interval: Kine's --compact-interval; explicit: apiserver-style Compact calls; none")
    p.add_argument("--sample-every", type=float, default=3.0, help="seconds between captures")
    p.add_argument("--compact-every", type=float, default=10.0, help="seconds between apiserver-style compactions")

    p = add("check", cmd_check, "compare every replica and the table at one revision (exit 1 on divergence)")
    lab_dir(p)
    p.add_argument("--endpoints", help="h:p,h:p instead of a lab")
    p.add_argument("--dsn", help="with --endpoints: the datastore to compare against")
    p.add_argument("--prefix", default="/")
    p.add_argument("--baseline", help="an earlier capture: report rows changed since")
    p.add_argument("--json", action="store_true")

    p = add("fault", cmd_fault, "inject a fault: kill (SIGKILL), pause (SIGSTOP), resume or restart a replica; "
            "stop, start or restart the database; terminate Kine's database sessions; slow the database; set "
            "its default isolation level")
    p.add_argument("action", choices=[*REPLICA_FAULTS, "db-stop", "db-start", "db-restart", "terminate", "slow",
                                      "isolation"])
    p.add_argument("--replica", type=int, help="the replica, for kill, pause, resume and restart")
    p.add_argument("--level", choices=ISOLATION_LEVELS,
                   help="for isolation: the database's new default level")
    p.add_argument("--seconds", type=float, default=30, help="for slow: how long (default 30)")
    p.add_argument("--hold-ms", type=float, default=200, help="for slow: writes blocked this long ...")
    p.add_argument("--period-ms", type=float, default=250, help="... of every period (default 200 of 250 ms)")
    lab_dir(p)

    p = add("scenario", cmd_scenario, "run a scenario file (load with timed faults), store it in DuckDB and "
            "reconcile: writes lost, watch events missed, recovery times")
    p.add_argument("file", help="a scenario YAML file, e.g. scenarios/kill-one-of-three.yaml")
    p.add_argument("--dir", help="run against this running lab (default: start the scenario's own lab)")
    p.add_argument("--out", default="kinelab-scenario.duckdb", help="results file (default kinelab-scenario.duckdb)")
    p.add_argument("--json", action="store_true")

    p = add("demo", cmd_demo, "3 replicas on embedded Postgres, a seeded burst of writes, a capture, a summary")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--datastore", default="postgres")
    p.add_argument("--out", default="kinelab-demo.duckdb", help="where to keep the capture")
    p.add_argument("--seed", type=int, default=1)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_limit:
        os.environ["KINELAB_MEMORY_LIMIT"] = args.memory_limit
    try:
        return args.func(args)
    except KinelabError as exc:
        message = str(exc)
        first = message.splitlines()[0] if message else type(exc).__name__
        print(f"kinelab: error: {first}", file=sys.stderr)
        if args.verbose:
            print(message, file=sys.stderr)
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print("kinelab: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
