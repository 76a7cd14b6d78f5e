"""kinelab's own guarantees: loopback only, read-only capture, atomic and exclusive capture files."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import psutil

import kinelab as kl
from conftest import REPO, lab_pids, needs_mariadb, run_cli, select_only_role


def listening_addresses(pids) -> set:
    addresses = set()
    for pid in pids:
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add(conn.laddr.ip)
    return addresses


def test_every_process_of_a_postgres_lab_listens_on_loopback_only(pg_lab):
    assert listening_addresses(lab_pids(pg_lab.model)) == {"127.0.0.1"}


@needs_mariadb
def test_every_process_of_a_mariadb_lab_listens_on_loopback_only(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="mysql", dir=tmp_path / "lab") as lab:
        assert listening_addresses(lab_pids(lab.model)) == {"127.0.0.1"}


def _audited_statements(lab, role: str, action) -> list:
    """The statements the server logged for a SELECT-only `role` (log_statement=all) while `action(dsn)` ran."""
    reader = select_only_role(lab, role, log_statements=True)
    log = lab.dir / "logs" / "postgres.log"
    start = log.stat().st_size
    action(reader)
    time.sleep(0.5)
    with open(log, errors="replace") as handle:
        handle.seek(start)
        statements = re.findall(r"LOG:  (?:statement|execute [^:]*): (.*)", handle.read())
    assert statements, "the server logged no statement of the audited role"
    writes = [s for s in statements if re.match(r"\s*(INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE|GRANT)", s, re.I)]
    assert writes == []
    return statements


def test_capture_issues_no_writes_as_the_server_log_shows(pg_lab, tmp_path):
    """Log every statement of a SELECT-only role while it captures; none may write."""
    def capture_twice(reader):
        kl.capture(reader, tmp_path / "a.duckdb")
        kl.capture(reader, tmp_path / "a.duckdb", incremental=True)

    statements = _audited_statements(pg_lab, "kinelab_audit", capture_twice)
    assert any("READ ONLY" in s.upper() for s in statements)
    copies = [s for s in statements if s.upper().startswith("COPY")]
    assert copies and all("TO STDOUT" in s.upper() for s in copies)


def test_the_investigation_notebook_issues_no_writes_as_the_server_log_shows(pg_lab, tmp_path, monkeypatch):
    """Notebook 08, the SRE's report, given only the DSN of a SELECT-only role (through KINELAB_DSN, so that
    papermill does not write it into the output notebook)."""
    import papermill

    def investigate(reader):
        monkeypatch.setenv("KINELAB_DSN", reader.url)  # the kernel inherits it
        papermill.execute_notebook(str(REPO / "notebooks" / "08-investigate-your-datastore.ipynb"),
                                   str(tmp_path / "08.ipynb"), kernel_name="python3", progress_bar=False,
                                   parameters={"report_dir": str(tmp_path / "report")}, cwd=str(tmp_path))

    statements = _audited_statements(pg_lab, "kinelab_sre", investigate)
    assert any("READ ONLY" in s.upper() for s in statements)
    assert (tmp_path / "report" / "report.md").exists()
    assert "kinelab_sre-pw" not in (tmp_path / "08.ipynb").read_text()  # the password never reaches the outputs


def _big_sqlite(path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER, "
                 "deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, "
                 "old_value BLOB)")
    blob = os.urandom(1500)
    conn.executemany("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value) "
                     "VALUES (?, 1, 0, 0, 0, 0, ?)", ((f"/registry/configmaps/big/k{i}", blob) for i in range(rows)))
    conn.commit()
    conn.close()


CAPTURE = textwrap.dedent("""
    import sys, kinelab as kl
    print("capturing", flush=True)
    kl.capture(sys.argv[1], sys.argv[2], incremental=True)
""")


def test_a_capture_killed_midway_leaves_the_previous_snapshot_intact(tmp_path):
    source, out = tmp_path / "state.db", tmp_path / "c.duckdb"
    _big_sqlite(source, 1000)
    first = kl.capture(source, out)
    conn = sqlite3.connect(source)
    blob = os.urandom(1500)
    conn.executemany("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value) "
                     "VALUES (?, 1, 0, 0, 0, 0, ?)",
                     ((f"/registry/configmaps/more/k{i}", blob) for i in range(300_000)))
    conn.commit()
    conn.close()
    child = subprocess.Popen([sys.executable, "-c", CAPTURE, str(source), str(out)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env={**os.environ, "KINELAB_PROGRESS": "0"})
    assert child.stdout.readline().strip() == "capturing"
    time.sleep(1.0)
    assert child.poll() is None, "the capture finished before it could be interrupted; make the table bigger"
    child.send_signal(signal.SIGKILL)
    child.wait()
    con = kl.open_capture(out)
    try:
        snapshots = con.execute("SELECT snapshot_id, row_count FROM snapshots ORDER BY 1").fetchall()
        stored = con.execute("SELECT count(*) FROM kine_rows").fetchall()[0][0]
    finally:
        con.close()
    assert snapshots == [(1, first.row_count)] and stored == first.row_count  # the old state, whole
    again = kl.capture(source, out, incremental=True)  # and the file still takes the next snapshot
    assert again.snapshot_id == 2 and again.row_count == 301_000


def test_two_captures_into_one_file_at_once_are_refused_clearly(tmp_path):
    source, out = tmp_path / "state.db", tmp_path / "c.duckdb"
    _big_sqlite(source, 200_000)
    child = subprocess.Popen([sys.executable, "-c", CAPTURE, str(source), str(out)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env={**os.environ, "KINELAB_PROGRESS": "0"})
    assert child.stdout.readline().strip() == "capturing"
    time.sleep(0.5)
    try:
        second = run_cli("capture", "--sqlite", source, "--out", out)
    finally:
        child.wait(timeout=120)
    assert child.returncode == 0
    assert second.returncode == 2 and "open in another process" in second.stderr
    assert "Traceback" not in second.stderr
