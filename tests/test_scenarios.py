"""Database faults and scenarios, on real Kine and real databases: each fault does what it says (the replicas
see it, then recover), and a scenario's tables hold the faults, the errors they caused, the recovery, and a
reconciliation that catches an acknowledged write missing from the table."""

import statistics
import time

import duckdb
import pytest

import kinelab as kl
from conftest import assert_one_line_error, needs_mariadb, run_cli, wait_until
from kinelab.db import connect_postgres
from kinelab.drive.faults import SlowDatabase, current_isolation, set_isolation, terminate_connections
from kinelab.errors import EtcdError, UsageError
from kinelab.observe.scenario import Scenario, reconcile, run_scenario
from kinelab.show import charts

SHORT_KILL = {"name": "short-kill", "load": {"mix": "configmaps", "rate": 40, "duration_s": 9, "workers": 3},
              "steps": [{"at": 3, "fault": "kill", "replica": 1}, {"at": 6, "fault": "restart", "replica": 1}],
              "expect": {"writes_lost": 0, "missed_by_survivors": 0, "phantom_events": 0, "max_recovery_s": 6},
              "settle_s": 3}


@pytest.fixture
def lab2(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab") as lab:
        yield lab


def _write_ok(client, key) -> bool:
    try:
        return client.create(key, b"x").succeeded
    except EtcdError:
        return False


def test_database_stop_and_start_keeps_the_data_and_the_replicas_recover(lab2, prefix):
    before = lab2.client(0).create(prefix + "before", b"1").revision
    lab2.stop_datastore()
    assert not lab2.status()["datastore"]["alive"]
    with pytest.raises(EtcdError):
        kl.Etcd(lab2.endpoints[1], timeout_s=3).create(prefix + "during", b"2")
    lab2.start_datastore()
    assert lab2.status()["datastore"]["alive"]
    wait_until(lambda: _write_ok(lab2.client(1), prefix + "after"), timeout_s=20, what="a write after the restart")
    assert lab2.client(0).get(prefix + "before").mod_revision == before  # same data directory, nothing lost


def test_terminated_sessions_are_reopened_by_kine(lab2, prefix):
    lab2.client(0).create(prefix + "warm", b"1")
    assert terminate_connections(lab2) >= 2  # at least each replica's poll connection
    wait_until(lambda: _write_ok(lab2.client(0), prefix + "again"), timeout_s=10, what="Kine to reconnect")


def test_isolation_level_is_set_for_new_sessions_and_kine_keeps_serving(lab2, prefix):
    assert current_isolation(lab2) == "read-committed"
    assert set_isolation(lab2, "serializable") == "serializable"
    wait_until(lambda: _write_ok(lab2.client(1), prefix + "k"), timeout_s=10, what="a write at SERIALIZABLE")
    with pytest.raises(UsageError, match="unknown isolation level"):
        set_isolation(lab2, "chaos")


@needs_mariadb
def test_mariadb_accepts_read_uncommitted_as_default(kine, tmp_path, prefix):
    with kl.Lab(replicas=1, datastore="mysql", dir=tmp_path / "m",
                datastore_settings={"transaction_isolation": "READ-UNCOMMITTED"}) as lab:
        assert current_isolation(lab) == "read-uncommitted"
        assert set_isolation(lab, "serializable") == "serializable"
        wait_until(lambda: _write_ok(lab.client(0), prefix + "k"), timeout_s=10, what="a write after the change")


def test_a_slow_database_holds_writes_back(lab2, prefix):
    client = lab2.client(0)

    def median_write_ms(tag):  # writes spread over time, so most of them meet the lock
        times = []
        for i in range(8):
            t0 = time.perf_counter()
            client.create(f"{prefix}{tag}-{i}", b"x")
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.1)
        return statistics.median(times)

    fast = median_write_ms("fast")
    with SlowDatabase(lab2, hold_ms=300, period_ms=350) as slow:
        slowed = median_write_ms("slow")
    assert slow.locks_held >= 2 and slow.error is None
    assert slowed > fast + 50, (fast, slowed)
    assert client.get(f"{prefix}slow-7") is not None  # slowed, not refused


def test_a_scenario_stores_faults_availability_recovery_and_checks(lab2, tmp_path):
    # Two replicas here: the killed one is replica 1, whose writes fail until it restarts.
    out = tmp_path / "s.duckdb"
    summary = run_scenario(lab2, out, Scenario.from_dict(SHORT_KILL))
    assert summary["failed"] == [], summary
    assert summary["writes"] > 200 and summary["errors"] > 10
    con = kl.open_capture(out)
    assert [r[0] for r in con.sql("SELECT fault FROM fault_events ORDER BY t").fetchall()] == ["kill", "restart"]
    # errors only on the killed replica, from the kill until it was back (its restart takes a moment), then none
    errors = con.sql("SELECT replica, min(second), max(second) FROM availability WHERE errors > 0 "
                     "GROUP BY 1").fetchall()
    kill, restart = con.sql("SELECT recovery_s FROM fault_recovery ORDER BY t").fetchall()
    assert len(errors) == 1 and errors[0][0] == 1 and errors[0][1] >= 2 and errors[0][2] <= 6 + restart[0], errors
    assert con.execute("SELECT sum(ok) FROM availability WHERE replica = 1 AND second > ?",
                       [errors[0][2]]).fetchall()[0][0]
    assert con.sql("SELECT DISTINCT kind FROM error_kinds").fetchall() == [("replica unreachable",)]
    assert 2.5 < kill[0] < 6 + restart[0] and restart[0] < 3
    assert con.sql("SELECT count(*) FROM scenario_checks WHERE ok IS FALSE").fetchall() == [(0,)]
    con.close()
    spec = charts.scenario_availability(out, label="REPLAY test").to_dict()  # a valid Vega-Lite spec
    assert spec["title"]["text"] == "REPLAY test" and spec["facet"]["row"]["field"] == "replica"
    assert [m["fault"] for m in spec["spec"]["layer"][1]["data"]["values"]] == ["kill replica=1", "restart replica=1"]


def test_reconciliation_catches_an_acknowledged_write_missing_from_the_table(lab2, tmp_path):
    from kinelab.observe.capture import capture_into
    from kinelab.observe.store import open_store

    out = tmp_path / "r.duckdb"
    quiet = {"name": "quiet", "load": {"rate": 30, "duration_s": 3, "workers": 1}, "steps": [], "settle_s": 3}
    run_id = run_scenario(lab2, out, Scenario.from_dict(quiet))["run_id"]
    con = duckdb.connect(str(out))
    revision, key = con.sql("SELECT revision, key FROM writes WHERE op = 'create' LIMIT 1").fetchall()[0]
    con.close()
    with connect_postgres(lab2.dsn) as conn:  # the table loses a row behind Kine's back
        conn.execute("DELETE FROM kine WHERE id = %s", (revision,))
    con = open_store(out, lab2.dsn.identity)
    try:
        capture_into(con, lab2.dsn, incremental=True)
        checks = {name: (value, ok) for name, value, ok, _ in reconcile(con, run_id, {"writes_lost": 0})}
    finally:
        con.close()
    assert checks["writes_lost"] == (1.0, False)


def test_scenario_files_are_checked_before_anything_runs(tmp_path):
    bad = {
        "unknown key": ("name: x\nload: {}\nsteps: []\nfoo: 1\n", "unknown scenario keys foo"),
        "step outside": ("name: x\nload: {duration_s: 5}\nsteps: [{at: 9, fault: kill, replica: 0}]\n",
                         "outside the load's 5 s"),
        "step without at": ("name: x\nload: {}\nsteps: [{fault: kill}]\n", "needs `at`"),
        "load key": ("name: x\nload: {speed: 3}\nsteps: []\n", "unknown load key 'speed'"),
        "not yaml": ("name: [x\n", "is not valid YAML"),
        "expectation": ("name: x\nload: {}\nexpect: {happy: 1}\n", "unknown expectation 'happy'"),
    }
    for name, (text, fragment) in bad.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(text)
        with pytest.raises(UsageError, match=fragment):
            Scenario.from_file(path)
    assert_one_line_error(run_cli("scenario", tmp_path / "missing.yaml"), "cannot read scenario")


def test_every_shipped_scenario_parses():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        scenario = Scenario.from_file(path)
        assert scenario.name == path.stem and scenario.load["duration_s"] > 0


def test_cli_database_faults_and_their_bad_input(kine, tmp_path):
    lab_dir = tmp_path / "cli"
    assert run_cli("up", "--replicas", 2, "--dir", lab_dir, "--datastore-setting", "max_connections=40").returncode == 0
    try:
        lab = kl.Lab.attach(lab_dir)
        assert current_isolation(lab) == "read-committed"
        for argv in (["db-restart"], ["terminate"], ["isolation", "--level", "repeatable-read"],
                     ["slow", "--seconds", "1", "--hold-ms", "100", "--period-ms", "200"]):
            result = run_cli("fault", *argv, "--dir", lab_dir)
            assert result.returncode == 0 and "done" in result.stdout, (argv, result.stdout, result.stderr)
        assert current_isolation(lab) == "repeatable-read"
        with connect_postgres(lab.dsn) as conn:  # the setting reached the server
            assert conn.execute("SHOW max_connections").fetchall() == [("40",)]
        wait_until(lambda: _write_ok(kl.Etcd(lab.endpoints[1], timeout_s=3), "/registry/configmaps/x/after"),
                   timeout_s=20, what="a write after the CLI faults")
        assert_one_line_error(run_cli("fault", "kill", "--dir", lab_dir), "needs --replica")
        assert_one_line_error(run_cli("fault", "terminate", "--replica", 1, "--dir", lab_dir), "drop --replica")
        assert_one_line_error(run_cli("fault", "isolation", "--dir", lab_dir), "needs --level")
    finally:
        assert run_cli("down", "--dir", lab_dir).returncode == 0
    sqlite_dir = tmp_path / "sqlite"
    assert run_cli("up", "--replicas", 1, "--datastore", "sqlite", "--dir", sqlite_dir).returncode == 0
    try:
        assert_one_line_error(run_cli("fault", "db-restart", "--dir", sqlite_dir), "has no server kinelab runs")
        assert_one_line_error(run_cli("fault", "terminate", "--dir", sqlite_dir), "SQLite has no server")
    finally:
        run_cli("down", "--dir", sqlite_dir)
    assert_one_line_error(run_cli("up", "--datastore", "sqlite", "--datastore-setting", "max_connections=5",
                                  "--dir", tmp_path / "x"), "apply only to the servers kinelab runs")


@pytest.mark.slow
def test_a_scenario_through_hybrid_apiservers_keeps_serving_while_a_kine_replica_is_down(kine, tmp_path):
    spec = {"name": "hybrid-kill", "load": {"through": "apiservers", "mix": "configmaps", "rate": 20,
                                            "duration_s": 10, "workers": 2},
            "steps": [{"at": 3, "fault": "kill", "replica": 0}, {"at": 7, "fault": "restart", "replica": 0}],
            "expect": {"writes_lost": 0}, "settle_s": 3}
    with kl.Lab(replicas=2, datastore="postgres", apiservers=2, mode="hybrid", dir=tmp_path / "lab") as lab:
        summary = run_scenario(lab, tmp_path / "h.duckdb", Scenario.from_dict(spec))
    assert summary["failed"] == [] and summary["writes"] > 100, summary
    con = kl.open_capture(tmp_path / "h.duckdb")
    # each apiserver (the `replica` column) took writes while Kine replica 0 was down: the etcd client moved on
    served = dict(con.sql("SELECT replica, sum(ok) FROM availability WHERE second BETWEEN 4 AND 6 "
                          "GROUP BY 1").fetchall())
    assert set(served) == {0, 1} and min(served.values()) > 0, served
    # every acknowledged create and update is a row of the table, with the apiserver's resourceVersion as its id
    assert con.sql("SELECT count(*) FROM writes w JOIN kine_latest k ON k.id = w.revision AND k.name = w.key"
                   ).fetchall()[0][0] == summary["writes"]
