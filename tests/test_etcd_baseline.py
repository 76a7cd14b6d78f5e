"""Real etcd (built from its module), the anchor of the etcd baseline: three etcd members on loopback agree on
every member, every member's watch sees a write, and nothing stays running after `with`, a member that fails, or
Ctrl-C."""

import signal
import subprocess
import sys
import textwrap

import pytest

import kinelab as kl
from conftest import REPO, all_gone, lab_pids, run_cli
from kinelab.errors import ProcessError, ToolError, UsageError
from kinelab.etcd import Etcd
from kinelab.observe.watchlag import WatchProbe


def test_a_write_through_member_0_is_read_and_watched_on_every_member(tmp_path):
    key = "/registry/configmaps/default/anchor"
    with kl.Lab(replicas=3, datastore="etcd", dir=tmp_path) as cluster:
        pids = lab_pids(cluster.model)
        assert [c["name"] for c in cluster.status()["components"]] == ["etcd-0", "etcd-1", "etcd-2"]
        assert len(set(cluster.endpoints)) == 3 and all(ep.startswith("127.0.0.1:") for ep in cluster.endpoints)
        with Etcd(cluster.endpoints[0]) as first, Etcd(cluster.endpoints[2]) as last:
            with WatchProbe(cluster.endpoints, start_revision=first.revision() + 1) as probe:
                written = first.create(key, b"v1")
                assert written.succeeded
                read = last.range(key)  # linearizable: member 2 answers at the revision member 0 acknowledged
                assert read.revision == written.revision
                assert [(kv.value, kv.mod_revision) for kv in read.kvs] == [(b"v1", written.revision)]
                assert probe.wait_for(written.revision, timeout_s=5)
            assert [[event[:3] for event in o.events] for o in probe.observers] == \
                [[(written.revision, key, "PUT")]] * 3
        assert all((tmp_path / "data" / f"etcd-{i}").is_dir() and (tmp_path / "logs" / f"etcd-{i}.log").exists()
                   for i in range(3))
    assert all_gone(pids)


def test_a_member_that_cannot_start_reports_its_log_and_leaves_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "etcd-2").write_text("")  # a file where member 2's data directory belongs
    cluster = kl.Lab(replicas=3, datastore="etcd", dir=tmp_path)
    with pytest.raises(ProcessError, match="etcd-2 exited") as failure:
        cluster.start()
    assert "not a directory" in str(failure.value)  # the tail of etcd's own log explains why
    assert all_gone(lab_pids(cluster.model))


OWNER = textwrap.dedent("""
    import sys, time, kinelab as kl
    with kl.Lab(replicas=3, datastore="etcd", dir=sys.argv[1]) as cluster:
        print(*(r.pid for r in cluster.model.records), flush=True)
        time.sleep(300)
""")


def test_ctrl_c_in_the_owning_python_process_stops_the_cluster(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 3
    owner.send_signal(signal.SIGINT)
    owner.wait(timeout=30)
    assert all_gone(pids)


def test_without_etcd_or_go_the_error_says_what_to_install_or_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("KINELAB_CACHE", str(tmp_path / "cache"))  # no etcd built yet
    with pytest.raises(ToolError, match="etcd is not installed and Go is missing: .* or set KINELAB_ETCD_BIN"):
        kl.Lab(replicas=1, datastore="etcd").start()


def test_an_etcd_lab_refuses_what_needs_a_kine_table_in_one_line(tmp_path):
    with kl.Lab(replicas=1, datastore="etcd", dir=tmp_path / "lab") as cluster:
        with pytest.raises(UsageError, match="keeps its data in etcd, not in a kine table"):
            kl.capture(cluster, tmp_path / "c.duckdb")
        result = run_cli("dsn", "--dir", tmp_path / "lab")
        assert result.returncode == 2 and "not in a kine table" in result.stderr
    with pytest.raises(UsageError, match="Kine flags apply to Kine replicas"):
        kl.Lab(replicas=1, datastore="etcd", kine_args={"debug": True})
