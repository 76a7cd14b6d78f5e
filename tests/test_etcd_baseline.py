"""Real etcd, the anchor of the etcd baseline: a three-member cluster on loopback agrees on every member, every
member's watch sees a write, and nothing stays running after `with`, a member that fails, or Ctrl-C."""

import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, all_gone
from kinelab.errors import ProcessError, ToolError
from kinelab.etcd import Etcd
from kinelab.observe.watchlag import WatchProbe
from kinelab.provision.etcd_server import EtcdCluster

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd is not installed (.ci/run installs etcd-server)")


@needs_etcd
def test_a_write_through_member_0_is_read_and_watched_on_every_member(tmp_path):
    key = "/registry/configmaps/default/anchor"
    with EtcdCluster(members=3, dir=tmp_path) as cluster:
        pids = [member.pid for member in cluster.members]
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
    assert not list((tmp_path / "pids").iterdir())


@needs_etcd
def test_a_member_that_cannot_start_reports_its_log_and_leaves_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "etcd-2").write_text("")  # a file where member 2's data directory belongs
    cluster = EtcdCluster(members=3, dir=tmp_path)
    with pytest.raises(ProcessError, match="etcd-2 exited") as failure:
        cluster.start()
    assert "not a directory" in str(failure.value)  # the tail of etcd's own log explains why
    assert all_gone([member.pid for member in cluster.members])


OWNER = textwrap.dedent("""
    import sys, time
    from kinelab.provision.etcd_server import EtcdCluster
    with EtcdCluster(members=3, dir=sys.argv[1]) as cluster:
        print(*(member.pid for member in cluster.members), flush=True)
        time.sleep(300)
""")


@needs_etcd
def test_ctrl_c_in_the_owning_python_process_stops_the_cluster(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 3
    owner.send_signal(signal.SIGINT)
    owner.wait(timeout=30)
    assert all_gone(pids)


def test_a_missing_etcd_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match="apt-get install etcd-server"):
        EtcdCluster(members=1).start()
