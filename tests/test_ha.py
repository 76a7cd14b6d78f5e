"""High availability on real parts: a primary and a streaming standby from the embedded Postgres, failovers
through Kine's multi-host DSN and through HAProxy, HAProxy in front of the Kine pool, and HAProxy as a circuit
breaker between Kine and the database. The bounds come from the mechanisms (a sequence logged 32 ahead, one
cancelled commit per client timeout, one connection per client), not from a recorded run."""

import shutil
import socket
import uuid
from pathlib import Path

import psutil
import pytest

import kinelab as kl
from conftest import all_gone, assert_one_line_error, lab_pids, read_model, run_cli, wait_until
from kinelab.analyse.failover import failover_report, fates
from kinelab.db import connect_postgres
from kinelab.drive.faults import terminate_connections
from kinelab.errors import EtcdError, ToolError, UsageError
from kinelab.observe.scenario import Scenario, run_scenario
from kinelab.provision.haproxy import find_haproxy, server_stats
from kinelab.provision.process import free_port

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def _haproxy_missing() -> bool:
    try:
        find_haproxy()
        return False
    except ToolError:
        return True


needs_haproxy = pytest.mark.skipif(_haproxy_missing(), reason="haproxy is not installed (.ci/run installs it)")
SEQUENCE_LOG_AHEAD = 32  # Postgres WAL-logs a sequence this many values ahead (SEQ_LOG_VALS)
CLIENT_TIMEOUT_S = 2.0  # the scenario clients' deadline (observe.scenario.FAULT_TIMEOUT_S)
SAMPLE_S = 0.2  # how often a scenario samples each replica's revision (observe.revisions.RevisionSampler)


def _real_write(lab, replica: int, key: str):
    """A create through `replica` that is really a row (Kine v0.17.5 can acknowledge a create it did not write,
    e.g. on a connection a failover broke): its revision, or None while writes fail."""
    try:
        revision = lab.client(replica).create(key, b"x").revision
        found = lab.client(replica).get(key)
    except EtcdError:
        return None
    return revision if found is not None and found.mod_revision == revision else None


def _revision_of(lab, replica: int, key: str):
    """The key's revision read through `replica`, retried: after a failover each replica's first calls can fail on
    pooled connections to the dead primary."""
    def read():
        try:
            return lab.client(replica).get(key).mod_revision
        except EtcdError:
            return None

    return wait_until(read, timeout_s=10, what=f"a read of {key} through replica {replica}")


def _kine_endpoint(lab, replica: int) -> str:
    return psutil.Process(lab.model.replicas[replica].records[0].pid).environ()["KINE_ENDPOINT"]


def _short(name: str, **load) -> Scenario:
    """A scenario file of scenarios/ with a shorter timeline: the lag at 3 s, the failover at 7 s."""
    scenario = Scenario.from_file(SCENARIOS / f"{name}.yaml")
    scenario.load.update({"duration_s": 12, **load})
    scenario.steps[0].at, scenario.steps[1].at = 3, 7
    scenario.settle_s = 3
    return scenario


def _failover_run(tmp_path, name: str) -> tuple:
    """The short `name` scenario at 80 writes/s on a lab of its own: the scenario, its summary, the capture
    (open; the caller closes it) and the failover report."""
    scenario = _short(name, rate=80)
    out = tmp_path / f"{name}.duckdb"
    with kl.Lab(**scenario.lab) as lab:
        summary = run_scenario(lab, out, scenario)
    con = kl.open_capture(out)
    return scenario, summary, con, failover_report(con, summary["run_id"])


def test_sync_standby_failover_through_the_multi_host_dsn_and_rejoin(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres-ha", dir=tmp_path / "lab") as lab:
        primary, standby = lab.model.member("primary"), lab.model.member("standby")
        assert (primary.name, standby.name) == ("postgres-0", "postgres-1")
        assert lab.datastore.standbys(primary.port)[0][:3] == ("postgres-1", "streaming", "sync")
        # Kine is given both servers and picks the writable one
        endpoint = _kine_endpoint(lab, 0)
        assert f"{primary.port},127.0.0.1:{standby.port}" in endpoint and "target_session_attrs=read-write" in endpoint
        before = lab.client(0).create("/registry/configmaps/default/before", b"1").revision
        admin = lab.datastore._admin(standby.port)

        def on_standby():
            with connect_postgres(admin, database="kubernetes") as conn:
                return conn.execute("SELECT name FROM kine WHERE id = %s", (before,)).fetchone()

        assert wait_until(on_standby, what="the row on the standby") == ("/registry/configmaps/default/before",)

        detail = lab.failover()
        assert "postgres-1 promoted" in detail and "multi-host DSN" in detail
        assert {c["name"]: c.get("member") for c in lab.status()["components"] if c["role"] == "datastore"} == \
            {"postgres-0": "failed", "postgres-1": "primary"}
        after = wait_until(lambda: _real_write(lab, 1, "/registry/configmaps/default/after"), timeout_s=20,
                           what="a write on the new primary")
        assert after > before and _revision_of(lab, 0, "/registry/configmaps/default/before") == before

        lab.restart("postgres-0")  # the old primary, rewound onto the new timeline, follows the new primary
        assert lab.model.member("standby").name == "postgres-0"
        assert lab.datastore.standbys(lab.model.member("primary").port)[0][:3] == ("postgres-0", "streaming", "sync")
        # the DSN now names a read-only standby first: with its sessions ended, Kine's new connections skip it
        assert terminate_connections(lab) > 0
        wait_until(lambda: _real_write(lab, 0, "/registry/configmaps/default/rejoined"), timeout_s=20,
                   what="a write with the standby first in Kine's DSN")
        lab.failover()  # and back
        assert lab.model.member("primary").name == "postgres-0"
        back = wait_until(lambda: _real_write(lab, 0, "/registry/configmaps/default/back"), timeout_s=20,
                          what="a write after failing back")
        assert back > after and _revision_of(lab, 1, "/registry/configmaps/default/after") == after
        with pytest.raises(UsageError, match="no standby left"):
            lab.failover()


def test_async_failover_of_a_lagging_standby_hands_acknowledged_revisions_out_again(kine, tmp_path):
    scenario, summary, con, report = _failover_run(tmp_path, "failover-async")
    workers = int(scenario.load["workers"])
    assert "revisions_reissued = " in " ".join(summary["failed"])  # the trap the expectations describe
    # the standby stopped receiving at 3 s: everything acknowledged from then on, give or take the writes in
    # flight, is missing from the new primary
    window = report["acknowledged_while_lagging"]
    assert window > 3 * SEQUENCE_LOG_AHEAD, report
    assert window - workers <= report["lost_before"] <= window + workers, report
    # its sequence resumes at most 32 above the last row it had, far below what the old primary acknowledged
    assert report["standby_max_id"] < report["sequence_resumed_at"] <= report["standby_max_id"] + SEQUENCE_LOG_AHEAD + 1
    assert report["sequence_resumed_at"] < report["last_acknowledged_revision"]
    reissued = report["checks"]["revisions_reissued"]
    assert 0 < reissued <= report["lost_before"]
    assert reissued == fates(con, summary["run_id"])["reissued"]
    # every replica's revision went back by about the lost window (less what the 0.2 s samples and the new
    # primary's first writes blur), and the watches skip the reissued ids
    blur = 2 * scenario.load["rate"] * SAMPLE_S + SEQUENCE_LOG_AHEAD + workers
    for drop in report["revision_drop"].values():
        assert report["lost_before"] - blur <= drop <= report["last_acknowledged_revision"] - report["standby_max_id"]
    assert report["checks"]["revisions_backwards"] > 0
    for watcher in report["watchers"].values():
        assert watcher["missed_rows"] > 0 and watcher["phantom_events"] > 0
        assert watcher["resumed_s"] is not None  # once new ids pass the old highest one
    assert report["checks"]["failover_write_s"] < 5
    con.close()


def test_sync_failover_loses_no_acknowledged_write_to_replication(kine, tmp_path):
    scenario, _, con, report = _failover_run(tmp_path, "failover-sync")
    workers = int(scenario.load["workers"])
    assert report["lost_before"] == 0 and report["checks"]["revisions_reissued"] == 0, report
    # with WAL shipping paused, commits wait for the standby: clients time out instead of being acknowledged
    assert report["acknowledged_while_lagging"] <= workers and report["timeouts_while_lagging"] >= workers, report
    # a commit whose client gave up is visible on the primary alone: at most one per worker per client timeout
    # can reach the watchers, and none of them survives the failover
    bound = workers * (report["lag_s"] / CLIENT_TIMEOUT_S + 1)
    for watcher in report["watchers"].values():
        assert watcher["missed_rows"] == 0 and watcher["phantom_events"] <= bound, report
    # what is lost is Kine's own: creates acknowledged after the failover whose insert failed
    assert report["lost_after"] == report["checks"]["writes_lost"], report
    con.close()


@needs_haproxy
def test_failover_through_the_database_proxy_repoints_haproxy(kine, tmp_path):
    with kl.Lab(replicas=1, datastore="postgres-ha", replication="async", db_proxy={}) as lab:
        proxy = lab.model.db_proxy
        socket_path = Path(proxy.details["admin_socket"])
        assert f"@127.0.0.1:{proxy.port}/" in _kine_endpoint(lab, 0)  # Kine knows only the proxy
        assert proxy.endpoint.startswith("127.0.0.1:")
        states = {name: row["status"] for name, row in server_stats(socket_path, "database").items()}
        assert states["postgres-0"].startswith("UP") and states["postgres-1"] == "MAINT"
        before = lab.client(0).create("/registry/configmaps/default/p", b"1").revision
        assert "db-proxy repointed" in lab.failover()
        states = {name: row["status"] for name, row in server_stats(socket_path, "database").items()}
        assert states["postgres-0"] == "MAINT" and states["postgres-1"].startswith("UP")
        wait_until(lambda: _real_write(lab, 0, "/registry/configmaps/default/q"), timeout_s=20,
                   what="a write through the repointed proxy")
        assert _revision_of(lab, 0, "/registry/configmaps/default/p") == before
        status = {c["name"]: c for c in lab.status()["components"]}
        assert status["db-proxy"]["servers"]["postgres-1"]["connections"] >= 1  # Kine's pool, through HAProxy


@needs_haproxy
def test_the_balancer_spreads_connections_not_calls_and_a_kill_moves_them(kine, tmp_path):
    with kl.Lab(replicas=3, datastore="postgres", balancer=True) as lab:
        socket_path = Path(lab.model.balancer.details["admin_socket"])
        clients = [kl.Etcd(lab.balancer_endpoint, timeout_s=3) for _ in range(6)]
        try:
            for i, client in enumerate(clients):
                client.create(f"/registry/configmaps/default/lb-{i}", b"x")
            before = {name: int(row["scur"]) for name, row in server_stats(socket_path, "kine").items()}
            assert before == {"kine-0": 2, "kine-1": 2, "kine-2": 2}  # leastconn: one connection per client
            # many calls on one client stay on its one connection
            for i in range(20):
                clients[0].create(f"/registry/configmaps/default/lb-many-{i}", b"x")
            assert {name: int(row["scur"]) for name, row in server_stats(socket_path, "kine").items()} == before
            lab.kill(0)
            # every client works again after at most one failed call; the two on kine-0 have moved
            for i, client in enumerate(clients):
                wait_until(lambda: _ok(client, f"/registry/configmaps/default/after-{i}"), timeout_s=10,
                           what=f"client {i} through the balancer")
            after = {name: row for name, row in server_stats(socket_path, "kine").items()}
            assert int(after["kine-0"]["scur"]) == 0
            assert int(after["kine-1"]["scur"]) + int(after["kine-2"]["scur"]) == 6
            wait_until(lambda: server_stats(socket_path, "kine")["kine-0"]["status"].startswith("DOWN"),
                       timeout_s=5, what="HAProxy's health check to mark kine-0 down")
        finally:
            for client in clients:
                client.close()


def _ok(client, key) -> bool:
    try:
        return client.create(key, b"x").succeeded
    except EtcdError:
        return False


@needs_haproxy
def test_a_failing_fast_breaker_turns_waits_into_errors_and_lost_creates(kine, tmp_path):
    # One replica through HAProxy with room for 2 database connections (Kine's poll holds one) and a 100 ms
    # queue: under the slow database, writes that wait for a connection are cut instead of waiting.
    out = tmp_path / "breaker.duckdb"
    scenario = Scenario.from_dict({
        "name": "breaker", "load": {"mix": "creates", "value_bytes": 200, "rate": 60, "duration_s": 6,
                                    "workers": 6},
        "steps": [{"at": 1, "fault": "slow", "hold_ms": 200, "period_ms": 250}, {"at": 5, "fault": "slow-stop"}],
        "settle_s": 2})
    with kl.Lab(replicas=1, datastore="postgres", db_proxy={"maxconn": 2, "queue_timeout_ms": 100},
                kine_args={"datastore-max-idle-connections": 2}) as lab:
        summary = run_scenario(lab, out, scenario)
    con = kl.open_capture(out)
    kinds = dict(con.sql("SELECT kind, sum(errors) FROM error_kinds GROUP BY 1").fetchall())
    assert kinds.get("database connection lost", 0) > 0, kinds
    assert "timeout" not in kinds, kinds  # failed fast: before the client's 2 s deadline
    slowest_write_ms = con.sql("SELECT max(latency_ms) FROM writes").fetchall()[0][0]
    assert slowest_write_ms < CLIENT_TIMEOUT_S * 1000
    # and Kine v0.17.5 answers some of those failed creates with success: lost
    assert summary["checks"]["writes_lost"]["value"] > 0
    con.close()


def test_multi_host_dsns_parse_and_mask():
    dsn = kl.Dsn.parse("postgres://kine:pw@127.0.0.1:5001,127.0.0.1:5002/kubernetes?target_session_attrs=read-write")
    assert dsn.fallbacks == (("127.0.0.1", 5002),) and kl.Dsn.parse(dsn.url) == dsn
    assert dsn.identity == "postgres://127.0.0.1:5001,127.0.0.1:5002/kubernetes"
    assert "pw" not in dsn.masked and "5002" in dsn.kine_endpoint
    with pytest.raises(UsageError, match="only Postgres"):
        kl.Dsn.parse("mysql://u:p@h1:3306,h2:3306/db")


# --- bad input: one line, exit 2, nothing left running -------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--replication", "async"], "postgres-ha only"),
    (["--db-proxy-setting", "bogus=1"], "unknown database proxy setting"),
    (["--db-proxy-setting", "maxconn=-3"], "positive integer"),
    (["--db-proxy", "--datastore", "sqlite", "--replicas", "1"], "SQLite is a file"),
    (["--balancer", "--apiservers", "1"], "--mode hybrid"),
])
def test_bad_ha_options_are_refused_before_anything_starts(tmp_path, argv, fragment):
    result = run_cli("up", "--dir", tmp_path / "lab", *argv)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "lab" / "pids").exists()


def test_missing_haproxy_stops_the_lab_before_it_starts(kine, tmp_path):
    result = run_cli("up", "--db-proxy", "--dir", tmp_path / "lab", env={"KINELAB_HAPROXY_BIN": "/nonexistent"})
    assert_one_line_error(result, "HAProxy", "apt-get install haproxy")
    assert not any(str(tmp_path) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_failover_and_replication_faults_need_a_standby(kine, tmp_path):
    lab_dir = tmp_path / "plain"
    assert run_cli("up", "--replicas", "1", "--dir", lab_dir).returncode == 0
    try:
        assert_one_line_error(run_cli("fault", "failover", "--dir", lab_dir), "no standby", "postgres-ha")
        assert_one_line_error(run_cli("fault", "replication-pause", "--dir", lab_dir), "postgres-ha")
        assert all(r.alive for r in read_model(lab_dir).records)  # nothing was touched
    finally:
        assert run_cli("down", "--dir", lab_dir).returncode == 0


def test_a_standby_whose_port_is_taken_stops_the_lab(kine, tmp_path):
    base = free_port()
    with socket.socket() as taken:  # the standby's port: base + 1
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        result = run_cli("up", "--datastore", "postgres-ha", "--base-port", base, "--replicas", "1",
                         "--dir", tmp_path / "lab")
    assert_one_line_error(result, f"127.0.0.1:{base + 1} is in use")
    model = read_model(tmp_path / "lab")
    assert model is None or all_gone(lab_pids(model))


def test_a_standby_that_cannot_copy_the_primary_stops_the_lab(kine, tmp_path):
    lab_dir = tmp_path / "lab"
    assert run_cli("up", "--datastore", "postgres-ha", "--replicas", "1", "--dir", lab_dir).returncode == 0
    assert run_cli("down", "--dir", lab_dir).returncode == 0
    # the standby's data is gone and a file stands where its directory was (a broken or full disk)
    data = (lab_dir / "postgres").resolve() / "postgres-1" / "data"
    shutil.rmtree(data)
    data.write_text("not a directory")
    result = run_cli("up", "--datastore", "postgres-ha", "--replicas", "1", "--dir", lab_dir)
    assert_one_line_error(result, "pg_basebackup")
    assert all_gone(lab_pids(read_model(lab_dir)))  # the primary that had started was stopped
    assert run_cli("down", "--dir", lab_dir, "--purge").returncode == 0


@needs_haproxy
def test_cli_failover_and_status(kine, tmp_path):
    lab_dir = tmp_path / "ha"
    assert run_cli("up", "--datastore", "postgres-ha", "--replication", "async", "--db-proxy", "--replicas", "1",
                   "--dir", lab_dir).returncode == 0
    try:
        result = run_cli("fault", "failover", "--dir", lab_dir)
        assert result.returncode == 0 and "postgres-1 promoted" in result.stdout, result
        status = run_cli("status", "--dir", lab_dir)
        assert "postgres-1" in status.stdout and "primary" in status.stdout and "MAINT" in status.stdout
        key = f"/registry/configmaps/default/{uuid.uuid4().hex[:6]}"
        lab = kl.Lab.attach(lab_dir)
        wait_until(lambda: _real_write(lab, 0, key), timeout_s=20, what="a write after the CLI failover")
        lab.client(0).close()
    finally:
        assert run_cli("down", "--dir", lab_dir).returncode == 0
