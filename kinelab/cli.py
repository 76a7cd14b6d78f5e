"""`kinelab`: a thin command line over the same calls the notebooks make.

Exit codes: 0 success, 1 a finding (e.g. a divergence), 2 bad input or environment, 130 interrupted.
Expected errors, usage mistakes included, print one line that says what to do; `-v` adds the details and
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from . import __version__
from .drive.faults import ISOLATION_LEVELS
from .dsn import Dsn, mask_text
from .errors import KinelabError, UsageError
from .provision.backends import BACKENDS
from .provision.tools import KINE_VERSION
from .provision.wait import Cancelled

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
    from .provision.labdir import default_dir

    return Path(args.dir).expanduser() if args.dir else default_dir()


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_install(args) -> int:
    from . import progress
    from .provision.tools import install_kine

    kine = install_kine(args.kine_bin, log=progress.say, version=args.kine_version)
    if not args.kind_images:
        if args.json:
            _print_json(kine.to_json())
        else:
            out.print(f"kine {kine.version}: {kine.path}")
        return 0
    from .provision.docker import ensure_engine
    from .provision.nodeimage import ensure_lb_image, ensure_node_image
    from .provision.tools import KIND, ensure

    kind = ensure(KIND, log=progress.say)
    engine, _ = ensure_engine(log=progress.say)
    image = ensure_node_image(engine, log=progress.say)
    lb_image = ensure_lb_image(engine, log=progress.say)
    if args.json:
        _print_json({"kine": kine.to_json(), "kind": kind.to_json(), "engine": engine.to_json(),
                     "node_image": image.to_json(), "lb_image": lb_image})
    else:
        out.print(f"kine {kine.version}: {kine.path}")
        out.print(f"kind {kind.version}: {kind.path}")
        out.print(f"node image {image.reference} ({image.size_mb:.0f} MB; preloaded: {', '.join(image.preloaded)}) "
                  f"in {engine.describe()}")
    return 0


def cmd_docker(args) -> int:
    from .provision.docker import PrivateEngine, find_engine

    private = PrivateEngine()
    if args.action == "start":
        engine = private.start(log=out.print)
        out.print(f"{engine.describe()} is running; point docker at it with: export DOCKER_HOST={engine.host}")
    elif args.action == "stop":
        removed = private.stop()
        out.print(f"stopped kinelab's private Docker engine: removed {removed['containers']} container(s), "
                  f"{removed['networks']} network(s), {removed['volumes']} volume(s)" if removed["daemon"]
                  else "kinelab's private Docker engine was not running")
    elif args.json:
        engine = find_engine(private)
        _print_json(engine.to_json() if engine else None)
    else:
        engine = find_engine(private)
        out.print(engine.describe() if engine else "no Docker engine answers `docker info`")
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
    table = Table(Column("component", no_wrap=True), Column("endpoint", overflow="fold"), "pid", "alive",
                  Column("state", no_wrap=True), "note", box=None,
                  title=f"lab {status['dir']} ({status['state']}, {status['backend']}) on "
                        f"{status['datastore'].get('dsn', '?')}, Kine {status.get('kine_version')}")
    for c in status["components"]:
        if c["role"] in ("kine", "etcd"):
            state, note = str(c.get("revision", "")), c.get("last_log_line", "") or c.get("error", "")
            state = f"revision {state}" if state else ""
            if c.get("kine_version") not in (None, status.get("kine_version")):  # a replica on another release
                state = f"{state} (Kine {c['kine_version']})".strip()
        elif c["role"] == "apiserver":
            state, note = "ready" if c["ready"] else "[red]not ready[/]", f"etcd: {', '.join(c['etcd_servers'])}"
        elif c["role"] == "control-plane":
            state, note = "ready" if c["ready"] else "[red]not ready[/]", ""
        elif c["role"] == "nodes":
            state, note = f"{c['ready_nodes']}/{c['nodes']} nodes Ready", c.get("error", "")
        elif c["role"] == "node":  # a kind node container
            state = {True: "Ready", False: "[red]not Ready[/]", None: c["state"] or "[red]gone[/]"}[c["ready"]]
            note = f"kind {c['kind_role']}" + (f"; {c['error']}" if c.get("error") else "")
        elif c["role"] == "network":
            state, note = c["subnet"], f"gateway {c['gateway']}"
        elif c["role"] == "cluster":
            state, note = "", f"kubeconfig {c['kubeconfig']}"
        elif "member" in c:
            state, note = c["member"], ""
        elif "servers" in c or "error" in c:  # a proxy: where it sends connections
            state, note = "", c.get("error") or ", ".join(f"{name} {s['status']} ({s['connections']} open)"
                                                        for name, s in c["servers"].items())
        else:
            state, note = "", ""
        endpoint = c.get("url") or c.get("endpoint") or ""
        table.add_row(c["name"], endpoint, str(c["pid"] or ""), "yes" if c["alive"] else "[red]no[/]", state, note)
    return table


def cmd_up(args) -> int:
    from .provision.lab import Lab

    lab = Lab(replicas=args.replicas, datastore=args.datastore, backend=args.backend, dir=_dir(args),
              kine_bin=args.kine_bin, datastore_settings=_kv(args.datastore_setting, "--datastore-setting"),
              kine_args=_kv(args.kine_arg, "--kine-arg"), replica_args=_replica_args(args.replica_arg, args.replicas),
              allow_shared_sqlite=args.allow_shared_sqlite, base_port=args.base_port, apiservers=args.apiservers,
              mode=args.mode, apiserver_args=_kv(args.apiserver_arg, "--apiserver-arg"), nodes=args.nodes,
              controllers=args.controllers or None, kine_version=args.kine_version, replication=args.replication,
              db_proxy=_kv(args.db_proxy_setting, "--db-proxy-setting") if args.db_proxy or args.db_proxy_setting
              else None, balancer=args.balancer, workers=args.workers, cluster_name=args.name or "")
    interrupted = []

    def on_ctrl_c(signum, frame):
        # Also a flag every wait of the start checks: a library that swallows KeyboardInterrupt (a gRPC call
        # under way, say) cannot let the start run on to a lab nobody asked for.
        interrupted.append(signum)
        lab.interrupt()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        lab.start(owned=False)
    except Cancelled:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    status = lab.status()
    if args.json:
        _print_json(status)
    else:
        out.print(_status_table(status))
        out.print(f"stop it with: kinelab down --dir {lab.dir}")
    return 0


def cmd_status(args) -> int:
    from .provision.lab import Lab

    status = Lab.attach(_dir(args)).status()
    if args.json:
        _print_json(status)
    else:
        out.print(_status_table(status))
    return 0


def cmd_down(args) -> int:
    from .provision.lab import Lab
    from .provision.labdir import LabDir

    labdir = LabDir(_dir(args))
    if not labdir.manifest_path.exists():
        raise UsageError(f"no lab in {labdir.path}: nothing to stop (already removed?)")
    if not labdir.is_kinelab():
        labdir.read()  # refuses, in one line, a file that is not a kinelab manifest
    model = labdir.read_if_current()
    # Safe to repeat, on every backend (like `kind delete cluster`): a stopped lab is swept again for anything
    # left running, and that is not an error.
    was = model.state if model else None
    if not args.purge:
        stopped = Lab.attach(labdir.path).down()
    else:  # with --purge, also a manifest this version cannot read: its pid files still name its processes
        stopped = labdir.sweep(model)
        labdir.purge()
    what = "process(es) and container(s)" if model and model.by_role("node") else "process(es)"
    said = f"stopped {stopped} {what} of the lab in {labdir.path}" if stopped or was != "stopped" else \
        f"the lab in {labdir.path} was already stopped; nothing was running"
    out.print(said + ("; removed it" if args.purge else ""), soft_wrap=True)  # one line, for scripts to read
    return 0


def cmd_labs(args) -> int:
    from .provision.lab import prune_labs, stale_labs

    labs = stale_labs(include_running=not args.prune)
    if args.prune:
        removed = prune_labs(labs)
        for entry in removed:
            out.print(f"removed {entry['what']} {entry['path']} ({_size(entry['bytes'])})")
        out.print(f"removed {len(removed)} stale lab(s) and data set(s)" if removed else "nothing stale to remove")
        return 0
    if args.json:
        _print_json(labs)
        return 0
    table = Table("lab", "state", "kept", "size", "where", box=None, title="labs on this machine")
    for entry in labs:
        table.add_row(entry["id"] or "-", entry["state"], "yes" if entry["keep"] else "no (temporary)",
                      _size(entry["bytes"]), entry["path"])
    out.print(table)
    out.print("`kinelab labs --prune` removes the stale ones (stopped temporary labs, labs whose owner died, data "
              "no lab uses); `kinelab down --dir DIR --purge` removes one kept lab")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


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
        from .provision.lab import Lab

        source = Lab.attach(args.dir).dsn
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
    if lab.model.state != "running":
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
                   spread=_spread(args.spread), workers=args.workers, seed=args.seed, through=args.through)
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

    if args.replica is not None and args.component:
        raise UsageError("name either --replica INDEX or --component NAME, not both")
    target = args.replica if args.replica is not None else args.component
    if (args.action in REPLICA_FAULTS) != (target is not None):
        raise UsageError(f"`fault {args.action}` " + ("needs --replica INDEX or --component NAME"
                                                      if args.action in REPLICA_FAULTS
                                                      else "acts on the database; drop --replica/--component"))
    if (args.action == "db-proxy-maxconn") != (args.maxconn is not None):
        raise UsageError("`fault db-proxy-maxconn` needs --maxconn" if args.action == "db-proxy-maxconn"
                         else f"--maxconn applies to `fault db-proxy-maxconn` only, not {args.action}")
    if (args.action == "isolation") != (args.level is not None):
        raise UsageError("`fault isolation` needs --level" if args.action == "isolation"
                         else f"--level applies to `fault isolation` only, not {args.action}")
    if args.kine_version and args.action != "restart":
        raise UsageError(f"--kine-version applies to `fault restart` only, not {args.action}")
    injector = FaultInjector(_lab(args))
    options = {"replica": target, **({"kine_version": args.kine_version} if args.kine_version else {})} \
        if args.action in REPLICA_FAULTS else \
        {"level": args.level} if args.action == "isolation" else \
        {"hold_ms": args.hold_ms, "period_ms": args.period_ms} if args.action == "slow" else \
        {"maxconn": args.maxconn} if args.action == "db-proxy-maxconn" else {}
    detail = injector.inject(args.action, **options)
    try:
        if args.action == "slow":  # the lock lives in this process: hold it for --seconds, or until Ctrl-C
            out.print(f"database slowed ({detail}) for {args.seconds:g} s; Ctrl-C ends it sooner")
            time.sleep(args.seconds)
    finally:
        detail = injector.inject("slow-stop") if args.action == "slow" else detail
    what = f"replica {target}" if isinstance(target, int) else target or "database"
    out.print(f"{what}: {args.action} done" + (f" ({detail})" if detail else ""))
    return 0


def cmd_scenario(args) -> int:
    from .observe.scenario import Scenario, run_scenario
    from .observe.versions import install_versions, parse_versions, run_versions
    from .provision.lab import Lab

    scenario = Scenario.from_file(args.file)
    versions = parse_versions(args.kine_versions) if args.kine_versions is not None else None
    if versions:
        install_versions(versions)  # an unknown release or a failed build stops here, before any lab starts

    def run(lab) -> list:
        return run_versions(lab, args.out, scenario, versions) if versions else [run_scenario(lab, args.out, scenario)]

    if args.dir:
        summaries = run(_lab(args))
    else:
        with Lab(**{**scenario.lab, **({"kine_version": versions[0]} if versions else {})}) as lab:
            summaries = run(lab)  # a lab of the scenario's own, gone when the run ends
    failed = [f"{s.get('kine_version', '')} {f}".strip() for s in summaries for f in s["failed"]]
    if versions:
        return _print_versions(args, scenario, summaries, failed)
    (summary,) = summaries
    if args.json:
        _print_json(summary)
        return 1 if failed else 0
    table = Table("check", "value", "verdict", box=None,
                  title=f"scenario {scenario.name}: run {summary['run_id']}, {summary['writes']} writes, "
                        f"{summary['errors']} errors -> {args.out}")
    for name, check in summary["checks"].items():
        verdict = {True: "[green]ok[/]", False: "[red]failed[/]", None: ""}[check["ok"]]
        table.add_row(name, f"{check['value']:g}", verdict)
    out.print(table)
    out.print("faults: " + ("; ".join(f"{t} s {fault} {target}" + ("" if ok else " (failed)")
                                      for t, fault, target, ok in summary["faults"]) or "none"))
    if failed:
        out.print(f"[red]expectations not met: {'; '.join(failed)}[/] (scenario_checks, "
                  f"fault_recovery and write_anomalies in {args.out}; error_kinds through kinelab.open_capture)")
        return 1
    return 0


def _print_versions(args, scenario, summaries: list, failed: list) -> int:
    from .analyse.versions import by_version
    from .analyse.views import open_capture

    with open_capture(args.out) as con:
        runs = {s["run_id"] for s in summaries}
        rows = [r for r in by_version(con) if r["run_id"] in runs]
    if args.json:
        _print_json({"versions": rows, "runs": summaries, "failed": failed})
        return 1 if failed else 0
    table = Table("Kine", "run", "writes", "errors", "acknowledged but missing", "reported failed but written",
                  box=None, title=f"scenario {scenario.name} on {len(summaries)} Kine releases -> {args.out}")
    for row in rows:
        table.add_row(row["kine_version"], str(row["run_id"]), str(row["writes"]), str(row["errors"]),
                      *[f"[red]{n}[/]" if n else "0" for n in (row["acknowledged_but_missing"],
                                                              row["reported_failed_but_written"])])
    out.print(table)
    if failed:
        out.print(f"[red]expectations not met: {'; '.join(failed)}[/] (views write_anomalies and "
                  f"anomalies_by_version in {args.out})")
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

    p = add("install", cmd_install, "build the pinned Kine, or any release, into the tool cache (or check --kine-bin)")
    p.add_argument("--kine-bin", help="use this Kine binary instead (also KINELAB_KINE_BIN)")
    p.add_argument("--kine-version", help=f"a Kine release other than the pinned {KINE_VERSION}, e.g. v0.17.2 "
                   "(checked against the Go module proxy's list)")
    p.add_argument("--kind-images", action="store_true",
                   help="also build kind and the kind backend's offline images (needs a Docker engine or root)")
    p.add_argument("--json", action="store_true")

    p = add("docker", cmd_docker, "start, stop or show kinelab's private Docker engine (root, Debian's docker.io)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--json", action="store_true")

    p = add("doctor", cmd_doctor, "list the tools kinelab can use here, and how to get the missing ones")
    p.add_argument("--json", action="store_true")

    p = add("up", cmd_up, "start Kine replicas on a shared datastore; they run until `kinelab down`")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--datastore", default="postgres", help="postgres (embedded, default), postgres-ha (a primary and "
                   "a streaming standby), sqlite, mysql, or a DSN")
    lab_dir(p)
    p.add_argument("--replication", choices=["sync", "async"],
                   help="postgres-ha: the standby confirms every commit (sync, default) or trails it (async)")
    p.add_argument("--db-proxy", action="store_true", help="HAProxy between Kine and the database (postgres-ha: "
                   "repointed at a failover; default: Kine's multi-host DSN)")
    p.add_argument("--db-proxy-setting", action="append", metavar="KEY=VALUE",
                   help="a circuit-breaker setting of the database proxy (implies --db-proxy): maxconn, "
                   "queue_timeout_ms, connect_timeout_ms, error_limit")
    p.add_argument("--balancer", action="store_true",
                   help="HAProxy in front of the Kine pool; in hybrid mode the apiservers reach Kine through it")
    p.add_argument("--kine-arg", action="append", metavar="KEY=VALUE", help="a Kine flag for every replica")
    p.add_argument("--replica-arg", action="append", metavar="INDEX:KEY=VALUE", help="a Kine flag for one replica")
    p.add_argument("--datastore-setting", action="append", metavar="KEY=VALUE",
                   help="a server setting of the embedded postgres or mysql, e.g. max_connections=20")
    p.add_argument("--base-port", type=int, help="use consecutive ports from here instead of free ones")
    p.add_argument("--allow-shared-sqlite", action="store_true",
                   help="allow several replicas on one SQLite file (unsupported, k3s-io/kine#499; for the lesson)")
    p.add_argument("--kine-bin", help="use this Kine binary (also KINELAB_KINE_BIN)")
    p.add_argument("--kine-version", help=f"run this Kine release instead of the pinned {KINE_VERSION} (built the "
                   "first time); one replica's own: --replica-arg 1:kine-version=v0.17.2")
    p.add_argument("--backend", default="local", choices=list(BACKENDS),
                   help="local: processes on loopback (default); kind: containers, needs a Docker engine")
    p.add_argument("--apiservers", type=int, default=0, help="real kube-apiservers in front of the replicas (kind: "
                   "control-plane nodes, one unless told more)")
    p.add_argument("--workers", type=int, default=0, help="kind: worker nodes")
    p.add_argument("--name", help="kind: the cluster's name, unique on its Docker engine (default kinelab)")
    p.add_argument("--mode", default="shared-db", choices=["shared-db", "single-kine", "hybrid"],
                   help="shared-db: apiserver i on replica i; single-kine: all on replica 0; hybrid: all on all")
    p.add_argument("--apiserver-arg", action="append", metavar="KEY=VALUE",
                   help="a kube-apiserver flag, e.g. watch-cache=false")
    p.add_argument("--nodes", type=int, default=0, help="simulated nodes (kwok), with a controller-manager and a "
                   "scheduler per apiserver (one apiserver unless --apiservers says more)")
    p.add_argument("--controllers", action="store_true",
                   help="a controller-manager and a scheduler per apiserver, also without --nodes")
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "show each replica of a lab: alive, revision, last log line if dead")
    lab_dir(p)
    p.add_argument("--json", action="store_true")

    p = add("down", cmd_down, "stop every process of a lab")
    lab_dir(p)
    p.add_argument("--purge", action="store_true", help="also delete the lab directory and its data")

    p = add("labs", cmd_labs, "list the labs on this machine and what they take; --prune removes the stale ones")
    p.add_argument("--prune", action="store_true", help="remove stopped temporary labs, labs whose owner died, "
                   "and data no lab uses")
    p.add_argument("--json", action="store_true")

    p = add("dsn", cmd_dsn, "print the lab datastore's full DSN, password included (for psql or mysql)")
    lab_dir(p)

    p = add("capture", cmd_capture, "capture the kine table into a DuckDB file (one snapshot per run)")
    p.add_argument("--dir", help="capture the datastore of this lab")
    p.add_argument("--dsn", help="capture a Postgres or MySQL datastore, read-only")
    p.add_argument("--sqlite", help="capture a Kine SQLite file, read-only")
    p.add_argument("--out", required=True, help="DuckDB file to create or append to")
    p.add_argument("--incremental", action="store_true", help="store only rows new since the previous snapshot")
    p.add_argument("--json", action="store_true")

    from .drive.kube import KUBE_MIXES
    from .drive.workload import MIXES

    def run_flags(p, rate, duration):
        lab_dir(p)
        p.add_argument("--out", required=True, help="DuckDB file for the results (and a capture of the table)")
        p.add_argument("--mix", default="configmaps", choices=sorted(set(MIXES) | set(KUBE_MIXES)))
        p.add_argument("--rate", type=float, default=rate, help="target operations per second, default "
                       + ("flat out" if rate is None else f"{rate:g}"))
        p.add_argument("--duration", type=float, default=duration, help="seconds")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--json", action="store_true")

    p = add("load", cmd_load, "drive a Kubernetes-shaped mix through the lab; record every acknowledged write")
    run_flags(p, None, 10.0)
    p.add_argument("--ops", type=int, help="stop after this many operations instead of --duration")
    p.add_argument("--through", default="kine", choices=["kine", "apiservers"],
                   help="kine: the replicas' etcd API (default); apiservers: the kube-apiservers, with the mixes "
                        f"{', '.join(KUBE_MIXES)}")
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
            "its default isolation level; fail over to the standby, or pause and resume WAL shipping to it "
            "(postgres-ha)")
    p.add_argument("action", choices=[*REPLICA_FAULTS, "db-stop", "db-start", "db-restart", "terminate", "slow",
                                      "isolation", "failover", "replication-pause", "replication-resume",
                                      "db-proxy-maxconn"])
    p.add_argument("--replica", type=int, help="the Kine replica, for kill, pause, resume and restart")
    p.add_argument("--component", help="or any component by name (kube-apiserver-0, postgres, ...), as `kinelab "
                   "status` lists them")
    p.add_argument("--level", choices=ISOLATION_LEVELS,
                   help="for isolation: the database's new default level")
    p.add_argument("--kine-version", help="for restart: start the replica on this Kine release (a rolling upgrade)")
    p.add_argument("--maxconn", type=int, help="for db-proxy-maxconn: connections per database server (0: no cap)")
    p.add_argument("--seconds", type=float, default=30, help="for slow: how long (default 30)")
    p.add_argument("--hold-ms", type=float, default=200, help="for slow: writes blocked this long ...")
    p.add_argument("--period-ms", type=float, default=250, help="... of every period (default 200 of 250 ms)")
    lab_dir(p)

    p = add("scenario", cmd_scenario, "run a scenario file (load with timed faults), store it in DuckDB and "
            "reconcile: writes lost, watch events missed, recovery times")
    p.add_argument("file", help="a scenario YAML file, e.g. scenarios/kill-one-of-three.yaml")
    p.add_argument("--dir", help="run against this running lab (default: start the scenario's own lab)")
    p.add_argument("--out", default="kinelab-scenario.duckdb", help="results file (default kinelab-scenario.duckdb)")
    p.add_argument("--kine-versions", metavar="V1,V2,...", help="run the scenario once per Kine release, oldest first "
                   "(every replica restarted on each in turn), all into --out, and print releases x anomalies")
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
            print(mask_text(traceback.format_exc()), file=sys.stderr, end="")
        return exc.exit_code
    except KeyboardInterrupt:
        print("kinelab: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
