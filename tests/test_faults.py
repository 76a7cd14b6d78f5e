"""Replica faults on demand: a killed replica stops serving and loses nothing; restarted, it catches up."""

import time

import pytest

import kinelab as kl
from conftest import run_cli, wait_until
from kinelab.errors import EtcdError


@pytest.fixture
def lab3(kine, tmp_path):
    with kl.Lab(replicas=3, datastore="postgres", dir=tmp_path / "lab") as lab:
        yield lab


def test_kill_and_restart_a_replica_while_the_others_serve(lab3, prefix):
    before = lab3.client(0).create(prefix + "before", b"1").revision
    lab3.kill(1)
    assert not lab3.status()["replicas"][1]["alive"]
    with pytest.raises(EtcdError):
        kl.Etcd(lab3.endpoints[1], timeout_s=2).revision()
    during = lab3.client(2).create(prefix + "during", b"2").revision  # the others keep serving
    lab3.restart(1)
    status = lab3.status()["replicas"][1]
    assert status["alive"] and status["endpoint"] == lab3.endpoints[1]
    wait_until(lambda: lab3.client(1).revision() >= during)
    keys = {kv.key: kv.mod_revision for kv in lab3.client(1).range_prefix(prefix).kvs}
    assert keys == {prefix + "before": before, prefix + "during": during}  # nothing lost


def test_a_paused_replica_times_out_and_answers_again_after_resume(lab3, prefix):
    lab3.pause(2)
    try:
        with pytest.raises(EtcdError, match="DEADLINE_EXCEEDED"):
            kl.Etcd(lab3.endpoints[2], timeout_s=1).revision()
        assert lab3.status()["replicas"][2]["alive"]  # paused is not dead
    finally:
        lab3.resume(2)
    assert kl.Etcd(lab3.endpoints[2], timeout_s=5).revision() > 0


def test_cli_fault_commands_and_stopping_a_paused_lab(kine, tmp_path):
    lab_dir = tmp_path / "cli"
    assert run_cli("up", "--replicas", 2, "--dir", lab_dir).returncode == 0
    try:
        assert run_cli("fault", "kill", "--replica", 1, "--dir", lab_dir).returncode == 0
        assert run_cli("fault", "resume", "--replica", 1, "--dir", lab_dir).returncode == 2  # dead, not paused
        assert run_cli("fault", "restart", "--replica", 1, "--dir", lab_dir).returncode == 0
        assert run_cli("fault", "pause", "--replica", 0, "--dir", lab_dir).returncode == 0
        bad = run_cli("fault", "kill", "--replica", 7, "--dir", lab_dir)
        assert bad.returncode == 2 and "no replica 7" in bad.stderr
    finally:
        started = time.monotonic()
        assert run_cli("down", "--dir", lab_dir).returncode == 0
    assert time.monotonic() - started < 8  # a paused replica is woken to stop, not waited on for 10 s
