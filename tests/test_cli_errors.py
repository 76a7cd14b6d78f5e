"""Bad input gets one line that says what to do, exit code 2, no traceback, no password, and no damage."""

import hashlib
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import duckdb
import psutil
import pytest

import kinelab as kl
from conftest import KINELAB, REPO, all_gone, lab_pids, read_model, run_cli, wait_until
from kinelab.errors import KinelabError
from kinelab.provision.process import free_port

SECRET = "Sekr3t-pw"  # in every DSN below: no output may show it


def assert_one_line_error(result, *fragments, code=2):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinelab: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr


def _sqlite_with_kine_table(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER, "
                 "deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, "
                 "old_value BLOB)")
    conn.execute("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value) "
                 "VALUES ('/registry/health', 1, 0, 0, 0, 0, x'7b7d')")
    conn.commit()
    conn.close()
    return path


def _sqlite_capture(path):
    kl.capture(_sqlite_with_kine_table(path.with_suffix(".db")), path)


def _stopped_lab(path):
    kl.Lab(1, "sqlite", dir=path).start().stop()


def _script(path, body):
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def lab(kine, tmp_path_factory):
    """The one running lab of this module, for the cases that need one; none of them may change it."""
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path_factory.mktemp("running-lab")) as lab:
        yield lab


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Files made once and copied into the cases that name them (built on first use)."""
    root = tmp_path_factory.mktemp("originals")

    def get(name, make):
        path = root / name
        if not path.exists():
            make(path)
        return path
    return get


class Workspace(dict):
    """The `{name}` placeholders of a case, each made in the case's own directory when the case names it."""

    def __init__(self, request, tmp, originals):
        super().__init__(tmp=str(tmp))
        self.request, self.tmp, self.originals = request, tmp, originals

    @property
    def lab(self):
        return self.request.getfixturevalue("lab")

    def __missing__(self, name):
        made = self.tmp / (name + ".duckdb" if name in ("cap", "labcap", "junk") else name)
        if name == "lab":
            made = self.lab.dir
        elif name == "pg":
            made = f"{self.lab.dsn.host}:{self.lab.dsn.port}"
        elif name == "free":
            made = free_port()
        elif name == "cap":  # a capture of a SQLite source
            shutil.copy(self.originals(made.name, _sqlite_capture), made)
        elif name == "labcap":  # a capture of the running lab: runs may append to it, a refused run must not
            shutil.copy(self.originals(made.name, lambda out: kl.capture(self.lab, out)), made)
        elif name == "stopped":
            self.request.getfixturevalue("kine")
            shutil.copytree(self.originals(name, _stopped_lab), made)
        elif name in ("nosecrets", "badsecrets"):
            made.mkdir()
            shutil.copy(Path(self["stopped"]) / "lab.json", made)
            if name == "badsecrets":
                (made / "secrets.json").write_text("{not json")
        elif name in ("garbled", "notmanifest"):
            made.mkdir()
            (made / "lab.json").write_text("{garbled" if name == "garbled" else "{}")
        elif name == "junk":
            made.write_bytes(os.urandom(64 * 1024))
        elif name == "src":
            _sqlite_with_kine_table(made)
        elif name == "nokine":
            sqlite3.connect(made).execute("CREATE TABLE other (x)").connection.commit()
        elif name == "file":
            made.write_text("neither a directory nor executable\n")
        elif name == "notkine":
            _script(made, "echo hello")
        elif name == "oldkine":
            _script(made, "echo 'kine version v0.10.3'")
        elif name == "empty":
            made.mkdir()
        else:
            raise KeyError(name)
        self[name] = str(made)
        return made


def _fingerprint(path):
    """A DuckDB file by content (opening one for writing rewrites its views), anything else by bytes."""
    if path.suffix == ".duckdb":
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error:
            pass
        else:
            with con:
                tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
                return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables}
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _state(ws, files):
    """These files and, if the case uses it, the running lab's revision and health."""
    state = {path: _fingerprint(path) for path in files}
    if "lab" in ws or "pg" in ws:
        state["lab"] = (ws.lab.client(0).revision(), [r["alive"] for r in ws.lab.status()["replicas"]])
    return state


# argv, env, exit code, what the one line must say (a string, or several); {name}: see Workspace
CASES = [
    # install
    ("install --kine-bin {tmp}/nope", {}, 2, "fix the path or unset it"),
    ("install", {"KINELAB_KINE_BIN": "{file}"}, 2, ("KINELAB_KINE_BIN=", "not an executable file")),
    ("install", {"KINELAB_KINE_BIN": "{notkine}"}, 2, ("is not Kine", "point KINELAB_KINE_BIN")),
    ("install", {"KINELAB_KINE_BIN": "{oldkine}", "PATH": "/usr/bin:/bin"}, 2, ("v0.10.3", "run `kinelab install`")),
    ("install", {"PATH": "{empty}", "KINELAB_CACHE": "{tmp}/cache", "KINELAB_KINE_BIN": ""}, 2,
     ("Go is missing", "install Go")),
    # the command line itself, and doctor
    ("", {}, 2, ("required: COMMAND", "see `kinelab --help`")),
    ("nosuchcommand", {}, 2, "invalid choice: 'nosuchcommand'"),
    ("doctor --jsn", {}, 2, ("unrecognized arguments: --jsn", "see `kinelab --help`")),
    # up
    ("up --replicas 0 --datastore sqlite --dir {tmp}/lab", {}, 2, "at least one Kine replica"),
    ("up --replicas abc --dir {tmp}/lab", {}, 2, ("invalid int value: 'abc'", "see `kinelab up --help`")),
    ("up --datastore oracle --dir {tmp}/lab", {}, 2, "use postgres, postgres-ha, sqlite, mysql, etcd, or a DSN"),
    (f"up --datastore postgres:/kine:{SECRET}@h/db --dir {{tmp}}/lab", {}, 2, "unknown datastore"),
    ("up --datastore sqlite --replicas 3 --dir {tmp}/lab", {}, 2, ("k3s-io/kine#499", "--allow-shared-sqlite")),
    ("up --kine-arg noequals --dir {tmp}/lab", {}, 2, "is not KEY=VALUE"),
    ("up --datastore sqlite --replicas 1 --kine-arg listen-address=0.0.0.0:2379 --dir {tmp}/lab", {}, 2,
     "--listen-address is set by kinelab"),
    ("up --datastore sqlite --replicas 1 --replica-arg 1:debug=true --dir {tmp}/lab", {}, 2, "with INDEX below 1"),
    ("up --mode sideways --dir {tmp}/lab", {}, 2, "invalid choice: 'sideways'"),
    ("up --datastore sqlite --replicas 1 --apiservers -1 --dir {tmp}/lab", {}, 2, "cannot be negative"),
    ("up --backend nosuch --dir {tmp}/lab", {}, 2, "invalid choice: 'nosuch'"),
    ("up --backend kind --workers -1 --dir {tmp}/lab", {}, 2, "--workers cannot be negative"),
    ("up --backend kind --name Not_A_Name --dir {tmp}/lab", {}, 2, "must be lowercase letters, digits and '-'"),
    ("up --backend kind --nodes 3 --dir {tmp}/lab", {}, 2, ("simulated nodes", "use --workers")),
    ("up --datastore sqlite --replicas 1 --workers 1 --dir {tmp}/lab", {}, 2, "worker nodes are kind's"),
    ("up --datastore sqlite --replicas 1 --name x --dir {tmp}/lab", {}, 2, "a cluster name and kubelet settings"),
    ("up --datastore sqlite --replicas 1 --base-port 70000 --dir {tmp}/lab", {}, 2, "choose a lower one"),
    ("up --datastore sqlite --replicas 1 --dir {file}/lab", {}, 2, "choose another --dir"),
    ("up --datastore sqlite --replicas 1 --dir {garbled}", {}, 2, "not a kinelab manifest; remove it"),
    # status, down, dsn
    ("status --dir {tmp}/never-was", {}, 2, "start one with `kinelab up --dir"),
    ("status --dir {garbled}", {}, 2, "not a kinelab manifest; remove it"),
    ("status --dir {badsecrets}", {}, 2, ("secrets.json is corrupt", "kinelab down --dir")),
    ("down --dir {tmp}/never-was", {}, 2, "nothing to stop"),
    ("down --dir {notmanifest}", {}, 2, "not a kinelab manifest; remove it"),
    ("dsn --dir {nosecrets}", {}, 2, ("secrets.json is missing", "restore it")),
    # capture
    ("capture --out {tmp}/c.duckdb", {}, 2, "name exactly one source"),
    ("capture --sqlite {src} --out {tmp}/missing/c.duckdb", {}, 2, "create it or choose another --out"),
    ("capture --sqlite {src} --out {junk}", {}, 2, ("not a readable DuckDB file", "choose another --out")),
    ("capture --sqlite {src} --out {cap}", {}, 2, ("holds data of", "use another --out")),
    ("capture --sqlite {tmp}/none.db --out {tmp}/c.duckdb", {}, 2, "pass the path of Kine's state.db"),
    ("capture --sqlite {nokine} --out {tmp}/c.duckdb", {}, 2, "point at the database Kine uses"),
    (f"capture --dsn postgres//kine:{SECRET}@h/db --out {{tmp}}/c.duckdb", {}, 2, "not a DSN"),
    (f"capture --dsn oracle://kine:{SECRET}@h/db --out {{tmp}}/c.duckdb", {}, 2, "kinelab reads postgres://"),
    (f"capture --dsn postgres://kine:{SECRET}@127.0.0.1:{{free}}/kubernetes --out {{tmp}}/c.duckdb", {}, 2,
     "check host, port, user and password"),
    (f"capture --dsn mysql://kine:{SECRET}@tcp(127.0.0.1:{{free}})/kubernetes --out {{tmp}}/c.duckdb", {}, 2,
     ("cannot connect to MySQL", "check host, port")),
    (f"capture --dsn postgres://kine:{SECRET}@{{pg}}/kubernetes --out {{tmp}}/c.duckdb", {}, 2,
     ("password authentication failed", "check host, port, user and password")),
    # load, watchlag, compaction: refused before the results file or the lab is touched
    ("load --dir {lab} --out {labcap} --mix nosuch", {}, 2, "invalid choice: 'nosuch'"),
    ("load --dir {lab} --out {labcap} --rate -5", {}, 2, "--rate must be positive"),
    ("load --dir {lab} --out {labcap} --rate 0", {}, 2, "without --rate writes flat out"),
    ("load --dir {lab} --out {labcap} --spread sideways", {}, 2, "use round-robin, random, or a replica index"),
    ("load --dir {lab} --out {labcap} --spread 7", {}, 2, "the lab has replicas 0..1"),
    ("load --dir {lab} --out {labcap} --ops 0", {}, 2, "--ops must be positive"),
    ("load --dir {lab} --out {labcap} --workers 0", {}, 2, "--workers must be positive"),
    ("load --dir {lab} --out {labcap} --duration -1", {}, 2, "--duration must be positive"),
    ("load --dir {lab} --out {cap} --ops 5", {}, 2, "use another --out"),
    ("load --dir {stopped} --out {labcap}", {}, 2, "start it with `kinelab up --dir"),
    ("watchlag --dir {lab} --out {labcap} --rate -1", {}, 2, "--rate must be positive"),
    ("compaction --dir {lab} --out {labcap} --rate -1", {}, 2, "--rate must be positive"),
    ("compaction --dir {lab} --out {labcap} --sample-every 0", {}, 2, "--sample-every must be positive"),
    ("compaction --dir {lab} --out {labcap} --method interval", {}, 2, "--kine-arg compact-interval=10s"),
    # check
    ("check --dir {lab} --baseline {tmp}/none.duckdb", {}, 2, "make one with `kinelab capture"),
    ("check --dir {lab} --baseline {junk}", {}, 2, "name a file made by `kinelab capture`"),
    ("check --dir {stopped}", {}, 2, "start it with `kinelab up --dir"),
    ("check --endpoints ,", {}, 2, "use HOST:PORT,HOST:PORT"),
    ("check --endpoints 127.0.0.1:{free}", {}, 2, ("no replica answered", "check the endpoints")),
    # fault
    ("fault kill --replica 9 --dir {lab}", {}, 2, "this lab has replicas 0..1"),
    ("fault kill --replica 0 --dir {stopped}", {}, 2, "start it with `kinelab up --dir"),
    ("fault explode --replica 0 --dir {lab}", {}, 2, "invalid choice: 'explode'"),
    # demo: an earlier capture at --out survives bad input
    ("demo --replicas 0 --out {cap}", {}, 2, "at least one Kine replica"),
    ("demo --datastore oracle --out {cap}", {}, 2, "use postgres, postgres-ha, sqlite, mysql, etcd, or a DSN"),
    ("demo --out {tmp}", {}, 2, "is a directory; name a file"),
]


def _case_id(case) -> str:
    argv, env = (case.values if hasattr(case, "values") else case)[:2]
    return " ".join([argv or "(none)", *(f"{k}={v}" for k, v in env.items())])


@pytest.mark.parametrize("argv, env, code, fragments", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(argv, env, code, fragments, request, tmp_path, originals):
    ws = Workspace(request, tmp_path, originals)
    argv = shlex.split(argv.format_map(ws))
    env = {"KINELAB_HOME": str(tmp_path / "home"), **{k: v.format_map(ws) for k, v in env.items()}}
    existing = [path for path in tmp_path.rglob("*") if path.is_file()]
    before = _state(ws, existing)
    fragments = (fragments,) if isinstance(fragments, str) else fragments
    assert_one_line_error(run_cli(*argv, env=env), *fragments, code=code)
    assert _state(ws, existing) == before, "bad input changed existing data"


def test_unreachable_dsn(kine, tmp_path):
    result = run_cli("up", "--replicas", 1, "--dir", tmp_path / "lab",
                     "--datastore", f"postgres://kine:{SECRET}@127.0.0.1:{free_port()}/kubernetes")
    assert_one_line_error(result, "cannot connect to Postgres", "check host, port")


def test_missing_go_and_no_kine_binary_for_up(tmp_path):
    env = {"PATH": str(tmp_path), "KINELAB_CACHE": str(tmp_path / "cache"), "KINELAB_KINE_BIN": ""}
    assert_one_line_error(run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", tmp_path / "lab",
                                  env=env), "Go is missing")


def test_port_in_use(kine, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", tmp_path / "lab",
                         "--base-port", port)
    assert_one_line_error(result, f"127.0.0.1:{port} is in use", "--base-port")


def test_verbose_adds_the_traceback(tmp_path):
    result = run_cli("-v", "status", "--dir", tmp_path / "never-was")
    assert result.returncode == 2 and "Traceback" in result.stderr and "UsageError" in result.stderr


def test_secrets_file_is_private(lab):
    assert stat.S_IMODE((lab.dir / "secrets.json").stat().st_mode) == 0o600


def _processes_of(lab_id, lab_dir) -> list:
    """Pids of processes naming the lab, also ones its manifest might have missed (Kine by its environment,
    Postgres by its data directory)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            if lab_id in cmdline or str(lab_dir) in cmdline or proc.environ().get("KINELAB_LAB_ID") == lab_id:
                found.append(proc.info["pid"])
        except psutil.Error:
            pass
    return found


def test_ctrl_c_during_up_exits_130_and_leaves_nothing_running(kine, tmp_path):
    lab_dir = tmp_path / "lab"
    proc = subprocess.Popen([*KINELAB, "up", "--replicas", "3", "--datastore", "postgres", "--dir", str(lab_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "KINELAB_PROGRESS": "0"})

    def starting_replicas():
        try:
            model = read_model(lab_dir)
        except (OSError, KinelabError):
            return None
        return model if model and model.state == "starting" and any(c.processes for c in model.replicas) else None

    try:
        model = wait_until(starting_replicas, timeout_s=120, interval_s=0.01, what="the first replica to start")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, (stdout, stderr)
        assert stderr.strip().splitlines() == ["kinelab: interrupted; everything it started has been stopped"]
        final = read_model(lab_dir)
        assert final.state == "stopped"
        assert all_gone(lab_pids(final) + _processes_of(model.id, lab_dir)), "the interrupted lab left a process"
    finally:  # whatever happened, nothing of this lab outlives the test
        proc.kill()
        proc.wait()
        run_cli("down", "--dir", lab_dir, "--purge")
