"""Connections to the SQL databases behind Kine, with errors a user can act on.

`read_only` connections are what kinelab uses on a user's datastore: every statement runs inside a
READ ONLY transaction, so a production database cannot be written to through them.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path

from .dsn import Dsn, mask_text
from .errors import DatastoreError


def _hint(dsn: Dsn) -> str:
    return f"check host, port, user and password in {dsn.masked}"


def connect_postgres(dsn: Dsn, *, database: str | None = None, read_only: bool = False, timeout_s: int = 5):
    import psycopg

    try:
        pairs = [(dsn.host, dsn.port), *dsn.fallbacks]  # a multi-host DSN: libpq tries each in turn
        extra = {k: v for k, v in dsn.params.items() if k == "target_session_attrs"}
        conn = psycopg.connect(host=",".join(h for h, _ in pairs), port=",".join(str(p) for _, p in pairs),
                               user=dsn.user, password=dsn.password, dbname=database or dsn.database,
                               connect_timeout=timeout_s, application_name="kinelab", **extra)
    except psycopg.OperationalError as exc:
        reason = mask_text(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        raise DatastoreError(f"cannot connect to Postgres {dsn.masked}: {reason}; {_hint(dsn)}") from exc
    if read_only:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def connect_mysql(dsn: Dsn, *, database: str | None = None, read_only: bool = False, timeout_s: int = 5,
                  unix_socket: str | None = None, streaming: bool = False):
    import pymysql
    import pymysql.cursors

    kwargs = dict(user=dsn.user, password=dsn.password, database=database if database is not None else dsn.database,
                  connect_timeout=timeout_s, autocommit=not read_only, charset="utf8mb4",
                  cursorclass=pymysql.cursors.SSCursor if streaming else pymysql.cursors.Cursor)
    if unix_socket:
        kwargs["unix_socket"] = unix_socket
    else:
        kwargs.update(host=dsn.host, port=dsn.port)
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise DatastoreError(f"cannot connect to MySQL {dsn.masked}: {mask_text(str(reason))}; {_hint(dsn)}") from exc
    return conn


def connect_sqlite(path: Path, *, read_only: bool = True) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise DatastoreError(f"no SQLite database at {path}; pass the path of Kine's state.db")
    mode = "ro" if read_only else "rw"
    try:
        # the capture reads in a helper thread, one thread at a time
        conn = sqlite3.connect(f"file:{path.resolve()}?mode={mode}", uri=True, timeout=30, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise DatastoreError(f"{path} is not a readable SQLite database ({exc})") from exc
    return conn


@contextmanager
def read_only_connection(dsn: Dsn):
    """One READ ONLY transaction on any of the three engines, consistent for its whole life."""
    if dsn.kind == "postgres":
        conn = connect_postgres(dsn, read_only=True)
    elif dsn.kind == "mysql":
        conn = connect_mysql(dsn, read_only=True, streaming=True)
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    else:
        conn = connect_sqlite(Path(dsn.path))
        conn.execute("BEGIN")  # a read transaction pins one snapshot of the WAL
    try:
        yield conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def table_bytes(dsn: Dsn) -> int:
    """The kine table's size as the database itself reports it (Postgres: table, indexes and TOAST;
    MySQL: InnoDB's data + index estimate; SQLite: the whole file's pages)."""
    query = {"postgres": "SELECT pg_total_relation_size('kine')",
             "mysql": "SELECT data_length + index_length FROM information_schema.tables "
                      "WHERE table_schema = DATABASE() AND table_name = 'kine'",
             "sqlite": "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"}[dsn.kind]
    with read_only_connection(dsn) as conn:
        cur = conn.cursor()
        cur.execute(query)
        value = cur.fetchall()[0][0]
        cur.close()
    return int(value or 0)
