"""Faults in a running lab, by name, so that a scenario or `kinelab fault` can inject them.

Replica faults are the lab's own (`kill`, `pause`, `resume`, `restart`). Database faults act on the
server behind every replica:

  db-stop / db-start / db-restart   an orderly shutdown and start of the server kinelab runs, same data
  terminate                         end Kine's sessions (Postgres pg_terminate_backend, MySQL KILL CONNECTION)
  slow                              hold a write lock on the kine table for `hold_ms` of every `period_ms`
                                    (what a slow disk or a long-running migration looks like to Kine)
  isolation                         set the database's default isolation level, then end Kine's sessions so
                                    that their new connections pick it up
  failover                          postgres-ha: kill the primary, promote the standby, repoint Kine
  replication-pause / -resume       postgres-ha: stop (SIGSTOP) and resume the primary's WAL senders, so the
                                    standby falls behind: an async primary keeps acknowledging, a sync one waits
  db-proxy-maxconn                  cap the database proxy's connections per server (maxconn; 0: no cap),
                                    switching the breaker on or off mid-run

They connect with the lab's own DSN (Kine's role owns its database), so they also work on a database
kinelab did not start, except for the server start and stop.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..db import connect_mysql, connect_postgres
from ..errors import DatastoreError, UsageError

ISOLATION_LEVELS = ("read-uncommitted", "read-committed", "repeatable-read", "serializable")


def _sql_connection(lab):
    dsn = lab.dsn
    if dsn.kind == "postgres":
        conn = connect_postgres(dsn)
        conn.autocommit = True
        return conn
    if dsn.kind == "mysql":
        return connect_mysql(dsn)
    raise UsageError("database faults need a Postgres or MySQL datastore; SQLite has no server or sessions")


def terminate_connections(lab) -> int:
    """End every session Kine holds on its database (not this one); returns how many were ended."""
    conn = _sql_connection(lab)
    try:
        if lab.dsn.kind == "postgres":
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND usename = current_user AND pid <> pg_backend_pid()").fetchall()
            return sum(1 for (ended,) in rows if ended)
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = database() AND "
                        "user = SUBSTRING_INDEX(current_user(), '@', 1) AND id <> connection_id()")
            sessions = [row[0] for row in cur.fetchall()]
            for session in sessions:
                try:
                    cur.execute(f"KILL CONNECTION {int(session)}")
                except Exception as exc:  # the session may have ended between the list and the kill
                    if "Unknown thread" not in str(exc):
                        raise
            return len(sessions)
    finally:
        conn.close()


def set_isolation(lab, level: str) -> str:
    """Make `level` the database's default isolation level and end Kine's sessions, so every new connection
    uses it. Returns the level the server now reports for a new session."""
    if level not in ISOLATION_LEVELS:
        raise UsageError(f"unknown isolation level {level!r}: use {', '.join(ISOLATION_LEVELS)}")
    words = level.replace("-", " ")
    conn = _sql_connection(lab)
    try:
        if lab.dsn.kind == "postgres":
            from psycopg import sql

            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = {}").format(
                sql.Identifier(lab.dsn.database), sql.Literal(words)))
        else:
            with conn.cursor() as cur:
                cur.execute(f"SET GLOBAL TRANSACTION ISOLATION LEVEL {words.upper()}")
    finally:
        conn.close()
    terminate_connections(lab)
    _await_fresh_connections(lab)
    return current_isolation(lab)


def _await_fresh_connections(lab, reads: int = 5) -> None:
    """Wait until every replica has served `reads` reads in a row: each pooled connection that was ended
    fails one query before Kine's pool drops it, and the next run should not count those failures."""
    from ..etcd import EtcdError
    from ..provision.wait import poll_until

    for index in range(lab.replica_count):
        client = lab.client(index)
        poll_until(lambda: all(client.revision() for _ in range(reads)), timeout_s=30,
                   what=f"replica {index} to read on fresh connections", transient=(EtcdError,))


def current_isolation(lab) -> str:
    """The default isolation level a new session on the lab's database gets, e.g. 'read-committed'."""
    conn = _sql_connection(lab)
    try:
        if lab.dsn.kind == "postgres":
            value = conn.execute("SHOW transaction_isolation").fetchall()[0][0]
        else:
            with conn.cursor() as cur:  # MariaDB before 11.1 names it tx_isolation
                cur.execute("SHOW VARIABLES WHERE Variable_name IN ('transaction_isolation', 'tx_isolation')")
                value = cur.fetchall()[0][1]
    finally:
        conn.close()
    return value.lower().replace(" ", "-").replace("_", "-")


class SlowDatabase:
    """Writes to the kine table wait: a background session holds a lock that blocks inserts (reads go on)
    for `hold_ms` of every `period_ms`, until stopped."""

    def __init__(self, lab, hold_ms: float = 200, period_ms: float = 250):
        if not 0 < hold_ms <= period_ms:
            raise UsageError("slow database: hold_ms must be positive and at most period_ms")
        self.lab, self.hold_s, self.gap_s = lab, hold_ms / 1000, (period_ms - hold_ms) / 1000
        self._stop, self._first_lock = threading.Event(), threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.locks_held = 0
        self.error: Optional[BaseException] = None

    def _lock_statements(self) -> tuple:
        if self.lab.dsn.kind == "postgres":  # SHARE mode conflicts with the inserts' ROW EXCLUSIVE, not with reads
            return "BEGIN", "LOCK TABLE kine IN SHARE MODE", "COMMIT"
        return None, "LOCK TABLES kine READ", "UNLOCK TABLES"

    def _run(self) -> None:
        begin, lock, release = self._lock_statements()
        conn = _sql_connection(self.lab)
        try:
            cur = conn.cursor()
            while not self._stop.is_set():
                if begin:
                    cur.execute(begin)
                cur.execute(lock)
                self.locks_held += 1
                self._first_lock.set()
                self._stop.wait(self.hold_s)
                cur.execute(release)
                self._stop.wait(self.gap_s)
        except BaseException as exc:  # reported by stop(): a fault that silently ends would mislead
            self.error = exc
        finally:
            self._first_lock.set()
            conn.close()

    def start(self) -> "SlowDatabase":
        """Returns once the first lock is held, so the database is slow from here on."""
        self._thread = threading.Thread(target=self._run, name="kinelab-slow-db", daemon=True)
        self._thread.start()
        self._first_lock.wait(timeout=10)
        if self.error is not None:
            raise DatastoreError(f"cannot slow the database: {str(self.error).splitlines()[0]}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "SlowDatabase":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultInjector:
    """Injects faults by name into one lab, keeping the state some of them need (a slow-database session)."""

    def __init__(self, lab):
        self.lab = lab
        self.slow: Optional[SlowDatabase] = None
        self.actions: dict = {
            "kill": lambda replica: lab.kill(_replica(replica)),
            "pause": lambda replica: lab.pause(_replica(replica)),
            "resume": lambda replica: lab.resume(_replica(replica)),
            "restart": lambda replica, kine_version=None: lab.restart(_replica(replica), kine_version=kine_version),
            "db-stop": lambda: lab.stop_datastore(),
            "db-start": lambda: lab.start_datastore(),
            "db-restart": lambda: lab.restart_datastore(),
            "terminate": lambda: f"{terminate_connections(lab)} sessions ended",
            "failover": lambda: lab.failover(),
            "replication-pause": lambda: lab.pause_replication(),
            "replication-resume": lambda: lab.resume_replication(),
            "db-proxy-maxconn": lambda maxconn: lab.limit_db_proxy(int(maxconn)),
            "isolation": lambda level: f"now {set_isolation(lab, level)}",
            "slow": self._slow,
            "slow-stop": self._slow_stop,
        }

    @property
    def names(self) -> tuple:
        return tuple(self.actions)

    def inject(self, fault: str, **args) -> str:
        """Run `fault` with its arguments (replica=, level=, hold_ms=, period_ms=, maxconn=); returns a short
        detail."""
        action: Optional[Callable] = self.actions.get(fault)
        if action is None:
            raise UsageError(f"unknown fault {fault!r}: use {', '.join(self.actions)}")
        try:
            detail = action(**args)
        except TypeError as exc:
            raise UsageError(f"fault {fault!r}: {exc}") from exc
        return detail or ""

    def _slow(self, hold_ms: float = 200, period_ms: float = 250) -> str:
        self._slow_stop()
        self.slow = SlowDatabase(self.lab, hold_ms, period_ms).start()
        return f"writes blocked {hold_ms:g} ms of every {period_ms:g} ms"

    def _slow_stop(self) -> str:
        if self.slow is None:
            return "not slowed"
        self.slow.stop()
        held, error, self.slow = self.slow.locks_held, self.slow.error, None
        return f"{held} locks held" + (f"; lock session failed: {error}" if error else "")

    def close(self) -> None:
        self._slow_stop()


def _replica(replica):
    """A Kine replica's index, or any component's name (kube-apiserver-0)."""
    if replica is None:
        raise UsageError("this fault needs a replica index or a component name (replica: N)")
    return int(replica) if isinstance(replica, int) or str(replica).isdigit() else str(replica)
