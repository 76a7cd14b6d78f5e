"""The kind backend's plan, validated against the published kind v1alpha4 and kubeadm v1beta4 Go types.

The Go checker (kinelab/provision/kindcheck) is built once into the tool cache; nothing here is mocked.
Live cluster creation needs a Docker engine and skips without one.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

import kinelab as kl
from conftest import assert_one_line_error, run_cli
from kinelab.errors import ToolError
from kinelab.provision import kind as k
from kinelab.provision.backends import attach_lab
from kinelab.provision.lab import MODES

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="Go is needed to build the kind config checker")
ADDRESSES_BASE = "172.18.0."


def addresses(plan: k.KindPlan) -> dict:
    return {c.name: f"{ADDRESSES_BASE}{10 + i}" for i, c in enumerate(plan.kines)}


def cluster_patch(config: dict) -> dict:
    (patch,) = config["kubeadmConfigPatches"]
    return yaml.safe_load(patch)


@needs_go
@pytest.mark.parametrize("mode", MODES)
def test_generated_config_decodes_strictly_into_published_types(mode):
    plan = k.plan_kind("kinelab", control_planes=3, replicas=3, mode=mode)
    patches = {i: text for i, text in k.pod_patches(plan, addresses(plan)).items()}
    assert k.validate_kind_config(plan.to_yaml(), patches) == []


@needs_go
@pytest.mark.parametrize("where, old, new, expected", [
    ("kind Cluster", "apiServerAddress", "apiServerAdress", 'unknown field "networking.apiServerAdress"'),
    ("kubeadm ClusterConfiguration", "external:", "externl:", 'unknown field "etcd.externl"'),
    ("kubeadm JoinConfiguration", "directory:", "dir:", 'unknown field "patches.dir"'),
    ("field case", "endpoints:", "Endpoints:", 'unknown field "etcd.external.Endpoints"'),
])
def test_an_unknown_field_fails_validation(where, old, new, expected):
    plan = k.plan_kind("kinelab", mode="shared-db")
    text = plan.to_yaml()
    assert old in text
    errors = k.validate_kind_config(text.replace(old, new, 1))
    assert any(expected in e for e in errors), (where, errors)


@needs_go
def test_wrong_kubeadm_api_version_and_bad_pod_patch_fail_validation():
    plan = k.plan_kind("kinelab", mode="shared-db")
    errors = k.validate_kind_config(plan.to_yaml().replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3"))
    assert errors and all("v1beta4" in e for e in errors)
    bad = {0: json.dumps({"spec": {"hostAliases": [{"ip": "172.18.0.5", "hostname": ["x"]}]}})}
    assert any('unknown field "spec.hostAliases[0].hostname"' in e for e in k.validate_kind_config(plan.to_yaml(), bad))


@pytest.mark.parametrize("mode, replicas", [("shared-db", 3), ("single-kine", 1), ("hybrid", 4)])
def test_container_plan(mode, replicas):
    plan = k.plan_kind("kinelab", control_planes=3 if mode == "shared-db" else 2, replicas=replicas, mode=mode)
    assert [c.role for c in plan.containers] == ["postgres"] + ["kine"] * replicas
    assert len({c.name for c in plan.containers}) == len(plan.containers)
    for c in plan.containers:
        assert c.labels[k.LABEL] == plan.lab_id and c.network == "kind"
        assert f"{k.LABEL}={plan.lab_id}" in c.run_argv()
    for kine in plan.kines:
        assert kine.image == f"rancher/kine:{k.KINE_VERSION}" == "rancher/kine:v0.17.5"
        assert kine.args == ["--listen-address=0.0.0.0:2379"]
        assert kine.secret_env == {"KINE_ENDPOINT": plan.dsn()}
        assert plan.postgres.name in plan.dsn()
    config = k.kind_config(plan)
    assert [n["role"] for n in config["nodes"]] == ["control-plane"] * plan.control_planes
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    assert config["networking"]["apiServerAddress"] == "127.0.0.1"
    assert yaml.safe_load(plan.to_yaml()) == config


def test_endpoints_per_mode():
    kine = lambda plan, i: f"http://{plan.kines[i].name}:2379"  # noqa: E731

    single = k.plan_kind("kinelab", control_planes=3, replicas=2, mode="single-kine")
    assert cluster_patch(k.kind_config(single))["etcd"]["external"]["endpoints"] == [kine(single, 0)]
    assert all(single.node_endpoints(i) == [kine(single, 0)] for i in range(3))
    assert all("kubeadmConfigPatches" not in n for n in k.kind_config(single)["nodes"])

    hybrid = k.plan_kind("kinelab", control_planes=2, replicas=3, mode="hybrid")
    every = [kine(hybrid, i) for i in range(3)]
    assert cluster_patch(k.kind_config(hybrid))["etcd"]["external"]["endpoints"] == every
    assert all(hybrid.node_endpoints(i) == every for i in range(2))

    shared = k.plan_kind("kinelab", control_planes=3, replicas=3, mode="shared-db")
    config = k.kind_config(shared)
    # one cluster-wide name, resolved per node to that node's Kine by a kube-apiserver static-pod patch
    assert cluster_patch(config)["etcd"]["external"]["endpoints"] == [f"http://{k.SHARED_ETCD_NAME}:2379"]
    patches = k.pod_patches(shared, addresses(shared))
    for i, node in enumerate(config["nodes"]):
        (node_patch,) = [yaml.safe_load(p) for p in node["kubeadmConfigPatches"]]
        assert node_patch["kind"] == ("InitConfiguration" if i == 0 else "JoinConfiguration")
        assert node_patch["patches"]["directory"] == k.NODE_PATCH_DIR
        (mount,) = node["extraMounts"]
        assert mount["containerPath"] == k.NODE_PATCH_DIR and mount["hostPath"] == k.node_patch_dir(shared, i)
        alias = json.loads(patches[i])["spec"]["hostAliases"]
        assert alias == [{"ip": addresses(shared)[shared.kines[i].name], "hostnames": [k.SHARED_ETCD_NAME]}]
        assert shared.node_endpoints(i) == [kine(shared, i)]
    assert len({json.loads(p)["spec"]["hostAliases"][0]["ip"] for p in patches.values()}) == 3


def test_nothing_binds_to_a_public_host_address():
    for mode in MODES:
        plan = k.plan_kind("kinelab", control_planes=2, replicas=2, mode=mode)
        for c in plan.containers:
            assert all(spec.startswith("127.0.0.1:") for spec in c.publish), c.publish
        assert all(kine.publish == [] for kine in plan.kines)  # Kine is reachable on the kind network only
        assert plan.postgres.publish == ["127.0.0.1::5432"]
        assert k.kind_config(plan)["networking"]["apiServerAddress"] == "127.0.0.1"
        assert "0.0.0.0" not in " ".join(" ".join(c.publish) for c in plan.containers)


def test_passwords_are_generated_and_masked():
    one, two = k.plan_kind("a"), k.plan_kind("b")
    assert one.password != two.password and len(one.password) >= 20
    for plan in (one, two):
        shown = [repr(plan), repr(plan.postgres), *map(repr, plan.kines), json.dumps(plan.describe()),
                 plan.to_yaml(), *[" ".join(c.run_argv()) for c in plan.containers],
                 repr(k.KindLab(plan, dir="/nonexistent-kinelab"))]
        for text in shown:
            assert plan.password not in text
        assert "****" in repr(plan) and "****" in json.dumps(plan.describe())
        assert plan.password in plan.dsn()  # only the explicit accessor carries it
        assert plan.postgres.run_env()["POSTGRES_PASSWORD"] == plan.password


def test_bad_plans_are_refused():
    from kinelab.errors import UsageError

    for kwargs in ({"mode": "ha"}, {"datastore": "sqlite"}, {"control_planes": 3, "replicas": 2},
                   {"kubernetes_version": "1.37"}, {"name": "no_underscores"}):
        with pytest.raises(UsageError):
            k.plan_kind(**{"name": "kinelab", **kwargs})


@pytest.mark.skipif(k.docker_available(), reason="a Docker engine is running here")
def test_require_docker_says_what_to_do():
    with pytest.raises(ToolError) as info:
        k.require_docker()
    message = str(info.value)
    assert "\n" not in message
    assert "install Docker Engine and start it; the local backend needs neither" in message


def test_live_kind_lab(tmp_path):
    if not k.docker_available():
        pytest.skip(k.NO_DOCKER)
    if shutil.which("kind") is None:
        pytest.skip(f"no kind CLI (go install {k.KIND_MODULE}@{k.KIND_VERSION})")
    lab = k.KindLab(dir=tmp_path / "lab", name=f"kinelab-{tmp_path.name[-6:].lower().replace('_', '-')}",
                    control_planes=2, replicas=2, mode="shared-db")
    try:
        lab.create()
        status = json.loads(run_cli("status", "--dir", lab.dir, "--json").stdout)
        assert status["state"] == "running"
        assert [n["role"] for n in status["nodes"]].count("control-plane") == 2
        assert [c["state"] for c in status["containers"]] == ["running"] * 3
        capture = run_cli("capture", "--dir", lab.dir, "--out", tmp_path / "kind.duckdb")
        assert capture.returncode == 0, capture.stderr
        con = kl.open_capture(tmp_path / "kind.duckdb")
        assert con.execute("SELECT count(*) FROM kine_ops WHERE name = '/registry/namespaces/default'").fetchone()[0]
        con.close()
        assert run_cli("down", "--dir", lab.dir).returncode == 0
        assert attach_lab(lab.dir).status()["state"] == "stopped"
    finally:
        lab.delete()
    assert k.leftovers(lab.plan.lab_id) == []


@pytest.mark.skipif(k.docker_available(), reason="a Docker engine is running here; this is for hosts without one")
def test_cli_kind_backend_without_docker_is_one_line_and_starts_nothing(tmp_path):
    result = run_cli("up", "--backend", "kind", "--control-planes", 2, "--replicas", 2, "--dir", tmp_path / "k")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Docker" in result.stderr
    assert not (tmp_path / "k").exists()


# --- a kind lab's directory, and the CLI on it where Docker is missing -----------------------------------------
def recorded_kind_lab(tmp_path, state="running") -> k.KindLab:
    """A kind lab as `create` records it, for hosts that cannot create one."""
    lab = k.KindLab(dir=tmp_path / "kind-lab", name="kinelab-recorded", control_planes=2, replicas=2)
    lab.save(state)
    return lab


def test_a_kind_lab_directory_rebuilds_the_same_lab(tmp_path):
    lab = recorded_kind_lab(tmp_path)
    again = attach_lab(lab.dir)
    assert isinstance(again, k.KindLab) and again.state == "running"
    assert again.plan.describe() == lab.plan.describe() and again.plan.dsn() == lab.plan.dsn()
    assert again.plan.to_yaml() == lab.plan.to_yaml()
    manifest = (lab.dir / "lab.json").read_text()
    assert json.loads(manifest)["backend"] == "kind" and lab.plan.password not in manifest
    assert (lab.dir / "secrets.json").stat().st_mode & 0o777 == 0o600


# Docker's CLI without an engine, and no docker binary at all (PATH without it)
NO_ENGINE = [pytest.param(None, id="engine-down"),
             pytest.param({"PATH": "/usr/bin:/bin"}, id="no-docker-cli")]
needs_no_docker = pytest.mark.skipif(k.docker_available(), reason="a Docker engine is running here")


@needs_no_docker
@pytest.mark.parametrize("env", NO_ENGINE)
def test_cli_status_of_a_kind_lab_without_docker_says_so(tmp_path, env):
    lab = recorded_kind_lab(tmp_path)
    result = run_cli("status", "--dir", lab.dir, "--json", env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    status = json.loads(result.stdout)
    assert status["backend"] == "kind" and status["state"] == "unknown" and status["nodes"] == []
    assert status["error"].startswith(k.NO_DOCKER) and "recorded state: running" in status["error"]
    assert [(c["name"], c["state"]) for c in status["containers"]] == [(c.name, "unknown")
                                                                        for c in lab.plan.containers]
    assert lab.plan.password not in result.stdout
    table = run_cli("status", "--dir", lab.dir, env=env)
    assert table.returncode == 0 and "unknown" in table.stdout and "Traceback" not in table.stderr


@needs_no_docker
@pytest.mark.parametrize("env", NO_ENGINE)
def test_cli_down_and_capture_of_a_kind_lab_without_docker_fail_in_one_line(tmp_path, env):
    lab = recorded_kind_lab(tmp_path)
    assert_one_line_error(run_cli("down", "--dir", lab.dir, "--purge", env=env), "cannot stop the kind lab",
                          k.NO_DOCKER, f"{k.LABEL}={lab.plan.lab_id}")
    assert attach_lab(lab.dir).state == "running"  # nothing was removed, so nothing is recorded as stopped
    out = tmp_path / "c.duckdb"
    assert_one_line_error(run_cli("capture", "--dir", lab.dir, "--out", out, env=env), "cannot capture the kind lab",
                          k.NO_DOCKER, lab.plan.postgres.name)
    assert not out.exists()


@needs_no_docker
def test_cli_down_of_a_stopped_kind_lab_needs_no_docker(tmp_path):
    lab = recorded_kind_lab(tmp_path, state="stopped")
    result = run_cli("down", "--dir", lab.dir, "--purge")
    assert result.returncode == 0, result.stderr
    assert "stopped 0 container(s)" in result.stdout and not lab.dir.exists()


def test_local_commands_refuse_a_kind_lab(tmp_path):
    lab = recorded_kind_lab(tmp_path)
    assert_one_line_error(run_cli("dsn", "--dir", lab.dir), "runs on the kind backend", "kinelab status")
    assert_one_line_error(run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--dir", lab.dir),
                          "a kind lab is recorded in", "kinelab down")
    assert attach_lab(lab.dir).state == "running"
