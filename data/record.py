"""Record the replay datasets in data/ from real runs, as the notebooks measure them live.

    .venv/bin/python data/record.py              # every dataset (about 3 minutes; needs Kine, Postgres and,
                                                 # for deployment-modes, kube-apiserver)
    .venv/bin/python data/record.py watch-lag    # only some: quickstart mvcc compaction watch-lag
                                                 # deployment-modes consistency sqlite-state troubleshooting
                                                 # versions (needs every Kine release notebook 09 compares)
                                                 # high-availability cluster-writes (needs the control
                                                 # plane's binaries: kinelab up --nodes 1)

Each run uses the notebook's default parameters. What a notebook measures that no capture table holds (the
acknowledged writes of a burst, reads at old revisions, check reports, apiserver probes) is stored as one `runs`
row with `kinelab.show.replay.record`. Files are rewritten with 16 KiB DuckDB blocks (the default 256 KiB
blocks make even an empty capture 800 KB); data/datasets.json and data/README.md are rewritten to match.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import duckdb

import kinelab as kl
from kinelab.db import connect_postgres
from kinelab.drive.workload import burst, run_load
from kinelab.observe import runs
from kinelab.observe.apiprobe import apiserver_watch_lag, availability
from kinelab.observe.check import check
from kinelab.show import replay

DATA = Path(__file__).resolve().parent
BLOCK_SIZE = 16384


def _entry(notebook: str, lab, parameters: dict, contents: str, group: str) -> dict:
    return {"notebook": notebook, "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kine_version": lab.model.versions["kine"], "datastore": lab.model.datastore_kind,
            "replicas": lab.replica_count, "parameters": parameters, "contents": contents,
            "command": f".venv/bin/python data/record.py {group}"}


def quickstart(work: Path) -> dict:
    parameters = {"replicas": 1, "datastore": "sqlite", "seed": 1}
    out = work / "quickstart.duckdb"
    with kl.Lab(replicas=1, datastore="sqlite") as lab:
        writes = burst([lab.client(0)], seed=1)
        current = lab.client(0).get(writes[0].key)
        kl.capture(lab, out)
        entry = _entry("01-quickstart", lab, parameters, "a capture after `burst(seed=1)`; runs row "
                       "`01-quickstart`: the acknowledged writes and a read of the first key", "quickstart")
    replay.record(out, "01-quickstart", writes=writes, current=current)
    return {"quickstart.duckdb": (out, entry)}


def mvcc(work: Path) -> dict:
    parameters = {"datastore": "sqlite", "updates": 3}
    key, out = "/registry/configmaps/default/mvcc-demo", work / "mvcc.duckdb"
    with kl.Lab(replicas=1, datastore="sqlite") as lab:
        client = lab.client(0)
        revisions = [client.create(key, b"v0").revision]
        for i in range(1, parameters["updates"] + 1):
            revisions.append(client.update(key, f"v{i}".encode(), mod_revision=revisions[-1]).revision)
        tombstone = client.delete(key, mod_revision=revisions[-1]).revision
        recreated = client.create(key, b"again").revision
        kl.capture(lab, out)
        old = {r: client.get(key, revision=r).value for r in revisions}
        stale = client.update(key, b"lost update", mod_revision=revisions[0])
        entry = _entry("02-revisions-and-mvcc", lab, parameters, "a capture of one key's chain; runs row "
                       "`02-revisions-and-mvcc`: its revisions, a read at each, and a stale update", "mvcc")
    replay.record(out, "02-revisions-and-mvcc", updates=parameters["updates"], revisions=revisions,
                  tombstone=tombstone, recreated=recreated, old=old, stale=stale)
    return {"mvcc.duckdb": (out, entry)}


def compaction(work: Path) -> dict:
    # Half the notebook's default rate: the three files are most of data/, and 60 writes/s shows the same.
    parameters = {"duration_s": 6, "rate": 60, "min_retain": 0, "sample_every_s": 1.5, "compact_every_s": 2}
    made = {}
    for method, extra in [("none", {}), ("explicit", {}), ("interval", {"compact-interval": "2s"})]:
        out = work / f"compaction-{method}.duckdb"
        with kl.Lab(replicas=2, datastore="postgres",
                    kine_args={"compact-min-retain": parameters["min_retain"], **extra}) as lab:
            runs.compaction(lab, out, method=method, duration_s=parameters["duration_s"],
                            sample_every_s=parameters["sample_every_s"], compact_every_s=parameters["compact_every_s"],
                            rate=parameters["rate"])
            made[out.name] = (out, _entry("03-compaction", lab, {**parameters, "method": method, **extra},
                                          f"`runs.compaction(method={method!r})` at 60 writes/s (half "
                                          "the notebook's default, to keep data/ small): timeline, checks, captures",
                                          "compaction"))
    return made


def watch_lag(work: Path) -> dict:
    parameters = {"replicas": 3, "rate": 30, "duration_s": 6, "idle_s": 0.5}
    out = work / "watch-lag.duckdb"
    with kl.Lab(replicas=3, datastore="postgres") as lab:
        for spread in (0, "round-robin"):
            runs.watch_lag(lab, out, rate=parameters["rate"], duration_s=parameters["duration_s"], spread=spread,
                           idle_s=parameters["idle_s"])
        entry = _entry("04-watch-lag-across-replicas", lab, parameters, "two `runs.watch_lag` runs with a watch "
                       "on every replica: run 1 writes pinned to replica 0, run 2 round-robin", "watch-lag")
    return {out.name: (out, entry)}


def deployment_modes(work: Path) -> dict:
    parameters = {"replicas": 3, "apiservers": 2, "writes": 12, "duration_s": 8.0, "kill_at_s": 2.0,
                  "watch_cache": True}
    out, lag, served = work / "deployment-modes.duckdb", {}, {}
    for mode in ("shared-db", "single-kine", "hybrid"):
        with kl.Lab(replicas=parameters["replicas"], datastore="postgres", apiservers=parameters["apiservers"],
                    mode=mode, apiserver_args={"watch-cache": parameters["watch_cache"]}) as lab:
            lag[mode] = apiserver_watch_lag(lab, writes=parameters["writes"])
            killed = []

            def kill_replica_0(t):
                if t >= parameters["kill_at_s"] and not killed:
                    lab.kill(0)
                    killed.append(t)

            served[mode] = availability(lab, duration_s=parameters["duration_s"], during=kill_replica_0)
            entry = _entry("05-deployment-modes", lab, parameters, "runs row `05-deployment-modes`: apiserver watch "
                           "lag and write attempts in each mode (Kine replica 0 killed)", "deployment-modes")
    replay.record(out, "05-deployment-modes", lag=lag, served=served, apiservers=parameters["apiservers"],
                  kill_at_s=parameters["kill_at_s"], watch_cache=parameters["watch_cache"])
    return {out.name: (out, entry)}


def consistency(work: Path) -> dict:
    parameters = {"checks": 5, "rate": 80}
    out = work / "consistency.duckdb"
    with kl.Lab(replicas=3, datastore="postgres") as lab:
        clients = [lab.client(i) for i in range(3)]
        stop = threading.Event()
        loader = threading.Thread(target=run_load, args=(clients, "configmaps"),
                                  kwargs={"rate": parameters["rate"], "duration_s": 120, "stop": stop}, daemon=True)
        loader.start()
        healthy = [check(lab.endpoints, lab.dsn) for _ in range(parameters["checks"])]
        stop.set()
        loader.join()
        key = "/registry/configmaps/default/edited"
        first = clients[0].create(key, b"original").revision
        clients[1].update(key, b"newer", mod_revision=first)
        with connect_postgres(lab.datastore.admin_dsn, database="kubernetes") as conn:
            conn.execute("UPDATE kine SET value = 'forged' WHERE id = %s", (first,))
            conn.commit()
        tampered = check(lab.endpoints, lab.dsn)
        with kl.Lab(replicas=1, datastore="sqlite") as stray:
            stray.client(0).create("/registry/configmaps/default/elsewhere", b"x")
            split = check(lab.endpoints + stray.endpoints, lab.dsn)
        entry = _entry("07-consistency-check", lab, parameters, "runs row `07-consistency-check`: the check "
                       "reports (healthy under load, a forged row, a stray replica)", "consistency")
    replay.record(out, "07-consistency-check", healthy=healthy, first=first, tampered=tampered, split=split)
    return {out.name: (out, entry)}


def sqlite_state(work: Path) -> dict:
    parameters = {"configmaps": 60, "nodes": 10, "events": 40}
    out = work / "sqlite-state.db"
    with kl.Lab(replicas=1, datastore="sqlite") as lab:
        burst([lab.client(0)], **parameters)
        source = sqlite3.connect(lab.dsn.path)
        target = sqlite3.connect(out)
        source.backup(target)  # a consistent copy, WAL included
        source.close()
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        target.execute("VACUUM")
        target.close()
        entry = _entry("08-investigate-your-datastore", lab, parameters, "Kine's own SQLite file (a k3s "
                       "`state.db`) after `burst(configmaps=60, nodes=10, events=40)`", "sqlite-state")
    return {out.name: (out, entry)}


def _run_notebook(stem: str, work: Path, **parameters) -> dict:
    """Run notebooks/<stem>.ipynb with papermill in `work`, which is its `out_dir` (where its results files go);
    the defaults of its other parameters, as the notebook writes them."""
    import papermill

    notebook = DATA.parent / "notebooks" / f"{stem}.ipynb"
    papermill.execute_notebook(str(notebook), str(work / f"{stem}.ipynb"), kernel_name="python3", progress_bar=False,
                               parameters={"out_dir": str(work), **parameters}, cwd=str(work))
    return {name: value["default"] for name, value in papermill.inspect_notebook(str(notebook)).items()
            if name not in ("mode", "out_dir")}


def troubleshooting(work: Path) -> dict:
    """Notebook 06 records itself: run live with papermill, its scenario files kept in `work`."""
    defaults = _run_notebook("06-troubleshooting", work, mode="live")
    meta = {"notebook": "06-troubleshooting", "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kine_version": kl.install_kine().version, "datastore": "postgres", "replicas": 3,
            "parameters": defaults, "command": ".venv/bin/python data/record.py troubleshooting"}
    contents = {"troubleshooting-pool-unlimited.duckdb": "scenario run `pool-unlimited`: the `creates` mix flat "
                f"out with no --datastore-max-open-connections on a Postgres with max_connections="
                f"{defaults['max_connections']}",
                "troubleshooting-pool-small.duckdb": f"scenario run `pool-small`: the same with the cap at "
                f"{defaults['small_cap']}",
                "troubleshooting-slow.duckdb": "scenario runs `calm`, `slowed` (the `slow` fault from 2 s) and "
                f"`isolation` (the heartbeat mix after the `isolation` fault set {defaults['isolation']})"}
    return {name: (work / name, {**meta, "contents": text}) for name, text in contents.items()}


def versions(work: Path) -> dict:
    """Notebook 09 records itself too: run live with papermill (every release in its `versions` installed), its
    results files kept in `work`."""
    parameters = _run_notebook("09-did-this-release-lose-writes", work, mode="live")
    defaults = {name: json.loads(parameters[name]) for name in ("versions", "scenarios")}
    meta = {"notebook": "09-did-this-release-lose-writes",
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kine_version": ", ".join(defaults["versions"]), "datastore": "postgres", "replicas": 3,
            "parameters": defaults, "command": ".venv/bin/python data/record.py versions"}
    return {f"versions-{name}.duckdb": (work / f"versions-{name}.duckdb", {
        **meta, "contents": f"scenario `{name}` (scenarios/{name}.yaml) run once per release, the lab's replicas "
                            "restarted on each in turn: writes, errors, metrics, captures, run_replicas"})
        for name in defaults["scenarios"]}


def high_availability(work: Path) -> dict:
    """Notebook 10 records itself, like 06: live with papermill, with its defaults (async replication, Kine through
    the multi-host DSN). Its part 3 (the breaker) runs live only: a file of its own would not fit data/'s budget."""
    used = {name: value.strip('"') for name, value in _run_notebook("10-high-availability", work).items()}
    name = f"ha-failover-{used['replication']}-{used['path']}.duckdb"
    meta = {"notebook": "10-high-availability", "kine_version": kl.install_kine().version,
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "datastore": "postgres-ha",
            "replicas": 3, "parameters": used, "command": ".venv/bin/python data/record.py high-availability",
            "contents": f"scenario run `failover-{used['replication']}-{used['path']}`: creates at {used['rate']}/s, "
                        f"the standby lagging {used['lag_s']} s, then the failover; runs row `10-high-availability`: "
                        "the Kine balancer's connections before and after a replica kill"}
    return {name: (work / name, meta)}


def cluster_writes(work: Path) -> dict:
    """Notebook 11 records itself, like 10: live with papermill and its defaults (10, 50 and 200 simulated
    nodes), with the kinelab commit and the Kubernetes version it ran."""
    import subprocess

    from kinelab.provision.apiserver import APISERVER_VERSION

    used = _run_notebook("11-what-a-cluster-writes", work, mode="live")
    commit = subprocess.run(["git", "-C", str(DATA.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"notebook": "11-what-a-cluster-writes", "kine_version": kl.install_kine().version,
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "datastore": "postgres",
            "replicas": 2, "parameters": used, "command": ".venv/bin/python data/record.py cluster-writes",
            "kinelab_commit": commit, "kube_apiserver_version": APISERVER_VERSION,
            "contents": "runs rows `11-what-a-cluster-writes`, one per node count: rows per second by resource and "
                        "writer at rest and during a rollout, node lease renewals, each apiserver's watch lag"}
    return {"cluster-writes.duckdb": (work / "cluster-writes.duckdb", meta)}


GROUPS = {"quickstart": quickstart, "mvcc": mvcc, "compaction": compaction, "watch-lag": watch_lag,
          "deployment-modes": deployment_modes, "consistency": consistency, "sqlite-state": sqlite_state,
          "troubleshooting": troubleshooting, "versions": versions, "high-availability": high_availability,
          "cluster-writes": cluster_writes}


def publish(source: Path, name: str) -> None:
    """Copy a recording into data/: DuckDB files are rewritten with small blocks, other files copied."""
    target, partial = DATA / name, DATA / (name + ".partial")
    partial.unlink(missing_ok=True)
    if name.endswith(".duckdb"):
        con = duckdb.connect()
        con.execute(f"ATTACH '{source}' AS recorded (READ_ONLY)")
        con.execute(f"ATTACH '{partial}' AS small (BLOCK_SIZE {BLOCK_SIZE})")
        con.execute("COPY FROM DATABASE recorded TO small")
        con.close()
    else:
        partial.write_bytes(source.read_bytes())
    os.replace(partial, target)


README = """# data/: replay datasets

Small files recorded from real runs by [`record.py`](record.py), so every notebook can run where Kine cannot
start: `papermill notebooks/NB.ipynb out.ipynb -p mode replay`. A replaying notebook works on a temporary copy
(`kinelab.show.replay.dataset`), titles every chart `REPLAY of data/<file>, recorded <date> ...`, and still
asserts its lesson's claim against the recorded measurement. The `.duckdb` files follow the capture contract of
the top-level README; what a notebook measured that no table holds is one `runs` row of the notebook's name
(JSON, read back with `kinelab.show.replay.summary`). [`datasets.json`](datasets.json) is the same record,
read by the replay labels. Re-record with `.venv/bin/python data/record.py [GROUP...]` (this file is rewritten).

| file | notebook | recorded (UTC) | Kine | datastore | replicas | size | command |
| --- | --- | --- | --- | --- | ---: | ---: | --- |
{rows}

Values are those of the recorded runs: Kubernetes-shaped protobuf values of 0.2-6 KB (the `configmaps` mix
writes 0.5-2 KB), stored uncompressed.

## What each holds, and its parameters

{details}
"""


def write_readme(manifest: dict) -> None:
    rows, details = [], []
    for name, e in sorted(manifest.items()):
        size = (DATA / name).stat().st_size
        rows.append(f"| `{name}` | `{e['notebook']}` | {e['recorded_at'].replace('T', ' ')[:16]} | "
                    f"{e['kine_version']} | {e['datastore']} | {e['replicas']} | {size / 1024:,.0f} KB | "
                    f"`{e['command']}` |")
        details.append(f"- `{name}`: {e['contents']}; parameters `{json.dumps(e['parameters'])}`")
    total = sum((DATA / name).stat().st_size for name in manifest)
    rows.append(f"| total | | | | | | {total / 1024:,.0f} KB | |")
    (DATA / "README.md").write_text(README.format(rows="\n".join(rows), details="\n".join(details)))


def main(groups: list) -> None:
    unknown = set(groups) - set(GROUPS)
    if unknown:
        sys.exit(f"unknown datasets {', '.join(sorted(unknown))}: choose from {', '.join(GROUPS)}")
    manifest_path = DATA / replay.MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="kinelab-record-") as work:
        for group in groups or GROUPS:
            print(f"recording {group}...", flush=True)
            for name, (source, entry) in GROUPS[group](Path(work)).items():
                publish(source, name)
                manifest[name] = entry
                manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    write_readme(manifest)


if __name__ == "__main__":
    main(sys.argv[1:])
