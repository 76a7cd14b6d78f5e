"""The kind backend: real Kubernetes control planes (kind nodes) on Kine containers that share one Postgres.

Everything runs in Docker on kind's ``kind`` network; this module only plans and drives it.

The plan (`plan_kind` -> `KindPlan`), testable without Docker:

* one Postgres container (``postgres:<tag>``, a generated password, published on 127.0.0.1 only so
  ``capture()`` can read the ``kine`` table from the host);
* N Kine containers from the official image ``rancher/kine:<kinelab's pinned Kine version>`` (the image is
  built from the same tag as the binary kinelab pins, is self-contained, and avoids mounting a host binary
  whose libc/CGO build may not match the container); each gets its datastore through ``KINE_ENDPOINT`` (so
  the password never appears in ``docker ps`` or in an argv) and ``--listen-address=0.0.0.0:2379``, which is
  the container's own interface on the ``kind`` network: no host port is published for Kine;
* the kind ``Cluster`` config (`kind_config`, `KindPlan.to_yaml`).

Per-node endpoints. kubeadm keeps ONE ``ClusterConfiguration`` for the whole cluster (``kubeadm join``
reads it from the ``kubeadm-config`` ConfigMap, not from the joining node's file), so a node-level
ClusterConfiguration patch cannot give control plane *i* its own ``--etcd-servers``. kinelab therefore:

* ``single-kine`` / ``hybrid``: puts the list in ``ClusterConfiguration.etcd.external.endpoints``
  (Kine 0 / every Kine, by container name, resolved by Docker's DNS on the ``kind`` network);
* ``shared-db``: puts ONE name, ``http://kine.kinelab.internal:2379``, in the ClusterConfiguration and makes it
  resolve per node: each control-plane node gets a node-level ``InitConfiguration`` (node 0) or
  ``JoinConfiguration`` (the others) patch setting kubeadm's ``patches.directory`` to a directory mounted
  from the lab (``extraMounts``) that holds ``kube-apiserver+strategic.json``, a strategic-merge patch of
  the kube-apiserver static pod adding ``hostAliases: [{ip: <Kine i's address>, hostnames:
  [kine.kinelab.internal]}]`` (the kubelet honours hostAliases on host-network pods). The addresses exist
  only once the Kine containers run, so `KindLab.create` starts them first and writes the patch files
  from ``docker inspect``; `pod_patches` renders them for any address map.

The lab directory (`KindLab.dir`) is the local backend's, with ``"backend": "kind"`` in ``lab.json``: the plan
(``describe()``, no password), the recorded state, ``secrets.json`` (mode 0600: the Postgres password), the kind
config, the kubeadm patches and the kubeconfig. `KindLab.attach` rebuilds the lab from it, so ``kinelab status``,
``down`` and ``capture`` work on it like on a local lab (`kinelab.provision.backends`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as _secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import yaml

from ..dsn import Dsn
from ..errors import ToolError, UsageError
from .apiserver import APISERVER_VERSION, KUBERNETES_MODULE, staging_modules, staging_version
from .labdir import MANIFEST, SECRETS
from .labdir import write_private as _write_private
from .model import MODES, etcd_servers_for


def read_manifest(path: Path) -> Optional[dict]:
    file = Path(path) / MANIFEST
    return json.loads(file.read_text()) if file.exists() else None


def write_manifest(path: Path, manifest: dict) -> None:
    (Path(path) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
from .tools import KINE_VERSION, cache_dir

KIND_MODULE = "sigs.k8s.io/kind"
KIND_VERSION = "v0.33.0"  # its kubeadm template is v1beta4 for Kubernetes >= v1.36 (cluster/internal/kubeadm)
KIND_API = "kind.x-k8s.io/v1alpha4"
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KINE_IMAGE = f"rancher/kine:{KINE_VERSION}"
POSTGRES_IMAGE = "postgres:17-alpine"
NETWORK = "kind"  # kind's own network: the nodes resolve the Kine containers by name on it
KINE_PORT = 2379
SHARED_ETCD_NAME = "kine.kinelab.internal"
NODE_PATCH_DIR = "/kinelab/kubeadm-patches"
POD_PATCH_FILE = "kube-apiserver+strategic.json"
LABEL = "kinelab.lab"
# kind's labels on every container of a cluster: its nodes and, with several control planes, a load balancer
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"
KIND_ROLE_LABEL = "io.x-k8s.kind.role"
MASK = "****"
DATASTORES = ("postgres",)
NO_DOCKER = "no Docker engine (docker info failed)"
CHECKER_MODULE = "kinelab.local/kindcheck"
CHECKER_SOURCE = Path(__file__).with_name("kindcheck") / "main.go"


# --- the plan ----------------------------------------------------------------------------------------
@dataclass
class Container:
    """One `docker run -d`. `secret_env` values are masked in repr, `describe()` and `run_argv(mask=True)`."""

    name: str
    image: str
    role: str  # "postgres" | "kine"
    labels: dict
    env: dict = field(default_factory=dict)
    secret_env: dict = field(default_factory=dict, repr=False)
    args: list = field(default_factory=list)
    publish: list = field(default_factory=list)  # docker -p specs; always bound to 127.0.0.1
    network: str = NETWORK

    def run_argv(self, *, mask: bool = True) -> list:
        """`docker run` for this container. Secret env values are passed by name only (``-e KEY``, value from
        the environment given to subprocess), so they never appear in an argv even with mask=False."""
        argv = ["docker", "run", "-d", "--name", self.name, "--hostname", self.name, "--network", self.network,
                "--restart", "no"]
        for key, value in sorted(self.labels.items()):
            argv += ["--label", f"{key}={value}"]
        for key, value in sorted(self.env.items()):
            argv += ["-e", f"{key}={value}"]
        for key in sorted(self.secret_env):
            argv += ["-e", key]
        for spec in self.publish:
            argv += ["-p", spec]
        return [*argv, self.image, *self.args]

    def run_env(self) -> dict:
        """The environment for `docker run`, carrying the secret values `run_argv` names."""
        return {**os.environ, **self.secret_env}

    def describe(self) -> dict:
        return {"name": self.name, "role": self.role, "image": self.image, "network": self.network,
                "labels": dict(self.labels), "env": {**self.env, **{k: MASK for k in self.secret_env}},
                "args": list(self.args), "publish": list(self.publish)}


@dataclass
class KindPlan:
    name: str
    lab_id: str
    mode: str
    control_planes: int
    datastore: str
    kine_image: str
    postgres_image: str
    kubernetes_version: str
    node_image: str
    password: str = field(repr=False)
    postgres: Container = field(repr=False)
    kines: list = field(repr=False)
    patch_root: Optional[str] = None  # host directory holding per-node kubeadm patches (shared-db)

    def __repr__(self) -> str:
        return (f"KindPlan(name={self.name!r}, id={self.lab_id}, mode={self.mode}, control_planes={self.control_planes}, "
                f"kine={len(self.kines)}x{self.kine_image}, datastore={self.masked_dsn()})")

    @property
    def containers(self) -> list:
        return [self.postgres, *self.kines]

    @property
    def cluster_name(self) -> str:
        return self.name

    def dsn(self) -> str:
        """The DSN the Kine containers use, on the docker network, WITH the password."""
        return f"postgres://kine:{self.password}@{self.postgres.name}:5432/kubernetes?sslmode=disable"

    def masked_dsn(self) -> str:
        return self.dsn().replace(self.password, MASK)

    def kine_endpoints(self) -> list:
        """Every Kine's client URL as the kind nodes see it (container name on the kind network)."""
        return [f"http://{k.name}:{KINE_PORT}" for k in self.kines]

    def cluster_endpoints(self) -> list:
        """``ClusterConfiguration.etcd.external.endpoints`` for the mode (see the module docstring)."""
        if self.mode == "shared-db":
            return [f"http://{SHARED_ETCD_NAME}:{KINE_PORT}"]
        return etcd_servers_for(self.mode, 0, self.kine_endpoints())

    def node_endpoints(self, index: int) -> list:
        """What control plane `index`'s apiserver ends up talking to."""
        return etcd_servers_for(self.mode, index, self.kine_endpoints())

    def node_kine(self, index: int) -> Container:
        """The Kine container control plane `index` is pinned to in shared-db."""
        return self.kines[index % len(self.kines)]

    def to_yaml(self) -> str:
        return yaml.dump(kind_config(self), Dumper=_Dumper, sort_keys=False, default_flow_style=False)

    def describe(self) -> dict:
        """The plan with every password masked (for --json and logs)."""
        return {"name": self.name, "id": self.lab_id, "mode": self.mode, "control_planes": self.control_planes,
                "replicas": len(self.kines), "kubernetes_version": self.kubernetes_version,
                "node_image": self.node_image, "kine_image": self.kine_image, "postgres_image": self.postgres_image,
                "patch_root": self.patch_root, "datastore": {"kind": self.datastore, "dsn": self.masked_dsn()},
                "containers": [c.describe() for c in self.containers],
                "cluster_endpoints": self.cluster_endpoints(),
                "node_endpoints": [self.node_endpoints(i) for i in range(self.control_planes)]}


def plan_kind(name: str = "kinelab", control_planes: int = 2, replicas: int = 2, mode: str = "shared-db",
              datastore: str = "postgres", kine_image: str = KINE_IMAGE, postgres_image: str = POSTGRES_IMAGE,
              kubernetes_version: str = APISERVER_VERSION, *, node_image: Optional[str] = None,
              lab_id: Optional[str] = None, patch_root: Optional[os.PathLike] = None,
              password: Optional[str] = None) -> KindPlan:
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    if datastore not in DATASTORES:
        raise UsageError(f"the kind backend runs its datastore as a container: use --datastore postgres "
                         f"(got {datastore!r})")
    if control_planes < 1 or replicas < 1:
        raise UsageError("a kind lab needs at least one control plane and one Kine replica")
    if mode == "shared-db" and replicas < control_planes:
        raise UsageError(f"shared-db gives each control plane its own Kine: use --replicas >= {control_planes}")
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise UsageError(f"kind cluster name {name!r} must be letters, digits and '-'")
    staging_version(kubernetes_version)  # refuses a tag that is not vX.Y.Z
    lab_id = lab_id or _secrets.token_hex(4)
    password = password or _secrets.token_urlsafe(18)
    labels = {LABEL: lab_id, "kinelab.cluster": name}
    prefix = f"kinelab-{lab_id}"
    postgres = Container(
        name=f"{prefix}-postgres", image=postgres_image, role="postgres", labels={**labels, "kinelab.role": "postgres"},
        env={"POSTGRES_USER": "kine", "POSTGRES_DB": "kubernetes"}, secret_env={"POSTGRES_PASSWORD": password},
        publish=["127.0.0.1::5432"])
    plan = KindPlan(name=name, lab_id=lab_id, mode=mode, control_planes=control_planes, datastore=datastore,
                    kine_image=kine_image, postgres_image=postgres_image, kubernetes_version=kubernetes_version,
                    node_image=node_image or f"kindest/node:{kubernetes_version}", password=password,
                    postgres=postgres, kines=[],
                    patch_root=str(patch_root) if patch_root else None)
    for index in range(replicas):
        plan.kines.append(Container(
            name=f"{prefix}-kine-{index}", image=kine_image, role="kine",
            labels={**labels, "kinelab.role": "kine", "kinelab.index": str(index)},
            secret_env={"KINE_ENDPOINT": plan.dsn()},
            args=[f"--listen-address=0.0.0.0:{KINE_PORT}"]))
    return plan


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the kubeadm patches) as YAML block literals, as people write them by hand."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def _patch(kind: str, body: dict) -> str:
    return yaml.safe_dump({"apiVersion": KUBEADM_API, "kind": kind, **body}, sort_keys=False)


def node_patch_dir(plan: KindPlan, index: int) -> str:
    root = plan.patch_root or f"/tmp/kinelab-kind-{plan.lab_id}"
    return str(Path(root) / f"control-plane-{index}")


def kind_config(plan: KindPlan) -> dict:
    """The kind `Cluster` for the plan (kind.x-k8s.io/v1alpha4; kubeadm patches in kubeadm.k8s.io/v1beta4)."""
    cluster_patch = _patch("ClusterConfiguration", {"etcd": {"external": {"endpoints": plan.cluster_endpoints()}}})
    nodes = []
    for index in range(plan.control_planes):
        node: dict = {"role": "control-plane", "image": plan.node_image,
                      "labels": {"kinelab.lab": plan.lab_id, "kinelab.control-plane": str(index)}}
        if plan.mode == "shared-db":
            kind = "InitConfiguration" if index == 0 else "JoinConfiguration"
            node["extraMounts"] = [{"hostPath": node_patch_dir(plan, index), "containerPath": NODE_PATCH_DIR,
                                    "readOnly": True}]
            node["kubeadmConfigPatches"] = [_patch(kind, {"patches": {"directory": NODE_PATCH_DIR}})]
        nodes.append(node)
    return {"kind": "Cluster", "apiVersion": KIND_API, "name": plan.name,
            "networking": {"apiServerAddress": "127.0.0.1"},
            "nodes": nodes, "kubeadmConfigPatches": [cluster_patch]}


def pod_patches(plan: KindPlan, addresses: dict) -> dict:
    """shared-db: control plane index -> the kube-apiserver static-pod patch (JSON text) pinning
    `SHARED_ETCD_NAME` to its Kine's address. `addresses` maps Kine container name -> IP."""
    if plan.mode != "shared-db":
        return {}
    out = {}
    for index in range(plan.control_planes):
        kine = plan.node_kine(index)
        if kine.name not in addresses:
            raise UsageError(f"no address for {kine.name}; start the Kine containers first")
        out[index] = json.dumps({"spec": {"hostAliases": [{"ip": addresses[kine.name],
                                                           "hostnames": [SHARED_ETCD_NAME]}]}}, indent=2) + "\n"
    return out


# --- Docker ------------------------------------------------------------------------------------------
def docker_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        return subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_docker() -> None:
    if not docker_available():
        raise ToolError("the kind backend needs a running Docker engine (`docker info` failed): "
                        "install Docker Engine and start it; the local backend needs neither")


def require_kind() -> str:
    found = shutil.which("kind")
    if not found:
        raise ToolError(f"the kind backend needs the kind CLI: `go install {KIND_MODULE}@{KIND_VERSION}` "
                        "(or see kind.sigs.k8s.io); the local backend needs neither")
    return found


def _run(argv: Sequence[str], *, env: Optional[dict] = None, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:  # no docker binary, or an engine that hangs
        raise ToolError(f"`{' '.join(argv[:3])} ...` could not run: {exc}") from None
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"`{' '.join(argv[:3])} ...` failed (exit {result.returncode}): {last}")
    return result


def _containers(selector: str) -> list:
    """`docker ps -a` rows (name, role, state, status, image) for a filter such as ``label=kinelab.lab=ID``; the
    role is kinelab's (postgres, kine) or kind's (control-plane, external-load-balancer)."""
    rows = []
    for line in _run(["docker", "ps", "-a", "--filter", selector, "--format", "{{json .}}"]).stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        labels = dict(item.partition("=")[::2] for item in (row.get("Labels") or "").split(",") if item)
        rows.append({"name": row.get("Names"), "role": labels.get("kinelab.role") or labels.get(KIND_ROLE_LABEL),
                     "state": row.get("State"), "status": row.get("Status"), "image": row.get("Image")})
    return rows


class KindLab:
    """A kind cluster whose control planes run on Kine containers sharing one Postgres container.

    Every container kinelab starts carries the label ``kinelab.lab=<id>`` (`leftovers()` finds them), and the
    kind nodes carry it as a node label too; kind labels its own containers ``io.x-k8s.kind.cluster=<name>``.
    Nothing listens on a host address other than 127.0.0.1.
    Like `Lab`, it answers `status()`, `down()` and `capture()` (see `kinelab.provision.backends`).
    """

    def __init__(self, plan: Optional[KindPlan] = None, *, dir: Optional[os.PathLike] = None, **plan_args):
        self.plan = plan if plan is not None else plan_kind(**plan_args)
        self.dir = Path(dir).expanduser().resolve() if dir else cache_dir() / "kind-labs" / self.plan.lab_id
        if self.plan.patch_root is None:
            self.plan.patch_root = str(self.dir / "kubeadm-patches")
        self.state = "new"
        self.created_at: Optional[str] = None

    def __repr__(self) -> str:
        return f"KindLab({self.plan!r}, state={self.state}, dir={self.dir})"

    # --- the lab directory ---------------------------------------------------------------------------
    def save(self, state: str) -> None:
        """Record the lab in its directory (manifest and, mode 0600, the password) as being in `state`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.created_at = self.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        _write_private(self.dir / SECRETS, json.dumps({"backend": "kind", "password": self.plan.password}).encode())
        write_manifest(self.dir, {"kinelab_lab": 1, "backend": "kind", "id": self.plan.lab_id, "dir": str(self.dir),
                                  "state": state, "created_at": self.created_at, "kine_version": KINE_VERSION,
                                  "plan": self.plan.describe()})

    @classmethod
    def attach(cls, dir: os.PathLike) -> "KindLab":
        """The kind lab recorded in `dir` (running or not), rebuilt from its manifest and secrets."""
        path = Path(dir).expanduser().resolve()
        manifest = read_manifest(path)
        if manifest is None or manifest.get("backend") != "kind":
            raise UsageError(f"no kind lab in {path}; start one with `kinelab up --backend kind --dir {dir}`")
        try:
            password = json.loads((path / SECRETS).read_text())["password"]
        except (OSError, ValueError, KeyError):
            raise UsageError(f"{path / SECRETS} is missing or unreadable, so the kind lab's Postgres password is "
                             f"lost; remove its containers with `docker rm -f` (label {LABEL}={manifest['id']})") \
                from None
        d = manifest["plan"]
        plan = plan_kind(d["name"], d["control_planes"], d["replicas"], d["mode"], d["datastore"]["kind"],
                         d["kine_image"], d["postgres_image"], d["kubernetes_version"], node_image=d["node_image"],
                         lab_id=d["id"], patch_root=d["patch_root"], password=password)
        lab = cls(plan, dir=path)
        lab.state, lab.created_at = manifest.get("state", "new"), manifest.get("created_at")
        return lab

    # --- lifecycle ---------------------------------------------------------------------------------
    def create(self, *, wait: str = "5m") -> "KindLab":
        require_docker()
        kind = require_kind()
        previous = read_manifest(self.dir)
        if previous is not None and previous.get("state") != "stopped":
            raise UsageError(f"a lab is recorded in {self.dir} (state {previous.get('state')}); run "
                             f"`kinelab down --dir {self.dir}` first")
        self.save("starting")  # before any container: `down` finds whatever a failed create leaves
        try:
            if _run(["docker", "network", "inspect", NETWORK], check=False).returncode != 0:
                _run(["docker", "network", "create", "--label", f"{LABEL}={self.plan.lab_id}", NETWORK])
            self._start(self.plan.postgres)
            self._wait_postgres()
            for kine in self.plan.kines:
                self._start(kine)
            addresses = {k.name: self._address(k.name) for k in self.plan.kines}
            for index, text in pod_patches(self.plan, addresses).items():
                directory = Path(node_patch_dir(self.plan, index))
                directory.mkdir(parents=True, exist_ok=True)
                (directory / POD_PATCH_FILE).write_text(text)
            config = self.dir / "kind-config.yaml"
            config.write_text(self.plan.to_yaml())
            _run([kind, "create", "cluster", "--name", self.plan.name, "--config", str(config),
                  "--kubeconfig", str(self.kubeconfig), f"--wait={wait}"], timeout=1200)
        except BaseException:
            with contextlib.suppress(ToolError):  # the original error says more; `down` retries the cleanup
                self.delete()
            raise
        self.save("running")
        return self

    def status(self) -> dict:
        """The recorded lab with each planned container's and each kind node's Docker state. Without a Docker
        engine nothing can be seen: ``state`` is "unknown", every container "unknown", and ``error`` says why."""
        status = {"backend": "kind", "dir": str(self.dir), "id": self.plan.lab_id, "name": self.plan.name,
                  "state": self.state, "mode": self.plan.mode, "control_planes": self.plan.control_planes,
                  "kine_version": KINE_VERSION, "kubernetes_version": self.plan.kubernetes_version,
                  "datastore": {"kind": self.plan.datastore, "dsn": self.plan.masked_dsn(), "alive": None},
                  "kubeconfig": str(self.kubeconfig), "containers": [], "nodes": []}
        if not docker_available():
            status["containers"] = [{"name": c.name, "role": c.role, "state": "unknown"} for c in self.plan.containers]
            status.update(state="unknown", error=f"{NO_DOCKER}: the lab's containers cannot be seen; start Docker "
                                                 f"(recorded state: {self.state})")
            return status
        found = {c["name"]: c for c in _containers(f"label={LABEL}={self.plan.lab_id}")}
        status["containers"] = [found.get(c.name, {"name": c.name, "role": c.role, "state": "absent"})
                                for c in self.plan.containers]
        status["nodes"] = _containers(f"label={KIND_CLUSTER_LABEL}={self.plan.name}")
        status["datastore"]["alive"] = status["containers"][0]["state"] == "running"
        everything = status["containers"] + status["nodes"]
        control_planes = [n for n in status["nodes"] if n["role"] == "control-plane"]
        if self.state == "running" and (len(control_planes) < self.plan.control_planes
                                        or any(c["state"] != "running" for c in everything)):
            status["state"] = "degraded"
        return status

    def down(self) -> int:
        """`kinelab down`: remove the cluster and the lab's containers; returns how many there were. A lab
        recorded as stopped needs no Docker (create and down clean up before they record it)."""
        if self.state == "stopped":
            return 0
        self._require_engine("stop", f"run `kinelab down --dir {self.dir}` again (its containers carry the label "
                                     f"{LABEL}={self.plan.lab_id})")
        return self.delete()

    def delete(self) -> int:
        """Remove the kind cluster and every container of the lab, then record it stopped; returns how many
        containers there were."""
        ours, nodes = f"label={LABEL}={self.plan.lab_id}", f"label={KIND_CLUSTER_LABEL}={self.plan.name}"
        present = [c["name"] for c in _containers(ours) + _containers(nodes)]
        if present and shutil.which("kind"):
            _run(["kind", "delete", "cluster", "--name", self.plan.name, "--kubeconfig", str(self.kubeconfig)],
                 check=False)
        for name in [c["name"] for c in _containers(ours) + _containers(nodes)]:  # what kind left, and ours
            _run(["docker", "rm", "-f", "-v", name], check=False)
        remaining = [c["name"] for c in _containers(ours) + _containers(nodes)]
        if remaining:
            raise ToolError(f"could not remove {', '.join(remaining)}; see `docker ps -a --filter {ours}`")
        self.save("stopped")
        return len(present)

    def capture(self, out: os.PathLike, *, incremental: bool = False):
        """Snapshot the ``kine`` table through Postgres's 127.0.0.1 port into the DuckDB file `out`."""
        from ..observe.capture import capture

        self._require_engine("capture", f"capture again (its Postgres is the container {self.plan.postgres.name})")
        return capture(self.dsn, out, incremental=incremental)

    # --- helpers -----------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def dsn(self) -> Dsn:
        """The Postgres container's DSN from the host (its published 127.0.0.1 port), password included."""
        mapping = _run(["docker", "port", self.plan.postgres.name, "5432/tcp"]).stdout.split()
        host_port = next((m for m in mapping if m.startswith("127.0.0.1:")), None)
        if not host_port:
            raise ToolError(f"{self.plan.postgres.name} publishes no 127.0.0.1 port; recreate the lab")
        return Dsn.parse(f"postgres://kine:{self.plan.password}@{host_port}/kubernetes?sslmode=disable")

    def _require_engine(self, doing: str, then: str) -> None:
        if not docker_available():
            raise ToolError(f"cannot {doing} the kind lab in {self.dir}: {NO_DOCKER}; start Docker, then {then}")

    def _start(self, container: Container) -> None:
        _run(container.run_argv(), env=container.run_env())

    def _address(self, name: str) -> str:
        fmt = f"{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"
        return _run(["docker", "inspect", "--format", fmt, name]).stdout.strip()

    def _wait_postgres(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _run(["docker", "exec", self.plan.postgres.name, "pg_isready", "-U", "kine", "-d", "kubernetes"],
                    check=False).returncode == 0:
                return
            time.sleep(1)
        raise ToolError(f"{self.plan.postgres.name} did not accept connections within {timeout_s:.0f}s; "
                        f"see `docker logs {self.plan.postgres.name}`")


def leftovers(lab_id: Optional[str] = None) -> list:
    """Names of containers kinelab's kind backend started (of one lab, or of any)."""
    return [c["name"] for c in _containers(f"label={LABEL}={lab_id}" if lab_id else f"label={LABEL}")]


# --- validation against the published types ----------------------------------------------------------
def checker_path() -> Path:
    """Named by the versions it decodes against and a hash of main.go, so an edited checker is rebuilt."""
    import hashlib

    digest = hashlib.sha256(CHECKER_SOURCE.read_bytes()).hexdigest()[:10]
    return cache_dir() / "bin" / f"kindcheck-kind-{KIND_VERSION}-k8s-{APISERVER_VERSION}-{digest}"


def checker_gomod(kubernetes_gomod: str, version: str = APISERVER_VERSION) -> str:
    """go.mod of the checker: k8s.io/kubernetes (for kubeadm's v1beta4 types) with every staging module
    replaced by its published twin (the list read from k8s.io/kubernetes's own go.mod), plus kind."""
    twin = staging_version(version)
    return "\n".join([
        "// Generated by kinelab.provision.kind.checker_gomod: do not edit.",
        f"module {CHECKER_MODULE}", "", "go 1.26.0", "",
        "require (", f"\t{KUBERNETES_MODULE} {version}", f"\t{KIND_MODULE} {KIND_VERSION}", ")", "",
        "replace (", *[f"\t{m} => {m} {twin}" for m in staging_modules(kubernetes_gomod)], ")", ""])


def install_checker(log=print) -> Path:
    """Build kindcheck (kinelab/provision/kindcheck/main.go) into the tool cache once."""
    target = checker_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if not go:
        raise ToolError("validating kind configs needs Go 1.26+ (https://go.dev/dl) to build kinelab's checker")
    work = cache_dir() / "kindcheck-build"
    work.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off",
           "GOFLAGS": " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=mod"]))}
    log(f"building kinelab's kind config checker ({KIND_MODULE} {KIND_VERSION}, kubeadm v1beta4 from "
        f"{KUBERNETES_MODULE} {APISERVER_VERSION})...")
    result = subprocess.run([go, "mod", "download", "-json", f"{KUBERNETES_MODULE}@{APISERVER_VERSION}"],
                            cwd=work, env=env, capture_output=True, text=True)
    try:
        info = json.loads(result.stdout)
    except ValueError:
        info = {}
    if result.returncode != 0 or "GoMod" not in info:
        raise ToolError(f"go mod download {KUBERNETES_MODULE}@{APISERVER_VERSION} failed: "
                        f"{info.get('Error') or result.stderr.strip()[-300:]}")
    (work / "go.mod").write_text(checker_gomod(Path(info["GoMod"]).read_text()))
    (work / "go.sum").unlink(missing_ok=True)
    shutil.copyfile(CHECKER_SOURCE, work / "main.go")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    result = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=work, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        (work / "build.log").write_text(result.stdout + result.stderr)
        raise ToolError(f"building the kind config checker failed (exit {result.returncode}); "
                        f"see {work / 'build.log'}")
    os.replace(tmp, target)
    return target


def validate_kind_config(yaml_text: str, pod_patch_texts: Optional[dict] = None) -> list:
    """Errors from decoding `yaml_text` strictly into kind's v1alpha4.Cluster and each kubeadm patch into
    kubeadm's v1beta4 types (and each static-pod patch into core/v1 Pod); [] when all decode."""
    checker = install_checker()
    payload = {"cluster": yaml_text, "podPatches": {str(k): v for k, v in (pod_patch_texts or {}).items()}}
    result = subprocess.run([str(checker)], input=json.dumps(payload), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ToolError(f"the kind config checker failed (exit {result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)
