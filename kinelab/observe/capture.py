"""Capture Kine's `kine` table into DuckDB, one snapshot per run.

The source is read in one READ ONLY, repeatable-read transaction, streamed in batches through Arrow
with an explicit schema (DuckDB's own sqlite/postgres scanners are not used: their extensions cannot be
downloaded everywhere, and Kine's SQLite schema declares types DuckDB's scanner rejects).

An incremental capture stores only rows it has not seen. To notice compaction cheaply it reads just the
ids up to the previous snapshot's max id: ids that vanished are recorded in `kine_removed`, and ids
that appeared below that max (a slow transaction that committed late, a gap fill) are fetched whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import duckdb
import pyarrow as pa

from .. import progress
from ..db import read_only_connection
from ..dsn import Dsn
from ..errors import CaptureError, DatastoreError
from ..k8s import decode_value
from .store import open_store

COLUMNS = ("id", "name", "created", "deleted", "create_revision", "prev_revision", "lease", "value", "old_value")
ROW_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("created", pa.int32()),
                        ("deleted", pa.int32()), ("create_revision", pa.int64()), ("prev_revision", pa.int64()),
                        ("lease", pa.int64()), ("value", pa.binary()), ("old_value", pa.binary())])
DECODED_SCHEMA = pa.schema([("id", pa.int64()), ("encoding", pa.string()), ("api_version", pa.string()),
                            ("kind", pa.string())])
BATCH_ROWS = 5000
ID_CHUNK = 1000


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    mode: str
    max_id: int
    compact_revision: int
    row_count: int
    rows_stored: int
    removed: int
    duration_s: float
    path: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


class KineTable:
    """Read access to a `kine` table inside one read-only transaction, whatever the engine."""

    def __init__(self, dsn: Dsn, conn):
        self.dsn, self.conn = dsn, conn
        self.placeholder = "?" if dsn.kind == "sqlite" else "%s"

    def _scalar(self, sql: str, params=()):
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchone()[0]
        finally:
            cur.close()

    def check_exists(self) -> None:
        probe = {"postgres": "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'kine' "
                             "AND schemaname = ANY (current_schemas(false))",
                 "mysql": "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                          "AND table_name = 'kine'",
                 "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kine'"}[self.dsn.kind]
        if not self._scalar(probe):
            raise DatastoreError(f"no kine table in {self.dsn.masked}: point at the database Kine uses "
                                 "(Kine's default is 'kubernetes')")

    def stats(self) -> tuple:
        """(max id, compact revision, row count) in this transaction's snapshot."""
        max_id = self._scalar("SELECT COALESCE(MAX(id), 0) FROM kine")
        compact = self._scalar("SELECT COALESCE(MAX(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key'")
        count = self._scalar("SELECT COUNT(*) FROM kine")
        return int(max_id), int(compact), int(count)

    def ids_up_to(self, max_id: int) -> pa.Array:
        cur = self.conn.cursor()
        cur.execute(f"SELECT id FROM kine WHERE id <= {self.placeholder}", (max_id,))
        ids = []
        while True:
            chunk = cur.fetchmany(100_000)
            if not chunk:
                break
            ids.extend(row[0] for row in chunk)
        cur.close()
        return pa.array(ids, pa.int64())

    def rows(self, where: str, params=()) -> Iterator[list]:
        """Batches of row tuples in id order, streamed with a server-side cursor where there is one."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM kine WHERE {where} ORDER BY id"
        if self.dsn.kind == "postgres":
            cur = self.conn.cursor(name="kinelab_capture", binary=True)
            cur.itersize = BATCH_ROWS
        else:
            cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            while True:
                batch = cur.fetchmany(BATCH_ROWS)
                if not batch:
                    return
                yield batch
        finally:
            cur.close()


def open_capture(path: str | Path, read_only: bool = True):
    """Open a capture file for analysis (read-only by default), refusing files that are not captures."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"no capture at {path}; make one with `kinelab capture --out {path}`")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        con.execute("SELECT value FROM capture_meta WHERE key = 'schema_version'").fetchall()
    except duckdb.Error as exc:
        raise CaptureError(f"{path} is not a kinelab capture ({str(exc).splitlines()[0]})") from None
    return con


def _to_arrow(batch: list, snapshot_id: int) -> tuple:
    columns = list(zip(*batch))
    columns[7] = [bytes(v) if v is not None else None for v in columns[7]]
    columns[8] = [bytes(v) if v is not None else None for v in columns[8]]
    rows = pa.Table.from_arrays([pa.array(col, type=field.type) for col, field in zip(columns, ROW_SCHEMA)],
                                schema=ROW_SCHEMA)
    decoded = [decode_value(v) for v in columns[7]]
    enc, api, kind = zip(*decoded)
    decoded_table = pa.Table.from_arrays([rows.column("id"), pa.array(enc, pa.string()), pa.array(api, pa.string()),
                                          pa.array(kind, pa.string())], schema=DECODED_SCHEMA)
    return rows, decoded_table


def as_dsn(source: Dsn | str | Path) -> Dsn:
    """A Dsn from a Dsn, a DSN string, or the path of a Kine SQLite file."""
    if isinstance(source, Dsn):
        return source
    return Dsn.parse(str(source)) if "://" in str(source) else Dsn.sqlite(Path(source))


def capture(source: Dsn | str | Path, out: str | Path, *, incremental: bool = False) -> Snapshot:
    """Append one snapshot of `source` (a Dsn, a DSN string, or a SQLite path) to the DuckDB file `out`."""
    dsn = as_dsn(source)
    con = open_store(out)
    try:
        return capture_into(con, dsn, incremental=incremental)
    finally:
        con.close()


def capture_into(con, dsn: Dsn, *, incremental: bool = False) -> Snapshot:
    """Append one snapshot of `dsn` through an open kinelab DuckDB connection, in one transaction."""
    started = time.monotonic()
    out = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    known = con.execute("SELECT value FROM capture_meta WHERE key = 'source'").fetchall()
    if known and known[0][0] != dsn.identity:
        raise CaptureError(f"{out} holds data of {known[0][0]}, not {dsn.identity}; use another --out")
    previous = con.execute("SELECT snapshot_id, max_id FROM snapshots ORDER BY snapshot_id DESC LIMIT 1").fetchall()
    previous = previous[0] if previous else None
    mode = "incremental" if incremental and previous else "full"
    snapshot_id = (previous[0] + 1) if previous else 1
    with read_only_connection(dsn) as conn:
        table = KineTable(dsn, conn)
        table.check_exists()
        max_id, compact, count = table.stats()
        con.begin()
        try:
            removed = 0
            if mode == "incremental":
                present = pa.table({"id": table.ids_up_to(previous[1])})
                con.register("present_ids", present)
                con.execute("CREATE TEMP TABLE known AS SELECT id FROM kine_at(?)", [previous[0]])
                removed = con.execute("""INSERT INTO kine_removed SELECT ?, id FROM known
                                         WHERE id NOT IN (SELECT id FROM present_ids)""",
                                      [snapshot_id]).fetchall()[0][0]
                appeared = [r[0] for r in con.execute(
                    "SELECT id FROM present_ids WHERE id NOT IN (SELECT id FROM known) ORDER BY id").fetchall()]
                con.execute("DROP TABLE known")
                con.unregister("present_ids")
                # compact_rev_key is the one row Kine updates in place, so it is always re-read.
                queries = [(f"id > {table.placeholder} OR name = 'compact_rev_key'", (previous[1],))]
                queries += [(f"id IN ({', '.join([table.placeholder] * len(chunk))})", tuple(chunk))
                            for chunk in (appeared[i:i + ID_CHUNK] for i in range(0, len(appeared), ID_CHUNK))]
                expected = max(0, count - len(present)) + len(appeared) + 1
            else:
                queries = [("1 = 1", ())]
                expected = count
            stored = 0
            with progress.bar(f"capturing {dsn.masked}", total=expected) as advance:
                for where, params in queries:
                    for batch in table.rows(where, params):
                        rows, decoded = _to_arrow(batch, snapshot_id)
                        con.execute("INSERT INTO kine_rows SELECT ?, * FROM rows", [snapshot_id])
                        con.execute("INSERT INTO kine_decoded SELECT ?, * FROM decoded", [snapshot_id])
                        stored += len(batch)
                        advance(len(batch))
            duration = time.monotonic() - started
            con.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [snapshot_id, datetime.now(timezone.utc), dsn.masked, max_id, compact, count, mode,
                         stored, duration])
            con.execute("INSERT OR REPLACE INTO capture_meta VALUES ('source', ?)", [dsn.identity])
            con.commit()
        except BaseException:
            con.rollback()
            raise
    return Snapshot(snapshot_id, mode, max_id, compact, count, stored, int(removed), duration, str(out))
