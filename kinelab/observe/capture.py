"""Capture Kine's `kine` table into DuckDB, one snapshot per run.

The source is read in one READ ONLY, repeatable-read transaction, streamed in batches through Arrow
with an explicit schema (DuckDB's own sqlite/postgres scanners are not used: their extensions cannot be
downloaded everywhere, and Kine's SQLite schema declares types DuckDB's scanner rejects).

Each row is stored with its sizes, its key's parts (store.ROW_FACTS) and what its value holds (k8s.decode_values),
computed once here so that no analysis reads the blobs. DuckDB runs within kinelab's memory bound (store.bounds), and a
disk too small for the estimated capture is refused before anything is read.

A snapshot becomes visible at once, with its `snapshots` row, in the transaction that writes its last rows; a big
one is written in parts committed before (PART_BYTES each, see store.reattach), and the parts of a capture that
did not finish are removed, by the capture itself or, after a kill, by the next one into the file.

An incremental capture stores only rows it has not seen. To notice compaction cheaply it reads just the
ids up to the previous snapshot's max id: ids that vanished are recorded in `kine_removed`, and ids
that appeared below that max (a slow transaction that committed late, a gap fill) are fetched whole.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Union

import pyarrow as pa

from .. import progress
from ..db import read_only_connection
from ..dsn import Dsn, mask_text
from ..errors import CaptureError, DatastoreError
from ..k8s import decode_values
from .store import (
    DECODED_COLUMNS,
    FACT_COLUMNS,
    ROW_FACTS,
    discard_unfinished,
    human_bytes,
    open_store,
    reattach,
    within_bounds,
)

COLUMNS = ("id", "name", "created", "deleted", "create_revision", "prev_revision", "lease", "value", "old_value")
ROW_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("created", pa.int32()),
                        ("deleted", pa.int32()), ("create_revision", pa.int64()), ("prev_revision", pa.int64()),
                        ("lease", pa.int64()), ("value", pa.binary()), ("old_value", pa.binary())])
BATCH_ROWS = 5000
ID_CHUNK = 1000
ID_BATCH_ROWS = 100_000
PART_BYTES = 1 << 30  # a big snapshot is committed in parts of this many bytes of rows, invisible until the end
EXACT_SIZE_ROWS = 200_000  # up to this many rows to read, their bytes are summed; beyond, estimated
# What DuckDB needs per captured row besides its blobs: the other columns, the facts, metadata.
ROW_OVERHEAD_BYTES = 100
STORED_COLUMNS = ("snapshot_id", *COLUMNS, *DECODED_COLUMNS, *FACT_COLUMNS)
INSERT_ROWS = (f"INSERT INTO kine_rows ({', '.join(STORED_COLUMNS)}) SELECT ?, * FROM "
               f"({ROW_FACTS.format(rows='rows', columns=', '.join(COLUMNS + DECODED_COLUMNS))})")


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
    """Read access to a `kine` table inside one read-only, repeatable-read transaction, whatever the engine.
    Rows come out as Arrow tables of ROW_SCHEMA. Postgres is read with ADBC (binary COPY decoded into Arrow
    in C++); MySQL and SQLite through their DB-API drivers."""

    def __init__(self, dsn: Dsn, conn, adbc: bool):
        self.dsn, self.conn, self.adbc = dsn, conn, adbc

    def _cursor(self):
        return self.conn.cursor()

    def _scalar(self, sql: str):
        cur = self._cursor()
        try:
            cur.execute(sql)
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

    def blob_bytes(self, where: str, rows: int, table_rows: int) -> int:
        """The bytes of value, old_value and name of the rows `where` selects (`rows` of the table's
        `table_rows`): summed when few, else from a 1% sample of Postgres' pages, or the table's own size on
        MySQL and SQLite (both store blobs as they are)."""
        size = {"postgres": "octet_length({})", "mysql": "length({})",
                "sqlite": "length(CAST({} AS BLOB))"}[self.dsn.kind]
        sized = " + ".join(f"coalesce({size.format(c)}, 0)" for c in ("value", "old_value", "name"))
        if rows <= EXACT_SIZE_ROWS:
            return int(self._scalar(f"SELECT coalesce(sum({sized}), 0) FROM kine WHERE {where}") or 0)
        if self.dsn.kind == "postgres":
            mean = self._scalar(f"SELECT avg({sized}) FROM kine TABLESAMPLE SYSTEM (1) REPEATABLE (1)")
            if mean is not None:
                return int(float(mean) * rows)
        share = rows / max(table_rows, 1)
        return int(share * self._scalar({
            "postgres": "SELECT pg_table_size('kine')",
            "mysql": "SELECT data_length FROM information_schema.tables WHERE table_schema = DATABASE() "
                     "AND table_name = 'kine'",
            "sqlite": "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"}[self.dsn.kind]))

    def ids_up_to(self, max_id: int) -> Iterator[pa.Table]:
        """The table's ids up to `max_id`, in batches (a big table's ids do not fit a small memory bound)."""
        sql = f"SELECT id FROM kine WHERE id <= {int(max_id)}"
        cur = self._cursor()
        try:
            cur.execute(sql)
            if self.adbc:
                for batch in cur.fetch_record_batch():
                    yield pa.table({"id": batch.column(0).cast(pa.int64())})
                return
            while chunk := cur.fetchmany(ID_BATCH_ROWS):
                yield pa.table({"id": pa.array([row[0] for row in chunk], pa.int64())})
        finally:
            cur.close()

    def rows(self, where: str) -> Iterator[pa.Table]:
        """Batches of rows in id order. `where` is built by kinelab from integers only."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM kine WHERE {where} ORDER BY id"
        cur = self._cursor()
        try:
            cur.execute(sql)
            if self.adbc:
                for batch in cur.fetch_record_batch():
                    yield pa.Table.from_batches([batch]).cast(ROW_SCHEMA)
                return
            while batch := cur.fetchmany(BATCH_ROWS):
                yield _to_arrow(batch)
        finally:
            cur.close()


@contextmanager
def _snapshot_connection(dsn: Dsn):
    """One read-only repeatable-read transaction; ADBC for Postgres, DB-API otherwise."""
    if dsn.kind != "postgres":
        with read_only_connection(dsn) as conn:
            yield KineTable(dsn, conn, adbc=False)
        return
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc_pg

    uri = replace(dsn, params={**dsn.params, "connect_timeout": "5", "application_name": "kinelab"}).url
    try:
        conn = adbc_pg.connect(uri.replace("postgres://", "postgresql://", 1))
    except adbc_driver_manager.Error as exc:
        reason = mask_text(str(exc).strip().splitlines()[0])
        raise DatastoreError(f"cannot connect to Postgres {dsn.masked}: {reason}; check host, port, user and "
                             f"password in {dsn.masked}") from None
    try:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.close()
        yield KineTable(dsn, conn, adbc=True)
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def _to_arrow(batch: list) -> pa.Table:
    columns = list(zip(*batch))
    return pa.Table.from_arrays([pa.array(col, type=field.type) for col, field in zip(columns, ROW_SCHEMA)],
                                schema=ROW_SCHEMA)


def _decoded(rows: pa.Table) -> pa.Table:
    """`rows` with what each value holds (encoding, api_version, kind)."""
    for name, column in zip(DECODED_COLUMNS, decode_values(rows.column("value"))):
        rows = rows.append_column(pa.field(name, pa.string()), column)
    return rows


def _read_ahead(batches: Iterator[pa.Table], depth: int = 3) -> Iterator[pa.Table]:
    """Read and decode the next batches in a thread while the caller writes the previous ones to DuckDB. At most
    `depth` batches wait, so memory stays bounded however big the table."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        """Queue `item` unless the caller stopped reading; whether it was queued."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for rows in batches:
                if not offer(_decoded(rows)):
                    return
            offer(done)
        except BaseException as exc:  # handed to the caller, which re-raises it
            offer(exc)
        finally:
            getattr(batches, "close", lambda: None)()  # the source's cursor closes here, while it is open

    reader = threading.Thread(target=produce, name="kinelab-capture-read", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def as_dsn(source) -> Dsn:
    """A Dsn from a lab (anything with a `dsn`), a Dsn, a DSN string, or the path of a Kine SQLite file."""
    source = getattr(source, "dsn", source)
    if isinstance(source, Dsn):
        return source
    return Dsn.parse(str(source)) if "://" in str(source) else Dsn.sqlite(Path(source))


def capture(source, out: str | Path, *, incremental: bool = False,
            memory_limit: Union[str, int, None] = None) -> Snapshot:
    """Append one snapshot of `source` (a lab, a Dsn, a DSN string, or a SQLite path) to the DuckDB file `out`,
    with DuckDB's memory bounded by `memory_limit` (default: KINELAB_MEMORY_LIMIT, or store.DEFAULT_MEMORY)."""
    dsn = as_dsn(source)
    con = open_store(out, memory_limit=memory_limit)
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
    with _snapshot_connection(dsn) as table:
        table.check_exists()
        max_id, compact, count = table.stats()
        discard_unfinished(con)
        con.begin()
        try:
            removed = 0
            if mode == "incremental":
                con.execute("CREATE TEMP TABLE present_ids (id BIGINT)")
                for ids in table.ids_up_to(previous[1]):
                    con.execute("INSERT INTO present_ids SELECT id FROM ids")
                present = con.execute("SELECT count(*) FROM present_ids").fetchall()[0][0]
                con.execute("CREATE TEMP TABLE known AS SELECT id FROM kine_at(?)", [previous[0]])
                removed = con.execute("""INSERT INTO kine_removed SELECT ?, id FROM known
                                         WHERE id NOT IN (SELECT id FROM present_ids)""",
                                      [snapshot_id]).fetchall()[0][0]
                appeared = [r[0] for r in con.execute(
                    "SELECT id FROM present_ids WHERE id NOT IN (SELECT id FROM known) ORDER BY id").fetchall()]
                con.execute("DROP TABLE known")
                con.execute("DROP TABLE present_ids")
                # compact_rev_key is the one row Kine updates in place, so it is always re-read.
                queries = [f"id > {int(previous[1])} OR name = 'compact_rev_key'"]
                queries += [f"id IN ({', '.join(str(int(i)) for i in chunk)})"
                            for chunk in (appeared[i:i + ID_CHUNK] for i in range(0, len(appeared), ID_CHUNK))]
                expected = max(0, count - present) + len(appeared) + 1
            else:
                queries = ["1 = 1"]
                expected = count
            _check_disk(Path(out), table.blob_bytes(queries[0], expected, count), expected)
            stored = written = 0
            batches = (rows for where in queries for rows in table.rows(where))
            with progress.bar(f"capturing {dsn.masked}", total=expected) as advance, \
                    within_bounds(con, "the capture"), _disk_full(Path(out), expected), \
                    closing(_read_ahead(batches)) as ahead:  # its thread stops before the source closes
                for rows in ahead:
                    con.execute(INSERT_ROWS, [snapshot_id])
                    stored, written = stored + rows.num_rows, written + rows.nbytes
                    advance(rows.num_rows)
                    if written >= PART_BYTES:  # see reattach: the rows so far stay invisible until the end
                        con.commit()
                        reattach(con)
                        con.begin()
                        written = 0
            duration = time.monotonic() - started
            con.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [snapshot_id, datetime.now(timezone.utc), dsn.masked, max_id, compact, count, mode,
                         stored, duration])
            con.execute("INSERT OR REPLACE INTO capture_meta VALUES ('source', ?)", [dsn.identity])
            con.commit()
        except BaseException:
            con.rollback()
            try:
                discard_unfinished(con)
            except Exception:  # noqa: BLE001 (the next capture removes them; the first error is the one to show)
                pass
            raise
    return Snapshot(snapshot_id, mode, max_id, compact, count, stored, int(removed), duration, str(out))


def _needed_bytes(blob_bytes: int, rows: int) -> int:
    return int(blob_bytes * 1.05) + rows * ROW_OVERHEAD_BYTES + (4 << 20)


def _check_disk(out: Path, blob_bytes: int, rows: int) -> None:
    """Refuse, before anything is read, a capture the disk under `out` cannot hold."""
    needed, free = _needed_bytes(blob_bytes, rows), shutil.disk_usage(out.parent).free
    if needed > free:
        raise CaptureError(f"the capture needs about {human_bytes(needed)} at {out.parent} ({rows:,} rows, "
                           f"{human_bytes(blob_bytes)} of keys and values) and only {human_bytes(free)} is free "
                           "there; free some space or choose another --out")


@contextmanager
def _disk_full(out: Path, rows: int) -> Iterator[None]:
    """The disk filled up anyway (the estimate was low, or something else wrote): one line, and the snapshot's
    transaction is rolled back by the caller."""
    import duckdb

    try:
        yield
    except duckdb.IOException as exc:
        if "space" not in str(exc).lower():
            raise
        raise CaptureError(f"the disk under {out.parent} filled up during the capture of {rows:,} rows; the file is "
                           "left as it was: free some space or choose another --out") from exc
