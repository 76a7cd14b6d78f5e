"""The lab model: what a lab is made of, typed. Upper layers read a lab through this, never its JSON.

A lab is a flat list of components (the datastore, the Kine replicas, the apiservers, the rest of a control
plane), each with the addresses clients use and the records that find its processes again. The manifest
(``lab.json``, see `labdir`) is this model serialised; kwokctl keeps a typed cluster config the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from .process import ProcessRecord

SCHEMA = 2  # the manifest's "kinelab_lab" value; 1 was the untyped manifest of kinelab 0.1
# How the article behind kinelab deploys apiservers on Kine: each on its own replica of one database (k3s HA),
# all on one Kine, or all on the whole pool (the etcd client balances over --etcd-servers).
MODES = ("shared-db", "single-kine", "hybrid")
# Start order by role; a role's components start together once the roles before them are ready.
STAGES = {"datastore": 0, "db-proxy": 5, "kine": 10, "balancer": 15, "apiserver": 20, "control-plane": 30,
          "nodes": 40}
# "nodes" is kwok's one component for all its simulated nodes; "network", "cluster" and "node" are kind's: the
# lab's docker network, the kind cluster, and each of its node containers.
ROLES = ("datastore", "kine", "etcd", "apiserver", "control-plane", "nodes", "db-proxy", "balancer", "network",
         "cluster", "node")


def etcd_servers_for(mode: str, index: int, endpoints: list, balancer: str = "") -> list:
    """The Kine endpoints apiserver `index` gets in `mode` (in hybrid mode with a `balancer`: only its address)."""
    if mode == "single-kine":
        return [endpoints[0]]
    if mode == "hybrid":
        return [balancer] if balancer else list(endpoints)
    return [endpoints[index % len(endpoints)]]


@dataclass
class LabSpec:
    """What was asked for: the constructor's arguments, checked, with no secret in them."""

    backend: str = "local"
    replicas: int = 3
    datastore: str = "postgres"  # postgres | postgres-ha | sqlite | mysql | "external" (the DSN itself is a secret)
    kine_args: dict = field(default_factory=dict)
    replica_args: list = field(default_factory=list)  # one dict per replica
    datastore_settings: dict = field(default_factory=dict)
    apiservers: int = 0
    mode: str = "shared-db"
    apiserver_args: dict = field(default_factory=dict)
    controllers: bool = False  # a kube-controller-manager and a kube-scheduler per apiserver
    nodes: int = 0  # simulated nodes (kwok)
    workers: int = 0  # kind worker nodes
    cluster_name: str = ""  # kind: the cluster's name, unique on its Docker engine ("" for the default)
    kubelet_config: dict = field(default_factory=dict)  # kind: more KubeletConfiguration fields for every node
    base_port: Optional[int] = None
    allow_shared_sqlite: bool = False
    kine_version: str = ""  # the Kine release every replica runs ("": the pinned one, or the binary given)
    replication: str = ""  # postgres-ha: sync | async
    db_proxy: Optional[dict] = None  # HAProxy between Kine and the database, with these breaker settings
    balancer: bool = False  # HAProxy in front of the Kine pool (hybrid mode's load balancer)

    @property
    def kine(self) -> bool:
        """False for a lab whose replicas are etcd members."""
        return self.datastore != "etcd"

    def kine_args_of(self, index: int) -> dict:
        """The Kine flags replica `index` runs with: the lab's, overridden by the replica's own."""
        own = self.replica_args[index] if index < len(self.replica_args) else {}
        return {**self.kine_args, **own}

    def kine_version_of(self, index: int) -> str:
        """The Kine release replica `index` runs: its own `kine-version` option (a rolling upgrade runs replicas
        of two versions), else the lab's; "" for the lab's default binary."""
        own = [v for k, v in self.kine_args_of(index).items() if k.lstrip("-").replace("_", "-") == "kine-version"]
        return str(own[-1]) if own and own[-1] else self.kine_version


@dataclass
class Component:
    """One thing a lab runs, found again by its records whoever started it."""

    name: str  # kine-0, postgres, kube-apiserver-1, ...: also the name of its log and pid file
    role: str  # one of ROLES
    index: int = 0
    endpoint: str = ""  # host:port clients use
    url: str = ""  # the HTTP(S) base URL, for servers that have one
    metrics_url: str = ""
    details: dict = field(default_factory=dict)  # role-specific facts: etcd servers, kubeconfig, masked DSN...
    processes: list = field(default_factory=list)  # ProcessRecords, empty until started
    # how teardown reaches it: "process" (its records), "none" (nothing runs), or a backend's own (`backends.teardown`)
    runtime: str = "process"
    stage: int = 0  # start order: a stage starts, all at once, when every component of the stages before is ready
    start_s: Optional[float] = None  # how long its last start took, until it was ready

    @property
    def port(self) -> Optional[int]:
        return int(self.endpoint.rsplit(":", 1)[1]) if self.endpoint else None

    @property
    def records(self) -> list:
        return [p if isinstance(p, ProcessRecord) else ProcessRecord(**p) for p in self.processes]

    @property
    def alive(self) -> bool:
        records = self.records
        return bool(records) and all(r.alive for r in records)


@dataclass
class LabModel:
    """The manifest: a lab's identity, spec, versions and components."""

    id: str
    dir: str
    spec: LabSpec
    state: str = "new"  # new | starting | running | stopped
    created_at: str = ""
    keep: bool = True  # False: a temporary lab, whose directory and data go when it stops
    owner_pid: Optional[int] = None  # the Python process whose death stops the lab (None: `kinelab up`)
    owner_create_time: Optional[float] = None
    versions: dict = field(default_factory=dict)  # {"kine": "v0.17.5", "kubernetes": "v1.37.2"}
    binaries: dict = field(default_factory=dict)  # tool name -> path
    datastore_kind: str = ""  # postgres | sqlite | mysql, also for an external DSN
    datastore_dsn: str = ""  # masked
    external: bool = False
    components: list = field(default_factory=list)

    # --- queries the upper layers use -----------------------------------------------------------------
    def by_role(self, role: str) -> list:
        return sorted((c for c in self.components if c.role == role), key=lambda c: c.index)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise UsageError(f"this lab has no component {name!r}; it has {', '.join(c.name for c in self.components)}")

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def replicas(self) -> list:
        """The members of the store the apiservers use: Kine replicas, or etcd members in an etcd lab."""
        return self.by_role("kine") or self.by_role("etcd")

    @property
    def apiservers(self) -> list:
        return self.by_role("apiserver")

    @property
    def controllers(self) -> list:
        return self.by_role("control-plane")

    @property
    def endpoints(self) -> list:
        return [c.endpoint for c in self.replicas]

    @property
    def metrics_urls(self) -> list:
        return [c.metrics_url for c in self.replicas]

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def kine_versions(self) -> list:
        """The Kine version each replica runs, by index."""
        return [c.details.get("kine_version") or self.versions.get("kine", "unknown") for c in self.replicas]

    def member(self, state: str) -> Optional[Component]:
        """The database member that is `state` (primary, standby, failed) in a replicated datastore."""
        return next((c for c in self.by_role("datastore") if c.details.get("member") == state), None)

    @property
    def balancer(self) -> Optional[Component]:
        found = self.by_role("balancer")
        return found[0] if found else None

    @property
    def db_proxy(self) -> Optional[Component]:
        found = self.by_role("db-proxy")
        return found[0] if found else None

    def recorded_binaries(self) -> dict:
        """The binaries the lab was started with, for restarting its components from another process."""
        from .tools import Binary

        return {name: Binary(Path(path), self.versions.get(name, "unknown"), name)
                for name, path in self.binaries.items()}

    def stages(self) -> list:
        """The components grouped by stage, in start order."""
        numbers = sorted({c.stage for c in self.components})
        return [[c for c in self.components if c.stage == n] for n in numbers]

    @property
    def records(self) -> list:
        """Every process record, in start order."""
        return [r for stage in self.stages() for c in stage for r in c.records]

    # --- the manifest's JSON --------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = asdict(self)
        data["kinelab_lab"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LabModel":
        data = dict(data)
        if data.pop("kinelab_lab", None) != SCHEMA:
            raise ValueError("not a kinelab manifest of this version")
        data["spec"] = LabSpec(**_known(LabSpec, data.get("spec", {})))
        data["components"] = [Component(**{**_known(Component, c), "processes": [
            ProcessRecord(**p) for p in c.get("processes", [])]}) for c in data.get("components", [])]
        return cls(**_known(cls, data))


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
