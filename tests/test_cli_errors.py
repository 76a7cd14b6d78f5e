"""Bad input gets one line that says what to do, exit code 2, no traceback, and no damage."""

import os
import socket
import stat

import pytest

import kinelab as kl
from conftest import run_cli
from kinelab.provision.process import free_port


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinelab: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unreachable_dsn(kine, tmp_path):
    port = free_port()
    result = run_cli("up", "--replicas", 1, "--dir", tmp_path / "lab",
                     "--datastore", f"postgres://kine:pw@127.0.0.1:{port}/kubernetes")
    assert_one_line_error(result, "cannot connect to Postgres", "check host, port")
    assert "pw@" not in result.stderr


def test_wrong_password_dsn(pg_lab, tmp_path):
    dsn = pg_lab.dsn
    result = run_cli("capture", "--dsn", f"postgres://kine:wrong-password@{dsn.host}:{dsn.port}/kubernetes",
                     "--out", tmp_path / "c.duckdb")
    assert_one_line_error(result, "password authentication failed")
    assert "wrong-password" not in result.stderr


def test_missing_go_and_no_kine_binary(tmp_path):
    env = {"PATH": str(tmp_path), "KINELAB_CACHE": str(tmp_path / "cache"), "KINELAB_KINE_BIN": ""}
    assert_one_line_error(run_cli("install", env=env), "Go is missing")
    assert_one_line_error(run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", tmp_path / "lab",
                                  env=env), "Go is missing")


def test_kine_bin_that_is_not_executable(tmp_path):
    result = run_cli("install", "--kine-bin", tmp_path / "nope")
    assert_one_line_error(result, "--kine-bin", "not an executable")


def test_unsupported_kine_version(tmp_path):
    old = tmp_path / "kine"
    old.write_text("#!/bin/sh\necho 'kine version v0.10.3'\n")
    old.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "KINELAB_KINE_BIN": str(old)}  # no Go: the version comes from --version
    assert_one_line_error(run_cli("install", env=env), "v0.10.3", "older than")


def test_port_in_use(kine, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", tmp_path / "lab",
                         "--base-port", port)
    assert_one_line_error(result, f"127.0.0.1:{port} is in use", "--base-port")


def test_unwritable_lab_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", blocker / "lab")
    assert_one_line_error(result, "cannot write to lab directory", "--dir")


def test_shared_sqlite_is_refused_with_the_reason(tmp_path):
    result = run_cli("up", "--datastore", "sqlite", "--replicas", 3, "--dir", tmp_path / "lab")
    assert_one_line_error(result, "k3s-io/kine#499", "--allow-shared-sqlite")
    assert not (tmp_path / "lab").exists()


def test_reserved_kine_flag(tmp_path):
    result = run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--kine-arg", "listen-address=0.0.0.0:2379",
                     "--dir", tmp_path / "lab")
    assert_one_line_error(result, "--listen-address is set by kinelab")


def _sqlite_with_kine_table(path):
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER, "
                 "deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, "
                 "old_value BLOB)")
    conn.execute("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value) "
                 "VALUES ('/registry/health', 1, 0, 0, 0, 0, x'7b7d')")
    conn.commit()
    conn.close()


def test_capture_into_a_file_from_a_different_source_is_refused_without_damage(tmp_path):
    first, second, out = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.duckdb"
    _sqlite_with_kine_table(first)
    _sqlite_with_kine_table(second)
    assert run_cli("capture", "--sqlite", first, "--out", out).returncode == 0
    before = out.read_bytes()
    assert_one_line_error(run_cli("capture", "--sqlite", second, "--out", out), "holds data of", "another --out")
    con = kl.open_capture(out)
    assert con.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1
    con.close()
    assert len(before) > 0


def test_corrupt_duckdb_file_is_refused_and_left_alone(tmp_path):
    source, out = tmp_path / "a.db", tmp_path / "corrupt.duckdb"
    _sqlite_with_kine_table(source)
    garbage = os.urandom(64 * 1024)
    out.write_bytes(garbage)
    assert_one_line_error(run_cli("capture", "--sqlite", source, "--out", out), "not a readable DuckDB file")
    assert out.read_bytes() == garbage


def test_capture_of_a_sqlite_file_without_a_kine_table(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE other (x)").connection.commit()
    assert_one_line_error(run_cli("capture", "--sqlite", tmp_path / "empty.db", "--out", tmp_path / "c.duckdb"),
                          "no kine table")


def test_down_on_a_lab_that_is_gone(tmp_path):
    assert_one_line_error(run_cli("down", "--dir", tmp_path / "never-was"), "no lab in", "nothing to stop")


def test_status_of_a_missing_lab(tmp_path):
    assert_one_line_error(run_cli("status", "--dir", tmp_path / "never-was"), "no lab in", "kinelab up")


@pytest.mark.parametrize("args, fragment", [
    (["capture", "--out", "x.duckdb"], "exactly one source"),
    (["up", "--replicas", "0", "--datastore", "sqlite"], "at least one"),
    (["up", "--datastore", "oracle"], "unknown datastore"),
    (["up", "--kine-arg", "noequals"], "KEY=VALUE"),
])
def test_other_usage_mistakes(args, fragment, tmp_path):
    assert_one_line_error(run_cli(*args, "--dir", tmp_path / "lab") if args[0] == "up" else run_cli(*args), fragment)


def test_secrets_file_is_private(pg_lab):
    assert stat.S_IMODE((pg_lab.dir / "secrets.json").stat().st_mode) == 0o600
