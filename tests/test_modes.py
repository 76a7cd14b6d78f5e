"""Labs with real kube-apiservers in the three deployment modes, and what one Kine failure does to each."""

import json
import uuid

import pytest

import kinelab as kl
from conftest import run_cli, wait_until
from kinelab.provision.apiserver import can_build, find_apiserver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(find_apiserver() is None and not can_build(),
                                 reason="kube-apiserver is not built and Go 1.26+ is missing to build it")]


def _core(lab, index):
    from kubernetes import client

    return client.CoreV1Api(lab.kubernetes_client(index))


def _ready(lab) -> list:
    return [a["ready"] for a in lab.status()["apiservers"]]


@pytest.mark.parametrize("mode", ["shared-db", "single-kine", "hybrid"])
def test_each_mode_serves_and_shares_state(kine, tmp_path, mode):
    from kubernetes import client

    with kl.Lab(replicas=3, datastore="postgres", apiservers=2, mode=mode, dir=tmp_path / "lab") as lab:
        servers = [a["etcd_servers"] for a in lab.status()["apiservers"]]
        expected = {"shared-db": [[lab.endpoints[0]], [lab.endpoints[1]]],
                    "single-kine": [[lab.endpoints[0]], [lab.endpoints[0]]],
                    "hybrid": [lab.endpoints, lab.endpoints]}[mode]
        assert servers == [[f"http://{e}" for e in s] for s in expected]
        name = f"cm-{uuid.uuid4().hex[:6]}"
        _core(lab, 0).create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data={"mode": mode}))
        seen = wait_until(lambda: _safe_read(lab, 1, name), timeout_s=20, what="apiserver 1 to see the ConfigMap")
        assert seen.data == {"mode": mode}
        out = tmp_path / "c.duckdb"
        kl.capture(lab, out)
        con = kl.open_capture(out)
        rows = dict(con.execute("""SELECT name, kind FROM kine_ops WHERE op IN ('create', 'update')
                                   AND (resource IN ('configmaps', 'masterleases', 'namespaces'))""").fetchall())
        con.close()
        assert rows[f"/registry/configmaps/default/{name}"] == "ConfigMap"
        assert any(k.startswith("/registry/masterleases/") for k in rows)
        assert rows["/registry/namespaces/default"] == "Namespace"


def _safe_read(lab, index, name):
    from kubernetes.client.exceptions import ApiException

    try:
        return _core(lab, index).read_namespaced_config_map(name, "default")
    except ApiException:
        return None


def test_single_kine_is_a_single_point_of_failure(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres", apiservers=2, mode="single-kine", dir=tmp_path / "lab") as lab:
        assert _ready(lab) == [True, True]
        lab.kill(0)
        wait_until(lambda: _ready(lab) == [False, False], timeout_s=60, what="every apiserver to fail /readyz")
        lab.restart(0)
        wait_until(lambda: _ready(lab) == [True, True], timeout_s=90, what="the apiservers to recover")


@pytest.mark.parametrize("mode", ["shared-db", "hybrid"])
def test_killing_one_kine_leaves_the_cluster_serving(kine, tmp_path, mode):
    with kl.Lab(replicas=2, datastore="postgres", apiservers=2, mode=mode, dir=tmp_path / "lab") as lab:
        lab.kill(1)
        survivors = [0] if mode == "shared-db" else [0, 1]  # hybrid apiservers fail over to replica 0
        for index in survivors:
            name = f"after-kill-{index}-{uuid.uuid4().hex[:4]}"
            wait_until(lambda: _create(lab, index, name), timeout_s=60, what=f"apiserver {index} to take writes")
        if mode == "shared-db":
            wait_until(lambda: _ready(lab)[1] is False, timeout_s=60, what="apiserver 1 to report its Kine gone")


def _create(lab, index, name) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        _core(lab, index).create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name)))
        return True
    except (ApiException, HTTPError):
        return False


def test_cli_up_with_apiservers_reports_them(kine, tmp_path):
    lab_dir = tmp_path / "cli"
    up = run_cli("up", "--replicas", 2, "--apiservers", 1, "--mode", "hybrid", "--dir", lab_dir, "--json",
                 timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        described = json.loads(up.stdout)
        (apiserver,) = described["apiservers"]
        assert apiserver["url"].startswith("https://127.0.0.1:") and apiserver["ready"]
        assert apiserver["etcd_servers"] == [f"http://{r['endpoint']}" for r in described["replicas"]]
        assert described["mode"] == "hybrid"
    finally:
        assert run_cli("down", "--dir", lab_dir).returncode == 0


def test_the_lag_comes_from_kines_poll_not_the_apiserver_watch_cache(kine, tmp_path):
    """shared-db, writes through apiserver 0: apiserver 1's watch lags by replica 1's poll, cache or no cache.
    Every watch event is stored and names, by its resourceVersion, the Kine row of its object."""
    import statistics

    from kinelab.observe.apiprobe import apiserver_watch_lag

    means = {}
    for cache in (True, False):
        out = tmp_path / f"watch-cache-{cache}.duckdb"
        with kl.Lab(replicas=2, datastore="postgres", apiservers=2, mode="shared-db",
                    apiserver_args={"watch-cache": cache}) as lab:
            lags = apiserver_watch_lag(lab, writes=10, out=out)
        means[cache] = [statistics.mean(lag.lag_ms for lag in lags if lag.observer == a) for a in (0, 1)]
        assert len(lags) == 20  # every write reached both watches
        _assert_stored_events_are_the_rows(out, lags)
    for cache, (writer_side, other_side) in means.items():
        assert writer_side < 100 and 150 < other_side < 1100, (cache, means)


def _assert_stored_events_are_the_rows(out, lags) -> None:
    con = kl.open_capture(out)
    [(run_id, kind, summary)] = con.execute("SELECT run_id, kind, summary FROM runs").fetchall()
    rows = con.execute("""SELECT apiserver, writer, name, type, resource_version, lag_ms, key, row_name, created,
                                 deleted, kind FROM apiserver_watch_rows WHERE run_id = ? ORDER BY ALL""",
                       [run_id]).fetchall()
    con.close()
    assert kind == "apiserver-watchlag" and json.loads(summary)["events"] == len(rows) == len(lags)
    assert sorted((r[0], r[1], r[2], r[4]) for r in rows) == sorted(
        (lag.observer, lag.writer, lag.name, lag.resource_version) for lag in lags)
    assert {lag.name: round(lag.lag_ms, 6) for lag in lags if lag.observer == 1} == \
        {r[2]: round(r[5], 6) for r in rows if r[0] == 1}
    for apiserver, _, name, type_, _, _, key, row_name, created, deleted, value_kind in rows:
        assert key == f"/registry/configmaps/default/{name}" and row_name == key, (apiserver, name, row_name)
        assert (type_, created, deleted, value_kind) == ("ADDED", 1, 0, "ConfigMap")


@pytest.mark.parametrize("mix, namespace", [("configmaps", "default"), ("leases", "kube-node-lease"),
                                            ("events", "default")])
def test_load_through_the_apiservers_lands_at_the_revisions_they_returned(kine, tmp_path, mix, namespace):
    from kinelab.drive.kube import run_kube_load

    with kl.Lab(replicas=3, datastore="postgres", apiservers=2, mode="shared-db", dir=tmp_path / "lab") as lab:
        calls = run_kube_load(lab, mix, ops=120, workers=2)
        kl.capture(lab, tmp_path / "c.duckdb")
    assert len(calls) == 120 and all(c.ok for c in calls), [c.error for c in calls if not c.ok][:3]
    assert {c.apiserver for c in calls} == {0, 1}
    con = kl.open_capture(tmp_path / "c.duckdb")
    rows = dict(con.execute("SELECT id, name FROM kine_latest").fetchall())
    con.close()
    written = [c for c in calls if c.verb in ("create", "update")]
    assert written and all(rows.get(c.resource_version) == f"/registry/{c.resource}/{namespace}/{c.name}"
                           for c in written)  # resourceVersion is the Kine revision of the row
    mutating = sorted(c.latency_ms for c in calls if c.verb != "list")
    assert mutating[int(0.99 * (len(mutating) - 1))] < 1000  # the clusterloader2 SLO for mutating calls


def test_capture_shows_the_apiservers_own_rows(kine, tmp_path):
    """Events carry Kine lease 3660 (--event-ttl 1h + the lease manager's 60 s), and the apiserver's compactor
    writes compact_rev_key_apiserver (Kine's substitute for the apiserver's compact_rev_key)."""
    import time

    from kinelab.drive.kube import run_kube_load

    with kl.Lab(replicas=2, datastore="postgres", apiservers=1, apiserver_args={"etcd-compaction-interval": "2s"},
                dir=tmp_path / "lab") as lab:
        assert all(c.ok for c in run_kube_load(lab, "events", ops=10, workers=1))
        time.sleep(5)
        kl.capture(lab, tmp_path / "c.duckdb")
    con = kl.open_capture(tmp_path / "c.duckdb")
    events = con.execute("SELECT DISTINCT lease FROM kine_ops WHERE resource = 'events' AND op = 'create'").fetchall()
    compactions = con.execute("SELECT count(*) FROM kine_ops WHERE name = 'compact_rev_key_apiserver'").fetchall()
    kinds = con.execute("SELECT DISTINCT kind FROM kine_ops WHERE resource = 'events'").fetchall()
    con.close()
    assert events == [(3660,)] and kinds == [("Event",)]
    assert compactions[0][0] >= 1
