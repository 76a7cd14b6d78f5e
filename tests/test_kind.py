"""kind clusters on Kine, for real: Docker (the session's engine), the offline node image, kind, kubeadm, real
kubelets and pods, Kine and embedded Postgres on the host. The config is also decoded strictly into kind's
and kubeadm's published Go types (kinelab/provision/kindcheck, built once into the tool cache)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import psutil
import pytest
import yaml

import kinelab as kl
from conftest import assert_one_line_error, run_cli, wait_until
from kinelab.errors import ToolError, UsageError
from kinelab.provision import kind as k
from kinelab.provision import nodeimage
from kinelab.provision.docker import mounts_below

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="Go is needed to build the kind config checker")
cluster_test = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the first run builds the images (minutes)
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
    config = k.cluster_config("lab", ["http://198.19.7.1:2001"], node_image="kinelab/node:x", workers=2)
    assert config["networking"] == {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True,
                                    "kubeProxyMode": "none"}
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert all(n["image"] == "kinelab/node:x" and "extraMounts" not in n for n in config["nodes"])
    found = patches(config)
    assert found["ClusterConfiguration"]["etcd"] == {"external": {"endpoints": ["http://198.19.7.1:2001"]}}
    assert found["ClusterConfiguration"]["dns"] == {"disabled": True}
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


@pytest.mark.parametrize("kwargs, says", [
    ({"mode": "sideways"}, "unknown mode 'sideways'"),
    ({"name": "Upper_Case"}, "must be lowercase letters"),
    ({"workers": -1}, "--workers cannot be negative"),
    ({"control_planes": 0}, "at least one control-plane node"),
    ({"replicas": 0}, "at least one Kine replica"),
])
def test_bad_lab_arguments_are_refused_before_anything_starts(tmp_path, kwargs, says):
    with pytest.raises(UsageError, match=says):
        k.KindLab(**{"name": "kl-bad", "dir": tmp_path / "lab", **kwargs})
    assert not (tmp_path / "lab").exists()


@needs_go
@pytest.mark.parametrize("mode, control_planes", [("single-kine", 1), ("hybrid", 1), ("shared-db", 3)])
def test_generated_config_decodes_strictly_into_the_published_types(tmp_path, mode, control_planes):
    endpoints, own = k.kine_endpoints(mode, KINE, control_planes)
    config = k.cluster_config("kinelab", endpoints, node_image="kinelab/node:x", control_planes=control_planes,
                              workers=1, etcd_ca_dir=tmp_path / "ca",
                              kine_files=[tmp_path / f"k{i}" for i in range(control_planes)] if own else None)
    assert k.validate_kind_config(k.config_yaml(config)) == []


@needs_go
@pytest.mark.parametrize("old, new, expected", [
    ("apiServerAddress", "apiServerAdress", 'unknown field "networking.apiServerAdress"'),
    ("external:", "externl:", 'unknown field "etcd.externl"'),
    ("kubeletHealthCheck", "kubeletHealtCheck", 'unknown field "timeouts.kubeletHealtCheck"'),
    ("failCgroupV1", "failCGroupV1", 'unknown field "failCGroupV1"'),
])
def test_a_misspelt_field_fails_validation(old, new, expected):
    text = k.config_yaml(k.cluster_config("kinelab", ["http://198.19.7.1:2001"], node_image="i"))
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
def workload(image: str, replicas: int) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "web", "image": image, "imagePullPolicy": "Never",
                                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                        "periodSeconds": 2}}]}}}})


def kine_peers(lab: kl.Lab) -> dict:
    """Replica endpoint -> the addresses connected to it (the apiservers' nodes, or their forwarders)."""
    peers = {}
    for replica in lab.status()["replicas"]:
        host, port = replica["endpoint"].rsplit(":", 1)
        conns = psutil.Process(replica["pid"]).net_connections("tcp")
        peers[replica["endpoint"]] = {c.raddr.ip for c in conns if c.status == psutil.CONN_ESTABLISHED
                                      and c.laddr.port == int(port) and c.raddr}
    return peers


def rows(capture: Path, sql: str) -> list:
    con = kl.open_capture(capture)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def shared_db_cluster(docker_engine, node_image, tmp_path_factory):
    """`kinelab up --backend kind`: two control planes, each apiserver on its own Kine, one worker."""
    lab_dir = tmp_path_factory.mktemp("kind") / "lab"
    started = time.monotonic()
    result = run_cli("up", "--backend", "kind", "--name", "kl-test-shared", "--mode", "shared-db",
                     "--control-planes", 2, "--workers", 1, "--replicas", 2, "--dir", lab_dir, "--json", timeout=1200)
    print(f"kinelab up --backend kind: {time.monotonic() - started:.0f}s")
    assert result.returncode == 0, result.stderr
    try:
        yield json.loads(result.stdout)
    finally:  # the down test stops and removes it; this is for a run that failed before
        if (lab_dir / "lab.json").exists() and k.KindLab.attach(lab_dir).state != "stopped":
            run_cli("down", "--dir", lab_dir, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_cluster_on_kine_runs_pods_and_writes_what_a_cluster_writes(shared_db_cluster, node_image, tmp_path):
    status = shared_db_cluster
    lab = k.KindLab.attach(status["dir"])
    print("timings", status["timings_s"])
    assert status["state"] == "running" and status["mode"] == "shared-db"
    nodes = {n["name"]: n["role"] for n in status["nodes"]}
    assert sorted(nodes.values()) == ["control-plane", "control-plane", "external-load-balancer", "worker"]
    assert all(status["ready"].values()) and len(status["ready"]) == 3

    # shared-db: each apiserver (one per control-plane node) talks to its own Kine and to no other
    addresses = {n["name"]: lab.engine.docker("inspect", "--format", "{{range .NetworkSettings.Networks}}"
                                              "{{.IPAddress}}{{end}}", n["name"]).stdout.decode().strip()
                 for n in status["nodes"]}
    control_planes = sorted(a for name, a in addresses.items() if nodes[name] == "control-plane")
    peers = kine_peers(lab.lab)
    assert sorted(p for ps in peers.values() for p in ps) == control_planes, peers
    assert all(len(ps) == 1 for ps in peers.values()), peers

    # real pods: the preloaded workload image, ready only once the program answers its probe
    cluster = lab.cluster
    cluster.kubectl("apply", "-f", "-", input=workload(node_image.workload_image, 3))
    wait_until(lambda: json.loads(cluster.kubectl("get", "deployment", "web", "-o", "json").stdout)["status"]
               .get("availableReplicas") == 3, timeout_s=120, interval_s=1, what="3 available replicas")
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= set(nodes) and all(p["status"].get("podIP") for p in pods)

    # what the kubelets, controller-manager and scheduler wrote is in Kine's table
    capture = tmp_path / "kind.duckdb"
    assert run_cli("capture", "--dir", status["dir"], "--out", capture).returncode == 0
    node_leases_sql = ("SELECT object_name, count(*) FROM kine_ops WHERE resource = 'leases' AND "
                       "namespace = 'kube-node-lease' GROUP BY 1")

    def renewed() -> bool:  # each node renews its Lease every 10 s
        lab.capture(capture, incremental=True)
        return all(count >= 3 for _, count in rows(capture, node_leases_sql))

    wait_until(renewed, timeout_s=60, interval_s=2, what="three writes of every node's Lease")
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
@pytest.mark.timeout(600)
def test_a_second_cluster_of_the_same_name_is_refused_and_harms_nothing(shared_db_cluster, tmp_path):
    before = k.KindLab.attach(shared_db_cluster["dir"]).cluster.containers()
    clash = k.KindLab("kl-test-shared", dir=tmp_path / "clash", replicas=1)
    with pytest.raises(UsageError, match="a kind cluster named kl-test-shared already exists"):
        clash.start(log=lambda _: None)
    assert k.KindLab.attach(shared_db_cluster["dir"]).cluster.containers() == before
    assert all(n["state"] == "running" for n in before)
    assert json.loads((tmp_path / "clash" / "lab.json").read_text())["state"] == "stopped"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_down_and_down_again(shared_db_cluster, docker_engine):
    lab_dir = shared_db_cluster["dir"]
    table = run_cli("status", "--dir", lab_dir)
    assert table.returncode == 0 and "kl-test-shared-control-plane2" in table.stdout and "Ready" in table.stdout
    dsn = run_cli("dsn", "--dir", lab_dir)
    assert dsn.returncode == 0 and dsn.stdout.startswith("postgres://")
    kine_pids = [r["pid"] for r in shared_db_cluster["host"]["replicas"]]
    result = run_cli("down", "--dir", lab_dir, timeout=600)
    assert result.returncode == 0 and "stopped 4 container(s)" in result.stdout, result
    assert docker_engine.docker("ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster=kl-test-shared").stdout == b""
    assert docker_engine.docker("network", "inspect", "kinelab-kl-test-shared", check=False).returncode != 0
    assert not any(psutil.pid_exists(p) for p in kine_pids)
    assert_one_line_error(run_cli("down", "--dir", lab_dir), "is already stopped", "--purge")
    purged = run_cli("down", "--dir", lab_dir, "--purge")
    assert purged.returncode == 0 and not Path(lab_dir).exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_one_control_plane_in_hybrid_uses_every_kine_and_survives_losing_one(docker_engine, node_image, tmp_path):
    with k.KindLab("kl-test-hybrid", replicas=2, mode="hybrid", dir=tmp_path / "lab") as lab:
        print("timings", lab.timings_s)
        assert lab.status()["ready"] == {"kl-test-hybrid-control-plane": True}
        assert lab.cluster.etcd_endpoints == [f"http://{e}" for e in lab.lab.endpoints]
        wait_until(lambda: all(kine_peers(lab.lab).values()), timeout_s=30, what="connections to every Kine")
        host = lab.network.gateway
        assert all(e.startswith(f"{host}:") for e in lab.lab.endpoints)  # Kine on the lab network's gateway
        # the lab's faults work on kind: with Kine 0 killed the apiserver writes through Kine 1
        lab.lab.kill(0)
        wait_until(lambda: lab.cluster.kubectl("create", "configmap", "after-kill", check=False,
                                               timeout=20).returncode == 0, timeout_s=60, interval_s=1,
                   what="a write with Kine 0 down")
        lab.lab.restart(0)
        wait_until(lambda: kine_peers(lab.lab)[lab.lab.endpoints[0]], timeout_s=60, interval_s=1,
                   what="the apiserver back on the restarted Kine 0")
        assert lab.cluster.kubectl("get", "configmap", "after-kill").returncode == 0
    assert docker_engine.docker("ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster=kl-test-hybrid").stdout == b""
    assert docker_engine.docker("network", "inspect", "kinelab-kl-test-hybrid", check=False).returncode != 0
    assert lab.lab.status()["replicas"][0]["alive"] is False


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_cluster_that_never_becomes_ready_says_what_the_kubelet_said_and_leaves_nothing(docker_engine, node_image,
                                                                                         tmp_path):
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("breaks the kubelet the cgroup v1 way; this host is on cgroup v2")
    lab = k.KindLab("kl-test-broken", replicas=1, dir=tmp_path / "lab", kubelet={"failCgroupV1": True})
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        lab.start(log=lambda _: None)
    message = str(info.value)
    print(f"failed after {time.monotonic() - started:.0f}s: {message}")
    assert message.startswith("kind create cluster kl-test-broken failed: ") and "\n" not in message
    assert "kl-test-broken-control-plane kubelet: " in message and "cgroup v1" in message
    assert "; containerd: " in message and message.endswith(f"log {tmp_path}/lab/cluster/logs/kind-create.log")
    assert (tmp_path / "lab" / "cluster" / "logs" / "kl-test-broken-control-plane-kubelet.log").stat().st_size
    assert docker_engine.docker("ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster=kl-test-broken").stdout == b""
    assert docker_engine.docker("network", "inspect", "kinelab-kl-test-broken", check=False).returncode != 0
    assert json.loads((tmp_path / "lab" / "lab.json").read_text())["state"] == "stopped"
    assert not any(r["alive"] for r in lab.lab.status()["replicas"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_killed_owner_leaves_nothing_running(docker_engine, node_image, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    lab_dir = tmp_path / "lab"
    script = ("from kinelab.provision.kind import KindLab\n"
              f"lab = KindLab('kl-test-reaped', replicas=1, dir={str(lab_dir)!r}).start(log=lambda _: None)\n"
              "print('up', flush=True)\n"
              "import time; time.sleep(900)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "up"
        kine_pid = json.loads((lab_dir / "host" / "lab.json").read_text())["replicas"][0]["process"]["pid"]
        assert docker_engine.docker("ps", "-q", "--filter", "label=io.x-k8s.kind.cluster=kl-test-reaped").stdout
    finally:
        proc.kill()  # as SIGKILL, a crash or a kernel restart would
        proc.wait()

    def gone() -> bool:
        return (json.loads((lab_dir / "lab.json").read_text())["state"] == "stopped" and not
                docker_engine.docker("ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster=kl-test-reaped").stdout)

    wait_until(gone, timeout_s=120, interval_s=1, what="the reaper to delete the cluster")
    assert docker_engine.docker("network", "inspect", "kinelab-kl-test-reaped", check=False).returncode != 0
    assert not psutil.pid_exists(kine_pid) or psutil.Process(kine_pid).status() == psutil.STATUS_ZOMBIE
