"""The kind backend's machinery: a real kind cluster whose kube-apiserver stores everything in Kine.

The datastore (embedded Postgres) and the Kine replicas are the lab's own host processes, as in the local
backend (`kinelab.provision.lab.Lab`); only the Kubernetes nodes are containers. They meet on a docker network
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

Several control-plane nodes (``control_planes=N``) need two things kind does not give an external etcd:

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

import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from ..errors import ToolError, UsageError
from .docker import Engine, last_line, needs_runc_wrapper
from .tools import KIND, KUBERNETES_MODULE, KUBERNETES_VERSION, build_gomod, cache_dir, ensure, kubernetes_tool

KIND_API = "kind.x-k8s.io/v1alpha4"
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
NETWORK_POOL = ipaddress.ip_network("198.19.0.0/16")  # the upper half of 198.18.0.0/15; the daemon's bridge
LABEL = "kinelab.lab"                                   # and pool start at 198.18.0.0/24
# kind's labels on every container of a cluster
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"
KIND_ROLE_LABEL = "io.x-k8s.kind.role"
KUBELET_HEALTH_TIMEOUT = "40s"
MODES = ("shared-db", "single-kine", "hybrid")
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

    def to_json(self) -> dict:
        return {"name": self.name, "subnet": self.subnet, "gateway": self.gateway}


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


def create_network(engine: Engine, name: str, labels: Optional[Dict[str, str]] = None) -> KindNetwork:
    """A new bridge network `name` on the first free /24 of 198.19.0.0/16 (never a private range)."""
    existing = engine.docker("network", "inspect", name, check=False)
    if existing.returncode == 0:
        raise UsageError(f"a docker network named {name} already exists; remove it (`docker network rm {name}`) "
                         "or choose another lab name")
    for attempt in range(3):  # another process may take the same subnet between the scan and the create
        used = used_subnets(engine)
        subnet = next((s for s in NETWORK_POOL.subnets(new_prefix=24) if not any(s.overlaps(u) for u in used)), None)
        if subnet is None:
            raise ToolError(f"no free /24 left in {NETWORK_POOL} on this Docker engine; remove unused networks "
                            "(`docker network prune`)")
        gateway = str(next(subnet.hosts()))
        argv = ["network", "create", "--driver", "bridge", f"--subnet={subnet}", f"--gateway={gateway}",
                "--opt", "com.docker.network.bridge.enable_ip_masquerade=true"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        result = engine.docker(*argv, name, check=False)
        if result.returncode == 0:
            return KindNetwork(name, str(subnet), gateway)
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
                   kine_files: Optional[Sequence[os.PathLike]] = None, kubelet: Optional[dict] = None) -> dict:
    """kind's `Cluster` (kind.x-k8s.io/v1alpha4) with kubeadm v1beta4 and kubelet v1beta1 patches.
    `etcd_ca_dir`: the placeholder etcd CA several control planes need; `kine_files`: per control plane, a
    host file naming its own Kine (shared-db); `kubelet`: more KubeletConfiguration fields (tests use it to
    break the kubelet on purpose)."""
    if control_planes < 1:
        raise UsageError("a kind cluster needs at least one control-plane node")
    if workers < 0:
        raise UsageError("--workers cannot be negative")
    if control_planes > 1 and etcd_ca_dir is None:
        raise UsageError("several control planes need the placeholder etcd CA (etcd_ca_dir)")
    patches = [
        _patch(KUBEADM_API, "ClusterConfiguration", {"etcd": {"external": {"endpoints": list(etcd_endpoints)}},
                                                      "dns": {"disabled": True}}),
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
    network: KindNetwork
    node_image: str
    etcd_endpoints: List[str]       # the cluster-wide external etcd endpoints
    dir: Path
    control_planes: int = 1
    workers: int = 0
    node_kine: Optional[List[str]] = None  # shared-db: control plane i's own Kine (host:port)
    kubelet: Optional[dict] = None
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
                              kine_files=kine_files, kubelet=self.kubelet)

    def _write_node_files(self) -> None:
        """The files the config mounts into nodes: the placeholder etcd CA, each control plane's Kine."""
        if self.control_planes > 1:
            placeholder_etcd_ca(self.dir / "etcd-ca")
        for index, endpoint in enumerate(self.node_kine or []):
            path = self.dir / "kine" / f"control-plane-{index}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(endpoint + "\n")

    def kind_env(self) -> dict:
        return {**self.engine.env(), "KIND_EXPERIMENTAL_DOCKER_NETWORK": self.network.name}

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

    # --- lifecycle ---------------------------------------------------------------------------------------
    def create(self, *, ready_timeout_s: float = 180.0, log=print) -> "KindCluster":
        """``kind create cluster``, then wait until every node is Ready. A failure leaves nothing behind and
        says in one line what the node's kubelet and containerd said last."""
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
            self._kind_create()
            ready_started = time.monotonic()
            self._wait_ready(ready_timeout_s)
            self.timings_s["nodes_ready"] = round(time.monotonic() - ready_started, 1)
        except BaseException:
            self.delete()
            raise
        self.timings_s["total"] = round(time.monotonic() - started, 1)
        return self

    def _kind_create(self) -> None:
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
        if code != 0:
            said = [line.strip() for line in log_path.read_text().splitlines() if line.strip()]
            error = next((line for line in reversed(said) if line.startswith("ERROR:")), said[-1] if said else "")
            raise ToolError(f"kind create cluster {self.name} failed: {error[:300]}{self._diagnosis()}; "
                            f"log {log_path}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        expected = self.control_planes + self.workers
        while True:
            ready = self.nodes_ready()
            if len(ready) == expected and all(ready.values()):
                return
            if time.monotonic() > deadline:
                waiting = sorted(n for n, ok in ready.items() if not ok)
                if len(ready) < expected:
                    waiting.append(f"{expected - len(ready)} node(s) never registered")
                raise ToolError(f"the kind cluster {self.name} was not Ready after {timeout_s:.0f}s "
                                f"(not Ready: {', '.join(waiting)}){self._diagnosis()}; logs in {self.log_dir}")
            time.sleep(1)

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
    go = shutil.which("go")
    if not go:
        raise ToolError("validating kind configs needs Go 1.26+ (https://go.dev/dl) to build kinelab's checker")
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


# --- the lab: engine, images, network, Kine on the host, the cluster ------------------------------------------
class KindLab:
    """A kind cluster whose apiservers store everything in the Kine replicas of a host lab (`Lab`, with Kine on
    the lab network's gateway). `start` brings up, in order: a Docker engine (`ensure_engine`: the one that
    answers, else kinelab's private one), the images, the network, the datastore and Kine, and the cluster;
    `stop` undoes them in reverse, and stops the private engine too if this lab started it and nothing else runs
    in it. Use as a context manager.

    The lab directory: ``lab.json`` (``"backend": "kind"``: what `attach` and `down` need), ``host/`` (the host
    lab: datastore, Kine, their logs and secrets), ``cluster/`` (kind config, kubeconfig, node logs).

    `timings_s` says where the time went: engine, images, checks, network, kine (datastore and replicas), then
    kind's phases (``kind_containers``, ``kind_kubeadm_init``, ``kind_kubeadm_join_*``...) and ``nodes_ready``."""

    def __init__(self, name: str = "kinelab", *, replicas: int = 1, mode: str = "single-kine", control_planes: int = 1,
                 workers: int = 0, datastore: str = "postgres", dir: Optional[os.PathLike] = None,
                 kine_args: Optional[dict] = None, kubelet: Optional[dict] = None, ready_timeout_s: float = 180.0,
                 keep: Optional[bool] = None):
        self.name = check_name(name)
        if replicas < 1:
            raise UsageError("a kind lab needs at least one Kine replica")
        kine_endpoints(mode, ["probe"])  # refuses an unknown mode before anything starts
        cluster_config(name, [], node_image="", control_planes=control_planes, workers=workers,
                       etcd_ca_dir="/")  # and impossible node counts
        self.replicas, self.mode, self.datastore = replicas, mode, datastore
        self.control_planes, self.workers = control_planes, workers
        self.kine_args, self.kubelet, self.ready_timeout_s = kine_args, kubelet, ready_timeout_s
        self.dir = Path(dir).expanduser().resolve() if dir else None
        self.keep = keep if keep is not None else dir is not None
        self.state = "new"
        self.engine: Optional[Engine] = None
        self.engine_started = False
        self.network: Optional[KindNetwork] = None
        self.lab = None
        self.cluster: Optional[KindCluster] = None
        self.image = None
        self.timings_s: Dict[str, float] = {}
        self._reaper = None

    def __repr__(self) -> str:
        return (f"KindLab({self.name!r}, mode={self.mode}, control_planes={self.control_planes}, "
                f"workers={self.workers}, replicas={self.replicas}, state={self.state}, dir={self.dir})")

    @property
    def network_name(self) -> str:
        return f"kinelab-{self.name}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "cluster" / "kubeconfig"

    @property
    def dsn(self):
        return self.lab.dsn

    # --- the lab directory ----------------------------------------------------------------------------------
    def _save(self, state: str) -> None:
        from .lab import write_manifest

        self.state = state
        write_manifest(self.dir, {
            "kinelab_lab": 1, "backend": "kind", "name": self.name, "dir": str(self.dir), "state": state,
            "mode": self.mode, "control_planes": self.control_planes, "workers": self.workers,
            "kine_replicas": self.replicas, "datastore_kind": self.datastore, "kine_args": self.kine_args,
            "engine": {**self.engine.to_json(), "started_by_lab": self.engine_started} if self.engine else None,
            "network": self.network.to_json() if self.network else {"name": self.network_name},
            "node_image": self.image.to_json() if self.image else None,
            "cluster_created": self.cluster is not None,  # only then is a cluster of this name ours to delete
            "etcd_endpoints": self.cluster.etcd_endpoints if self.cluster else [],
            "node_kine": self.cluster.node_kine if self.cluster else None,
            "kubeconfig": str(self.kubeconfig), "timings_s": self.timings_s})

    @classmethod
    def attach(cls, dir: os.PathLike) -> "KindLab":
        """The kind lab recorded in `dir` (running or not), for status, capture and down."""
        from .docker import find_engine
        from .lab import Lab, read_manifest

        path = Path(dir).expanduser().resolve()
        manifest = read_manifest(path)
        if manifest is None or manifest.get("backend") != "kind":
            raise UsageError(f"no kind lab in {path}; start one with `kinelab up --backend kind --dir {dir}`")
        lab = cls(manifest["name"], replicas=manifest["kine_replicas"], mode=manifest["mode"],
                  control_planes=manifest["control_planes"], workers=manifest["workers"],
                  datastore=manifest["datastore_kind"], kine_args=manifest.get("kine_args"), dir=path, keep=True)
        lab.state, lab.timings_s = manifest["state"], manifest.get("timings_s", {})
        lab.engine_started = bool((manifest.get("engine") or {}).get("started_by_lab"))
        lab.engine = find_engine()
        if (path / "host" / "lab.json").exists():
            lab.lab = Lab.attach(path / "host")
        net = manifest.get("network") or {}
        if net.get("gateway"):
            lab.network = KindNetwork(net["name"], net["subnet"], net["gateway"])
        if manifest.get("cluster_created") and lab.engine and lab.network:
            from .nodeimage import NodeImage

            lab.image = NodeImage(**manifest["node_image"])
            lab.cluster = KindCluster(lab.name, lab.engine, lab.network, lab.image.reference,
                                      manifest["etcd_endpoints"], path / "cluster", control_planes=lab.control_planes,
                                      workers=lab.workers, node_kine=manifest.get("node_kine"))
        return lab

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self, log=None, *, owned: bool = True) -> "KindLab":
        """With `owned`, the host lab's reaper stops Kine and the datastore if this Python process dies (as
        `Lab.start`); a lab that must outlive the process (`kinelab up`) passes owned=False."""
        import tempfile

        from .. import progress
        from .docker import ensure_engine
        from .lab import Lab, read_manifest
        from .nodeimage import ensure_lb_image, ensure_node_image

        log = log or progress.say
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="kinelab-kind-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = read_manifest(self.dir)
        if previous is not None and previous.get("state") != "stopped":
            raise UsageError(f"a {previous.get('backend', 'local')} lab is recorded in {self.dir} (state "
                             f"{previous.get('state')}); run `kinelab down --dir {self.dir}` first")
        self._save("starting")  # before anything runs: `down` finds whatever a failed start leaves
        if owned:  # if this Python process dies, the reaper deletes the cluster and stops the rest
            from .reaper import start_reaper

            self._reaper = start_reaper(self.dir)
        try:
            with self._timed("engine"):
                self.engine, self.engine_started = ensure_engine(log=log)
            self._save("starting")
            with self._timed("images"):
                self.image = ensure_node_image(self.engine, log=log)
                if self.control_planes > 1:
                    ensure_lb_image(self.engine, log=log)
            with self._timed("checks"):
                check_privileged(self.engine, self.image.workload_image)
                probe = KindCluster(self.name, self.engine, KindNetwork(self.network_name, "", ""),
                                    self.image.reference, [], self.dir / "cluster")
                if probe.exists():
                    raise UsageError(f"a kind cluster named {self.name} already exists on this Docker engine; "
                                     f"choose another name, or delete it with `kind delete cluster --name {self.name}`")
            with self._timed("network"):
                self.network = create_network(self.engine, self.network_name, {LABEL: self.name})
            self._save("starting")
            with self._timed("kine"):
                self.lab = Lab(replicas=self.replicas, datastore=self.datastore, dir=self.dir / "host",
                               kine_args=self.kine_args, kine_host=self.network.gateway).start(owned=owned)
            cluster_endpoints, node_kine = kine_endpoints(self.mode, self.lab.endpoints, self.control_planes)
            self.cluster = KindCluster(self.name, self.engine, self.network, self.image.reference, cluster_endpoints,
                                       self.dir / "cluster", control_planes=self.control_planes,
                                       workers=self.workers, node_kine=node_kine, kubelet=self.kubelet)
            self._save("starting")
            self.cluster.create(ready_timeout_s=self.ready_timeout_s, log=log)
            self.timings_s.update({f"kind_{k}" if k != "nodes_ready" else k: v
                                   for k, v in self.cluster.timings_s.items() if k != "total"})
            self._save("running")
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timer():
            started = time.monotonic()
            yield
            self.timings_s[name] = round(time.monotonic() - started, 1)
        return timer()

    def stop(self) -> int:
        """Delete the cluster, stop Kine and the datastore, remove the network (and the private engine if this
        lab started it and it runs nothing else), record the lab stopped. Returns how many node containers
        there were. Safe to repeat."""
        from .docker import PrivateEngine

        removed = 0
        if self.cluster is not None and self.engine is not None:  # never another lab's cluster of the same name
            removed = self.cluster.delete()
        if self.lab is not None:
            if hasattr(self.lab, "datastore"):
                self.lab.stop()
            else:  # attached: stop what its manifest names
                self.lab.down()
        if self.engine is not None:
            if self.network is not None:
                remove_network(self.engine, self.network.name)
            if self.engine_started and self.engine.private \
                    and not self.engine.docker("ps", "-aq", check=False).stdout.strip():
                PrivateEngine().stop()
                self.engine_started = False
        if self.dir is not None and self.dir.exists():
            self._save("stopped")
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait()
            self._reaper = None
        if not self.keep and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return removed

    def down(self) -> int:
        """`kinelab down`: stop everything of a recorded lab; a second `down` is refused in one line."""
        if self.state == "stopped":
            raise UsageError(f"the kind lab in {self.dir} is already stopped; remove its directory with "
                             f"`kinelab down --dir {self.dir} --purge`")
        if self.engine is None:
            raise ToolError(f"cannot stop the kind lab in {self.dir}: no Docker engine answers `docker info`; start "
                            f"it (`kinelab docker start` for kinelab's own), then run `kinelab down --dir {self.dir}` "
                            "again")
        return self.stop()

    def __enter__(self) -> "KindLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what it is doing -----------------------------------------------------------------------------
    def capture(self, out: os.PathLike, *, incremental: bool = False):
        """Capture the lab's kine table (its datastore on the host) into the DuckDB file `out`."""
        if self.lab is None:
            raise UsageError(f"the kind lab in {self.dir} has no datastore (it never started)")
        return self.lab.capture(out, incremental=incremental)

    def status(self) -> dict:
        cluster = self.cluster
        engine_ok = self.engine is not None
        status = {"backend": "kind", "name": self.name, "state": self.state, "mode": self.mode, "dir": str(self.dir),
                  "control_planes": self.control_planes, "workers": self.workers, "replicas": self.replicas,
                  "engine": self.engine.to_json() if engine_ok else None,
                  "network": self.network.to_json() if self.network else None,
                  "node_image": self.image.reference if self.image else None,
                  "kubeconfig": str(self.kubeconfig),
                  "etcd_endpoints": cluster.etcd_endpoints if cluster else [],
                  "node_kine": cluster.node_kine if cluster else None,
                  "nodes": cluster.containers() if cluster and engine_ok else [],
                  "ready": cluster.nodes_ready() if cluster and engine_ok and self.state == "running" else {},
                  "host": self.lab.status() if self.lab else None, "timings_s": dict(self.timings_s)}
        if not engine_ok:
            status["error"] = "no Docker engine answers `docker info`: the lab's nodes cannot be seen"
        elif self.state == "running" and (len(status["nodes"]) < self.control_planes + self.workers or
                                          any(n["state"] != "running" for n in status["nodes"])):
            status["state"] = "degraded"
        return status
