"""The Docker engine of the kind backend: kinelab's runc wrapper, its private dockerd, and the one-line errors
for a machine with no engine or one that refuses privileged containers. Real dockerd, real runc."""

from __future__ import annotations

import json
import subprocess

import pytest

from kinelab.errors import ToolError
from kinelab.provision import docker as d
from kinelab.provision.kind import check_privileged


def fake_runc(tmp_path):
    """A stand-in for runc that records its arguments and the capability sets it was handed."""
    record = tmp_path / "calls.jsonl"
    runc = tmp_path / "runc"
    runc.write_text(f"""#!/bin/sh
python3 - "$@" <<'EOF'
import json, sys
args = sys.argv[1:]
def caps(path, key):
    with open(path) as handle:
        doc = json.load(handle)
    return (doc.get("process", doc) if key else doc).get("capabilities")
out = {{"args": args}}
if "--bundle" in args:
    out["caps"] = caps(args[args.index("--bundle") + 1] + "/config.json", True)
if "--process" in args:
    out["caps"] = caps(args[args.index("--process") + 1], False)
with open({str(record)!r}, "a") as handle:
    handle.write(json.dumps(out) + "\\n")
EOF
""")
    runc.chmod(0o755)
    return runc, record


ALL = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]


def capabilities() -> dict:
    return {key: list(ALL) for key in ("bounding", "effective", "permitted", "inheritable")}


def test_runc_wrapper_drops_cap_sys_resource_on_create_and_exec_and_passes_everything_else(tmp_path):
    runc, record = fake_runc(tmp_path)
    wrapper = d.write_runc_wrapper(tmp_path / "kinelab-runc", str(runc))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": {
        "args": ["/sbin/init"], "capabilities": capabilities()}}))
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh"], "capabilities": capabilities()}))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"capabilities": capabilities()}))
    calls = [
        ["--root", "/run/x", "--log", "/tmp/l.json", "--log-format", "json", "create", "--bundle", str(bundle), "c1"],
        ["--root=/run/x", "exec", "--process", str(process), "--detach", "c1"],
        ["--root", "/run/x", "state", "c1"],
    ]
    for argv in calls:
        assert subprocess.run([str(wrapper), *argv], capture_output=True).returncode == 0
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert [s["args"] for s in seen] == calls  # runc gets exactly the arguments it was given
    without = [c for c in ALL if c != "CAP_SYS_RESOURCE"]
    assert all(values == without for values in seen[0]["caps"].values())
    assert all(values == without for values in seen[1]["caps"].values())
    assert json.loads(state.read_text())["capabilities"]["bounding"] == ALL  # nothing else is touched


def test_capability_bounding_set_is_read_from_proc():
    status = open("/proc/self/status").read()
    bounding = int(next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
    assert d.has_capability(d.CAP_SYS_RESOURCE) == bool(bounding >> 24 & 1)
    assert d.needs_runc_wrapper() == (not d.has_capability(24))


def test_private_engine_is_isolated_and_uses_no_private_address_range(tmp_path):
    engine = d.PrivateEngine(tmp_path / "home", runc_wrapper=True)
    argv = " ".join(engine.argv())
    for flag in (f"--data-root={tmp_path}/home/data", "--bip=198.18.0.1/24",
                 "--default-address-pool=base=198.18.0.0/15,size=24", f"--config-file={tmp_path}/home/daemon.json",
                 f"--add-runtime=kinelab-runc={engine.wrapper}", "--default-runtime=kinelab-runc"):
        assert flag in argv
    assert str(engine.socket).startswith("/run/kinelab-docker-") and len(str(engine.socket)) < 100
    assert "--runtime" not in " ".join(d.PrivateEngine(tmp_path / "home", runc_wrapper=False).argv())
    assert d.PrivateEngine(tmp_path / "other").socket != engine.socket
    for private in ("10.", "172.", "192.168."):
        assert f"={private}" not in argv


def test_no_engine_and_no_way_to_start_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker CLI
    with pytest.raises(ToolError) as info:
        d.ensure_engine(log=lambda _: None, private=d.PrivateEngine(tmp_path / "home"))
    message = str(info.value)
    assert message == ("no Docker engine answers `docker info`, and kinelab cannot start its own here (there is no "
                       "docker CLI): start Docker (or, as root on Debian, `apt-get install docker.io containerd runc "
                       "iptables`) and retry")
    assert not (tmp_path / "home").exists()


def test_the_session_engine_answers(docker_engine):
    assert docker_engine.version and d.engine_version(docker_engine.host) == docker_engine.version
    info = json.loads(docker_engine.docker("info", "--format", "{{json .}}").stdout)
    if docker_engine.private:
        assert info["DockerRootDir"].endswith("/docker/data")
        if d.needs_runc_wrapper():
            assert info["DefaultRuntime"] == d.RUNTIME_NAME


def test_privileged_containers_run_on_the_session_engine(docker_engine, node_image):
    check_privileged(docker_engine, node_image.workload_image)
    out = docker_engine.docker("run", "--rm", "--privileged", "--network", "none", node_image.workload_image,
                               "probe").stdout
    assert out.strip() == b"ok"


@pytest.mark.skipif(not d.needs_runc_wrapper(), reason="this machine's engines run privileged containers as they are")
def test_an_engine_without_the_wrapper_refuses_privileged_containers_in_one_line(tmp_path, docker_engine,
                                                                                 node_image):
    plain = d.PrivateEngine(tmp_path / "plain", runc_wrapper=False, default_bridge=False)
    try:
        engine = plain.start(log=lambda _: None)
        saved = tmp_path / "workload.tar"
        with open(saved, "wb") as out:
            subprocess.run(["docker", "save", node_image.workload_image], env=docker_engine.env(), stdout=out,
                           check=True)
        engine.docker("load", "--input", str(saved))
        with pytest.raises(ToolError) as info:
            check_privileged(engine, node_image.workload_image)
        message = str(info.value)
        assert "\n" not in message and "refuses privileged containers" in message
        assert "apply caps" in message and "lacks CAP_SYS_RESOURCE" in message
    finally:
        removed = plain.stop()
    assert removed["daemon"] and plain.process() is None and not plain.socket.exists()
    assert d.mounts_below([plain.data_root, plain.run_dir]) == []
