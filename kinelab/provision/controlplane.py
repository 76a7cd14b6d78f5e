"""The rest of a control plane, as lab processes: kube-controller-manager, kube-scheduler, and simulated nodes.

Each control-plane member (controller-manager, scheduler) runs against one apiserver with the lab's admin
kubeconfig, takes part in leader election (the leader renews its Lease every 2 s: a real cluster's writes), and
serves /healthz on a loopback port of its own, which is its readiness.

The nodes are simulated by kwok (sigs.k8s.io/kwok), which plays every kubelet: it renews each node's Lease in
kube-node-lease every 10 s (`--node-lease-duration-seconds` 40, renewed at a quarter of it, as kubelets do),
refreshes node status every few minutes and moves pods through their lifecycle. It only acts on what its
stages describe; kinelab writes its own stages (`kwok_stages`). kinelab registers the Node objects itself, with
the annotation, label and taint that mark them as kwok's, and waits until every one is Ready.
"""

from __future__ import annotations

import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import yaml

from ..errors import UsageError
from .apiserver import Pki
from .process import LOOPBACK, ServedProcess
from .tools import Binary
from .wait import http_probe, poll_until

KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NODE_LABELS = {"type": "kwok", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
NODE_PREFIX = "kinelab-node-"
POD_CIDR = "10.64.0.0/12"  # room for many thousand simulated pods
NODE_LEASE_DURATION_S = 40  # renewed every 10 s, like a kubelet's default
# From benchmarks/results/nodes.md (100 to 3000 idle nodes, one Kine on Postgres: 1.1 to 2.4 GiB), rounded up:
# what every component together needs per node, and before the first node. `check_node_memory` refuses what
# will not fit.
MIB_PER_NODE = 0.6
MIB_BASE = 1200


def insecure_local() -> ssl.SSLContext:
    """The controller-manager and scheduler serve /healthz with a self-signed certificate of their own, on
    127.0.0.1: checking that they answer needs no trust in it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _kubeconfig_flags(kubeconfig: Path) -> list:
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}"]


class ControllerManager(ServedProcess):
    def __init__(self, index: int, binary: Binary, kubeconfig: Path, pki: Pki, lab_dir: Path, *, port: int):
        name = f"kube-controller-manager-{index}"
        argv = [binary.path, *_kubeconfig_flags(kubeconfig), "--leader-elect=true", f"--bind-address={LOOPBACK}",
                f"--secure-port={port}", f"--cert-dir={Path(lab_dir) / 'controlplane' / name}", "--controllers=*",
                "--use-service-account-credentials=false", f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca_cert}", f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}", "--v=1"]
        super().__init__(name, argv, lab_dir, timeout_s=120, ready=http_probe(
            f"https://{LOOPBACK}:{port}/healthz", context=insecure_local(), expect=b"ok"))


class Scheduler(ServedProcess):
    def __init__(self, index: int, binary: Binary, kubeconfig: Path, lab_dir: Path, *, port: int):
        name = f"kube-scheduler-{index}"
        argv = [binary.path, *_kubeconfig_flags(kubeconfig), "--leader-elect=true", f"--bind-address={LOOPBACK}",
                f"--secure-port={port}", f"--cert-dir={Path(lab_dir) / 'controlplane' / name}", "--v=1"]
        super().__init__(name, argv, lab_dir, timeout_s=120, ready=http_probe(
            f"https://{LOOPBACK}:{port}/healthz", context=insecure_local(), expect=b"ok"))


class NodeSimulator(ServedProcess):
    """kwok, managing only the nodes kinelab registers (by their annotation)."""

    def __init__(self, binary: Binary, kubeconfig: Path, lab_dir: Path, *, port: int):
        stages = Path(lab_dir) / "controlplane" / "kwok-stages.yaml"
        stages.parent.mkdir(parents=True, exist_ok=True)
        stages.write_text(yaml.safe_dump_all(kwok_stages(), sort_keys=False))
        argv = [binary.path, f"--kubeconfig={kubeconfig}", f"--config={stages}", "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_ANNOTATION)}",
                "--manage-nodes-with-label-selector=", f"--cidr={POD_CIDR}", "--node-ip=10.64.0.1",
                f"--node-lease-duration-seconds={NODE_LEASE_DURATION_S}", f"--server-address={LOOPBACK}:{port}"]
        super().__init__("kwok", argv, lab_dir, timeout_s=60, ready=http_probe(f"http://{LOOPBACK}:{port}/healthz"))


# --- kwok's stages: what a kubelet would do, written as kwok Stage objects ------------------------------------
def _stage(name: str, kind: str, selector: list, **spec) -> dict:
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name},
            "spec": {"resourceRef": {"apiGroup": "v1", "kind": kind},
                     "selector": {"matchExpressions": selector}, **spec}}


def _is(key: str, operator: str, *values: str) -> dict:
    return {"key": key, "operator": operator, **({"values": list(values)} if values else {})}


_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
# Node status as a healthy kubelet reports it; `$now` is the template's current time.
_NODE_STATUS = """{{ $now := Now }}
conditions:
- {type: Ready, status: "True", reason: KubeletReady, message: kinelab simulated node, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: MemoryPressure, status: "False", reason: KubeletHasSufficientMemory, message: ok, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: DiskPressure, status: "False", reason: KubeletHasNoDiskPressure, message: ok, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: PIDPressure, status: "False", reason: KubeletHasSufficientPID, message: ok, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
addresses:
- {type: InternalIP, address: {{ NodeIP | Quote }}}
- {type: Hostname, address: {{ NodeName | Quote }}}
allocatable: {cpu: "32", memory: 128Gi, pods: "110"}
capacity: {cpu: "32", memory: 128Gi, pods: "110"}
nodeInfo: {architecture: amd64, operatingSystem: linux, osImage: kinelab simulated node, kubeletVersion: kwok, kubeProxyVersion: kwok, containerRuntimeVersion: kwok, kernelVersion: kwok, machineID: "", systemUUID: "", bootID: ""}
phase: Running
"""  # noqa: E501 (one condition per line reads best)
_POD_RUNNING = """{{ $now := Now }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- {name: {{ .name | Quote }}, image: {{ .image | Quote }}, imageID: "", ready: true, started: true, restartCount: 0, state: {running: {startedAt: {{ $now | Quote }}}}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""  # noqa: E501


def kwok_stages() -> list:
    """kinelab's kwok stages: a registered node becomes Ready; a Ready node refreshes its status every 5 to
    6 minutes (a kubelet's nodeStatusReportFrequency); a pod bound to a node starts running; a pod being
    deleted goes. Node Leases are kwok's own (--node-lease-duration-seconds)."""
    return [
        _stage("kinelab-node-ready", "Node", [_is(_READY, "NotIn", "True")],
               next={"statusTemplate": _NODE_STATUS}),
        _stage("kinelab-node-status", "Node", [_is(_READY, "In", "True")],
               delay={"durationMilliseconds": 300_000, "jitterDurationMilliseconds": 360_000},
               next={"statusTemplate": _NODE_STATUS}),
        _stage("kinelab-pod-running", "Pod", [_is(".metadata.deletionTimestamp", "DoesNotExist"),
                                              _is(".spec.nodeName", "Exists"),
                                              _is(".status.phase", "In", "Pending")],
               next={"statusTemplate": _POD_RUNNING}),
        _stage("kinelab-pod-delete", "Pod", [_is(".metadata.deletionTimestamp", "Exists")],
               next={"delete": True}),
    ]


# --- the nodes -------------------------------------------------------------------------------------------
def node_names(count: int) -> list:
    return [f"{NODE_PREFIX}{i:04d}" for i in range(count)]


def check_node_memory(nodes: int, available_mib: Optional[float] = None) -> None:
    """Refuse, before anything starts, a node count whose estimated memory does not fit this machine."""
    import psutil

    available = available_mib if available_mib is not None else psutil.virtual_memory().available / 2**20
    needed = MIB_BASE + MIB_PER_NODE * nodes
    if needed > 0.8 * available:
        most = max(0, int((0.8 * available - MIB_BASE) / MIB_PER_NODE))
        raise UsageError(f"--nodes {nodes} needs about {needed / 1024:.1f} GiB (kube-apiserver, Postgres, Kine, kwok "
                         f"and the controllers together, {MIB_PER_NODE} MiB per node), but {available / 1024:.1f} GiB "
                         f"is available here; use --nodes {most} or fewer")


def register_nodes(api_client, count: int, *, workers: int = 8, advance=lambda n=1: None,
                   cancel: Optional[threading.Event] = None) -> list:
    """Create the simulated Node objects kwok will manage (those that exist already are kept)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    existing = {n.metadata.name for n in core.list_node(label_selector="type=kwok").items}
    names = node_names(count)

    def create(name: str) -> None:
        if cancel is not None and cancel.is_set():
            return
        if name not in existing:
            body = client.V1Node(
                metadata=client.V1ObjectMeta(name=name, labels={**NODE_LABELS, "kubernetes.io/hostname": name},
                                             annotations={KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]}),
                spec=client.V1NodeSpec(taints=[client.V1Taint(key=KWOK_ANNOTATION[0], value=KWOK_ANNOTATION[1],
                                                              effect="NoSchedule")]))
            try:
                core.create_node(body)
            except ApiException as exc:
                if exc.status != 409:  # registered meanwhile: fine
                    raise
        advance()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kinelab-nodes") as pool:
        list(pool.map(create, names))
    return names


def ready_nodes(api_client) -> int:
    from kubernetes import client

    nodes = client.CoreV1Api(api_client).list_node(label_selector="type=kwok").items
    return sum(any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])) for n in nodes)


def wait_nodes_ready(api_client, count: int, *, timeout_s: float, cancel: Optional[threading.Event] = None,
                     detail=lambda: "") -> None:
    poll_until(lambda: ready_nodes(api_client) >= count, timeout_s=timeout_s, interval_s=0.5,
               what=f"{count} simulated nodes to be Ready", cancel=cancel, detail=detail)
