"""`kinelab`: a thin command line over the same calls the notebooks make.

Exit codes: 0 success, 1 a finding (e.g. a divergence), 2 bad input or environment, 130 interrupted.
Expected errors print one line; `-v` adds the details and the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
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
    table = Table("replica", "endpoint", "pid", "alive", "revision", "note", box=None,
                  title=f"lab {status['dir']} ({status['state']}) on {status['datastore'].get('dsn', '?')}, "
                        f"Kine {status.get('kine_version')}")
    for r in status["replicas"]:
        table.add_row(str(r["index"]), r["endpoint"], str(r["pid"]), "yes" if r["alive"] else "[red]no[/]",
                      str(r.get("revision", "")), r.get("last_log_line", "") or r.get("error", ""))
    return table


def cmd_up(args) -> int:
    from .provision.lab import Lab

    lab = Lab(replicas=args.replicas, datastore=args.datastore, dir=_dir(args), kine_bin=args.kine_bin,
              kine_args=_kv(args.kine_arg, "--kine-arg"), replica_args=_replica_args(args.replica_arg, args.replicas),
              allow_shared_sqlite=args.allow_shared_sqlite, base_port=args.base_port)
    lab.start(owned=False)
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
    from .provision.lab import Lab, purge, read_manifest, teardown, write_manifest

    path = _dir(args).resolve()
    manifest = read_manifest(path)
    if manifest is None:
        raise UsageError(f"no lab in {path}: nothing to stop (already removed?)")
    stopped = teardown(manifest)
    manifest["state"] = "stopped"
    write_manifest(path, manifest)
    if args.purge:
        purge(path)
    out.print(f"stopped {stopped} process(es) of the lab in {path}" + ("; removed it" if args.purge else ""))
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
        from .provision.lab import Lab

        source = Lab.attach(args.dir).dsn
    elif args.dsn:
        source = Dsn.parse(args.dsn)
    else:
        source = Dsn.sqlite(Path(args.sqlite))
    snap = capture(source, args.out, incremental=args.incremental)
    if args.json:
        _print_json(snap.to_json())
    else:
        out.print(f"snapshot {snap.snapshot_id} ({snap.mode}) -> {snap.path}: {snap.row_count} rows in the table, "
                  f"{snap.rows_stored} stored, {snap.removed} removed since the last snapshot, max id {snap.max_id}, "
                  f"compact revision {snap.compact_revision}, {snap.duration_s:.2f}s")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(replicas=args.replicas, datastore=args.datastore, out=args.out, seed=args.seed, console=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinelab", description="See how Kine behaves when replicas share a database.")
    parser.add_argument("--version", action="version", version=f"kinelab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show details and tracebacks of errors")
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
    p.add_argument("--base-port", type=int, help="use consecutive ports from here instead of free ones")
    p.add_argument("--allow-shared-sqlite", action="store_true",
                   help="allow several replicas on one SQLite file (unsupported, k3s-io/kine#499; for the lesson)")
    p.add_argument("--kine-bin", help="use this Kine binary (also KINELAB_KINE_BIN)")
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

    p = add("demo", cmd_demo, "3 replicas on embedded Postgres, a seeded burst of writes, a capture, a summary")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--datastore", default="postgres")
    p.add_argument("--out", default="kinelab-demo.duckdb", help="where to keep the capture")
    p.add_argument("--seed", type=int, default=1)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
