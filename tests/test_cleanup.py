"""Nothing stays running: after `with`, after an error, after Ctrl-C, after SIGKILL of the owner, after `down`."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import kinelab as kl
from conftest import REPO, all_gone, lab_pids, read_model, run_cli, wait_until
from kinelab.errors import ProcessError
from kinelab.provision.labdir import LabDir


def test_with_block_stops_every_process(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab") as lab:
        pids = lab_pids(lab.model)
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
    assert all_gone(pids)
    assert read_model(tmp_path / "lab").state == "stopped"


def test_an_error_inside_the_with_block_still_stops_everything(kine, tmp_path):
    with pytest.raises(RuntimeError):
        with kl.Lab(replicas=1, datastore="sqlite", dir=tmp_path / "lab") as lab:
            pids = lab_pids(lab.model)
            raise RuntimeError("boom")
    assert all_gone(pids)


def test_a_replica_that_fails_to_start_reports_its_log_and_leaves_nothing(kine, tmp_path):
    lab = kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab",
                 replica_args=[{}, {"compact-interval": "not-a-duration"}])
    with pytest.raises(ProcessError, match="kine-1 exited") as failure:
        lab.start()
    assert "not-a-duration" in str(failure.value)  # the tail of Kine's own log explains why
    assert all_gone(lab_pids(read_model(tmp_path / "lab")))


def test_a_temporary_lab_directory_is_removed_with_the_lab(kine):
    with kl.Lab(replicas=1, datastore="sqlite") as lab:
        directory = lab.dir
        assert (directory / "lab.json").exists()
    assert not directory.exists()


OWNER = textwrap.dedent("""
    import sys, time, kinelab as kl
    with kl.Lab(replicas=2, datastore="postgres", dir=sys.argv[1]) as lab:
        print("ready", flush=True)
        time.sleep(300)
""")


def _start_owner(lab_dir):
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(lab_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "KINELAB_PROGRESS": "0"})
    assert proc.stdout.readline().strip() == "ready"
    return proc, lab_pids(read_model(lab_dir))


def test_sigkill_of_the_owning_python_process_is_cleaned_up_by_the_reaper(kine, tmp_path):
    proc, pids = _start_owner(tmp_path / "lab")
    proc.kill()
    proc.wait()
    assert all_gone(pids, timeout_s=20), "the reaper did not stop the lab after its owner died"
    wait_until(lambda: read_model(tmp_path / "lab").state == "stopped", what="the reaper to record the stop")


def test_ctrl_c_in_the_owning_python_process_stops_the_lab(kine, tmp_path):
    proc, pids = _start_owner(tmp_path / "lab")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert all_gone(pids)


def test_cli_up_keeps_running_until_down(kine, tmp_path):
    lab_dir = tmp_path / "cli-lab"
    up = run_cli("up", "--replicas", 2, "--datastore", "postgres", "--dir", lab_dir, "--json")
    assert up.returncode == 0, up.stderr
    described = json.loads(up.stdout)
    assert [r["index"] for r in described["replicas"]] == [0, 1]
    assert described["datastore"]["kind"] == "postgres" and "****" in described["datastore"]["dsn"]
    assert described["kine_version"] == kl.KINE_VERSION
    pids = lab_pids(read_model(lab_dir))
    assert all(psutil.pid_exists(p) for p in pids)  # the lab outlived the `up` command
    with kl.Etcd(described["replicas"][1]["endpoint"]) as client:
        assert client.create("/registry/configmaps/default/x", b"x").succeeded
    again = run_cli("up", "--replicas", 2, "--dir", lab_dir)
    assert again.returncode == 2 and "already running" in again.stderr
    down = run_cli("down", "--dir", lab_dir)
    assert down.returncode == 0, down.stderr
    assert all_gone(pids)
    status = json.loads(run_cli("status", "--dir", lab_dir, "--json").stdout)
    assert [r["alive"] for r in status["replicas"]] == [False, False]
    again = run_cli("down", "--dir", lab_dir)  # stopping a stopped lab is harmless, and says so
    assert again.returncode == 0 and "was already stopped; nothing was running" in again.stdout, again
    restarted = run_cli("up", "--replicas", 2, "--datastore", "postgres", "--dir", lab_dir, "--json")
    assert restarted.returncode == 0, restarted.stderr
    with kl.Etcd(json.loads(restarted.stdout)["replicas"][0]["endpoint"]) as client:
        assert client.get("/registry/configmaps/default/x").value == b"x"  # same data, nothing lost
    assert run_cli("down", "--dir", lab_dir, "--purge").returncode == 0
    assert not lab_dir.exists()


def _orphan_lab(lab_dir):
    """A lab whose owner and reaper were both SIGKILLed (say, by the OOM killer): its processes run on, orphaned."""
    proc, pids = _start_owner(lab_dir)
    reaper = next(p for p in psutil.process_iter(["cmdline"])
                  if "kinelab.provision.reaper" in " ".join(p.info["cmdline"] or []) and str(lab_dir) in
                  " ".join(p.info["cmdline"]))
    reaper.kill()
    proc.kill()
    proc.wait()
    assert all(psutil.pid_exists(p) for p in pids)
    return pids


@pytest.mark.parametrize("command", ["down", "up"])
def test_orphans_of_a_sigkilled_owner_are_stopped_by_the_next_command(kine, tmp_path, command):
    lab_dir = tmp_path / "lab"
    pids, orphaned = _orphan_lab(lab_dir), read_model(lab_dir)
    try:
        result = run_cli(command, "--replicas", 2, "--dir", lab_dir) if command == "up" else \
            run_cli("down", "--dir", lab_dir)
        assert result.returncode == 0, result.stderr
        assert all_gone(pids), f"`kinelab {command}` left the orphans running"
        if command == "up":  # and the new lab runs on the old data
            assert read_model(lab_dir).state == "running"
    finally:  # whatever failed above, this test leaves nothing running (pids checked by start time)
        LabDir(lab_dir).sweep(orphaned)
        run_cli("down", "--dir", lab_dir)


def test_a_recycled_pid_in_the_manifest_is_never_signalled(kine, tmp_path):
    lab_dir = tmp_path / "lab"
    with kl.Lab(replicas=1, datastore="sqlite", dir=lab_dir):
        pass
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        model = read_model(lab_dir)
        # the stopped replica's pid now belongs to an unrelated process (its start time differs)
        model.component("kine-0").processes[0].pid = bystander.pid
        model.state = "running"
        LabDir(lab_dir).write(model)
        (lab_dir / "pids" / "kine-0.pid").write_text(json.dumps(model.component("kine-0").processes[0].to_json()))
        for command in (["down"], ["up", "--replicas", 1, "--datastore", "sqlite"], ["down"]):
            assert run_cli(*command, "--dir", lab_dir).returncode == 0
        assert bystander.poll() is None, "kinelab signalled a process that only shares a recorded pid"
    finally:
        bystander.kill()
        bystander.wait()


def _leftovers_of(lab_dir, lab_id) -> list:
    """What a lab left on this machine: its directory, its Postgres data kept outside it (as root), its index
    entry."""
    from kinelab.provision.labdir import ROOT_PG_HOME, index_file

    return [p for p in (Path(lab_dir), ROOT_PG_HOME / lab_id, index_file(lab_id)) if p.exists()]


def test_a_kernel_shutdown_leaves_no_lab_and_no_data(kine, tmp_path, monkeypatch):
    """A notebook starts a lab without `with` and the kernel is shut down (JupyterLab's "Shut Down Kernel"):
    the reaper stops every process and removes the temporary lab, its Postgres data included."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("KINELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KINELAB_PROGRESS", "0")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(REPO))
    said = []
    try:
        reply = client.execute_interactive(
            "import kinelab as kl\nlab = kl.Lab(replicas=2, datastore='postgres').start()\n"
            "print(lab.dir, lab.id, *[r.pid for r in lab.model.records])", timeout=120,
            output_hook=lambda msg: said.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
        lab_dir, lab_id, *pids = "".join(said).split()
        assert _leftovers_of(lab_dir, lab_id) and all(psutil.pid_exists(int(p)) for p in pids)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    assert all_gone([int(p) for p in pids], timeout_s=30), "the kernel's lab outlived it"
    wait_until(lambda: not _leftovers_of(lab_dir, lab_id), timeout_s=30, what="the lab's directory and data to go")


TEMPORARY_OWNER = textwrap.dedent("""
    import sys, time, kinelab as kl
    lab = kl.Lab(replicas=1, datastore="postgres").start()
    print(lab.dir, lab.id, flush=True)
    time.sleep(300)
""")


def test_kinelab_labs_lists_and_prunes_what_a_dead_owner_left(kine, tmp_path):
    env = {"KINELAB_HOME": str(tmp_path / "home")}
    owner = subprocess.Popen([sys.executable, "-c", TEMPORARY_OWNER], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "KINELAB_PROGRESS": "0", **env})
    lab_dir, lab_id = owner.stdout.readline().split()
    model = read_model(lab_dir)
    try:
        reaper = next(p for p in psutil.process_iter(["cmdline"])
                      if "kinelab.provision.reaper" in " ".join(p.info["cmdline"] or []) and lab_dir in
                      " ".join(p.info["cmdline"]))
        reaper.kill()  # owner and reaper killed at once (the OOM killer): the lab is orphaned
        owner.kill()
        owner.wait()
        listed = json.loads(run_cli("labs", "--json", env=env).stdout)
        (entry,) = [e for e in listed if e["id"] == lab_id]
        assert entry["state"] == "orphaned" and not entry["keep"] and entry["bytes"] > 1_000_000, entry
        assert all(psutil.pid_exists(p) for p in lab_pids(model))
        pruned = run_cli("labs", "--prune", env=env)
        assert pruned.returncode == 0 and lab_dir in pruned.stdout, pruned.stdout + pruned.stderr
        assert all_gone(lab_pids(model)) and not _leftovers_of(lab_dir, lab_id)
        assert lab_id not in run_cli("labs", "--json", env=env).stdout
    finally:
        LabDir(lab_dir).sweep(model)
        LabDir(lab_dir).purge(lab_id)


def test_a_lab_whose_directory_was_removed_is_still_found_and_stopped(kine, tmp_path):
    """`rm -rf` of a running `kinelab up` lab: no manifest, no pid files, yet its processes run on. The index
    still names the lab, and `kinelab labs --prune` finds its processes by their command lines and environment."""
    import shutil

    env, lab_dir = {"KINELAB_HOME": str(tmp_path / "home")}, tmp_path / "doomed"
    assert run_cli("up", "--replicas", 1, "--dir", lab_dir, env=env).returncode == 0
    model = read_model(lab_dir)
    shutil.rmtree(lab_dir)
    try:
        (entry,) = [e for e in json.loads(run_cli("labs", "--json", env=env).stdout) if e["id"] == model.id]
        assert entry["state"] == "gone, still running" and all(psutil.pid_exists(p) for p in lab_pids(model))
        assert run_cli("labs", "--prune", env=env).returncode == 0
        assert all_gone(lab_pids(model)) and not _leftovers_of(lab_dir, model.id)
    finally:
        for record in model.records:
            record.stop()


def test_pruning_keeps_the_data_of_a_lab_another_home_knows(kine, tmp_path):
    """A stopped, kept lab indexed under one KINELAB_HOME: `kinelab labs --prune` under another home must not take
    its Postgres data (only data whose own lab is gone is unused)."""
    from kinelab.provision.labdir import ROOT_PG_HOME

    lab_dir = tmp_path / "kept"
    assert run_cli("up", "--replicas", 1, "--dir", lab_dir, env={"KINELAB_HOME": str(tmp_path / "a")}).returncode == 0
    assert run_cli("down", "--dir", lab_dir).returncode == 0
    data = ROOT_PG_HOME / read_model(lab_dir).id
    try:
        assert run_cli("labs", "--prune", env={"KINELAB_HOME": str(tmp_path / "b")}).returncode == 0
        assert lab_dir.is_dir() and (data.is_dir() or os.geteuid() != 0)
    finally:
        run_cli("down", "--dir", lab_dir, "--purge")
