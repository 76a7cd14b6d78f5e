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
from ..errors import KinelabError, ToolError, UsageError
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
from .etcd_server import EtcdMember
from .haproxy import HAProxy, Server, breaker_settings, find_haproxy, haproxy_version, server_stats
from .kine import KineReplica
from .model import MODES, STAGES, Component, LabModel, LabSpec, etcd_servers_for
from .process import LOOPBACK, ProcessRecord, free_port, require_free_port, tail
from .tools import ETCD, KWOK, Binary, ensure, ensure_kubernetes, find_kine, install_kine
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
        if spec.nodes:
            check_node_memory(spec.nodes)
        if not spec.kine and (spec.kine_args or any(spec.replica_args) or spec.kine_version):
            raise UsageError("Kine flags apply to Kine replicas; this lab's replicas are etcd members")
        if spec.cluster_name or spec.kubelet_config:
            raise UsageError("a cluster name and kubelet settings are kind's (--backend kind); the local backend has "
                             "no cluster")

    def prepare(self, lab) -> dict:
        # Before anything runs: no Go or a failed build stops the lab here.
        if not lab.spec.kine:
            tools = {"etcd": ensure(ETCD, log=lab.say)}
        else:
            tools = {"kine": install_kine(lab.kine_bin, log=lab.say, version=lab.spec.kine_version or None)}
            for index in range(lab.spec.replicas):  # replicas of another version (a rolling upgrade)
                self.add_kine_version(lab, lab.spec.kine_version_of(index), tools)
        commands = ["kube-apiserver"] * bool(lab.spec.apiservers) + \
            ["kube-controller-manager", "kube-scheduler"] * lab.spec.controllers
        if commands:
            tools.update(ensure_kubernetes(commands, log=lab.say))
        if lab.spec.nodes:
            tools["kwok"] = ensure(KWOK, log=lab.say)
        if lab.spec.db_proxy is not None or lab.spec.balancer:
            haproxy = find_haproxy()
            tools["haproxy"] = Binary(haproxy, haproxy_version(haproxy), "haproxy")
        return tools

    def add_kine_version(self, lab, version: str, tools: dict) -> str:
        """The name in `tools` of the Kine binary at `version` ("kine" for the lab's own), found or built."""
        if not version or version == tools["kine"].version:
            return "kine"
        name = kine_tool_name(version)
        if name not in tools:
            tools[name] = install_kine(log=lab.say, version=version)
        return name

    def plan(self, lab) -> list:
        spec = lab.spec
        ports = _ports(spec.base_port)
        components = self.plan_store(lab, ports)
        endpoints = [c.endpoint for c in components if c.role in ("kine", "etcd")]
        if spec.db_proxy is not None:
            components.append(Component("db-proxy", "db-proxy", endpoint=f"{LOOPBACK}:{_port(next(ports))}",
                                        stage=STAGES["db-proxy"], details={"proxy": "database",
                                                                           "settings": dict(spec.db_proxy)}))
        balancer = ""
        if spec.balancer:
            balancer = f"{LOOPBACK}:{_port(next(ports))}"
            components.append(Component("kine-balancer", "balancer", endpoint=balancer, stage=STAGES["balancer"],
                                        details={"proxy": "kine"}))
        if spec.apiservers:
            pki = generate_pki(lab.dir / "pki")
            for index in range(spec.apiservers):
                port = free_port()
                servers = [f"http://{ep}" for ep in etcd_servers_for(spec.mode, index, endpoints, balancer)]
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

    def plan_store(self, lab, ports=None, kine_host: str = LOOPBACK) -> list:
        """The datastore and the Kine replicas (or etcd members), which every backend runs as processes on this
        machine. Kine listens on `kine_host` (kind: its network's gateway, which exists only once the network
        does: the port is picked free on loopback here, and again on `kine_host` when the replica starts if it is
        taken meanwhile)."""
        ports = ports or _ports(lab.spec.base_port)
        components = []
        if not lab.spec.kine:
            components += _etcd_members(lab.spec.replicas, ports)
        elif lab.datastore.serves and lab.datastore.members > 1:  # a primary, then its standbys (copied from it)
            for index in range(lab.datastore.members):
                components.append(Component(f"postgres-{index}", "datastore", index,
                                            endpoint=f"{LOOPBACK}:{_port(next(ports))}",
                                            stage=STAGES["datastore"] + index,
                                            details={"member": "standby" if index else "primary"}))
        elif lab.datastore.serves:
            components.append(Component("postgres" if lab.datastore.kind == "postgres" else "mariadb", "datastore",
                                        endpoint=f"{LOOPBACK}:{_port(next(ports))}", stage=STAGES["datastore"]))
        else:
            components.append(Component("datastore", "datastore", runtime="none", stage=STAGES["datastore"]))
        for index in range(lab.spec.replicas if lab.spec.kine else 0):
            port, metrics = _port(next(ports)), _port(next(ports))
            # Replica 0 first: replicas starting at once on an empty database race to create Kine's schema, and
            # the losers exit (Postgres: duplicate key in pg_type_typname_nsp_index).
            tool = self.add_kine_version(lab, lab.spec.kine_version_of(index), lab.tools)
            components.append(Component(f"kine-{index}", "kine", index, endpoint=f"{kine_host}:{port}",
                                        metrics_url=f"http://{LOOPBACK}:{metrics}/metrics",
                                        stage=STAGES["kine"] + (index > 0),
                                        details=kine_details(tool, lab.tools[tool])))
        return components

    def start(self, lab, component: Component, **start_options) -> None:
        if component.runtime != "none":
            _claim_ports(lab, component)
        if component.role == "datastore":
            if component.runtime == "none":
                lab.datastore.start(lab.dir, lab.id)
            elif lab.datastore.members > 1:
                lab.datastore.start_member(lab.dir, lab.id, component, lab.model.by_role("datastore"), **start_options)
            else:
                lab.datastore.start(lab.dir, lab.id, port=component.port, **start_options)
            return
        if component.role == "etcd":
            EtcdMember(component.index, lab.tools["etcd"].path, lab.dir, client_port=component.port,
                       peer_port=component.details["peer_port"], initial_cluster=component.details["cluster"],
                       token=lab.id).start(**start_options)
            return
        if component.role in ("db-proxy", "balancer"):
            return self._start_proxy(lab, component, **start_options)
        if component.role == "kine":
            host, metrics_port = component.endpoint.rsplit(":", 1)[0], urlsplit(component.metrics_url).port
            binary = lab.tools[component.details.get("tool", "kine")]  # the replica's own Kine release
            KineReplica(component.index, binary, lab.kine_dsn, lab.dir, host=host, port=component.port,
                        metrics_port=metrics_port, args=lab.spec.kine_args_of(component.index),
                        env={"KINELAB_LAB_ID": lab.id}).start(**start_options)
            return
        if component.role == "apiserver":
            # from the replicas' endpoints as they started (a port taken since the plan was picked again)
            balancer = lab.model.balancer
            component.details["etcd_servers"] = [f"http://{ep}" for ep in etcd_servers_for(
                lab.spec.mode, component.index, lab.endpoints, balancer.endpoint if balancer else "")]
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

    def _start_proxy(self, lab, component: Component, **start_options) -> None:
        """HAProxy in front of the database (to the primary only) or of the Kine pool (leastconn: HAProxy's
        choice for long sessions, and a gRPC connection is one)."""
        if component.role == "db-proxy":
            members = [c for c in lab.model.by_role("datastore") if c.runtime != "none"]
            servers = [Server(c.name, c.endpoint, c.details.get("member", "primary") == "primary") for c in members]
            if not servers:  # a database kinelab does not run: its DSN's hosts, the first one first
                dsn = lab.dsn
                servers = [Server(f"db-{i}", f"{host}:{port}", i == 0)
                           for i, (host, port) in enumerate([(dsn.host, dsn.port), *dsn.fallbacks])]
            proxy = HAProxy(component.name, lab.tools["haproxy"].path, component.endpoint, servers, lab.dir, lab.id,
                            proxy="database", balance="first", settings=breaker_settings(lab.spec.db_proxy))
        else:
            servers = [Server(c.name, c.endpoint) for c in lab.model.replicas]
            proxy = HAProxy(component.name, lab.tools["haproxy"].path, component.endpoint, servers, lab.dir, lab.id,
                            proxy="kine", balance="leastconn")
        component.details.update(admin_socket=str(proxy.admin_socket), config=str(proxy.config_path),
                                 servers=[s.name for s in servers])
        proxy.start(**start_options)

    def check_fault(self, component: Component, fault: str) -> None:
        pass  # every component here is a process

    def signal(self, lab, component: Component, sig: int) -> None:
        for record in component.records:
            process = record.process()
            if process is None:
                continue
            # Postgres's children each run in a session of their own: a crash or a stall reaches them one by one.
            children = process.children(recursive=True)
            os.killpg(record.pid, sig)
            for child in children:
                try:
                    child.send_signal(sig)
                except psutil.Error:
                    pass
            if sig == _signal.SIGKILL:
                _reap(record)

    def alive(self, lab, component: Component) -> bool:
        return component.runtime == "none" or component.alive

    def inspect(self, lab, component: Component) -> dict:
        alive = self.alive(lab, component)
        records = component.records
        entry: dict = {}
        if component.role in ("kine", "etcd"):
            entry.update(endpoint=component.endpoint, metrics_url=component.metrics_url)
            if component.role == "kine":
                entry["kine_version"] = lab.model.kine_versions[component.index]
            if alive:
                try:
                    with Etcd(component.endpoint, timeout_s=2) as client:
                        entry["revision"] = client.revision()
                except Exception as exc:  # a live process that does not answer is worth reporting, not fatal
                    entry["revision"], entry["error"] = None, str(exc)
            else:
                entry["last_log_line"] = tail(Path(records[0].log), 1) if records else ""
        elif component.role == "apiserver":
            entry.update(url=component.url, kubeconfig=component.details["kubeconfig"],
                         etcd_servers=component.details["etcd_servers"],
                         ready=alive and answers(f"{component.url}/readyz", Pki(lab.dir / "pki").ssl_context()))
        elif component.role == "control-plane":
            entry.update(url=component.url, ready=alive and answers(f"{component.url}/healthz", insecure_local()))
        elif component.role == "nodes":
            entry.update(url=component.url, nodes=component.details["nodes"], ready_nodes=None)
            if alive:
                try:
                    entry["ready_nodes"] = ready_nodes(lab.kubernetes_client(0, retries=False))
                except Exception as exc:  # an apiserver that does not answer is worth reporting, not fatal
                    entry["error"] = str(exc).splitlines()[0]
        elif component.role == "datastore" and "member" in component.details:
            entry.update(endpoint=component.endpoint, member=component.details["member"])
        elif component.role in ("db-proxy", "balancer"):
            entry["endpoint"] = component.endpoint
            if alive:
                try:  # which servers HAProxy sends connections to, and how many it holds to each
                    entry["servers"] = {name: {"status": row["status"], "connections": int(row["scur"] or 0)}
                                        for name, row in server_stats(Path(component.details["admin_socket"]),
                                                                      component.details["proxy"]).items()}
                except KinelabError as exc:
                    entry["error"] = str(exc)
        return entry

    def teardown(self, model: LabModel, component: Component) -> int:
        stopped = 0
        for record in reversed(component.records):
            if record.alive:
                stopped += 1
                record.stop()
        return stopped


def kine_tool_name(version: str) -> str:
    """How `lab.tools` and the manifest name a Kine binary of a version other than the lab's: kine@v0.17.2."""
    return f"kine@{version}"


def kine_details(tool: str, binary) -> dict:
    """What a replica's component records of its binary: its name in `lab.tools`, its version and path."""
    return {"tool": tool, "kine_version": binary.version, "kine_bin": str(binary.path)}


def _claim_ports(lab, component: Component) -> None:
    """Ports picked free at plan time can be taken by the time the component starts (other programs pick free
    ports too): a first start picks another. Ports the user chose (--base-port), and those of a component that
    ran before (a restart keeps its address), must be free as they are."""
    # etcd members know each other's ports from the start (--initial-cluster)
    pinned = lab.spec.base_port is not None or bool(component.processes) or component.role == "etcd"
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


def _etcd_members(count: int, ports) -> list:
    """`count` members of one etcd cluster, started together: none answers before a quorum has joined."""
    addresses = [(_port(next(ports)), _port(next(ports))) for _ in range(count)]
    cluster = ",".join(f"etcd-{i}=http://{LOOPBACK}:{peer}" for i, (_, peer) in enumerate(addresses))
    return [Component(f"etcd-{i}", "etcd", i, endpoint=f"{LOOPBACK}:{client}", stage=STAGES["kine"],
                      details={"peer_port": peer, "cluster": cluster}) for i, (client, peer) in enumerate(addresses)]


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
