"""The kind backend: a real kind cluster whose kube-apiservers store everything in Kine.

`KindBackend` is a backend of `Lab` like the local one (``Lab(backend="kind", replicas=R, mode=M,
apiservers=N, workers=W)``, ``kinelab up --backend kind``): the same orchestration, manifest, reaper, status,
faults and capture. The datastore (embedded Postgres) and the Kine replicas are the lab's own host processes,
started by `LocalBackend`; only the Kubernetes nodes are containers. They meet on a docker network
of the lab's own (`KindNetwork`: a /24 of 198.19.0.0/16, in the benchmarking range 198.18.0.0/15, a bridge
between this host and the nodes only), and Kine listens on that network's gateway address, the one listener
kinelab puts outside 127.0.0.1. kind joins the network through ``KIND_EXPERIMENTAL_DOCKER_NETWORK`` and
kubeadm points the apiserver at Kine as its external etcd.

`KindCluster` is one ``kind create cluster`` (the kind binary from the tool cache, the offline node image of
`kinelab.provision.nodeimage`), with kinelab's config (`cluster_config`, checked strictly against kind's and
kubeadm's published types by `validate_kind_config`):

* ``networking: {disableDefaultCNI: true, kubeProxyMode: none}`` and kubeadm's ``dns: {disabled: true}``:
  kindnetd, kube-proxy and CoreDNS would need images nobody can pull here; the node image carries a bridge
  CNI config instead;
* ``etcd.external.endpoints``: the Kine replicas the mode gives the apiserver;
* ``timeouts.kubeletHealthCheck: 40s``: a kubelet that cannot start fails in under a minute, not four;
* ``failCgroupV1: false``: the 1.37 kubelet refuses cgroup v1 hosts otherwise.

Several control-plane nodes (``apiservers=N``: on kind every apiserver is a control-plane node's) need two
things kind does not give an external etcd:

* kind copies ``/etc/kubernetes/pki/etcd/ca.{crt,key}`` from the first control plane to the others, and an
  external etcd without TLS has none: the first node gets a placeholder CA (`placeholder_etcd_ca`, used by
  nothing) through an extraMount;
* kind puts its load balancer (an Envoy image) in front of them: `nodeimage.ensure_lb_image` builds an
  offline stand-in under the tag kind looks for.

The three deployment modes on kind, with N control planes and R Kine replicas:

* single-kine: every apiserver on Kine 0 (the cluster-wide external etcd endpoint);
* hybrid: every apiserver on every Kine (the endpoint list; the etcd client balances over it);
* shared-db: apiserver i on Kine i (mod R). kubeadm keeps one ClusterConfiguration for the whole cluster, so
  the endpoint is ``http://127.0.0.1:2379`` on every node, and each control-plane node forwards that port to
  its own Kine (``kinelab-kine-forward.service``, socat, started when the file ``/kinelab/kine-endpoint``,
  mounted per node, names the target). With one control plane it is single-kine.

Workers (``workers=W``) join as kind workers.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal as _signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from ..errors import ProcessError, ToolError, UsageError
from .docker import Engine, PrivateEngine, engine_version, ensure_engine, find_engine, last_line, needs_runc_wrapper
from .labdir import write_private
from .model import MODES, STAGES, Component, LabModel, LabSpec, etcd_servers_for
from .process import LOOPBACK
from .tools import (
    GO_HINT,
    KIND,
    KUBERNETES_MODULE,
    KUBERNETES_VERSION,
    build_gomod,
    cache_dir,
    ensure,
    ensure_kubernetes,
    find_go,
    kubernetes_tool,
)
from .wait import Cancelled, WaitTimeout, answers, poll_until

KIND_API = "kind.x-k8s.io/v1alpha4"
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
NETWORK_POOL = ipaddress.ip_network("198.19.0.0/16")  # the upper half of 198.18.0.0/15; the daemon's bridge
LABEL = "kinelab.lab"                                   # and pool start at 198.18.0.0/24
# kind's labels on every container of a cluster
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"
KIND_ROLE_LABEL = "io.x-k8s.kind.role"
KUBELET_HEALTH_TIMEOUT = "40s"
NODE_FORWARD_PORT = 2379  # shared-db: each control plane's loopback port that leads to its own Kine
NODE_KINE_FILE = "/kinelab/kine-endpoint"
CHECKER_MODULE = "kinelab.local/kindcheck"
CHECKER_SOURCE = Path(__file__).with_name("kindcheck") / "main.go"


def check_name(name: str) -> str:
    """kind names containers ``<name>-control-plane``: a DNS label, short enough for that suffix."""
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", name or ""):
        raise UsageError(f"kind cluster name {name!r} must be lowercase letters, digits and '-' (at most 32)")
    return name


# --- the network ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindNetwork:
    """A docker bridge network of one lab: its nodes live there, and the host (Kine) is its gateway."""

    name: str
    subnet: str
    gateway: str


def used_subnets(engine: Engine) -> List[ipaddress.IPv4Network]:
    ids = engine.docker("network", "ls", "-q").stdout.decode().split()
    if not ids:
        return []
    out = engine.docker("network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                        *ids).stdout.decode()
    found = []
    for text in out.split():
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version == 4:
            found.append(network)
    return found


def free_subnet(engine: Engine) -> Optional[ipaddress.IPv4Network]:
    """The first /24 of 198.19.0.0/16 no network of `engine` overlaps, or None when all are taken."""
    used = used_subnets(engine)
    return next((s for s in NETWORK_POOL.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)), None)


def create_network(engine: Engine, name: str, labels: Optional[Dict[str, str]] = None,
                   subnet: Optional[str] = None) -> KindNetwork:
    """A new bridge network `name` on `subnet` (the one planned), else on the first free /24 of 198.19.0.0/16
    (never a private range)."""
    existing = engine.docker("network", "inspect", name, check=False)
    if existing.returncode == 0:
        raise UsageError(f"a docker network named {name} already exists; remove it (`docker network rm {name}`) "
                         "or choose another cluster name")
    wanted = ipaddress.ip_network(subnet) if subnet else None
    for attempt in range(3):  # another process may take the same subnet between the scan and the create
        chosen = wanted or free_subnet(engine)
        wanted = None
        if chosen is None:
            raise ToolError(f"no free /24 left in {NETWORK_POOL} on this Docker engine; remove unused networks "
                            "(`docker network prune`)")
        gateway = str(next(chosen.hosts()))
        argv = ["network", "create", "--driver", "bridge", f"--subnet={chosen}", f"--gateway={gateway}",
                "--opt", "com.docker.network.bridge.enable_ip_masquerade=true"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        result = engine.docker(*argv, name, check=False)
        if result.returncode == 0:
            return KindNetwork(name, str(chosen), gateway)
        if b"overlap" not in result.stderr:
            raise ToolError(f"`docker network create {name}` failed: {last_line(result.stderr)}")
    raise ToolError(f"could not find a free subnet for the docker network {name}; retry")


def remove_network(engine: Engine, name: str) -> bool:
    """Remove network `name` if it exists; True when it did."""
    if engine.docker("network", "inspect", name, check=False).returncode != 0:
        return False
    engine.docker("network", "rm", name)
    return True


# --- the cluster's config ------------------------------------------------------------------------------
def kine_endpoints(mode: str, endpoints: Sequence[str], control_planes: int = 1) -> tuple:
    """(the cluster-wide external etcd endpoints, each control plane's own Kine or None) for `mode`."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    if not endpoints:
        raise UsageError("a kind cluster needs at least one Kine endpoint")
    urls = [e if "://" in e else f"http://{e}" for e in endpoints]
    if mode == "single-kine" or (mode == "shared-db" and control_planes == 1):
        return urls[:1], None
    if mode == "hybrid":
        return urls, None
    own = [urls[index % len(urls)].split("://", 1)[1] for index in range(control_planes)]
    return [f"http://127.0.0.1:{NODE_FORWARD_PORT}"], own


def placeholder_etcd_ca(directory: Path) -> Path:
    """A CA nobody uses, as ``ca.crt``/``ca.key``: kind copies these from the first control plane to the
    others, and an external etcd without TLS has none."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.crt").is_file() and (directory / "ca.key").is_file():
        return directory
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kinelab placeholder etcd CA (unused)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    key_file = directory / "ca.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory


def _patch(api: str, kind: str, body: dict) -> str:
    return yaml.safe_dump({"apiVersion": api, "kind": kind, **body}, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the kubeadm patches) as YAML block literals, as people write them by hand."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def cluster_config(name: str, etcd_endpoints: Sequence[str], *, node_image: str, control_planes: int = 1,
                   workers: int = 0, etcd_ca_dir: Optional[os.PathLike] = None,
                   kine_files: Optional[Sequence[os.PathLike]] = None, kubelet: Optional[dict] = None,
                   apiserver_args: Optional[dict] = None) -> dict:
    """kind's `Cluster` (kind.x-k8s.io/v1alpha4) with kubeadm v1beta4 and kubelet v1beta1 patches.
    `etcd_ca_dir`: the placeholder etcd CA several control planes need; `kine_files`: per control plane, a
    host file naming its own Kine (shared-db); `kubelet`: more KubeletConfiguration fields (a lesson's knob,
    and how the tests break the kubelet on purpose); `apiserver_args`: kube-apiserver flags (kubeadm's
    ``apiServer.extraArgs``), as ``--apiserver-arg`` gives them to the local backend's apiservers."""
    if control_planes < 1:
        raise UsageError("a kind cluster needs at least one control-plane node")
    if workers < 0:
        raise UsageError("--workers cannot be negative")
    if control_planes > 1 and etcd_ca_dir is None:
        raise UsageError("several control planes need the placeholder etcd CA (etcd_ca_dir)")
    cluster: dict = {"etcd": {"external": {"endpoints": list(etcd_endpoints)}}, "dns": {"disabled": True}}
    if apiserver_args:
        cluster["apiServer"] = {"extraArgs": [{"name": key.lstrip("-"), "value": _flag_value(value)}
                                              for key, value in apiserver_args.items()]}
    patches = [
        _patch(KUBEADM_API, "ClusterConfiguration", cluster),
        _patch(KUBEADM_API, "InitConfiguration", {"timeouts": {"kubeletHealthCheck": KUBELET_HEALTH_TIMEOUT}}),
        _patch(KUBEADM_API, "JoinConfiguration", {"timeouts": {"kubeletHealthCheck": KUBELET_HEALTH_TIMEOUT}}),
        _patch(KUBELET_API, "KubeletConfiguration", {"failCgroupV1": False, **(kubelet or {})}),
    ]
    nodes = []
    for index in range(control_planes):
        node: dict = {"role": "control-plane", "image": node_image}
        mounts = []
        if index == 0 and control_planes > 1:
            mounts.append({"hostPath": str(etcd_ca_dir), "containerPath": "/etc/kubernetes/pki/etcd",
                           "readOnly": True})
        if kine_files:
            mounts.append({"hostPath": str(kine_files[index]), "containerPath": NODE_KINE_FILE, "readOnly": True})
        if mounts:
            node["extraMounts"] = mounts
        nodes.append(node)
    nodes += [{"role": "worker", "image": node_image} for _ in range(workers)]
    return {"kind": "Cluster", "apiVersion": KIND_API, "name": name,
            "networking": {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True, "kubeProxyMode": "none"},
            "nodes": nodes, "kubeadmConfigPatches": patches}


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_yaml(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# --- the cluster ------------------------------------------------------------------------------------------
# kind's progress lines, as it prints them to a pipe (" ✓ Preparing nodes 📦"), and the phase each ends.
KIND_PHASES = {"Ensuring node image": "image", "Preparing nodes": "containers",
               "Configuring the external load balancer": "load_balancer", "Writing configuration": "config",
               "Starting control-plane": "kubeadm_init", "Installing StorageClass": "storage_class",
               "Joining more control-plane nodes": "kubeadm_join_control_planes",
               "Joining worker nodes": "kubeadm_join_workers"}


@dataclass
class KindCluster:
    """One ``kind create cluster`` on the lab's network, its apiserver on the Kine `etcd_endpoints`."""

    name: str
    engine: Engine
    network: str                    # the docker network the nodes join
    node_image: str
    etcd_endpoints: List[str]       # the cluster-wide external etcd endpoints
    dir: Path
    control_planes: int = 1
    workers: int = 0
    node_kine: Optional[List[str]] = None  # shared-db: control plane i's own Kine (host:port)
    kubelet: Optional[dict] = None
    apiserver_args: Optional[dict] = None
    timings_s: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        check_name(self.name)
        self.dir = Path(self.dir)

    # --- paths and commands ---------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def config_path(self) -> Path:
        return self.dir / "kind-config.yaml"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def config(self) -> dict:
        kine_files = [self.dir / "kine" / f"control-plane-{i}" for i in range(self.control_planes)] \
            if self.node_kine else None
        return cluster_config(self.name, self.etcd_endpoints, node_image=self.node_image,
                              control_planes=self.control_planes, workers=self.workers,
                              etcd_ca_dir=self.dir / "etcd-ca" if self.control_planes > 1 else None,
                              kine_files=kine_files, kubelet=self.kubelet, apiserver_args=self.apiserver_args)

    def _write_node_files(self) -> None:
        """The files the config mounts into nodes: the placeholder etcd CA, each control plane's Kine."""
        if self.control_planes > 1:
            placeholder_etcd_ca(self.dir / "etcd-ca")
        for index, endpoint in enumerate(self.node_kine or []):
            path = self.dir / "kine" / f"control-plane-{index}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(endpoint + "\n")

    def kind_env(self) -> dict:
        return {**self.engine.env(), "KIND_EXPERIMENTAL_DOCKER_NETWORK": self.network}

    def kind(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        binary = ensure(KIND).path
        try:
            result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=self.kind_env(),
                                    timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"`kind {args[0]}` did not finish within {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise ToolError(f"`kind {' '.join(args[:2])}` failed: {last_line(result.stderr)}")
        return result

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True,
                input: Optional[str] = None) -> subprocess.CompletedProcess:
        """kubectl (the pinned one, from the tool cache) on this cluster from the host."""
        binary = ensure(kubernetes_tool("kubectl")).path
        result = subprocess.run([str(binary), f"--kubeconfig={self.kubeconfig}", *args], capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise ToolError(f"`kubectl {' '.join(args[:2])}` failed: {last_line(result.stderr)}")
        return result

    # --- state ---------------------------------------------------------------------------------------------
    def containers(self) -> List[dict]:
        """The cluster's node containers: name, role, state."""
        out = self.engine.docker("ps", "-a", "--filter", f"label={KIND_CLUSTER_LABEL}={self.name}",
                                 "--format", "{{json .}}").stdout.decode()
        rows = []
        for line in out.splitlines():
            row = json.loads(line)
            labels = dict(item.partition("=")[::2] for item in (row.get("Labels") or "").split(",") if item)
            rows.append({"name": row["Names"], "role": labels.get(KIND_ROLE_LABEL), "state": row["State"],
                         "status": row.get("Status")})
        return sorted(rows, key=lambda r: r["name"])

    def exists(self) -> bool:
        return self.name in self.kind("get", "clusters").stdout.split() or bool(self.containers())

    def nodes_ready(self) -> Dict[str, bool]:
        """Each Kubernetes node's Ready condition, as the apiserver reports it."""
        result = self.kubectl("get", "nodes", "-o", "json", check=False, timeout=20)
        if result.returncode != 0:
            return {}
        ready = {}
        for item in json.loads(result.stdout)["items"]:
            conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
            ready[item["metadata"]["name"]] = conditions.get("Ready") == "True"
        return ready

    def lease_renewed(self, node: str) -> Optional[datetime]:
        """When `node`'s kubelet last renewed its Lease (every 10 s while it runs), or None if unknown."""
        result = self.kubectl("get", "lease", "-n", "kube-node-lease", node, "-o", "jsonpath={.spec.renewTime}",
                              check=False, timeout=20)
        text = result.stdout.strip()
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if result.returncode == 0 and text else None

    # --- lifecycle ---------------------------------------------------------------------------------------
    def create(self, *, ready_timeout_s: float = 180.0, log=print,
               cancel: Optional[threading.Event] = None) -> "KindCluster":
        """``kind create cluster``, then wait until every node is Ready. A failure leaves nothing behind and
        says in one line what the node's kubelet and containerd said last; `cancel` set (a stop racing this
        start) ends it the same way."""
        if self.exists():
            raise UsageError(f"a kind cluster named {self.name} already exists on this Docker engine; choose "
                             f"another name, or delete it with `kind delete cluster --name {self.name}`")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._write_node_files()
        self.config_path.write_text(config_yaml(self.config()))
        started = time.monotonic()
        log(f"creating the kind cluster {self.name} ({self.control_planes} control plane(s), {self.workers} "
            f"worker(s), image {self.node_image})...")
        try:
            self._kind_create(cancel)
            ready_started = time.monotonic()
            self._wait_ready(ready_timeout_s, cancel)
            self.timings_s["nodes_ready"] = round(time.monotonic() - ready_started, 1)
        except BaseException:
            self.delete()
            raise
        self.timings_s["total"] = round(time.monotonic() - started, 1)
        return self

    def _kind_create(self, cancel: Optional[threading.Event]) -> None:
        binary = ensure(KIND).path
        argv = [str(binary), "create", "cluster", "--name", self.name, "--config", str(self.config_path),
                "--kubeconfig", str(self.kubeconfig), "--retain", "--wait=0s"]
        log_path = self.log_dir / "kind-create.log"
        phase_started = time.monotonic()
        with open(log_path, "w") as out:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=self.kind_env())
            killer = threading.Timer(900, proc.kill)  # kind has its own timeouts; this is the last resort
            killer.start()
            if cancel is not None:  # a stop racing this start: kind is killed, and the cluster deleted below
                threading.Thread(target=lambda: cancel.wait() and proc.poll() is None and proc.kill(),
                                 daemon=True).start()
            try:
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    for text, name in KIND_PHASES.items():
                        if text in line and ("✓" in line or "✗" in line):
                            self.timings_s[name] = round(time.monotonic() - phase_started, 1)
                            phase_started = time.monotonic()
                code = proc.wait()
            finally:
                killer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped while kind created the cluster {self.name}")
        if code != 0:
            said = [line.strip() for line in log_path.read_text().splitlines() if line.strip()]
            error = next((line for line in reversed(said) if line.startswith("ERROR:")), said[-1] if said else "")
            raise ToolError(f"kind create cluster {self.name} failed: {error[:300]}{self._diagnosis()}; "
                            f"log {log_path}")

    def _wait_ready(self, timeout_s: float, cancel: Optional[threading.Event] = None) -> None:
        expected = self.control_planes + self.workers

        def waiting() -> str:
            ready = self.nodes_ready()
            names = sorted(n for n, ok in ready.items() if not ok)
            if len(ready) < expected:
                names.append(f"{expected - len(ready)} node(s) never registered")
            return ", ".join(names)

        try:
            poll_until(lambda: (lambda ready: len(ready) == expected and all(ready.values()))(self.nodes_ready()),
                       timeout_s=timeout_s, interval_s=1, what=f"the kind cluster {self.name} to be Ready",
                       transient=(ToolError, OSError, subprocess.TimeoutExpired), cancel=cancel)
        except WaitTimeout as exc:
            raise ToolError(f"the kind cluster {self.name} was not Ready after {timeout_s:.0f}s "
                            f"(not Ready: {waiting()}){self._diagnosis()}; logs in {self.log_dir}") from exc

    def _diagnosis(self) -> str:
        """'; <node> kubelet: <last line>; containerd: <last line>' for the first node, with the full
        journals saved in the log directory."""
        nodes = [c["name"] for c in self.containers() if c["state"] == "running"]
        if not nodes:
            return "; no node container is running"
        node = next((n for n in nodes if n.endswith("control-plane")), nodes[0])
        said = []
        for unit in ("kubelet", "containerd"):
            # what the unit's own processes wrote, not systemd's lines about the unit
            result = self.engine.docker("exec", node, "journalctl", "--no-pager", "-o", "cat",
                                        f"_SYSTEMD_UNIT={unit}.service", check=False, timeout=30)
            text = result.stdout.decode("utf-8", "replace")
            (self.log_dir / f"{node}-{unit}.log").write_text(text)
            lines = [line for line in text.splitlines() if line.strip() and not line.startswith("-- ")]
            said.append(f"{unit}: {_short(lines[-1]) if lines else '(no log)'}")
        return f"; {node} {'; '.join(said)}"

    def delete(self) -> int:
        """Delete the cluster (kind's containers); returns how many there were. Safe to repeat."""
        present = self.containers()
        if present or self.name in self.kind("get", "clusters", check=False).stdout.split():
            self.kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig), check=False,
                      timeout=300)
        left = [c["name"] for c in self.containers()]
        if left:  # what kind could not remove
            self.engine.docker("rm", "-f", "-v", *left, check=False)
        left = [c["name"] for c in self.containers()]
        if left:
            raise ToolError(f"could not remove the kind nodes {', '.join(left)}; see `docker ps -a --filter "
                            f"label={KIND_CLUSTER_LABEL}={self.name}`")
        return len(present)


_LOG_HEADER = re.compile(r'^([IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] |time="[^"]*"\s*)')


def _short(line: str, limit: int = 240) -> str:
    line = _LOG_HEADER.sub("", line.strip())
    return line if len(line) <= limit else line[:limit] + "..."


def check_privileged(engine: Engine, image: str, command: Sequence[str] = ("probe",)) -> None:
    """kind runs every node ``--privileged``: refuse an engine that cannot, with the fix."""
    result = engine.docker("run", "--rm", "--privileged", "--network", "none", image, *command, check=False,
                           timeout=120)
    if result.returncode == 0:
        return
    said = last_line(result.stderr)
    fix = ("this machine's capability bounding set lacks CAP_SYS_RESOURCE: use kinelab's private engine (stop this "
           "one, then `kinelab docker start`), or give dockerd a runtime that drops that capability"
           if needs_runc_wrapper() else "run Docker rootful, with privileged containers allowed")
    raise ToolError(f"this Docker engine refuses privileged containers, which kind's nodes need ({said[:200]}): "
                    f"{fix}")


# --- validation against the published types ----------------------------------------------------------
def checker_path() -> Path:
    """Named by the versions it decodes against and a hash of main.go, so an edited checker is rebuilt."""
    import hashlib

    digest = hashlib.sha256(CHECKER_SOURCE.read_bytes()).hexdigest()[:10]
    return cache_dir() / "bin" / f"kindcheck-kind-{KIND.version}-k8s-{KUBERNETES_VERSION}-{digest}"


def install_checker(log=print) -> Path:
    """Build kindcheck (kinelab/provision/kindcheck/main.go) into the tool cache once: kinelab's Kubernetes
    build module (`tools.build_gomod`) plus kind."""
    target = checker_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = find_go()
    if not go:
        raise ToolError(f"validating kind configs needs Go 1.26+ ({GO_HINT}) to build kinelab's checker")
    work = cache_dir() / "kindcheck-build"
    work.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off",
           "GOFLAGS": " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=mod"]))}
    log(f"building kinelab's kind config checker ({KIND.package} {KIND.version}, kubeadm v1beta4 from "
        f"{KUBERNETES_MODULE} {KUBERNETES_VERSION})...")
    result = subprocess.run([go, "mod", "download", "-json", f"{KUBERNETES_MODULE}@{KUBERNETES_VERSION}"],
                            cwd=work, env=env, capture_output=True, text=True)
    try:
        info = json.loads(result.stdout)
    except ValueError:
        info = {}
    if result.returncode != 0 or "GoMod" not in info:
        raise ToolError(f"go mod download {KUBERNETES_MODULE}@{KUBERNETES_VERSION} failed: "
                        f"{info.get('Error') or result.stderr.strip()[-300:]}")
    gomod = build_gomod(KUBERNETES_VERSION, Path(info["GoMod"]).read_text())
    gomod = gomod.replace("module kinelab.local/kubernetes-build", f"module {CHECKER_MODULE}")
    (work / "go.mod").write_text(gomod + f"\nrequire {KIND.package} {KIND.version}\n")
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


def validate_kind_config(yaml_text: str) -> list:
    """Errors from decoding `yaml_text` strictly into kind's v1alpha4.Cluster, each kubeadm patch into kubeadm's
    v1beta4 types and each kubelet patch into KubeletConfiguration v1beta1; [] when all decode."""
    checker = install_checker()
    payload = {"cluster": yaml_text, "podPatches": {}}
    result = subprocess.run([str(checker)], input=json.dumps(payload), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ToolError(f"the kind config checker failed (exit {result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


# --- the backend ------------------------------------------------------------------------------------------
DEFAULT_NAME = "kinelab"
READY_TIMEOUT_S = 180.0
APISERVER_PORT = 6443  # each control-plane node's kube-apiserver, reached from the host on the node's address
CLUSTER_STAGE = STAGES["apiserver"]  # once every Kine replica is ready
MEMBER_STAGE = CLUSTER_STAGE + 1  # the nodes and apiservers, checked (and addressed) once the cluster is Ready
FAULTS_HERE = ("Kine replicas and the datastore (host processes), kind nodes (docker kill, pause, unpause, "
               "start) and apiservers (signals in their node)")


def cluster_name(spec: LabSpec) -> str:
    return check_name(spec.cluster_name or DEFAULT_NAME)


def network_name(name: str) -> str:
    return f"kinelab-{name}"


def node_names(name: str, control_planes: int, workers: int) -> list:
    """(container name, kind role) of every node, named as kind names them: ``<name>-control-plane``,
    ``<name>-control-plane2``..., ``<name>-worker``..., and the load balancer in front of several control
    planes."""
    def numbered(role: str, count: int) -> list:
        return [(f"{name}-{role}{index + 1 if index else ''}", role) for index in range(count)]

    balancer = [(f"{name}-external-load-balancer", "external-load-balancer")] if control_planes > 1 else []
    return numbered("control-plane", control_planes) + numbered("worker", workers) + balancer


def container_state(engine: Engine, name: str) -> Optional[str]:
    """running, paused, exited...; None when there is no such container."""
    result = engine.docker("inspect", "--format", "{{.State.Status}}", name, check=False, timeout=30)
    return result.stdout.decode().strip() if result.returncode == 0 else None


def container_address(engine: Engine, name: str, network: str) -> str:
    return engine.docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                         name, timeout=30).stdout.decode().strip()


def release_engine(engine: Engine) -> bool:
    """Stop kinelab's private engine if it runs nothing: no container, no other lab's network. True if it did."""
    busy = engine.docker("ps", "-aq", check=False).stdout.strip() or \
        engine.docker("network", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.strip()
    if busy:
        return False
    PrivateEngine().stop()
    return True


class KindBackend:
    """The kind backend: the datastore and the Kine replicas are host processes (`LocalBackend`'s), Kine on
    the gateway of a docker network of the lab's own; the Kubernetes nodes are kind's containers on it. Its
    components, beside the datastore's and Kine's:

    * ``kinelab-<name>`` (role network, runtime kind-network, stage 0): the network; it records the Docker
      engine, and whether this lab started kinelab's private one, which its teardown then stops once nothing
      else runs in it;
    * ``<name>`` (role cluster, runtime kind): ``kind create cluster`` once every Kine replica is ready;
      teardown deletes it;
    * each node container (role node, runtime kind-node) and each control-plane node's kube-apiserver (role
      apiserver, runtime kind-apiserver, with a kubeconfig of its own on the node's address), checked once the
      cluster is Ready.
    """

    name = "kind"
    runtimes = ("kind-network", "kind", "kind-node", "kind-apiserver")
    control_plane_included = True  # every control-plane node runs an apiserver, a controller-manager, a scheduler

    def __init__(self):
        from .backends import LocalBackend  # defined before the registry builds this backend

        self.local = LocalBackend()

    # --- before anything runs ----------------------------------------------------------------------------
    def available(self) -> Optional[str]:
        reason = self.local.available()
        if reason:
            return reason
        why = PrivateEngine().why_not()
        if why and find_engine() is None:
            return f"no Docker engine answers `docker info`, and kinelab cannot start its own here ({why})"
        return None

    def check(self, spec: LabSpec) -> None:
        if spec.mode not in MODES:
            raise UsageError(f"unknown mode {spec.mode!r}: use {', '.join(MODES)}")
        if spec.nodes:
            raise UsageError("simulated nodes (--nodes) are the local backend's; a kind cluster has real nodes: use "
                             "--workers")
        if not spec.kine:
            raise UsageError("a lab of etcd members runs on the local backend only; a kind cluster's store is Kine "
                             "(benchmarks/kind.py compares it with etcd)")
        if not spec.controllers:
            raise UsageError("kind's control-plane nodes always run a controller-manager and a scheduler; leave "
                             "controllers out")
        cluster_name(spec)

    def prepare(self, lab) -> dict:
        from .nodeimage import ensure_lb_image, ensure_node_image

        previous = lab.labdir.read_if_current()
        if previous is not None and previous.id == lab.id and previous.apiservers:  # its data would be reused
            raise UsageError(f"{lab.dir} holds the datastore of an earlier cluster, and a new kind cluster cannot "
                             "start on it (kubeadm finds the old cluster's nodes); remove it with `kinelab down --dir "
                             f"{lab.dir} --purge`, or choose another --dir")
        tools = self.local.prepare(lab)  # Kine (every release the replicas run) and the control plane's commands
        tools.update(kind=ensure(KIND, log=lab.say), **ensure_kubernetes(["kubectl"], log=lab.say))
        engine, started = ensure_engine(log=lab.say)
        try:  # everything that can refuse the lab, before any of it runs
            image = ensure_node_image(engine, log=lab.say)
            if lab.spec.apiservers > 1:
                ensure_lb_image(engine, log=lab.say)
            check_privileged(engine, image.workload_image)
            name = cluster_name(lab.spec)
            if KindCluster(name, engine, network_name(name), image.reference, [], lab.dir / "cluster").exists():
                raise UsageError(f"a kind cluster named {name} already exists on this Docker engine; choose another "
                                 f"name (--name), or delete it with `kind delete cluster --name {name}`")
        except BaseException:
            if started:
                release_engine(engine)
            raise
        lab.context.update(engine=engine, engine_started=started, node_image=image)
        return tools

    def add_kine_version(self, lab, version: str, tools: dict) -> str:
        return self.local.add_kine_version(lab, version, tools)  # the replicas are host processes here too

    def plan(self, lab) -> list:
        spec, engine = lab.spec, lab.context["engine"]
        name = cluster_name(spec)
        subnet = free_subnet(engine)  # only a plan: created (or another one) when the network starts
        gateway = str(next(subnet.hosts())) if subnet else LOOPBACK
        network = Component(network_name(name), "network", runtime="kind-network", stage=STAGES["datastore"],
                            details={"engine": engine.to_json(), "engine_started": lab.context["engine_started"],
                                     "subnet": str(subnet or ""), "gateway": gateway})
        components = [network, *self.local.plan_store(lab, kine_host=gateway)]
        endpoints = [c.endpoint for c in components if c.role == "kine"]
        cluster_dir = lab.dir / "cluster"
        components.append(Component(name, "cluster", runtime="kind", stage=CLUSTER_STAGE, details={
            "node_image": lab.context["node_image"].reference, "control_planes": spec.apiservers,
            "workers": spec.workers, "dir": str(cluster_dir), "kubeconfig": str(cluster_dir / "kubeconfig"),
            "log": str(cluster_dir / "logs" / "kind-create.log")}))
        nodes = node_names(name, spec.apiservers, spec.workers)
        components += [Component(node, "node", index, runtime="kind-node", stage=MEMBER_STAGE,
                                 details={"kind_role": role}) for index, (node, role) in enumerate(nodes)]
        for index, (node, _) in enumerate(nodes[:spec.apiservers]):
            components.append(Component(f"kube-apiserver-{index}", "apiserver", index, runtime="kind-apiserver",
                                        stage=MEMBER_STAGE, details={
                                            "node": node,
                                            "kubeconfig": str(cluster_dir / f"kubeconfig-kube-apiserver-{index}.yaml"),
                                            "etcd_servers": [f"http://{e}" for e in
                                                             etcd_servers_for(spec.mode, index, endpoints)]}))
        return components

    # --- starting -------------------------------------------------------------------------------------------
    def start(self, lab, component: Component, **start_options) -> None:
        cancel = start_options.get("cancel")
        if component.runtime == "kind-network":
            network = create_network(_engine(lab.model), component.name, {LABEL: lab.id},
                                     subnet=component.details["subnet"] or None)
            component.details.update(subnet=network.subnet, gateway=network.gateway)
        elif component.runtime == "kind":
            self._create_cluster(lab, component, cancel)
        elif component.runtime == "kind-node":
            self._start_node(lab, component, cancel)
        elif component.runtime == "kind-apiserver":
            self._address_apiserver(lab, component)
            poll_until(lambda: self._apiserver_ready(component), timeout_s=READY_TIMEOUT_S, interval_s=0.5,
                       what=f"{component.name} in {component.details['node']} to be ready", cancel=cancel)
        else:
            if component.role == "kine":  # on the network's gateway, as created
                port = component.endpoint.rsplit(":", 1)[1]
                component.endpoint = f"{_network(lab.model).details['gateway']}:{port}"
            self.local.start(lab, component, **start_options)

    def _create_cluster(self, lab, component: Component, cancel) -> None:
        spec = lab.spec
        etcd_endpoints, node_kine = kine_endpoints(spec.mode, lab.endpoints, spec.apiservers)  # as started
        component.details.update(etcd_endpoints=etcd_endpoints, node_kine=node_kine)
        cluster = _cluster(lab.model, component)
        cluster.create(ready_timeout_s=READY_TIMEOUT_S, log=lab.say, cancel=cancel)
        component.details["timings_s"] = cluster.timings_s

    def _start_node(self, lab, component: Component, cancel) -> None:
        """Ready as kind left it; or (a restart) started again, its kubelet heard from since, Ready, and its
        apiserver (a control plane's) ready on the node's address."""
        engine = _engine(lab.model)
        state = container_state(engine, component.name)
        if state is None:
            raise ProcessError(f"the kind node {component.name} is gone (`docker ps -a` does not list it); start the "
                               "lab again")
        started = datetime.now(timezone.utc)
        if state == "paused":
            engine.docker("unpause", component.name)
        elif state != "running":
            engine.docker("start", component.name)
        if component.details["kind_role"] == "external-load-balancer":
            return
        cluster = _cluster(lab.model)

        def back() -> bool:  # the Node object says Ready for a while after its kubelet died: ask for news
            if state != "running":
                renewed = cluster.lease_renewed(component.name)
                if not renewed or renewed <= started:
                    return False
            return bool(cluster.nodes_ready().get(component.name))

        poll_until(back, timeout_s=READY_TIMEOUT_S, interval_s=1, what=f"node {component.name} to be Ready",
                   transient=(ToolError, OSError, subprocess.TimeoutExpired), cancel=cancel)
        for apiserver in lab.model.apiservers:  # a node started again may have another address
            if apiserver.details["node"] == component.name and apiserver.url:
                self._address_apiserver(lab, apiserver)
                poll_until(lambda: self._apiserver_ready(apiserver), timeout_s=READY_TIMEOUT_S, interval_s=0.5,
                           what=f"{apiserver.name} in {component.name} to be ready", cancel=cancel)

    def _address_apiserver(self, lab, component: Component) -> None:
        """The apiserver's address on the lab network, and a kubeconfig of the cluster's pointed at it."""
        network = _network(lab.model)
        address = container_address(_engine(lab.model), component.details["node"], network.name)
        component.endpoint = f"{address}:{APISERVER_PORT}"
        component.url = f"https://{component.endpoint}"
        (cluster,) = lab.model.by_role("cluster")
        config = yaml.safe_load(Path(cluster.details["kubeconfig"]).read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = component.url
        write_private(Path(component.details["kubeconfig"]), yaml.safe_dump(config).encode())
        ca = Path(cluster.details["dir"]) / "ca.crt"
        write_private(ca, base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
        component.details["ca_file"] = str(ca)

    @staticmethod
    def _apiserver_ready(component: Component) -> bool:
        # kubeadm lets anyone read /readyz (system:public-info-viewer): the cluster's CA is all it takes
        return answers(f"{component.url}/readyz", ssl.create_default_context(cafile=component.details["ca_file"]))

    # --- faults -------------------------------------------------------------------------------------------------
    def check_fault(self, component: Component, fault: str) -> None:
        if component.runtime in ("kind-network", "kind"):
            raise UsageError(f"{component.name} is the lab's {component.role}, which faults do not reach; they reach "
                             f"{FAULTS_HERE}")

    def signal(self, lab, component: Component, sig: int) -> None:
        if component.runtime == "kind-node":  # the node's init, and so everything in it
            if sig == _signal.SIGKILL:
                self.teardown(lab.model, component)
            else:
                _engine(lab.model).docker({_signal.SIGSTOP: "pause", _signal.SIGCONT: "unpause"}[sig], component.name)
        elif component.runtime == "kind-apiserver":  # a static pod: the kubelet starts it again after a kill
            _engine(lab.model).docker("exec", component.details["node"], "pkill",
                                      f"-{_signal.Signals(sig).name[3:]}", "-x", "kube-apiserver")
        else:
            self.local.signal(lab, component, sig)

    # --- what runs ----------------------------------------------------------------------------------------------
    def alive(self, lab, component: Component) -> bool:
        if component.runtime not in self.runtimes:
            return self.local.alive(lab, component)
        engine = _engine(lab.model)
        if engine_version(engine.host) is None:
            return False
        if component.runtime == "kind-network":
            return engine.docker("network", "inspect", component.name, check=False).returncode == 0
        if component.runtime == "kind":
            nodes = lab.model.by_role("node")
            return bool(nodes) and all(container_state(engine, n.name) == "running" for n in nodes)
        if component.runtime == "kind-node":  # a paused node is alive, as a stopped process is
            return container_state(engine, component.name) in ("running", "paused")
        node = component.details["node"]
        return container_state(engine, node) == "running" and engine.docker(
            "exec", node, "pgrep", "-x", "kube-apiserver", check=False, timeout=30).returncode == 0

    def inspect(self, lab, component: Component) -> dict:
        if component.runtime not in self.runtimes:
            return self.local.inspect(lab, component)
        details = component.details
        if component.runtime == "kind-network":
            return {"subnet": details["subnet"], "gateway": details["gateway"],
                    "engine": Engine(**details["engine"]).describe()}  # the table leaves it to --json
        if component.runtime == "kind":
            return {"kubeconfig": details["kubeconfig"], "node_image": details["node_image"],
                    "etcd_endpoints": details.get("etcd_endpoints", [])}
        if component.runtime == "kind-apiserver":
            return {"url": component.url, "kubeconfig": details["kubeconfig"], "etcd_servers": details["etcd_servers"],
                    "node": details["node"], "ready": bool(component.url) and self._apiserver_ready(component)}
        entry = {"kind_role": details["kind_role"], "state": None, "ready": None}
        try:
            entry["state"] = container_state(_engine(lab.model), component.name)
            if details["kind_role"] != "external-load-balancer" and entry["state"] == "running":
                entry["ready"] = bool(_cluster(lab.model).nodes_ready().get(component.name))
        except ToolError as exc:  # an engine or apiserver that does not answer is worth reporting, not fatal
            entry["error"] = str(exc)
        return entry

    # --- stopping, from the manifest alone --------------------------------------------------------------------
    def teardown(self, model: LabModel, component: Component) -> int:
        engine = _engine(model)
        if engine_version(engine.host) is None:
            if engine.private and PrivateEngine().process() is None:
                return 0  # kinelab's engine is not running, and nothing of the lab with it
            raise ToolError(f"cannot stop {component.name}: the Docker engine {engine.describe()} does not answer; "
                            f"start it (`kinelab docker start` for kinelab's own), then run `kinelab down` again")
        if component.runtime == "kind-network":
            remove_network(engine, component.name)
            if component.details.get("engine_started"):
                release_engine(engine)
            return 0
        if component.runtime == "kind":
            _cluster(model, component).delete()
            return 0
        if component.runtime == "kind-node":
            state = container_state(engine, component.name)
            if state == "paused":  # docker kills no paused container
                engine.docker("unpause", component.name, check=False)
            elif state != "running":
                return 0
            engine.docker("kill", component.name)
            return 1
        if container_state(engine, component.details["node"]) != "running":
            return 0
        return int(engine.docker("exec", component.details["node"], "pkill", "-TERM", "-x", "kube-apiserver",
                                 check=False, timeout=30).returncode == 0)


def _network(model: LabModel) -> Component:
    (network,) = model.by_role("network")
    return network


def _engine(model: LabModel) -> Engine:
    return Engine(**_network(model).details["engine"])


def _cluster(model: LabModel, component: Optional[Component] = None) -> KindCluster:
    """The cluster as the manifest records it."""
    component = component or model.by_role("cluster")[0]
    details = component.details
    return KindCluster(component.name, _engine(model), _network(model).name, details["node_image"],
                       details.get("etcd_endpoints", []), Path(details["dir"]),
                       control_planes=details["control_planes"], workers=details["workers"],
                       node_kine=details.get("node_kine"), kubelet=model.spec.kubelet_config,
                       apiserver_args=model.spec.apiserver_args)
