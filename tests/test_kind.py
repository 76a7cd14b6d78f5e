"""The kind backend's plan, validated against the published kind v1alpha4 and kubeadm v1beta4 Go types.

The Go checker (kinelab/provision/kindcheck) is built once into the tool cache; nothing here is mocked.
Live cluster creation needs a Docker engine and skips without one.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from kinelab.errors import ToolError
from kinelab.provision import kind as k
from kinelab.provision.model import MODES

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
