"""Two real kube-apiservers, each on its own Kine replica, on one embedded Postgres.

The first run builds kube-apiserver from the Go module proxy (several minutes on 2 cores; the time is
printed and kept in the binary's sidecar JSON); later runs reuse the cached binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

import kinelab as kl
from conftest import REPO, assert_one_line_error, read_model, run_cli, wait_until
from kinelab.errors import ProcessError
from kinelab.provision.apiserver import (
    APISERVER_VERSION,
    ENV_BIN,
    ApiServer,
    apiserver_flags,
    build_gomod,
    can_build,
    find_apiserver,
    generate_pki,
    install_apiserver,
    staging_modules,
)
from kinelab.provision.process import ProcessRecord, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a cold build takes minutes


@pytest.fixture(scope="module")
def apiserver_bin():
    found = find_apiserver()
    if found is None and not can_build():
        pytest.skip(f"kube-apiserver {APISERVER_VERSION} is not in the tool cache, {ENV_BIN} is unset, and Go "
                    "1.26+ is missing, so it cannot be built")
    started = time.monotonic()
    binary = install_apiserver(log=print)
    print(f"kube-apiserver {binary.version} ready in {time.monotonic() - started:.0f}s ({binary.path})")
    return binary


def test_the_build_module_replaces_every_staging_module_read_from_the_kubernetes_gomod():
    upstream = """module k8s.io/kubernetes

go 1.26.0

require (
\tgithub.com/foo/bar v1.2.3
\tk8s.io/api v0.0.0
\tk8s.io/utils v0.0.0-20260626114624-be93311217bd
)

require k8s.io/kms v0.0.0 // indirect

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/kms => ./staging/src/k8s.io/kms
\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin
)
"""
    assert staging_modules(upstream) == ["k8s.io/api", "k8s.io/kms"]
    gomod = build_gomod("v1.37.2", upstream)
    assert "require k8s.io/kubernetes v1.37.2" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in gomod and "\tk8s.io/kms => k8s.io/kms v0.37.2" in gomod
    assert "utils =>" not in gomod and "go 1.26.0" in gomod


def test_flags_default_to_a_lease_reconciler_and_can_be_overridden_or_dropped():
    flags = apiserver_flags({"watch-cache": False, "endpoint-reconciler-type": "none", "profiling": None,
                             "storage_media_type": "application/json"})
    assert "--watch-cache=false" in flags and "--endpoint-reconciler-type=none" in flags
    assert "--storage-media-type=application/json" in flags and not any("profiling" in f for f in flags)
    assert "--endpoint-reconciler-type=lease" in apiserver_flags(None)
    assert "--advertise-address=192.0.2.2" in apiserver_flags(None, index=1)
    with pytest.raises(kl.KinelabError, match="etcd-servers"):
        apiserver_flags({"etcd-servers": "http://elsewhere:2379"})


def test_pki_keys_are_private_and_the_admin_is_a_system_master(tmp_path):
    from cryptography import x509

    pki = generate_pki(tmp_path / "pki")
    for key in (pki.ca_key, pki.serving_key, pki.sa_private, pki.admin_key):
        assert key.stat().st_mode & 0o777 == 0o600
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    assert "O=system:masters" in admin.subject.rfc4514_string()
    again = generate_pki(tmp_path / "pki")  # complete: reused, not regenerated
    assert again.ca_cert.read_bytes() == pki.ca_cert.read_bytes()


def test_two_apiservers_on_two_kine_replicas_share_one_configmap(apiserver_bin, tmp_path):
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    capture = tmp_path / "apiservers.duckdb"
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab") as lab:
        pki = generate_pki(lab.dir / "pki")
        apiservers = []
        try:
            for i in range(2):
                apiserver = ApiServer(i, apiserver_bin, [f"http://{lab.endpoints[i]}"], lab.dir, pki)
                apiservers.append(apiserver)
                started = time.monotonic()
                apiserver.start()
                print(f"{apiserver.name} ready in {time.monotonic() - started:.1f}s at {apiserver.url}")
            core = [k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(a.kubeconfig)))
                    for a in apiservers]
            namespace, name = f"kinelab-{uuid.uuid4().hex[:8]}", "shared"
            core[0].create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
            created = core[0].create_namespaced_config_map(namespace, k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name=name), data={"written-by": "kube-apiserver-0"}))

            def read_through_1():
                try:
                    return core[1].read_namespaced_config_map(name, namespace)
                except k8s.ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
            seen = wait_until(read_through_1, timeout_s=15, interval_s=0.2, what="apiserver 1 to see the ConfigMap")
            assert seen.data == {"written-by": "kube-apiserver-0"}
            assert seen.metadata.uid == created.metadata.uid
            assert seen.metadata.resource_version == created.metadata.resource_version

            # Each apiserver keeps its own master lease (192.0.2.1, 192.0.2.2: loopback is refused there), the
            # two-control-plane case of k3s-io/kine#565. Let the lease reconciler (10 s) run twice on both.
            masterleases = [f"/registry/masterleases/{a.advertise_address}" for a in apiservers]
            for key in masterleases:
                wait_until(lambda: lab.client(0).get(key), timeout_s=30, interval_s=0.5, what=key)
            time.sleep(21)
            assert all(a.alive for a in apiservers), [a.name for a in apiservers if not a.alive]
            for a in apiservers:
                assert a.get("/readyz") == b"ok"
            if all(a.hostname for a in apiservers):  # each in a UTS namespace: an identity lease each
                identity = k8s.CoordinationV1Api(core[1].api_client).list_namespaced_lease(
                    "kube-system", label_selector="apiserver.kubernetes.io/identity=kube-apiserver")
                holders = sorted(lease.metadata.labels.get("kubernetes.io/hostname") for lease in identity.items)
                assert holders == [a.hostname for a in apiservers]
            kl.capture(lab, capture)
        finally:
            for apiserver in apiservers:
                apiserver.stop()

    con = kl.open_capture(capture)
    rows = con.execute("SELECT op, resource, namespace, object_name, encoding, api_version, kind FROM kine_ops "
                       "WHERE name = ? ORDER BY id", [f"/registry/configmaps/{namespace}/{name}"]).fetchall()
    assert rows and rows[0] == ("create", "configmaps", namespace, name, "protobuf", "v1", "ConfigMap")
    for key in masterleases:
        leases = con.execute("SELECT count(*), min(encoding), min(api_version), min(kind) FROM kine_ops "
                             "WHERE name = ? AND op IN ('create', 'update')", [key]).fetchone()
        assert leases[0] >= 2 and leases[1:] == ("protobuf", "v1", "Endpoints"), (key, leases)
    for name, updates, rows in con.execute(
            "SELECT name, count(*) FILTER (op = 'update'), count(*) FROM kine_ops WHERE resource IN "
            "('masterleases', 'leases', 'peerserverleases', 'endpoints', 'endpointslices') GROUP BY ALL ORDER BY 1"
            ).fetchall():
        print(f"apiserver bookkeeping: {name}: {rows} rows, {updates} updates")


# --- bad input: one line, exit 2, no traceback, nothing left running ------------------------------------------
def lab_processes(lab_dir: Path) -> list:
    """Live processes of the lab in `lab_dir`, found without trusting its manifest: Kine carries the lab's id in
    its environment, the apiserver and the datastore name the lab directory on their command line."""
    model = read_model(lab_dir) if (lab_dir / "lab.json").exists() else None
    lab_id = model.id if model else None
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(lab_dir) in " ".join(proc.info["cmdline"] or []) or \
                    (lab_id and proc.environ().get("KINELAB_LAB_ID") == lab_id):
                found.append(proc)
        except psutil.Error:  # gone meanwhile, or not ours to read
            pass
    return found


def no_apiserver_env(tmp_path, kine, **extra) -> dict:
    """An empty tool cache (so no built kube-apiserver), the real Kine, and no KINELAB_KUBE_APISERVER_BIN."""
    return {"KINELAB_CACHE": str(tmp_path / "cache"), "KINELAB_KINE_BIN": str(kine.path), ENV_BIN: "", **extra}


def up_with_one_apiserver(lab_dir, env=None, *args):
    return run_cli("up", "--datastore", "sqlite", "--replicas", 1, "--apiservers", 1, "--dir", lab_dir, *args,
                   env=env)


def test_cli_without_go_or_an_apiserver_binary(kine, tmp_path):
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "go").exists())
    result = up_with_one_apiserver(tmp_path / "lab", no_apiserver_env(tmp_path, kine, PATH=path))
    assert_one_line_error(result, "kube-apiserver is not installed and Go is missing", ENV_BIN)
    assert read_model(tmp_path / "lab") is None  # refused before anything was recorded or started
    assert lab_processes(tmp_path / "lab") == []


@pytest.mark.skipif(not can_build(), reason="needs Go 1.26+ on PATH to start a kube-apiserver build")
def test_cli_build_failure_names_the_build_log(kine, tmp_path):
    # An empty module cache with the proxy off: `go mod download` fails at once, as offline it would.
    env = no_apiserver_env(tmp_path, kine, GOPROXY="off", GOMODCACHE=str(tmp_path / "gomodcache"), GOFLAGS="",
                           GOTOOLCHAIN="local")
    result = up_with_one_apiserver(tmp_path / "lab", env)
    log = tmp_path / "cache" / "bin" / f"kube-apiserver-{APISERVER_VERSION}.build.log"
    assert_one_line_error(result, f"building kube-apiserver {APISERVER_VERSION}", "GOPROXY=off", f"see {log}")
    assert "module lookup disabled" in log.read_text()
    assert not (tmp_path / "cache" / "bin" / f"kube-apiserver-{APISERVER_VERSION}").exists()
    assert lab_processes(tmp_path / "lab") == []


@pytest.mark.parametrize("flag, says", [("service-cluster-ip-range=notacidr", "is not a valid cidr"),
                                        ("bogus-flag=1", "Error: unknown flag: --bogus-flag")])
def test_cli_apiserver_that_exits_reports_its_last_log_line(apiserver_bin, tmp_path, flag, says):
    lab_dir = tmp_path / "lab"
    result = up_with_one_apiserver(lab_dir, None, "--apiserver-arg", flag)
    assert_one_line_error(result, "kube-apiserver-0 exited with code 1 before it was ready", says,
                          f"log {lab_dir / 'logs' / 'kube-apiserver-0.log'}")
    model = read_model(lab_dir)
    assert model.state == "stopped" and model.replicas[0].processes  # Kine had started
    assert lab_processes(lab_dir) == []


def test_apiserver_that_never_becomes_ready_is_stopped_with_its_last_log_line(apiserver_bin, tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}"  # no Kine there: it keeps retrying etcd
    apiserver = ApiServer(0, apiserver_bin, [unreachable], tmp_path, generate_pki(tmp_path / "pki"), timeout_s=5)
    with pytest.raises(ProcessError) as info:
        apiserver.start()
    first = str(info.value).splitlines()[0]
    assert first.startswith("kube-apiserver-0 was not ready (GET https://127.0.0.1:") and "after 5s: " in first
    assert "connection refused" in first and first.endswith(f"log {apiserver.log_path}")
    assert not apiserver.alive and lab_processes(tmp_path) == []


SIGTERM_OWNER = textwrap.dedent("""
    import sys, kinelab as kl
    kl.Lab(replicas=1, datastore="sqlite", apiservers=1, dir=sys.argv[1], keep=False).start()
""")


def test_sigterm_while_the_apiserver_starts_leaves_nothing_running_and_no_data(apiserver_bin, tmp_path):
    """What a papermill run stopped by a scheduler's timeout does: SIGTERM the lab's owner while its
    kube-apiserver is still starting. The reaper finds the apiserver (it is in the manifest before it starts,
    and in its pid file) and removes the temporary lab."""
    lab_dir = tmp_path / "lab"
    owner = subprocess.Popen([sys.executable, "-c", SIGTERM_OWNER, str(lab_dir)], cwd=REPO,
                             env={**os.environ, "KINELAB_PROGRESS": "0"})
    try:
        pid_file = lab_dir / "pids" / "kube-apiserver-0.pid"
        wait_until(pid_file.exists, timeout_s=60, interval_s=0.02, what="the kube-apiserver to be launched")
        apiserver = ProcessRecord(**json.loads(pid_file.read_text()))
        assert apiserver.alive and read_model(lab_dir).state == "starting"
        owner.send_signal(signal.SIGTERM)
        owner.wait(timeout=30)
        wait_until(lambda: not apiserver.alive, timeout_s=30, what="the reaper to stop the starting apiserver")
        wait_until(lambda: not lab_dir.exists(), timeout_s=30, what="the reaper to remove the temporary lab")
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: lab_processes(lab_dir) == [], timeout_s=10, what="the reaper itself to exit")

