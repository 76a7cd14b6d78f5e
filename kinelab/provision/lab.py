"""`Lab`: Kine replicas on one shared datastore, and what runs on them, as one lifecycle object.

The orchestration is written once here for every backend (`backends`): the constructor records a `LabSpec`;
`start()` has the backend build what it needs, plans every component into the manifest before any process
starts, then starts them role by role (the replicas of a role concurrently); `stop()` is safe to repeat, wins
over a start running in another thread, and removes a temporary lab's directory and data. Everything the
manifest and the pid files name can be stopped from the directory alone (`labdir`), so `kinelab down`, the
reaper and a later `up` all clean up a lab whose Python process died.
"""

from __future__ import annotations

import os
import secrets as _secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence, Union

import psutil

from .. import progress
from ..dsn import Dsn
from ..errors import UsageError
from ..etcd import Etcd
from .backends import get_backend, kine_details, teardown
from .datastores import Datastore, ExternalStore, SqliteStore, make_datastore
from .haproxy import breaker_settings, route_to, set_maxconn
from .kine import kine_flags
from .labdir import LabDir, register
from .model import MODES, Component, LabModel, LabSpec
from .process import LOOPBACK, ProcessRecord, tail
from .tools import normalise_kine_version
from .wait import Cancelled

Target = Union[int, str]  # a Kine replica's index, or a component's name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Lab:
    """Real Kine replicas sharing one datastore. Use as a context manager, or `start()` / `stop()`.

    >>> with Lab(replicas=3, datastore="postgres") as lab:   # doctest: +SKIP
    ...     lab.client(0).create("/registry/configmaps/default/a", b"x")
    """

    def __init__(self, replicas: int = 3, datastore: str = "postgres", *, backend: str = "local",
                 kine_args: Optional[dict] = None, replica_args: Optional[Sequence[dict]] = None,
                 dir: Optional[os.PathLike] = None, kine_bin: Optional[str] = None, allow_shared_sqlite: bool = False,
                 base_port: Optional[int] = None, keep: Optional[bool] = None, apiservers: int = 0,
                 mode: str = "shared-db", apiserver_args: Optional[dict] = None,
                 datastore_settings: Optional[dict] = None, controllers: Optional[bool] = None, nodes: int = 0,
                 workers: int = 0, kine_version: Optional[str] = None, replication: Optional[str] = None,
                 db_proxy: Optional[dict] = None, balancer: bool = False, cluster_name: str = "",
                 kubelet_config: Optional[dict] = None):
        if replicas < 1:
            raise UsageError("a lab needs at least one Kine replica")
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
        if apiservers < 0 or nodes < 0 or workers < 0:
            raise UsageError("--apiservers, --nodes and --workers cannot be negative")
        if replica_args is not None and len(replica_args) != replicas:
            raise UsageError(f"replica_args has {len(replica_args)} entries for {replicas} replicas")
        if kine_version and kine_bin:
            raise UsageError("--kine-bin names a binary and --kine-version one to build: give one of them")
        self.datastore: Datastore = make_datastore(datastore, datastore_settings, replication or "")
        # the datastore's servers, 2 per replica, and the proxies
        needed = self.datastore.members + 2 * replicas + (db_proxy is not None) + bool(balancer)
        if base_port is not None and not 0 < base_port < 65536 - needed:
            raise UsageError(f"--base-port {base_port} is out of range: the lab needs {needed} consecutive "
                             "ports from it, below 65536; choose a lower one or leave it out")
        external = isinstance(self.datastore, ExternalStore)
        shared_sqlite = isinstance(self.datastore, SqliteStore) or (external and self.datastore.dsn.kind == "sqlite")
        if shared_sqlite and replicas > 1 and not allow_shared_sqlite:
            raise UsageError("several Kine replicas on one SQLite file are unsupported (k3s-io/kine#499): use "
                             "--datastore postgres, or --allow-shared-sqlite to see why as a lesson")
        self.backend = get_backend(backend)
        included = self.backend.control_plane_included  # kind: apiservers are control-plane nodes
        if (nodes or included) and not apiservers:
            apiservers = 1  # nodes need a control plane to register with
        controllers = bool(nodes) or included if controllers is None else controllers
        if controllers and not apiservers:
            raise UsageError("a controller-manager and a scheduler need an apiserver: add --apiservers 1 or more")
        if db_proxy is not None and shared_sqlite:
            raise UsageError("a database proxy sits in front of a database server; SQLite is a file: use --datastore "
                             "postgres, postgres-ha or mysql")
        if balancer and apiservers and mode != "hybrid":
            raise UsageError(f"the Kine balancer is what hybrid mode's apiservers reach the pool through; in {mode} "
                             "each apiserver has its own replica: use --mode hybrid, or leave --balancer out")
        if backend != "local" and (db_proxy is not None or balancer or self.datastore.members > 1):
            raise UsageError("--datastore postgres-ha, --db-proxy and --balancer run on the local backend only")
        self.spec = LabSpec(backend=backend, replicas=replicas,
                            datastore="external" if external else getattr(self.datastore, "name", self.datastore.kind),
                            kine_args=dict(kine_args or {}),
                            replica_args=[dict(a or {}) for a in (replica_args or [{}] * replicas)],
                            datastore_settings=dict(datastore_settings or {}), apiservers=apiservers, mode=mode,
                            apiserver_args=dict(apiserver_args or {}), controllers=controllers, nodes=nodes,
                            workers=workers, cluster_name=cluster_name, kubelet_config=dict(kubelet_config or {}),
                            base_port=base_port, allow_shared_sqlite=allow_shared_sqlite,
                            kine_version=normalise_kine_version(kine_version) if kine_version else "",
                            replication=getattr(self.datastore, "replication", ""),
                            db_proxy=None if db_proxy is None else breaker_settings(db_proxy), balancer=bool(balancer))
        for args in [self.spec.kine_args, *self.spec.replica_args]:
            kine_flags(args)  # refuse reserved flags before anything starts
        for args in [self.spec.kine_args, *self.spec.replica_args]:  # "0.17.2" -> "v0.17.2"; "latest" is refused
            for key in [k for k in args if k.lstrip("-").replace("_", "-") == "kine-version"]:
                args["kine-version"] = normalise_kine_version(args.pop(key))
        self.backend.check(self.spec)
        if not hasattr(self.backend, "add_kine_version") and any(
                self.spec.kine_version_of(i) for i in range(replicas)):
            raise UsageError(f"the {backend} backend runs its pinned Kine image only; drop --kine-version")
        self.dir = Path(dir).expanduser().resolve() if dir else None
        self.keep = keep if keep is not None else dir is not None
        self.kine_bin = kine_bin
        self.id = _secrets.token_hex(4)
        self.model: Optional[LabModel] = None
        self.tools: dict = {}
        # what the backend's prepare() found for its plan and starts (kind: the Docker engine, the node image);
        # not kept: whatever teardown needs is in the components' details
        self.context: dict = {}
        self._dsn: Optional[Dsn] = None
        self._reaper: Optional[subprocess.Popen] = None
        self._clients: dict = {}
        self._stopping = threading.Event()
        self._lock = threading.RLock()  # the manifest, written from the threads that start components
        self._starting = threading.RLock()  # held while processes are launched: a racing stop waits for it

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self, *, owned: bool = True) -> "Lab":
        """Build what is missing, then start every component. With `owned`, a reaper stops the lab (and removes
        a temporary one) if this Python process dies; `kinelab up` passes owned=False so the lab outlives it."""
        self.labdir = LabDir(self.dir or tempfile.mkdtemp(prefix="kinelab-")).ensure_writable()
        self.dir = self.labdir.path
        self._stopping.clear()
        try:
            self._clear_previous()
            self.tools = self.backend.prepare(self)
            if self._stopping.is_set():  # stopped from another thread while tools were being built
                raise Cancelled("the lab was stopped while it was starting")
            self._load_secrets()
            me = psutil.Process() if owned else None
            self.model = LabModel(
                id=self.id, dir=str(self.dir), spec=self.spec, state="starting", created_at=_now(), keep=self.keep,
                owner_pid=me.pid if me else None, owner_create_time=me.create_time() if me else None,
                versions={name: tool.version for name, tool in self.tools.items()},  # kine or etcd, and the rest
                binaries={name: str(tool.path) for name, tool in self.tools.items()},
                datastore_kind=self.datastore.dsn.kind if isinstance(self.datastore, ExternalStore)
                else self.datastore.kind, external=isinstance(self.datastore, ExternalStore))
            self.model.components = self.backend.plan(self)
            self._save()  # every component is named before any process starts
            register(self.model)
            if owned:
                self._start_reaper()
            with self._starting, progress.bar("starting lab", total=len(self.model.components)) as advance:
                for stage in self.model.stages():
                    self._start_all(stage, advance)
            self.model.state = "running"
            self._save()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self, components: list, advance) -> None:
        """Start `components` at once; the first failure cancels the others, which stop what they started."""
        if len(components) <= 1:
            for component in components:
                self._start_component(component)
                advance()
            return
        with ThreadPoolExecutor(max_workers=len(components), thread_name_prefix="kinelab-start") as pool:
            futures = [pool.submit(self._start_component, c) for c in components]
            try:
                for future in futures:
                    future.result()
                    advance()
            except BaseException:
                self._stopping.set()
                raise

    def _start_component(self, component: Component) -> None:
        if self._stopping.is_set():
            raise Cancelled(f"the lab is stopping; {component.name} was not started")

        def on_started(record: ProcessRecord) -> None:
            with self._lock:
                component.processes = [r for r in component.records if r.name != record.name] + [record]
                self._save()
            if self._stopping.is_set():  # a stop raced this start: the process just launched goes too
                raise Cancelled(f"the lab is stopping; {component.name} was stopped")

        started = time.monotonic()
        self.backend.start(self, component, on_started=on_started, cancel=self._stopping)
        with self._lock:  # with what the start learnt (an address, a network's subnet, a cluster's timings)
            component.start_s = round(time.monotonic() - started, 2)
            if component.role == "datastore":
                self.model.datastore_dsn = self.datastore.dsn.masked
                self._save_secrets()
            self._save()

    def interrupt(self) -> None:
        """Make a start under way give up at its next wait (safe in a signal handler); `stop` then cleans up."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop every process, safe to repeat and from any thread. A temporary lab is removed with it."""
        self._stopping.set()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        with self._starting:  # a start in another thread has seen the stop and stopped what it launched
            if self.model is not None and self.dir is not None and self.dir.exists():
                with self._lock:
                    self.labdir.sweep(self.model)
                    self.model.state = "stopped"
                    self._save()
            if self._reaper is not None:
                self._reaper.terminate()
                self._reaper.wait()
                self._reaper = None
            if not self.keep and self.dir is not None and self.dir.exists():
                self.labdir.purge(self.id)

    def down(self) -> int:
        """`kinelab down`: stop every process of the lab, whoever started it, and record it stopped. Returns how
        many were still running."""
        stopped = self.labdir.sweep(self.model)
        self.model.state = "stopped"
        self._save()
        return stopped

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- attaching to a lab by its directory ----------------------------------------------------------
    @classmethod
    def attach(cls, dir: os.PathLike) -> "Lab":
        """The lab recorded in `dir`, for status, faults, capture and down (running or not)."""
        labdir = LabDir(dir)
        model = labdir.read()
        if model is None:
            raise UsageError(f"no lab in {labdir.path}; start one with `kinelab up --dir {dir}`")
        lab = cls.__new__(cls)
        lab.labdir, lab.dir, lab.model, lab.spec = labdir, labdir.path, model, model.spec
        lab.backend, lab.keep, lab.id, lab.kine_bin = get_backend(model.backend), True, model.id, None
        lab.tools, lab.context = {}, {}
        lab._reaper, lab._clients, lab._dsn = None, {}, None
        lab._stopping, lab._lock, lab._starting = threading.Event(), threading.RLock(), threading.RLock()
        secrets = labdir.read_secrets()
        if secrets.get("dsn"):
            lab._dsn = Dsn.parse(secrets["dsn"])
        if not model.spec.kine:
            lab.datastore = make_datastore("etcd")  # which says, when asked for a DSN, that there is none
        return lab

    # --- addresses and clients ---------------------------------------------------------------------------
    @property
    def endpoints(self) -> list:
        """Each Kine replica's etcd endpoint (host:port), by index."""
        return self.model.endpoints if self.model else []

    @property
    def metrics_urls(self) -> list:
        return self.model.metrics_urls if self.model else []

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def replica_count(self) -> int:
        return self.spec.replicas

    @property
    def apiserver_count(self) -> int:
        return len(self.model.apiservers) if self.model else 0

    def kine_args_of(self, index: int) -> dict:
        return self.spec.kine_args_of(index)

    @property
    def dsn(self) -> Dsn:
        """The datastore DSN, password included (its repr masks it)."""
        if self._dsn is not None:
            return self._dsn
        if not hasattr(self, "datastore"):  # attached to a directory whose secrets.json is gone
            raise UsageError(f"{self.labdir.secrets_path} is missing, so the lab's DSN is unknown; restore it, or "
                             f"remove the lab with `kinelab down --dir {self.dir} --purge`")
        return self.datastore.dsn

    @property
    def kine_dsn(self) -> Dsn:
        """The DSN Kine gets: the database proxy's address when the lab has one, else `dsn` (for postgres-ha a
        multi-host DSN with target_session_attrs=read-write). kinelab's own reads (capture, faults) use `dsn`."""
        proxy = self.model.db_proxy if self.model else None
        if proxy is None:
            return self.dsn
        return replace(self.dsn, host=LOOPBACK, port=proxy.port, fallbacks=(),
                       params={k: v for k, v in self.dsn.params.items() if k != "target_session_attrs"})

    @property
    def balancer_endpoint(self) -> Optional[str]:
        """The Kine balancer's host:port (HAProxy in front of the pool), or None."""
        balancer = self.model.balancer if self.model else None
        return balancer.endpoint if balancer else None

    def client(self, index: int = 0) -> Etcd:
        """An etcd client bound to replica `index` (kept open until the lab stops)."""
        if not 0 <= index < len(self.endpoints):
            raise UsageError(f"no replica {index}: this lab has replicas 0..{len(self.endpoints) - 1}")
        if index not in self._clients:
            self._clients[index] = Etcd(self.endpoints[index])
        return self._clients[index]

    def kubernetes_client(self, index: int = 0, *, retries: bool = True):
        """A `kubernetes` ApiClient for apiserver `index`, as the lab's admin user. With retries=False a call to a
        dead apiserver fails at once instead of after urllib3's three retries (what fault measurements need)."""
        from kubernetes import client, config

        apiservers = self.model.apiservers if self.model else []
        if not 0 <= index < len(apiservers):
            raise UsageError(f"no apiserver {index}: this lab has {len(apiservers)} (start it with apiservers=N)")
        configuration = client.Configuration()
        config.load_kube_config(config_file=apiservers[index].details["kubeconfig"],
                                client_configuration=configuration)
        if not retries:
            configuration.retries = False  # read by the connection pool when the client is built
        return client.ApiClient(configuration)

    def logs(self, target: Target, lines: int = 20) -> str:
        """The last `lines` of a component's log (masked): its processes', or the one a backend keeps (kind's
        `kind create cluster` output)."""
        component = self._component(target)
        logs = [r.log for r in component.records] or ([component.details["log"]] if "log" in component.details
                                                       else [])
        return "\n".join(tail(Path(log), lines) for log in logs)

    # --- faults: what a component failure looks like, on demand -------------------------------------------
    def _component(self, target: Target) -> Component:
        if self.model is None:
            raise UsageError("the lab is not started")
        if isinstance(target, int):
            replicas = self.model.replicas
            if not 0 <= target < len(replicas):
                raise UsageError(f"no replica {target}: this lab has replicas 0..{len(replicas) - 1}")
            return replicas[target]
        return self.model.component(target)

    def kill(self, target: Target) -> None:
        """SIGKILL a Kine replica (by index) or any component (by name), as a crash would."""
        self.backend.signal(self, self._faulted(target, "kill"), signal.SIGKILL)
        self._forget_client(target)

    def pause(self, target: Target) -> None:
        """SIGSTOP: alive but silent, like a stalled VM."""
        self.backend.signal(self, self._alive(target, "pause"), signal.SIGSTOP)

    def resume(self, target: Target) -> None:
        self.backend.signal(self, self._alive(target, "resume"), signal.SIGCONT)

    def _faulted(self, target: Target, fault: str) -> Component:
        component = self._component(target)
        self.backend.check_fault(component, fault)
        return component

    def _alive(self, target: Target, fault: str) -> Component:
        component = self._faulted(target, fault)
        if not self.backend.alive(self, component):
            raise UsageError(f"{component.name} is not running; `restart` it first")
        return component

    def restart(self, target: Target, *, kine_version: Optional[str] = None) -> None:
        """Stop a component if it runs, then start it again with the same ports, flags and data; a Kine replica
        on another Kine release when `kine_version` is given (one step of a rolling upgrade or downgrade). A
        member of a replicated datastore restarts as a standby of the primary (rewound first if it had been a
        primary)."""
        component = self._faulted(target, "restart")
        if kine_version is not None:
            self._change_kine_version(component, kine_version)  # built first: a failed build stops nothing
        if component.role == "datastore" and len(self.model.by_role("datastore")) > 1:
            self._served_datastore()
            if component.details.get("member") == "primary" and component.alive:
                raise UsageError(f"{component.name} is the primary; `kinelab fault failover` first, or restart the "
                                 "whole database with `kinelab fault db-restart`")
        elif component.role == "datastore":
            return self.restart_datastore()
        teardown(self.model, component)
        self._relaunch(component)
        self._forget_client(target)

    def _change_kine_version(self, component: Component, version: str) -> None:
        if component.role != "kine":
            raise UsageError(f"{component.name} is not a Kine replica; only replicas change their Kine version")
        if not hasattr(self.backend, "add_kine_version"):
            raise UsageError(f"the {self.model.backend} backend runs one Kine version; start another lab instead")
        if not self.tools:  # attached: the binaries the lab was started with
            self.tools = self.model.recorded_binaries()
        name = self.backend.add_kine_version(self, normalise_kine_version(version), self.tools)
        binary = self.tools[name]
        with self._lock:
            self.model.versions[name], self.model.binaries[name] = binary.version, str(binary.path)
            self.spec.replica_args[component.index]["kine-version"] = binary.version
            component.details.update(kine_details(name, binary))
            self._save()

    def _relaunch(self, component: Component) -> None:
        if not self.tools:  # attached: the binaries the lab was started with
            self.tools = self.model.recorded_binaries()
        self._stopping.clear()
        self._start_component(component)
        with self._lock:
            self._save()

    def _forget_client(self, target: Target) -> None:
        client = self._clients.pop(target, None) if isinstance(target, int) else None
        if client is not None:
            client.close()

    # --- database faults: the server kinelab runs, stopped and started on the same data and port ---------
    def _served_datastore(self) -> list:
        """The datastore's server components (a primary first), with `self.datastore` ready to start them."""
        members = [c for c in self.model.by_role("datastore") if c.runtime != "none"]
        if not members:
            raise UsageError(f"this lab's datastore ({self.model.datastore_kind}) has no server kinelab runs; "
                             "stop and start your own database server instead")
        if not hasattr(self, "datastore"):  # attached: the server as recorded, with its passwords
            self.datastore = make_datastore(self.spec.datastore if self.spec.datastore != "external"
                                            else self.model.datastore_kind, self.spec.datastore_settings,
                                            self.spec.replication)
            self.datastore.secrets.update(self.labdir.read_secrets().get("datastore", {}))
        return sorted(members, key=lambda c: c.details.get("member", "primary") != "primary")

    def stop_datastore(self) -> None:
        """Stop the database server(s) (an orderly shutdown); the Kine replicas keep running without them."""
        for component in reversed(self._served_datastore()):
            for record in reversed(component.records):
                record.stop()

    def start_datastore(self) -> None:
        """Start the database server(s) again on the same data directories, ports and passwords."""
        members = self._served_datastore()
        if any(r.alive for c in members for r in c.records):
            raise UsageError("the datastore is already running; `restart` it, or stop it first")
        for component in members:
            self._relaunch(component)

    def restart_datastore(self) -> None:
        self.stop_datastore()
        self.start_datastore()

    def pause_replication(self) -> str:
        """Stop the primary's WAL senders (SIGSTOP): the standby falls behind, as over a slow or broken link. An
        async primary goes on committing; a sync one makes every commit wait for the standby."""
        return self._signal_walsenders(signal.SIGSTOP, "paused")

    def resume_replication(self) -> str:
        return self._signal_walsenders(signal.SIGCONT, "resumed")

    def _signal_walsenders(self, sig: int, what: str) -> str:
        self._served_datastore()
        primary = self.model.member("primary")
        if primary is None or not primary.alive:
            raise UsageError("replication faults need a running primary: start the lab with --datastore postgres-ha")
        pids = self.datastore.walsenders(primary.port)
        for pid in pids:
            os.kill(pid, sig)
        return f"{len(pids)} WAL sender(s) of {primary.name} {what}"

    def limit_db_proxy(self, maxconn: int) -> str:
        """Set the database proxy's connection cap per server now (0: none), as a breaker is switched on or off;
        the queue timeout stays the lab's `queue_timeout_ms`. A restart of the proxy returns to the lab's settings."""
        proxy = self.model.db_proxy if self.model else None
        if proxy is None or not proxy.alive:
            raise UsageError("this lab has no database proxy running: start it with --db-proxy")
        if int(maxconn) < 0:
            raise UsageError(f"maxconn must be 0 (no cap) or more, not {maxconn}")
        set_maxconn(Path(proxy.details["admin_socket"]), proxy.details["proxy"], proxy.details["servers"], maxconn)
        return f"{proxy.name}: at most {maxconn} connections per server" if maxconn else f"{proxy.name}: no cap"

    def failover(self) -> str:
        """What a failover manager does when the primary database dies: SIGKILL the primary, promote the standby
        (woken first if it was paused) and repoint Kine to it. With the multi-host DSN Kine repoints itself (pgx
        skips servers that are down or read-only); with the database proxy, HAProxy's runtime API sends new
        connections to the new primary and cuts those to the old one. Returns what happened, with timings."""
        members = self._served_datastore()
        primary, standby = self.model.member("primary"), self.model.member("standby")
        if standby is None:
            raise UsageError("this lab has no standby to fail over to: start it with --datastore postgres-ha"
                             if len(members) == 1 else "this lab has no standby left (a failover already promoted "
                             f"it); `kinelab fault restart --component {primary.name if primary else 'postgres-0'}` "
                             "brings the old primary back as one")
        if not standby.alive:
            raise UsageError(f"the standby {standby.name} is not running; `kinelab fault restart --component "
                             f"{standby.name}` first")
        began = time.monotonic()
        if primary is not None:
            self.backend.signal(self, primary, signal.SIGKILL)
            primary.details["member"] = "failed"
        if any(r.process() and r.process().status() == psutil.STATUS_STOPPED for r in standby.records):
            self.backend.signal(self, standby, signal.SIGCONT)  # a paused standby: promoted as far as it got
        killed = time.monotonic()
        promoted = self.datastore.promote(standby.port)
        standby.details["member"] = "primary"
        done = time.monotonic()
        detail = (f"killed {primary.name if primary else 'no primary'}; {standby.name} promoted in "
                  f"{done - killed:.2f} s; it held rows up to id {promoted['max_id']}, its id sequence resumes at "
                  f"{promoted['next_id']}")
        proxy = self.model.db_proxy
        if proxy is not None:
            route_to(Path(proxy.details["admin_socket"]), proxy.details["proxy"], standby.name,
                     [c.name for c in members if c is not standby])
            detail += f"; {proxy.name} repointed in {time.monotonic() - done:.2f} s"
        else:
            detail += "; Kine's multi-host DSN finds it"
        with self._lock:
            self._save()
        return detail + f" ({time.monotonic() - began:.2f} s in all)"

    # --- status ------------------------------------------------------------------------------------------
    def status(self) -> dict:
        """The manifest's public view: every component with its liveness and readiness, plus the replicas,
        apiservers and datastore as `kinelab up --json` has always printed them."""
        model = self.model
        components = [self._inspect(c) for c in model.components]
        by_name = {c["name"]: c for c in components}
        replicas = [{k: v for k, v in by_name[c.name].items() if k not in ("name", "role", "url")}
                    for c in model.replicas]
        datastore = {"kind": model.datastore_kind, "dsn": model.datastore_dsn, **({"external": True} if model.external
                                                                                  else {})}
        datastore["alive"] = all(r.alive for c in model.by_role("datastore") for r in c.records
                                 if c.details.get("member", "primary") == "primary")  # a failed member is history
        status = {"dir": str(self.dir), "id": model.id, "backend": model.backend, "state": model.state,
                  "replicas": replicas, "datastore": datastore,
                  # the replicas' release, or each of them ("v0.17.2, v0.17.5") during a rolling upgrade
                  "kine_version": ", ".join(dict.fromkeys(model.kine_versions)) or model.versions.get("kine"),
                  "components": components}
        if not self.spec.kine:
            status.update(kine_version=None, etcd_version=model.versions.get("etcd"))
        if model.apiservers:
            status.update(apiservers=[{k: v for k, v in by_name[c.name].items() if k not in ("name", "role")}
                                      for c in model.apiservers], mode=model.mode,
                          apiserver_version=model.versions.get("kube-apiserver"))
        for cluster in model.by_role("cluster"):  # kind: what kubectl needs
            status["kubeconfig"] = cluster.details["kubeconfig"]
        return status

    def _inspect(self, component: Component) -> dict:
        records = component.records
        entry = {"name": component.name, "role": component.role, "index": component.index,
                 "pid": records[0].pid if records else None, "alive": self.backend.alive(self, component)}
        entry.update(self.backend.inspect(self, component))
        return entry

    def __repr__(self) -> str:
        state = self.model.state if self.model else "new"
        dsn = self.model.datastore_dsn if self.model else "?"
        return f"Lab(replicas={self.spec.replicas}, datastore={dsn}, backend={self.spec.backend}, state={state}, " \
               f"dir={self.dir})"

    def _repr_html_(self) -> str:
        model = self.model
        if model is None:
            return f"<b>kinelab Lab</b> (not started): {self.spec.replicas} Kine replicas on {self.spec.datastore}"
        rows = "".join(f"<tr><td>{c.name}</td><td>{c.endpoint or c.url}</td><td>{c.metrics_url}</td></tr>"
                       for c in model.components if c.runtime != "none")
        return (f"<b>kinelab Lab</b> ({model.state}) on <code>{model.datastore_dsn}</code>, Kine "
                f"{model.versions.get('kine', '?')}<table><tr><th>component</th><th>endpoint</th>"
                f"<th>metrics</th></tr>{rows}</table>")

    # --- internals ---------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        progress.say(message)

    def _clear_previous(self) -> None:
        previous = self.labdir.read()  # refuses a file that is not a manifest this version can take over
        if previous is None:
            return
        alive = self.labdir.alive(previous)
        if previous.state == "running" and alive and len(alive) == len(previous.records) and not _orphaned(previous):
            raise UsageError(f"a lab is already running in {self.dir}; run `kinelab down --dir {self.dir}` first")
        self.labdir.sweep(previous)  # leftovers of a lab whose owner died
        if previous.spec.datastore == self.spec.datastore:
            self.id = previous.id  # same data directory, same passwords

    def _load_secrets(self) -> None:
        stored = self.labdir.read_secrets()
        if stored.get("kind") == getattr(self.datastore, "name", self.datastore.kind) and \
                hasattr(self.datastore, "secrets"):
            self.datastore.secrets.update(stored.get("datastore", {}))

    def _save_secrets(self) -> None:
        self.labdir.write_secrets({"kind": getattr(self.datastore, "name", self.datastore.kind),
                                   "dsn": self.datastore.dsn.url,
                                   "datastore": getattr(self.datastore, "secrets", {})})

    def _save(self) -> None:
        with self._lock:
            self.labdir.write(self.model)

    def _start_reaper(self) -> None:
        me = psutil.Process()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "kinelab.provision.reaper", str(self.dir), str(me.pid), repr(me.create_time())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.dir / "reaper.log", "ab"),
            start_new_session=True)


def _orphaned(model: LabModel) -> bool:
    """True for a lab whose owning Python process is gone (killed together with its reaper): its processes are
    leftovers, not a lab someone is using. Labs of `kinelab up` have no owner and are never orphaned."""
    if not model.owner_pid:
        return False
    return not ProcessRecord("owner", model.owner_pid, model.owner_create_time or 0.0, "", []).alive


# --- the labs on this machine ----------------------------------------------------------------------------
def _bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def stale_labs(include_running: bool = True) -> list:
    """Every lab kinelab knows of here (the index, temporary labs in the temp directory), with its state
    (running, stopped, orphaned: its owner or processes died, gone: its directory was removed) and size; and
    Postgres data sets that no lab uses any more."""
    from .labdir import ROOT_PG_HOME, data_owner, indexed_labs

    found, seen = [], set()
    temporary = [(None, LabDir(p.parent)) for p in Path(tempfile.gettempdir()).glob("kinelab-*/lab.json")]
    for lab_id, labdir in [*indexed_labs(), *temporary]:
        if labdir.path in seen:
            continue
        seen.add(labdir.path)
        entry = {"id": lab_id, "path": str(labdir.path), "keep": True, "bytes": 0, "what": "lab"}
        if not labdir.manifest_path.exists():
            entry["state"] = "gone, still running" if labdir.strays(lab_id) else "gone"
        else:
            model = labdir.read_if_current()
            alive = labdir.alive(model)
            entry.update(id=model.id if model else lab_id, keep=model.keep if model else False,
                         bytes=_bytes(labdir.path))
            if model is not None and model.state in ("starting", "running") and alive and not _orphaned(model):
                entry["state"] = "running"
            elif alive or (model is not None and model.state != "stopped"):
                entry["state"] = "orphaned"
            else:
                entry["state"] = "stopped"
        if entry["id"] and (ROOT_PG_HOME / entry["id"]).is_dir():
            entry["bytes"] += _bytes(ROOT_PG_HOME / entry["id"])
        if include_running or entry["state"] != "running":
            found.append(entry)
    known = {e["id"] for e in found}
    for data in sorted(ROOT_PG_HOME.iterdir()) if ROOT_PG_HOME.is_dir() else []:
        if data.name in known or any(str(data) in " ".join(p.info["cmdline"] or [])
                                     for p in psutil.process_iter(["cmdline"])):
            continue
        # Unused only when its own lab is known to be gone: another user's KINELAB_HOME may index it, and a
        # benchmark may keep a stopped database's data on purpose.
        owner = data_owner(data)
        model = owner.read_if_current() if owner is not None else None
        state = ("owner unknown" if owner is None else "kept: its lab exists" if model and model.id == data.name
                 else "unused data")
        found.append({"id": data.name, "path": str(data), "keep": state != "unused data", "bytes": _bytes(data),
                      "state": state, "what": "Postgres data"})
    return found


def prune_labs(labs: list) -> list:
    """Remove what `stale_labs` found stale: temporary labs not running, labs whose owner died, directories
    already gone (their index entry and data), unused data. Kept labs that are merely stopped stay. Returns
    the entries removed."""
    import shutil

    from .labdir import index_file

    removed = []
    for entry in labs:
        state = entry["state"]
        if state == "unused data":
            shutil.rmtree(entry["path"], ignore_errors=True)
        elif state.startswith("gone"):
            labdir = LabDir(entry["path"])
            for proc in labdir.strays(entry["id"]):  # a process group each, as the lab started them
                ProcessRecord(proc.name(), proc.pid, proc.create_time(), "", []).stop()
            labdir.purge(entry["id"])
        elif state == "orphaned" and entry["keep"]:  # a named lab keeps its data: it is stopped, not removed
            labdir = LabDir(entry["path"])
            model = labdir.read_if_current()
            labdir.sweep(model)
            if model is not None:
                model.state = "stopped"
                labdir.write(model)
            continue
        elif state == "orphaned" or (state == "stopped" and not entry["keep"]):
            labdir = LabDir(entry["path"])
            labdir.sweep(labdir.read_if_current())
            labdir.purge(entry["id"])
        else:
            continue
        if entry["id"]:
            index_file(entry["id"]).unlink(missing_ok=True)
        removed.append(entry)
    return removed
