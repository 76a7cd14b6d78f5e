"""kind clusters on Kine, for real: `Lab(backend="kind")` with Docker (the session's engine), the offline node
image, kind, kubeadm, real kubelets and pods, Kine and embedded Postgres on the host. The config is also decoded
strictly into kind's and kubeadm's published Go types (kinelab/provision/kindcheck, built once into the tool
cache)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

import kinelab as kl
from conftest import REPO, all_gone, assert_one_line_error, lab_pids, read_model, run_cli, wait_until
from kinelab.errors import ToolError, UsageError
from kinelab.provision import kind as k
from kinelab.provision import nodeimage
from kinelab.provision.docker import mounts_below
from kinelab.provision.tools import find_go

needs_go = pytest.mark.skipif(find_go() is None, reason="Go is needed to build the kind config checker")
KINE = ["198.19.7.1:2001", "198.19.7.1:2002", "198.19.7.1:2003"]


def patches(config: dict) -> dict:
    return {p["kind"]: p for p in map(yaml.safe_load, config["kubeadmConfigPatches"])}


# --- the config, no Docker needed ---------------------------------------------------------------------------
def test_each_mode_gives_the_apiservers_their_kine():
    assert k.kine_endpoints("single-kine", KINE, 3) == (["http://198.19.7.1:2001"], None)
    assert k.kine_endpoints("hybrid", KINE, 2) == ([f"http://{e}" for e in KINE], None)
    # shared-db: one endpoint for kubeadm's one ClusterConfiguration, forwarded on each node to its own Kine
    assert k.kine_endpoints("shared-db", KINE, 2) == (["http://127.0.0.1:2379"], KINE[:2])
    assert k.kine_endpoints("shared-db", KINE[:2], 3)[1] == [KINE[0], KINE[1], KINE[0]]
    assert k.kine_endpoints("shared-db", KINE, 1) == (["http://198.19.7.1:2001"], None)  # one apiserver: Kine 0
    with pytest.raises(UsageError, match="unknown mode 'ha'"):
        k.kine_endpoints("ha", KINE)


def test_the_config_turns_off_what_nobody_can_pull_and_fails_fast():
    config = k.cluster_config("lab", ["http://198.19.7.1:2001"], node_image="kinelab/node:x", workers=2,
                              apiserver_args={"watch-cache": False, "v": 2})
    assert config["networking"] == {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True,
                                    "kubeProxyMode": "none"}
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert all(n["image"] == "kinelab/node:x" and "extraMounts" not in n for n in config["nodes"])
    found = patches(config)
    assert found["ClusterConfiguration"]["etcd"] == {"external": {"endpoints": ["http://198.19.7.1:2001"]}}
    assert found["ClusterConfiguration"]["dns"] == {"disabled": True}
    # --apiserver-arg reaches the apiservers in the nodes as kubeadm's extraArgs
    assert found["ClusterConfiguration"]["apiServer"] == {"extraArgs": [{"name": "watch-cache", "value": "false"},
                                                                        {"name": "v", "value": "2"}]}
    assert found["InitConfiguration"]["timeouts"] == {"kubeletHealthCheck": "40s"}
    assert found["KubeletConfiguration"] == {"apiVersion": "kubelet.config.k8s.io/v1beta1",
                                             "kind": "KubeletConfiguration", "failCgroupV1": False}


def test_several_control_planes_get_a_placeholder_etcd_ca_and_their_own_kine_file(tmp_path):
    files = [tmp_path / "kine-0", tmp_path / "kine-1"]
    config = k.cluster_config("lab", ["http://127.0.0.1:2379"], node_image="i", control_planes=2,
                              etcd_ca_dir=tmp_path / "ca", kine_files=files)
    first, second = config["nodes"]
    assert first["extraMounts"] == [
        {"hostPath": str(tmp_path / "ca"), "containerPath": "/etc/kubernetes/pki/etcd", "readOnly": True},
        {"hostPath": str(files[0]), "containerPath": "/kinelab/kine-endpoint", "readOnly": True}]
    assert second["extraMounts"] == [{"hostPath": str(files[1]), "containerPath": "/kinelab/kine-endpoint",
                                      "readOnly": True}]
    ca = k.placeholder_etcd_ca(tmp_path / "ca")
    assert (ca / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="placeholder etcd CA"):
        k.cluster_config("lab", [], node_image="i", control_planes=2)


def test_nodes_are_named_as_kind_names_them():
    assert k.node_names("lab", 2, 2) == [
        ("lab-control-plane", "control-plane"), ("lab-control-plane2", "control-plane"), ("lab-worker", "worker"),
        ("lab-worker2", "worker"), ("lab-external-load-balancer", "external-load-balancer")]
    assert k.node_names("lab", 1, 0) == [("lab-control-plane", "control-plane")]


@pytest.mark.parametrize("kwargs, says", [
    ({"mode": "sideways"}, "unknown mode 'sideways'"),
    ({"cluster_name": "Upper_Case"}, "must be lowercase letters"),
    ({"workers": -1}, "--workers cannot be negative"),
    ({"replicas": 0}, "at least one Kine replica"),
    ({"nodes": 3}, "simulated nodes (--nodes) are the local backend's"),
    ({"controllers": False}, "always run a controller-manager and a scheduler"),
    ({"datastore": "etcd"}, "a lab of etcd members runs on the local backend only"),
    ({"datastore": "postgres-ha"}, "run on the local backend only"),
    ({"balancer": True, "mode": "hybrid"}, "run on the local backend only"),
])
def test_what_kind_cannot_do_is_refused_before_anything_starts(tmp_path, kwargs, says):
    with pytest.raises(UsageError) as info:
        kl.Lab(**{"backend": "kind", "dir": tmp_path / "lab", **kwargs})
    assert says in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "lab").exists()


def test_on_kind_every_apiserver_is_a_control_plane_node_with_its_controllers(tmp_path):
    lab = kl.Lab(backend="kind", replicas=2, dir=tmp_path / "lab")
    assert (lab.spec.apiservers, lab.spec.controllers, lab.spec.workers) == (1, True, 0)
    assert kl.Lab(backend="kind", apiservers=3, workers=2, cluster_name="x").spec.apiservers == 3
    with pytest.raises(UsageError, match="kind's"):  # and the other way round
        kl.Lab(backend="local", kubelet_config={"maxPods": 20})


@needs_go
@pytest.mark.parametrize("mode, control_planes", [("single-kine", 1), ("hybrid", 1), ("shared-db", 3)])
def test_generated_config_decodes_strictly_into_the_published_types(tmp_path, mode, control_planes):
    endpoints, own = k.kine_endpoints(mode, KINE, control_planes)
    config = k.cluster_config("kinelab", endpoints, node_image="kinelab/node:x", control_planes=control_planes,
                              workers=1, etcd_ca_dir=tmp_path / "ca", apiserver_args={"watch-cache": "false"},
                              kine_files=[tmp_path / f"k{i}" for i in range(control_planes)] if own else None)
    assert k.validate_kind_config(k.config_yaml(config)) == []


@needs_go
@pytest.mark.parametrize("old, new, expected", [
    ("apiServerAddress", "apiServerAdress", 'unknown field "networking.apiServerAdress"'),
    ("external:", "externl:", 'unknown field "etcd.externl"'),
    ("kubeletHealthCheck", "kubeletHealtCheck", 'unknown field "timeouts.kubeletHealtCheck"'),
    ("failCgroupV1", "failCGroupV1", 'unknown field "failCGroupV1"'),
    ("extraArgs", "extraArg", 'unknown field "apiServer.extraArg"'),
])
def test_a_misspelt_field_fails_validation(old, new, expected):
    text = k.config_yaml(k.cluster_config("kinelab", ["http://198.19.7.1:2001"], node_image="i",
                                          apiserver_args={"v": 2}))
    assert old in text
    errors = k.validate_kind_config(text.replace(old, new, 1))
    assert any(expected in e for e in errors), errors


def test_a_failed_image_build_names_its_log(tmp_path, monkeypatch):
    if not nodeimage.shutil.which("debootstrap", path="/usr/sbin:/sbin:/usr/bin"):
        pytest.skip("debootstrap is not installed (.ci/run installs it)")
    monkeypatch.setenv("KINELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KINELAB_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # nothing listens there
    with pytest.raises(ToolError) as info:
        nodeimage.ensure_rootfs(log=lambda _: None)
    log = nodeimage.rootfs_path().with_suffix(".build.log")
    message = str(info.value)
    assert message.startswith("debootstrap of Debian bookworm failed (exit 1): ") and "\n" not in message
    assert message.endswith(f"see {log}") and log.is_file()
    assert not nodeimage.rootfs_path().exists() and list(log.parent.glob("rootfs-*/")) == []
    assert mounts_below([tmp_path]) == []


# --- Docker: the network and the image ------------------------------------------------------------------------
def test_lab_networks_take_free_subnets_outside_the_private_ranges(docker_engine):
    names = [f"kinelab-test-net-{i}" for i in range(2)]
    try:
        first, second = (k.create_network(docker_engine, name, {"kinelab.test": "1"}) for name in names)
        for net in (first, second):
            subnet = k.ipaddress.ip_network(net.subnet)
            assert subnet.subnet_of(k.ipaddress.ip_network("198.18.0.0/15")) and subnet.prefixlen == 24
            assert net.gateway == str(next(subnet.hosts()))
        assert first.subnet != second.subnet
        with pytest.raises(UsageError, match="already exists"):
            k.create_network(docker_engine, names[0])
        planned = k.free_subnet(docker_engine)  # a planned subnet is used when still free
        assert k.create_network(docker_engine, "kinelab-test-net-2", subnet=str(planned)).subnet == str(planned)
        names.append("kinelab-test-net-2")
    finally:
        assert all(k.remove_network(docker_engine, name) for name in names)
    assert not k.remove_network(docker_engine, names[0])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_node_image_is_kind_shaped(docker_engine, node_image):
    config = json.loads(docker_engine.docker("image", "inspect", "--format", "{{json .Config}}",
                                             node_image.reference).stdout)
    assert config["Entrypoint"] == ["/usr/local/bin/kinelab-entrypoint", "/sbin/init"] and not config.get("Cmd")
    assert config["StopSignal"] == "SIGRTMIN+3" and "container=docker" in config["Env"]
    said = docker_engine.docker("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", node_image.reference,
                                "-c", "cat /kind/version; kubelet --version; kubeadm version -o short; "
                                      "ls /usr/lib/cni/bridge /usr/lib/cni/host-local").stdout.decode().split()
    assert said[:4] == ["v1.37.2", "Kubernetes", "v1.37.2", "v1.37.2"], said
    assert [n.rsplit(":", 1)[0].rsplit("/", 1)[-1] for n in node_image.preloaded] == \
        ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "pause", "workload"]


# --- real clusters -----------------------------------------------------------------------------------------
def components(status: dict, role: str) -> list:
    return [c for c in status["components"] if c["role"] == role]


def containers(engine, cluster: str) -> bytes:
    return engine.docker("ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={cluster}").stdout


def web(image: str, replicas: int) -> dict:
    """A Deployment of the preloaded workload image, available only once the program answers its probe."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "web", "image": image, "imagePullPolicy": "Never",
                                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                        "periodSeconds": 2}}]}}}}


def kine_peers(lab: kl.Lab) -> dict:
    """Replica endpoint -> the addresses connected to it (the apiservers' nodes, or their forwarders)."""
    peers = {}
    for replica in lab.status()["replicas"]:
        port = int(replica["endpoint"].rsplit(":", 1)[1])
        conns = psutil.Process(replica["pid"]).net_connections("tcp")
        peers[replica["endpoint"]] = {c.raddr.ip for c in conns if c.status == psutil.CONN_ESTABLISHED
                                      and c.laddr.port == port and c.raddr}
    return peers


def rows(capture: Path, sql: str) -> list:
    with kl.open_capture(capture) as con:
        return con.execute(sql).fetchall()


def nothing_left(engine, lab_dir: Path, name: str) -> None:
    assert containers(engine, name) == b""
    assert engine.docker("network", "inspect", f"kinelab-{name}", check=False).returncode != 0
    assert all_gone(lab_pids(read_model(lab_dir)))


@pytest.fixture(scope="module")
def shared_db_cluster(docker_engine, node_image, tmp_path_factory):
    """`kinelab up --backend kind`: two control planes, each apiserver on its own Kine, one worker."""
    lab_dir = tmp_path_factory.mktemp("kind") / "lab"
    started = time.monotonic()
    result = run_cli("up", "--backend", "kind", "--name", "kl-test-shared", "--mode", "shared-db", "--apiservers", 2,
                     "--workers", 1, "--replicas", 2, "--dir", lab_dir, "--json", timeout=1200)
    print(f"kinelab up --backend kind: {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stderr
    try:
        yield json.loads(result.stdout)
    finally:  # the down test stops and removes it; this is for a run that failed before
        if (lab_dir / "lab.json").exists():
            run_cli("down", "--dir", lab_dir, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_cluster_on_kine_runs_pods_and_writes_what_a_cluster_writes(shared_db_cluster, node_image, tmp_path):
    from kubernetes import client

    status = shared_db_cluster
    lab = kl.Lab.attach(status["dir"])
    cluster, = components(status, "cluster")
    print("start times", {c.name: c.start_s for c in lab.model.components}, "kind", cluster)
    assert status["state"] == "running" and status["mode"] == "shared-db" and status["backend"] == "kind"
    assert all(c["alive"] for c in status["components"]), status["components"]
    nodes = {n["name"]: n["kind_role"] for n in components(status, "node")}
    assert sorted(nodes.values()) == ["control-plane", "control-plane", "external-load-balancer", "worker"]
    assert [n["ready"] for n in components(status, "node") if n["kind_role"] != "external-load-balancer"] == \
        [True] * 3
    assert status["kubeconfig"] == cluster["kubeconfig"] and Path(status["kubeconfig"]).is_file()

    # shared-db: each apiserver (one per control-plane node) talks to its own Kine and to no other
    apiservers = status["apiservers"]
    assert [a["etcd_servers"] for a in apiservers] == [[f"http://{r['endpoint']}"] for r in status["replicas"]]
    assert all(a["ready"] for a in apiservers) and [a["node"] for a in apiservers] == \
        ["kl-test-shared-control-plane", "kl-test-shared-control-plane2"]
    addresses = [a["url"].split("//")[1].split(":")[0] for a in apiservers]
    peers = kine_peers(lab)
    assert [peers[r["endpoint"]] for r in status["replicas"]] == [{a} for a in addresses], peers

    # real pods, through the lab's own client for apiserver 1: the preloaded workload image
    apps = client.AppsV1Api(lab.kubernetes_client(1))
    apps.create_namespaced_deployment("default", web(node_image.workload_image, 3))
    wait_until(lambda: apps.read_namespaced_deployment("web", "default").status.available_replicas == 3,
               timeout_s=120, interval_s=1, what="3 available replicas")
    pods = client.CoreV1Api(lab.kubernetes_client(0)).list_namespaced_pod("default", label_selector="app=web").items
    assert {p.spec.node_name for p in pods} <= set(nodes) and all(p.status.pod_ip for p in pods)

    # what the kubelets, controller-manager and scheduler wrote is in Kine's table
    capture = tmp_path / "kind.duckdb"
    assert run_cli("capture", "--dir", status["dir"], "--out", capture).returncode == 0
    node_leases_sql = ("SELECT object_name, count(*) FROM kine_ops WHERE resource = 'leases' AND "
                       "namespace = 'kube-node-lease' GROUP BY 1")

    kubelets = {n for n, r in nodes.items() if r != "external-load-balancer"}

    def renewed() -> bool:  # each node renews its Lease every 10 s; the node whose kubelet came up last, later
        kl.capture(lab, capture, incremental=True)
        counts = dict(rows(capture, node_leases_sql))
        return set(counts) == kubelets and all(count >= 3 for count in counts.values())

    wait_until(renewed, timeout_s=120, interval_s=2, what="three writes of every node's Lease")
    node_leases = rows(capture, node_leases_sql)
    assert {name for name, _ in node_leases} == {n for n, r in nodes.items() if r != "external-load-balancer"}
    leaders = dict(rows(capture, "SELECT object_name, count(*) FROM kine_ops WHERE resource = 'leases' AND "
                                 "namespace = 'kube-system' AND object_name IN ('kube-controller-manager', "
                                 "'kube-scheduler') GROUP BY 1"))
    assert set(leaders) == {"kube-controller-manager", "kube-scheduler"} and min(leaders.values()) >= 3, leaders
    pod_updates = rows(capture, "SELECT count(*) FROM kine_ops WHERE resource = 'pods' AND namespace = 'default' "
                                "AND op = 'update'")[0][0]
    assert pod_updates >= 3  # the kubelets' status patches
    events = rows(capture, "SELECT count(*), count(*) FILTER (WHERE lease <> 0) FROM kine_ops "
                           "WHERE resource = 'events'")[0]
    assert events[0] > 0 and events[0] == events[1]  # every event carries its TTL lease
    assert rows(capture, "SELECT count(*) FROM kine_ops WHERE resource = 'nodes' AND op = 'update'")[0][0] >= 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_through_the_apiservers_of_a_kind_cluster(shared_db_cluster, tmp_path):
    out = tmp_path / "load.duckdb"
    result = run_cli("load", "--dir", shared_db_cluster["dir"], "--through", "apiservers", "--mix", "configmaps",
                     "--ops", 40, "--workers", 2, "--out", out, "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["writes"] > 0
    by_apiserver = dict(rows(out, "SELECT replica, count(*) FROM writes GROUP BY 1"))
    assert set(by_apiserver) == {0, 1}, by_apiserver  # round-robin over both control planes
    # every acknowledged write is the row the capture holds at that revision
    assert rows(out, "SELECT count(*) FROM writes w LEFT JOIN kine_rows k ON k.id = w.revision AND k.name = w.key "
                     "WHERE k.id IS NULL")[0][0] == 0
    # deployments: the controller-manager, the scheduler and the real kubelets do the rest
    out = tmp_path / "deployments.duckdb"
    deployments = run_cli("load", "--dir", shared_db_cluster["dir"], "--through", "apiservers", "--mix",
                          "deployments", "--ops", 12, "--out", out, "--json", timeout=600)
    assert deployments.returncode == 0, deployments.stderr
    lab = kl.Lab.attach(shared_db_cluster["dir"])

    def pods_run() -> int:  # pods bound by the scheduler (an update), then their status written by a kubelet
        kl.capture(lab, out, incremental=True)
        return rows(out, "SELECT count(*) FROM (SELECT object_name FROM kine_ops WHERE resource = 'pods' AND op = "
                         "'update' AND object_name LIKE 'deploy-%' GROUP BY 1 HAVING count(*) >= 2)")[0][0]

    wait_until(pods_run, timeout_s=120, interval_s=3, what="a kubelet to write a deployment's pod status")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_cluster_of_the_same_name_is_refused_and_harms_nothing(shared_db_cluster, docker_engine, tmp_path):
    before = containers(docker_engine, "kl-test-shared")
    clash = kl.Lab(backend="kind", cluster_name="kl-test-shared", replicas=1, dir=tmp_path / "clash")
    with pytest.raises(UsageError) as info:
        clash.start()
    assert "a kind cluster named kl-test-shared already exists" in str(info.value)
    assert containers(docker_engine, "kl-test-shared") == before
    assert kl.Lab.attach(shared_db_cluster["dir"]).status()["state"] == "running"
    assert not (tmp_path / "clash" / "lab.json").exists()  # refused before anything was planned or started


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_down_and_down_again(shared_db_cluster, docker_engine):
    lab_dir = Path(shared_db_cluster["dir"])
    table = run_cli("status", "--dir", lab_dir)
    assert table.returncode == 0 and "kl-test-shared-control-plane2" in table.stdout and "Ready" in table.stdout
    assert "kinelab-kl-test-shared" in table.stdout and "kube-apiserver-1" in table.stdout
    dsn = run_cli("dsn", "--dir", lab_dir)
    assert dsn.returncode == 0 and dsn.stdout.startswith("postgres://")
    result = run_cli("down", "--dir", lab_dir, timeout=600)
    # 2 Kine, Postgres, 4 node containers (2 control planes, a worker, the load balancer; the apiservers go with
    # their nodes)
    assert result.returncode == 0 and "stopped 7 process(es) and container(s)" in result.stdout, result
    nothing_left(docker_engine, lab_dir, "kl-test-shared")
    again = run_cli("down", "--dir", lab_dir)  # the same rule as on every backend: harmless, and says so
    assert again.returncode == 0 and "was already stopped; nothing was running" in again.stdout, again
    # a new cluster cannot start on the old one's datastore (kubeadm finds its Ready nodes): refused, data kept
    before = (lab_dir / "lab.json").read_text()
    assert_one_line_error(run_cli("up", "--backend", "kind", "--name", "kl-test-shared", "--dir", lab_dir),
                          "holds the datastore of an earlier cluster", "--purge")
    assert (lab_dir / "lab.json").read_text() == before
    purged = run_cli("down", "--dir", lab_dir, "--purge")
    assert purged.returncode == 0 and not lab_dir.exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_hybrid_uses_every_kine_and_the_faults_reach_kine_nodes_and_apiservers(docker_engine, node_image, tmp_path):
    from kubernetes import client

    lab = kl.Lab(backend="kind", cluster_name="kl-test-hybrid", replicas=2, mode="hybrid", workers=1,
                 dir=tmp_path / "lab")
    with lab:
        status = lab.status()
        (apiserver,) = status["apiservers"]
        assert apiserver["etcd_servers"] == [f"http://{e}" for e in lab.endpoints] and apiserver["ready"]
        wait_until(lambda: all(kine_peers(lab).values()), timeout_s=30, what="connections to every Kine")
        (network,) = components(status, "network")
        assert all(e.startswith(f"{network['gateway']}:") for e in lab.endpoints)  # Kine on the network's gateway
        core = client.CoreV1Api(lab.kubernetes_client(0))

        def configmap(name: str) -> bool:
            try:
                core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(
                    name=name)), _request_timeout=10)
                return True
            except Exception:
                return False

        # Kine 0 killed: the apiserver writes through Kine 1, and comes back to Kine 0 once it restarts
        lab.kill(0)
        wait_until(lambda: configmap("after-kill"), timeout_s=60, interval_s=1, what="a write with Kine 0 down")
        lab.restart(0)
        wait_until(lambda: kine_peers(lab)[lab.endpoints[0]], timeout_s=60, interval_s=1,
                   what="the apiserver back on the restarted Kine 0")
        # a worker node paused is frozen, not gone; killed (docker kill) it is gone; restarted (docker start), its
        # kubelet renews its Lease and the node is Ready again
        lab.pause("kl-test-hybrid-worker")
        worker = next(n for n in components(lab.status(), "node") if n["kind_role"] == "worker")
        assert worker["alive"] and worker["state"] == "paused"
        lab.resume("kl-test-hybrid-worker")
        lab.kill("kl-test-hybrid-worker")
        worker = next(n for n in components(lab.status(), "node") if n["kind_role"] == "worker")
        assert not worker["alive"] and worker["state"] == "exited"
        lab.restart("kl-test-hybrid-worker")
        assert next(n for n in components(lab.status(), "node") if n["kind_role"] == "worker")["ready"]
        # the apiserver is a static pod: restarted in its node, and killed, the kubelet starts it again
        lab.restart("kube-apiserver-0")
        assert lab.status()["apiservers"][0]["ready"] and configmap("after-restart")
        lab.kill("kube-apiserver-0")
        wait_until(lambda: configmap("after-apiserver-kill"), timeout_s=120, interval_s=1,
                   what="the kubelet to start the killed apiserver again")
        # it takes writes a moment before every /readyz check passes
        wait_until(lambda: lab.status()["apiservers"][0]["ready"], timeout_s=60, interval_s=1,
                   what="the restarted apiserver to be ready")
        with pytest.raises(UsageError, match="faults do not reach"):
            lab.kill("kl-test-hybrid")
        pids = lab_pids(lab.model)
    assert containers(docker_engine, "kl-test-hybrid") == b"" and all_gone(pids)
    assert docker_engine.docker("network", "inspect", "kinelab-kl-test-hybrid", check=False).returncode != 0
    assert not (tmp_path / "lab" / "lab.json").exists() or read_model(tmp_path / "lab").state == "stopped"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_cluster_that_never_becomes_ready_says_what_the_kubelet_said_and_leaves_nothing(docker_engine, node_image,
                                                                                         tmp_path):
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("breaks the kubelet the cgroup v1 way; this host is on cgroup v2")
    lab = kl.Lab(backend="kind", cluster_name="kl-test-broken", replicas=1, dir=tmp_path / "lab",
                 kubelet_config={"failCgroupV1": True})
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        lab.start()
    message = str(info.value)
    print(f"failed after {time.monotonic() - started:.0f}s: {message}")
    assert message.startswith("kind create cluster kl-test-broken failed: ") and "\n" not in message
    assert "kl-test-broken-control-plane kubelet: " in message and "cgroup v1" in message
    assert "; containerd: " in message and message.endswith(f"log {tmp_path}/lab/cluster/logs/kind-create.log")
    assert (tmp_path / "lab" / "cluster" / "logs" / "kl-test-broken-control-plane-kubelet.log").stat().st_size
    assert read_model(tmp_path / "lab").state == "stopped"
    nothing_left(docker_engine, tmp_path / "lab", "kl-test-broken")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_killed_owner_leaves_nothing_running(docker_engine, node_image, tmp_path):
    lab_dir = tmp_path / "lab"
    # the replica on another Kine release: a host process like any lab's (kind's nodes do not care)
    script = ("import kinelab as kl\n"
              f"kl.Lab(backend='kind', cluster_name='kl-test-reaped', replicas=1, mode='single-kine', "
              f"kine_version='v0.17.2', dir={str(lab_dir)!r}).start()\n"
              "print('up', flush=True)\n"
              "import time; time.sleep(900)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "up"
        model = read_model(lab_dir)
        assert model.component("kube-apiserver-0").details["etcd_servers"] == [f"http://{model.endpoints[0]}"]
        assert model.kine_versions == ["v0.17.2"]
        assert containers(docker_engine, "kl-test-reaped")
    finally:
        proc.kill()  # as SIGKILL, a crash or a kernel restart would
        proc.wait()
    wait_until(lambda: read_model(lab_dir).state == "stopped" and not containers(docker_engine, "kl-test-reaped"),
               timeout_s=180, interval_s=1, what="the reaper to delete the cluster")
    nothing_left(docker_engine, lab_dir, "kl-test-reaped")
