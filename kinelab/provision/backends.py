"""Backends: where a lab's components run (kind's providers, kwok's runtimes).

`Lab` does the orchestration once for every backend: the spec, the manifest, start order, concurrency,
stop, reaping, faults. A backend answers only what differs:

* `available()`: why it cannot run on this machine (None when it can) -- `doctor` and the compliance tests;
* `check(spec)`: refuse a spec it cannot honour, before anything is built or started;
* `prepare(lab)`: find or build every binary and image it needs (the slow, fallible part, done first);
* `plan(lab)`: the components, with their ports and addresses, before any of them starts;
* `start(lab, component, **start_options)`: launch one component and wait until it is ready;
* `check_fault(component, fault)` and `signal(lab, component, sig)`: the faults (kill, pause, resume, restart;
  SIGKILL, SIGSTOP, SIGCONT) on one component, refused in one line where they cannot apply;
* `alive(lab, component)` and `inspect(lab, component)`: whether it runs, and what `status` shows of it;
* `teardown(model, component)`: stop one component of a runtime the backend owns (`runtimes`), from the
  manifest alone: `teardown` here dispatches on `component.runtime`, and `labdir.sweep` calls it, so stop,
  `down`, the reaper and `kinelab labs --prune` reach every runtime (kind's network, cluster and nodes too).

`BACKENDS` is the registry; `get_backend(name)` refuses unknown names with the list.
"""

from __future__ import annotations

import os
import shutil
import signal as _signal
from pathlib import Path
from typing import Optional, Protocol
from urllib.parse import urlsplit

import psutil

from .. import progress
from ..errors import ToolError, UsageError
from ..etcd import Etcd
from .apiserver import ApiServer, Pki, generate_pki
from .controlplane import (
    ControllerManager,
    NodeSimulator,
    Scheduler,
    check_node_memory,
    insecure_local,
    ready_nodes,
    register_nodes,
    wait_nodes_ready,
)
from .kine import KineReplica
from .model import MODES, STAGES, Component, LabModel, LabSpec, etcd_servers_for
from .process import LOOPBACK, ProcessRecord, free_port, require_free_port, tail
from .tools import KWOK, ensure, ensure_kubernetes, find_kine, install_kine
from .wait import answers


class Backend(Protocol):
    name: str
    runtimes: tuple  # the component runtimes whose teardown this backend owns
    # True where every apiserver comes with its controller-manager and scheduler, and there is always at least
    # one (kind's control-plane nodes): the lab then has one apiserver and `controllers` unless told otherwise
    control_plane_included: bool

    def available(self) -> Optional[str]:
        """None when this machine can run the backend, else why not and what to do."""

    def check(self, spec: LabSpec) -> None:
        """Raise UsageError for a spec this backend cannot run."""

    def prepare(self, lab) -> dict:
        """Find or build what the lab needs; returns {tool name: binary}."""

    def plan(self, lab) -> list:
        """The lab's components (`model.Component`), addresses assigned, none started."""

    def start(self, lab, component: Component, **start_options) -> None:
        """Launch `component`, record its processes through `start_options["on_started"]`, wait until ready."""

    def check_fault(self, component: Component, fault: str) -> None:
        """Raise UsageError if `fault` (kill, pause, resume, restart) cannot apply to `component`."""

    def signal(self, lab, component: Component, sig: int) -> None:
        """Deliver `sig` to every process of `component`."""

    def alive(self, lab, component: Component) -> bool:
        """Whether `component` runs (a component with nothing to run counts as alive)."""

    def inspect(self, lab, component: Component) -> dict:
        """What `status` shows of a component beyond its name, role, index, pid and liveness."""

    def teardown(self, model: LabModel, component: Component) -> int:
        """Stop `component` (one of `runtimes`) from what the manifest records; how many things were running."""


class LocalBackend:
    """Every component is a process on this machine, bound to 127.0.0.1 (the embedded default)."""

    name = "local"
    runtimes = ("process", "none")
    control_plane_included = False

    def available(self) -> Optional[str]:
        try:
            if find_kine() is not None:
                return None
        except ToolError as exc:
            return str(exc)
        return None if shutil.which("go") else "Kine is not installed and Go is missing: run `kinelab install` after " \
                                         "installing Go, or set KINELAB_KINE_BIN"

    def check(self, spec: LabSpec) -> None:
        if spec.mode not in MODES:
            raise UsageError(f"unknown mode {spec.mode!r}: use {', '.join(MODES)}")
        if spec.workers:
            raise UsageError(f"worker nodes are kind's (--backend kind); on the {self.name} backend, simulated "
                             "nodes come from --nodes")
        if spec.cluster_name or spec.kubelet_config:
            raise UsageError("a cluster name and kubelet settings are kind's (--backend kind); the local backend has "
                             "no cluster")
        if spec.nodes:
            check_node_memory(spec.nodes)

    def prepare(self, lab) -> dict:
        # Before anything runs: no Go or a failed build stops the lab here.
        tools = {"kine": install_kine(lab.kine_bin, log=lab.say)}
        commands = ["kube-apiserver"] * bool(lab.spec.apiservers) + \
            ["kube-controller-manager", "kube-scheduler"] * lab.spec.controllers
        if commands:
            tools.update(ensure_kubernetes(commands, log=lab.say))
        if lab.spec.nodes:
            tools["kwok"] = ensure(KWOK, log=lab.say)
        return tools

    def plan(self, lab) -> list:
        spec = lab.spec
        components = self.plan_store(lab)
        endpoints = [c.endpoint for c in components if c.role == "kine"]
        if spec.apiservers:
            pki = generate_pki(lab.dir / "pki")
            for index in range(spec.apiservers):
                port = free_port()
                servers = [f"http://{ep}" for ep in etcd_servers_for(spec.mode, index, endpoints)]
                components.append(Component(
                    f"kube-apiserver-{index}", "apiserver", index, endpoint=f"{LOOPBACK}:{port}",
                    url=f"https://{LOOPBACK}:{port}", stage=STAGES["apiserver"],
                    details={"etcd_servers": servers,
                             "kubeconfig": str(pki.dir / f"kubeconfig-kube-apiserver-{index}.yaml")}))
        for index in range(spec.apiservers if spec.controllers else 0):
            # a controller-manager and a scheduler per apiserver, as on every node of a kubeadm HA control plane
            for name in ("kube-controller-manager", "kube-scheduler"):
                port = free_port()
                components.append(Component(f"{name}-{index}", "control-plane", index, endpoint=f"{LOOPBACK}:{port}",
                                            url=f"https://{LOOPBACK}:{port}", stage=STAGES["control-plane"],
                                            details={"program": name}))
        if spec.nodes:
            port = free_port()
            components.append(Component("kwok", "nodes", endpoint=f"{LOOPBACK}:{port}", url=f"http://{LOOPBACK}:{port}",
                                        stage=STAGES["nodes"], details={"nodes": spec.nodes}))
        return components

    def plan_store(self, lab, kine_host: str = LOOPBACK) -> list:
        """The datastore and the Kine replicas, which every backend runs as processes on this machine. Kine
        listens on `kine_host` (kind: its network's gateway, which exists only once the network does: the port
        is picked free on loopback here, and again on `kine_host` when the replica starts if it is taken)."""
        ports = _ports(lab.spec.base_port)
        components = []
        if lab.datastore.serves:
            components.append(Component("postgres" if lab.datastore.kind == "postgres" else "mariadb", "datastore",
                                        endpoint=f"{LOOPBACK}:{_port(next(ports))}", stage=STAGES["datastore"]))
        else:
            components.append(Component("datastore", "datastore", runtime="none", stage=STAGES["datastore"]))
        for index in range(lab.spec.replicas):
            port, metrics = _port(next(ports)), _port(next(ports))
            # Replica 0 first: replicas starting at once on an empty database race to create Kine's schema, and
            # the losers exit (Postgres: duplicate key in pg_type_typname_nsp_index).
            components.append(Component(f"kine-{index}", "kine", index, endpoint=f"{kine_host}:{port}",
                                        metrics_url=f"http://{LOOPBACK}:{metrics}/metrics",
                                        stage=STAGES["kine"] + (index > 0)))
        return components

    def start(self, lab, component: Component, **start_options) -> None:
        if component.runtime != "none":
            _claim_ports(lab, component)
        if component.role == "datastore":
            if component.runtime == "none":
                lab.datastore.start(lab.dir, lab.id)
            else:
                lab.datastore.start(lab.dir, lab.id, port=component.port, **start_options)
            return
        if component.role == "kine":
            host, metrics_port = component.endpoint.rsplit(":", 1)[0], urlsplit(component.metrics_url).port
            KineReplica(component.index, lab.tools["kine"], lab.dsn, lab.dir, host=host, port=component.port,
                        metrics_port=metrics_port, args=lab.spec.kine_args_of(component.index),
                        env={"KINELAB_LAB_ID": lab.id}).start(**start_options)
            return
        if component.role == "apiserver":
            # from the replicas' endpoints as they started (a port taken since the plan was picked again)
            component.details["etcd_servers"] = [f"http://{ep}" for ep in etcd_servers_for(
                lab.spec.mode, component.index, lab.endpoints)]
            ApiServer(component.index, lab.tools["kube-apiserver"], component.details["etcd_servers"], lab.dir,
                      generate_pki(lab.dir / "pki"), port=component.port, flags=lab.spec.apiserver_args
                      ).start(**start_options)
            return
        if component.role == "control-plane":
            kubeconfig = Path(lab.model.apiservers[component.index].details["kubeconfig"])
            program = component.details["program"]
            if program == "kube-controller-manager":
                served = ControllerManager(component.index, lab.tools[program], kubeconfig, Pki(lab.dir / "pki"),
                                           lab.dir, port=component.port)
            else:
                served = Scheduler(component.index, lab.tools[program], kubeconfig, lab.dir, port=component.port)
            served.start(**start_options)
            return
        if component.role == "nodes":
            kubeconfig = Path(lab.model.apiservers[0].details["kubeconfig"])
            NodeSimulator(lab.tools["kwok"], kubeconfig, lab.dir, port=component.port).start(**start_options)
            api, count = lab.kubernetes_client(0), component.details["nodes"]
            with progress.bar(f"registering {count} simulated nodes", total=count) as advance:
                register_nodes(api, count, advance=advance, cancel=start_options.get("cancel"))
            wait_nodes_ready(api, count, timeout_s=60 + count / 10, cancel=start_options.get("cancel"),
                             detail=lambda: lab.logs("kwok"))
            return
        raise UsageError(f"the {self.name} backend cannot start a {component.role} component")

    def check_fault(self, component: Component, fault: str) -> None:
        pass  # every component here is a process

    def signal(self, lab, component: Component, sig: int) -> None:
        for record in component.records:
            if record.alive:
                os.killpg(record.pid, sig)
                if sig == _signal.SIGKILL:
                    _reap(record)

    def alive(self, lab, component: Component) -> bool:
        return component.runtime == "none" or component.alive

    def inspect(self, lab, component: Component) -> dict:
        alive = self.alive(lab, component)
        records = component.records
        if component.role == "kine":
            entry = {"endpoint": component.endpoint, "metrics_url": component.metrics_url}
            if alive:
                try:
                    with Etcd(component.endpoint, timeout_s=2) as client:
                        entry["revision"] = client.revision()
                except Exception as exc:  # a live process that does not answer is worth reporting, not fatal
                    entry["revision"], entry["error"] = None, str(exc)
            else:
                entry["last_log_line"] = tail(Path(records[0].log), 1) if records else ""
            return entry
        if component.role == "apiserver":
            return {"url": component.url, "kubeconfig": component.details["kubeconfig"],
                    "etcd_servers": component.details["etcd_servers"],
                    "ready": alive and answers(f"{component.url}/readyz", Pki(lab.dir / "pki").ssl_context())}
        if component.role == "control-plane":
            return {"url": component.url, "ready": alive and answers(f"{component.url}/healthz", insecure_local())}
        if component.role == "nodes":
            entry = {"url": component.url, "nodes": component.details["nodes"], "ready_nodes": None}
            if alive:
                try:
                    entry["ready_nodes"] = ready_nodes(lab.kubernetes_client(0, retries=False))
                except Exception as exc:  # an apiserver that does not answer is worth reporting, not fatal
                    entry["error"] = str(exc).splitlines()[0]
            return entry
        return {}

    def teardown(self, model: LabModel, component: Component) -> int:
        stopped = 0
        for record in reversed(component.records):
            if record.alive:
                stopped += 1
                record.stop()
        return stopped


def _claim_ports(lab, component: Component) -> None:
    """Ports picked free at plan time can be taken by the time the component starts (other programs pick free
    ports too): a first start picks another. Ports the user chose (--base-port), and those of a component that
    ran before (a restart keeps its address), must be free as they are."""
    pinned = lab.spec.base_port is not None or bool(component.processes)
    host, port = component.endpoint.rsplit(":", 1)
    port = require_free_port(int(port), host) if pinned or _free(host, int(port)) else free_port(host)
    component.endpoint = f"{host}:{port}"
    if component.url:
        component.url = f"{urlsplit(component.url).scheme}://{component.endpoint}"
    if component.metrics_url:
        metrics = urlsplit(component.metrics_url)
        metrics_port = require_free_port(metrics.port, metrics.hostname) if pinned or _free(
            metrics.hostname, metrics.port) else free_port(metrics.hostname)
        component.metrics_url = f"{metrics.scheme}://{metrics.hostname}:{metrics_port}{metrics.path}"


def _free(host: str, port: int) -> bool:
    try:
        require_free_port(port, host)
        return True
    except UsageError:
        return False


def _reap(record: ProcessRecord) -> None:
    try:
        psutil.Process(record.pid).wait(10)  # reaps it too when this process started it
    except psutil.Error:
        pass


def _ports(base_port: Optional[int]):
    """None forever (free ports), or consecutive ports from `base_port`."""
    port = base_port
    while True:
        yield port
        if port is not None:
            port += 1


def _port(wanted: Optional[int], host: str = LOOPBACK) -> int:
    return require_free_port(wanted, host) if wanted else free_port(host)


def _registry() -> dict:
    from .kind import KindBackend  # kind.py builds on LocalBackend, defined above

    return {"local": LocalBackend(), "kind": KindBackend()}


BACKENDS: dict = _registry()


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}: use {', '.join(BACKENDS)}")
    return BACKENDS[name]


def teardown(model: LabModel, component: Component) -> int:
    """Stop one component however it runs (its `runtime`), from the manifest alone; how many things were still
    running. A runtime no backend here owns is from another kinelab: refused with what to do."""
    for backend in BACKENDS.values():
        if component.runtime in backend.runtimes:
            return backend.teardown(model, component)
    raise UsageError(f"{component.name} runs on {component.runtime!r}, which this kinelab does not know; stop it "
                     "with the kinelab that started the lab")
