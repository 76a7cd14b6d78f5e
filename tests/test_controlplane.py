"""A whole control plane on Kine without Docker: controller-managers, schedulers and kwok's simulated nodes as lab
processes. Real binaries (built into the tool cache), real Kine, real Postgres."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kinelab as kl
from conftest import all_gone, assert_one_line_error, lab_pids, read_model, run_cli, wait_until
from kinelab.observe import runs
from kinelab.provision.controlplane import MIB_BASE, MIB_PER_NODE, check_node_memory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def cluster(kine, tmp_path_factory):
    """Two apiservers (shared-db), a controller-manager and a scheduler on each, 10 simulated nodes."""
    with kl.Lab(replicas=2, datastore="postgres", apiservers=2, nodes=10,
                dir=tmp_path_factory.mktemp("cluster")) as lab:
        yield lab


def test_every_component_is_up_and_every_node_ready(cluster):
    status = cluster.status()
    names = [c["name"] for c in status["components"]]
    assert names == ["postgres", "kine-0", "kine-1", "kube-apiserver-0", "kube-apiserver-1",
                     "kube-controller-manager-0", "kube-scheduler-0", "kube-controller-manager-1",
                     "kube-scheduler-1", "kwok"]
    assert all(c["alive"] for c in status["components"])
    assert all(c["ready"] for c in status["components"] if c["role"] in ("apiserver", "control-plane"))
    (nodes,) = [c for c in status["components"] if c["role"] == "nodes"]
    assert nodes["nodes"] == nodes["ready_nodes"] == 10


def test_deployments_reach_their_replicas_and_the_cluster_writes_its_own_rows(cluster, tmp_path):
    from kubernetes import client

    out = tmp_path / "run.duckdb"
    summary = runs.load(cluster, out, mix="deployments", through="apiservers", rate=3, duration_s=10, workers=2)
    assert summary["writes"] >= 15 and summary["errors"] == 0
    apps = client.AppsV1Api(cluster.kubernetes_client(1))

    def converged():
        items = apps.list_namespaced_deployment("default").items
        return items and all((d.status.ready_replicas or 0) == d.spec.replicas == (d.status.updated_replicas or 0)
                             for d in items)
    wait_until(converged, timeout_s=60, interval_s=0.5, what="every Deployment to reach its replicas")
    pods = client.CoreV1Api(cluster.kubernetes_client(0)).list_namespaced_pod("default").items
    assert pods and all(p.status.phase == "Running" and p.spec.node_name.startswith("kinelab-node-") for p in pods)
    kl.capture(cluster, out, incremental=True)
    with kl.open_capture(out) as con:
        written = dict(con.execute("SELECT resource, count(*) FROM kine_ops WHERE id > ? GROUP BY 1",
                                   [summary["revisions"][0]]).fetchall())
    # the controller-manager made ReplicaSets and Pods, the scheduler bound them, kwok ran them and renewed leases
    assert {"deployments", "replicasets", "pods", "leases", "events"} <= set(written), written
    assert written["pods"] > written["deployments"]


def test_an_idle_cluster_renews_each_node_lease_every_10_s(cluster, tmp_path):
    summary = runs.load(cluster, tmp_path / "idle.duckdb", mix="idle", through="apiservers", duration_s=30)
    before, after = summary["revisions"]
    with kl.open_capture(tmp_path / "idle.duckdb") as con:
        renewals = con.execute("SELECT count(*) FROM kine_ops WHERE id > ? AND id <= ? AND op = 'update' AND "
                               "name LIKE '/registry/leases/kube-node-lease/%'", [before, after]).fetchall()[0][0]
        leaders = con.execute("SELECT count(*) FROM kine_ops WHERE id > ? AND id <= ? AND name IN "
                              "('/registry/leases/kube-system/kube-controller-manager', "
                              "'/registry/leases/kube-system/kube-scheduler')", [before, after]).fetchall()[0][0]
    # 10 nodes x 30 s / 10 s; kwok jitters each renewal a little
    assert 24 <= renewals <= 36, renewals
    # one leader each, renewing every 2 s: about 15 renewals each in 30 s, whatever the standby does
    assert 20 <= leaders <= 36, leaders


def test_killing_the_leading_controller_manager_hands_over_to_the_other(cluster):
    from kubernetes import client

    coordination = client.CoordinationV1Api(cluster.kubernetes_client(0))

    def holder() -> str:
        return coordination.read_namespaced_lease("kube-controller-manager", "kube-system").spec.holder_identity

    first = holder()
    (leader,) = [c for c in cluster.model.controllers if c.details["program"] == "kube-controller-manager"
                 and '"Successfully acquired lease" lock="kube-system/kube-controller-manager"'
                 in Path(c.records[0].log).read_text()]
    cluster.kill(leader.name)
    wait_until(lambda: holder() != first, timeout_s=60, interval_s=1, what="the standby controller-manager to lead")
    cluster.restart(leader.name)
    assert all(c["alive"] for c in cluster.status()["components"])


def test_cli_up_with_nodes_status_and_down(kine, tmp_path):
    lab_dir = tmp_path / "lab"
    up = run_cli("up", "--replicas", 1, "--nodes", 3, "--dir", lab_dir, "--json", timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        described = json.loads(up.stdout)
        (nodes,) = [c for c in described["components"] if c["role"] == "nodes"]
        assert nodes["ready_nodes"] == 3 and described["apiservers"][0]["ready"]
        table = run_cli("status", "--dir", lab_dir).stdout
        assert "3/3 nodes Ready" in table and "kube-controller-manager-0" in table
        pids = lab_pids(read_model(lab_dir))
        assert run_cli("down", "--dir", lab_dir, "--purge").returncode == 0
        assert all_gone(pids)
    finally:  # a `kinelab up` lab outlives a failed assertion: stop it whatever happened
        run_cli("down", "--dir", lab_dir, "--purge")


# --- bad input ------------------------------------------------------------------------------------------
def test_too_many_nodes_are_refused_with_the_estimate_before_anything_starts(kine, tmp_path):
    result = run_cli("up", "--nodes", 100_000_000, "--dir", tmp_path / "lab")
    assert_one_line_error(result, "--nodes 100000000 needs about", "GiB", "use --nodes")
    assert not (tmp_path / "lab" / "lab.json").exists()
    with pytest.raises(kl.KinelabError, match="use --nodes 1998 or fewer"):
        check_node_memory(5000, available_mib=(MIB_BASE + 1998.5 * MIB_PER_NODE) / 0.8)


def test_a_controller_manager_that_never_starts_is_one_line_and_nothing_runs(kine, tmp_path):
    broken = tmp_path / "kube-controller-manager"
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Kubernetes v1.37.2'; exit 0; fi\n"
                      "echo 'E1129 12:00:00.000000 1 run.go:72] \"command failed\" err=\"no such controller: x\"'\n"
                      "exit 1\n")
    broken.chmod(0o755)
    result = run_cli("up", "--replicas", 1, "--nodes", 2, "--dir", tmp_path / "lab",
                     env={"KINELAB_KUBE_CONTROLLER_MANAGER_BIN": str(broken)}, timeout=600)
    assert_one_line_error(result, "kube-controller-manager-0 exited with code 1 before it was ready",
                          "no such controller: x")
    model = read_model(tmp_path / "lab")
    assert model.state == "stopped" and model.component("kube-apiserver-0").processes  # it got that far
    assert all_gone([r.pid for r in model.records])
