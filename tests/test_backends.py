"""Every backend that can run on this machine goes through the same checks (testcontainers' approach): the
lifecycle, addresses, the datastore, an apiserver, logs, a fault and its recovery, and nothing left after stop."""

from __future__ import annotations

import pytest

import kinelab as kl
from conftest import all_gone, lab_pids, wait_until
from kinelab.provision.backends import BACKENDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, kine):
    reason = BACKENDS[request.param].available()
    if reason:
        pytest.skip(f"backend {request.param} cannot run here: {reason}")
    return request.param


def test_every_backend_runs_the_same_lab(backend, tmp_path, prefix):
    lab = kl.Lab(replicas=2, datastore="postgres", apiservers=1, mode="hybrid", backend=backend,
                 dir=tmp_path / "lab")
    with lab:
        status = lab.status()
        assert status["backend"] == backend and status["state"] == "running"
        assert all(c["alive"] for c in status["components"]), status["components"]
        assert [r["index"] for r in status["replicas"]] == [0, 1] and status["apiservers"][0]["ready"]
        # the replicas share one database: a write through one is read through the other
        revision = lab.client(0).create(prefix + "a", b"one").revision
        wait_until(lambda: lab.client(1).get(prefix + "a"), timeout_s=3, what="replica 1 to see the write")
        # the apiserver stores in the same table
        from kubernetes import client

        core = client.CoreV1Api(lab.kubernetes_client(0))
        created = core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="compliance"), data={"k": "v"}))
        snapshot = kl.capture(lab, tmp_path / "c.duckdb")
        with kl.open_capture(tmp_path / "c.duckdb") as con:
            rows = dict(con.execute("SELECT name, id FROM kine_latest WHERE name IN (?, ?)",
                                    [prefix + "a", "/registry/configmaps/default/compliance"]).fetchall())
        assert rows == {prefix + "a": revision,
                        "/registry/configmaps/default/compliance": int(created.metadata.resource_version)}
        assert snapshot.row_count >= 2
        assert "Configuring database table schema" in lab.logs("kine-0", lines=200)  # Kine's own log
        # a fault and its recovery
        lab.kill(1)
        assert not lab.status()["replicas"][1]["alive"]
        lab.restart(1)
        assert lab.client(1).get(prefix + "a").value == b"one"
        pids = lab_pids(lab.model)
    assert all_gone(pids)
    assert lab.model.state == "stopped"
