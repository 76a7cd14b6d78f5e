"""Capture into DuckDB: exact rows from SQLite, Postgres and MariaDB; incremental snapshots; compaction."""

import pytest
from test_k8s_values import hand_encoded

import kinelab as kl
from conftest import needs_mariadb, select_only_role, wait_until
from kinelab.db import connect_mysql, connect_postgres, connect_sqlite
from kinelab.drive.workload import burst
from kinelab.observe.capture import COLUMNS

ORDERED = f"SELECT {', '.join(COLUMNS)} FROM kine ORDER BY id"


def database_rows(dsn) -> list:
    """Every row of the kine table read straight from the database, values as bytes."""
    if dsn.kind == "sqlite":
        conn = connect_sqlite(dsn.path)
    elif dsn.kind == "postgres":
        conn = connect_postgres(dsn)
    else:
        conn = connect_mysql(dsn)
    try:
        cur = conn.cursor()
        cur.execute(ORDERED)
        rows = cur.fetchall()
    finally:
        conn.close()
    return [tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in row) for row in rows]


def captured_rows(path) -> list:
    con = kl.open_capture(path)
    try:
        return [tuple(r) for r in con.execute(f"SELECT {', '.join(COLUMNS)} FROM kine_latest ORDER BY id").fetchall()]
    finally:
        con.close()


@pytest.fixture(scope="module")
def sqlite_lab(kine, tmp_path_factory):
    with kl.Lab(replicas=1, datastore="sqlite", dir=tmp_path_factory.mktemp("sqlite-lab"),
                kine_args={"compact-min-retain": 0}) as lab:
        yield lab


@pytest.fixture(scope="module")
def mariadb_lab(kine, tmp_path_factory):
    with kl.Lab(replicas=2, datastore="mysql", dir=tmp_path_factory.mktemp("mariadb-lab")) as lab:
        yield lab


def _write_and_settle(lab, seed):
    clients = [lab.client(i) for i in range(len(lab.endpoints))]
    writes = burst(clients, configmaps=12, nodes=2, events=4, seed=seed)
    last = max(w.revision for w in writes)
    wait_until(lambda: all(c.revision() >= last for c in clients))
    return writes


@pytest.mark.parametrize("engine", ["sqlite", "postgres", pytest.param("mysql", marks=needs_mariadb)])
def test_capture_reproduces_exactly_the_rows_in_the_database(engine, request, tmp_path):
    lab = request.getfixturevalue({"sqlite": "sqlite_lab", "postgres": "pg_lab", "mysql": "mariadb_lab"}[engine])
    writes = _write_and_settle(lab, seed=7)
    snapshot = kl.capture(lab, tmp_path / "c.duckdb")
    expected = database_rows(lab.dsn)
    assert captured_rows(tmp_path / "c.duckdb") == expected
    assert snapshot.row_count == len(expected) == snapshot.rows_stored
    assert snapshot.max_id == expected[-1][0]
    assert {w.revision for w in writes} <= {row[0] for row in expected}


def test_incremental_capture_adds_exactly_the_new_ids(pg_lab, tmp_path):
    out = tmp_path / "inc.duckdb"
    _write_and_settle(pg_lab, seed=11)
    first = kl.capture(pg_lab, out)
    writes = _write_and_settle(pg_lab, seed=12)
    second = kl.capture(pg_lab, out, incremental=True)
    new_ids = {row[0] for row in database_rows(pg_lab.dsn)} - set(range(first.max_id + 1))
    assert {w.revision for w in writes} <= new_ids
    con = kl.open_capture(out)
    stored = {r[0] for r in con.execute("SELECT id FROM kine_rows WHERE snapshot_id = 2 "
                                        "AND name <> 'compact_rev_key'").fetchall()}
    modes = con.execute("SELECT mode FROM snapshots ORDER BY snapshot_id").fetchall()
    con.close()
    assert stored == new_ids
    assert second.mode == "incremental" and [m[0] for m in modes] == ["full", "incremental"]
    assert captured_rows(out) == database_rows(pg_lab.dsn)


def test_two_snapshots_around_a_compaction_show_the_removed_rows(sqlite_lab, tmp_path, prefix):
    out = tmp_path / "compact.duckdb"
    client = sqlite_lab.client(0)
    rev = client.create(prefix + "a", b"v0").revision
    for i in range(4):
        rev = client.update(prefix + "a", b"v%d" % (i + 1), mod_revision=rev).revision
    doomed = client.create(prefix + "b", b"bye").revision
    tombstone = client.delete(prefix + "b", mod_revision=doomed).revision
    keep = client.create(prefix + "c", b"stays").revision
    before = {row[0]: row for row in database_rows(sqlite_lab.dsn)}
    kl.capture(sqlite_lab.dsn, out)
    client.compact(keep)
    after = {row[0] for row in database_rows(sqlite_lab.dsn)}
    snapshot = kl.capture(sqlite_lab.dsn, out, incremental=True)
    con = kl.open_capture(out)
    compacted = {r[0]: r[1] for r in con.execute("SELECT id, removed_in FROM kine_compacted").fetchall()}
    con.close()
    removed = set(before) - after
    assert {doomed, tombstone} <= removed and rev not in removed and keep not in removed
    assert set(compacted) == removed and set(compacted.values()) == {2}
    assert snapshot.removed == len(removed) and snapshot.compact_revision >= tombstone
    assert captured_rows(out) == database_rows(sqlite_lab.dsn)


def test_rows_that_commit_late_below_the_previous_max_are_still_captured(pg_lab, tmp_path):
    """A slow transaction can commit an id below one already seen; incremental capture must find it.
    Played on a kine-shaped table in a database of its own, so no Kine replica fills the hole first."""
    out = tmp_path / "late.duckdb"
    admin = pg_lab.datastore.admin_dsn
    with connect_postgres(admin) as conn:
        conn.autocommit = True
        conn.execute("DROP DATABASE IF EXISTS latecommit")
        conn.execute("CREATE DATABASE latecommit")
    late = kl.Dsn("postgres", admin.host, admin.port, admin.user, admin.password, "latecommit")
    insert = ("INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)"
              " VALUES (%s, %s, 1, 0, 0, 0, 0, 'v', NULL)")
    with connect_postgres(late) as conn:
        conn.autocommit = True
        conn.execute("CREATE TABLE kine (id BIGSERIAL PRIMARY KEY, name text, created INTEGER, deleted INTEGER, "
                     "create_revision BIGINT, prev_revision BIGINT, lease INTEGER, value bytea, old_value bytea)")
        for row_id in (1, 2, 5):
            conn.execute(insert, (row_id, f"/registry/configmaps/default/r{row_id}"))
        first = kl.capture(late, out)
        conn.execute(insert, (3, "/registry/configmaps/default/r3"))  # committed late, below max id 5
        conn.execute(insert, (6, "/registry/configmaps/default/r6"))
        second = kl.capture(late, out, incremental=True)
    assert (first.max_id, second.max_id, second.rows_stored) == (5, 6, 2)
    assert [row[0] for row in captured_rows(out)] == [1, 2, 3, 5, 6]
    assert captured_rows(out) == database_rows(late)


def test_kine_ops_parses_keys_and_decodes_values(sqlite_lab, tmp_path):
    client = sqlite_lab.client(0)
    values = {
        "/registry/services/specs/default/kubernetes": ("v1", "Service"),
        "/registry/minions/node-a": ("v1", "Node"),
        "/registry/apiregistration.k8s.io/apiservices/v1.apps": ("apiregistration.k8s.io/v1", "APIService"),
        "/registry/masterleases/10.0.0.1": ("v1", "Endpoints"),
    }
    for key, (api_version, kind) in values.items():
        assert client.create(key, hand_encoded(api_version, kind, b"\x00" * 40)).succeeded
    client.create("/registry/example.com/widgets/team-a/w1", b'{"apiVersion":"example.com/v1","kind":"Widget"}')
    client.create("/registry/secrets/default/s", b"k8s:enc:aescbc:v1:key1:\x8f\x00")
    kl.capture(sqlite_lab.dsn, tmp_path / "ops.duckdb")
    con = kl.open_capture(tmp_path / "ops.duckdb")
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT name, op, resource, api_group, namespace, object_name, encoding, api_version, kind FROM kine_ops"
    ).fetchall()}
    con.close()
    assert rows["/registry/services/specs/default/kubernetes"] == \
        ("create", "services", None, "default", "kubernetes", "protobuf", "v1", "Service")
    assert rows["/registry/minions/node-a"] == ("create", "nodes", None, None, "node-a", "protobuf", "v1", "Node")
    assert rows["/registry/apiregistration.k8s.io/apiservices/v1.apps"] == \
        ("create", "apiservices", "apiregistration.k8s.io", None, "v1.apps", "protobuf",
         "apiregistration.k8s.io/v1", "APIService")
    assert rows["/registry/masterleases/10.0.0.1"][1:5] == ("masterleases", None, None, "10.0.0.1")
    assert rows["/registry/example.com/widgets/team-a/w1"] == \
        ("create", "widgets", "example.com", "team-a", "w1", "json", "example.com/v1", "Widget")
    assert rows["/registry/secrets/default/s"][5:] == ("encrypted", None, None)
    assert rows["compact_rev_key"][0] == "compact"


def test_capture_works_with_a_select_only_role(pg_lab, tmp_path):
    """Capture reads in READ ONLY transactions, so a role that can only SELECT is enough."""
    reader = select_only_role(pg_lab, "kinelab_reader")
    snapshot = kl.capture(reader, tmp_path / "ro.duckdb")
    assert snapshot.row_count == len(database_rows(pg_lab.dsn))
