"""The same Kubernetes-shaped load, through real kube-apiservers with the `kubernetes` client.

Mixes: `configmaps` (20% create, 50% update, 20% delete, 10% list, as in Kine's own load test), `leases`
(N node Leases in kube-node-lease renewed in turn, as kubelets do), `events` (new core/v1 Events),
`deployments` (Deployments created, scaled, rolled out and deleted, so that the controller-manager, the
scheduler and the kubelets, simulated or kind's real ones, do the rest: ReplicaSets, Pods, bindings, pod status,
events) and `idle`
(no calls: what the cluster writes by itself).
Every call is recorded with its latency; every acknowledged write with the resourceVersion the apiserver
returned, which is the Kine revision of its row.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from ..clock import Clock
from ..errors import UsageError
from .pool import run_paced
from .workload import LoadError, LoadResult, Write

KUBE_MIXES = ("configmaps", "leases", "events", "deployments", "idle")
NAMESPACES = {"configmaps": "default", "leases": "kube-node-lease", "events": "default", "deployments": "default"}
DEPLOYMENTS_PER_WORKER = 4  # kept alive by each worker of the `deployments` mix
# never pulled: simulated nodes only pretend to run it, and kind's nodes (kinelab's node image) have it preloaded
POD_IMAGE = "registry.k8s.io/pause:3.10.2"
REQUEST_TIMEOUT_S = 5  # an apiserver whose etcd is gone may hang a call; the load must go on


@dataclass(frozen=True)
class KubeCall:
    apiserver: int
    verb: str  # create | update | delete | list
    resource: str
    name: str
    ok: bool
    latency_ms: float
    resource_version: int  # 0 when the call failed or returned no object
    error: str = ""
    t: float = 0.0  # the run clock's time when the call returned
    namespace: str = ""

    @property
    def key(self) -> str:
        """The Kine key of the object: /registry/<resource>/<namespace>/<name>."""
        return f"/registry/{self.resource}/{self.namespace}/{self.name}"


class _Shapes:
    """One worker's objects and how to write them."""

    def __init__(self, lab, apiserver: int, rng: random.Random, run: str, nodes: int):
        from kubernetes import client

        self.k8s, self.rng, self.run = client, rng, run
        api = lab.kubernetes_client(apiserver, retries=False)  # a failure must show as one, not as a retry loop
        self.core, self.coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.simulated = bool(lab.model.by_role("nodes"))  # kwok's nodes; else kind's real ones
        self.live: list = []
        self.nodes = [f"kinelab-node-{run}-{n:03d}" for n in range(nodes)]
        self.turn = 0
        self.serial = 0

    def _name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.run}-{self.serial:06d}"

    def configmaps(self):
        k8s, roll = self.k8s, self.rng.random()
        data = {"payload": self.rng.randbytes(self.rng.randint(250, 1000)).hex()}
        if roll < 0.2 or not self.live:
            name = self._name("cm")
            obj = self.core.create_namespaced_config_map("default", k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name=name), data=data), _request_timeout=REQUEST_TIMEOUT_S)
            self.live.append(name)
            return "create", "configmaps", name, obj
        if roll < 0.7:
            name = self.rng.choice(self.live)
            return "update", "configmaps", name, self.core.patch_namespaced_config_map(
                name, "default", {"data": data}, _request_timeout=REQUEST_TIMEOUT_S)
        if roll < 0.9:
            name = self.live.pop(self.rng.randrange(len(self.live)))
            return "delete", "configmaps", name, self.core.delete_namespaced_config_map(
                name, "default", _request_timeout=REQUEST_TIMEOUT_S)
        return "list", "configmaps", "", self.core.list_namespaced_config_map(
            "default", limit=500, _request_timeout=REQUEST_TIMEOUT_S)

    def leases(self):
        k8s = self.k8s
        name = self.nodes[self.turn % len(self.nodes)]
        self.turn += 1
        spec = k8s.V1LeaseSpec(holder_identity=name, lease_duration_seconds=40,
                               renew_time=datetime.now(timezone.utc))
        if self.turn <= len(self.nodes):
            return "create", "leases", name, self.coordination.create_namespaced_lease(
                "kube-node-lease", k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=spec),
                _request_timeout=REQUEST_TIMEOUT_S)
        return "update", "leases", name, self.coordination.patch_namespaced_lease(
            name, "kube-node-lease", {"spec": {"renewTime": spec.renew_time.isoformat()}},
            _request_timeout=REQUEST_TIMEOUT_S)

    def deployments(self):
        k8s, roll = self.k8s, self.rng.random()
        if len(self.live) < DEPLOYMENTS_PER_WORKER:
            name = self._name("deploy")
            self.live.append(name)
            deployment = _deployment(k8s, name, self.rng.randint(1, 5), self.simulated)
            return "create", "deployments", name, self.apps.create_namespaced_deployment(
                "default", deployment, _request_timeout=REQUEST_TIMEOUT_S)
        name = self.rng.choice(self.live)
        if roll < 0.4:
            return "update", "deployments", name, self.apps.patch_namespaced_deployment_scale(
                name, "default", {"spec": {"replicas": self.rng.randint(1, 10)}}, _request_timeout=REQUEST_TIMEOUT_S)
        if roll < 0.8:  # a rollout: a new template, so a new ReplicaSet replaces the pods
            patch = {"spec": {"template": {"metadata": {"annotations": {"kinelab/revision": self._name("r")}}}}}
            return "update", "deployments", name, self.apps.patch_namespaced_deployment(
                name, "default", patch, _request_timeout=REQUEST_TIMEOUT_S)
        self.live.remove(name)
        return "delete", "deployments", name, self.apps.delete_namespaced_deployment(
            name, "default", _request_timeout=REQUEST_TIMEOUT_S)

    def events(self):
        k8s = self.k8s
        name = self._name("event")
        now = datetime.now(timezone.utc)
        return "create", "events", name, self.core.create_namespaced_event("default", k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=name), involved_object=k8s.V1ObjectReference(kind="Pod", name="web-0",
                                                                                        namespace="default"),
            reason="Probe", message="kinelab load", type="Normal", first_timestamp=now, last_timestamp=now,
            count=1), _request_timeout=REQUEST_TIMEOUT_S)


def check_kube_load(lab, mix: str) -> None:
    """Refuse a mix `run_kube_load` cannot run on `lab`."""
    if mix not in KUBE_MIXES:
        raise UsageError(f"through apiservers the mix is one of {', '.join(KUBE_MIXES)}, not {mix!r}")
    if not lab.apiserver_count:
        raise UsageError("this lab has no apiservers; start it with apiservers=N (kinelab up --apiservers N)")
    if mix == "deployments" and not (lab.model.by_role("nodes") or lab.model.by_role("node")):
        raise UsageError("the deployments mix needs nodes for its pods: start the lab with --nodes N (or on "
                         "--backend kind)")


def _deployment(k8s, name: str, replicas: int, simulated: bool):
    """A Deployment of pause pods: on the simulated nodes only (their label, and a toleration of their taint), or
    on any node of a kind cluster (a control plane's taint tolerated too)."""
    labels = {"app": name}
    if simulated:
        placement = dict(node_selector={"type": "kwok"}, tolerations=[
            k8s.V1Toleration(key="kwok.x-k8s.io/node", operator="Exists", effect="NoSchedule")])
    else:
        placement = dict(tolerations=[k8s.V1Toleration(operator="Exists")])
    pod = k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image=POD_IMAGE)], **placement)
    return k8s.V1Deployment(metadata=k8s.V1ObjectMeta(name=name, labels=labels), spec=k8s.V1DeploymentSpec(
        replicas=replicas, selector=k8s.V1LabelSelector(match_labels=labels),
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod)))


def as_load_result(mix: str, calls: list, duration_s: float) -> LoadResult:
    """Calls through apiservers as writes and errors; `replica` then holds the apiserver's index. A delete returns
    no resourceVersion and a list no row, so only creates and updates count as acknowledged writes."""
    writes = [Write(c.key, c.verb, c.resource_version, c.apiserver, c.t, c.latency_ms)
              for c in calls if c.ok and c.verb in ("create", "update")]
    errors = [LoadError(c.t, c.apiserver, c.verb, c.key if c.name else "", c.error,
                        "UNAVAILABLE" if c.error.startswith("unreachable") else c.error.split(" ")[0])
              for c in calls if not c.ok]
    return LoadResult(mix, sorted(writes, key=lambda w: w.revision), sorted(errors, key=lambda e: e.t),
                      sum(1 for c in calls if c.ok and c.verb == "list"), duration_s)


def run_kube_load(lab, mix: str = "configmaps", *, ops: Optional[int] = 200, rate: Optional[float] = None,
                  workers: int = 2, seed: int = 1, nodes: int = 20, duration_s: Optional[float] = None,
                  clock: Optional[Clock] = None, stop: Optional[threading.Event] = None) -> list:
    """Spread `ops` calls of `mix` (or as many as fit in `duration_s`) round-robin over the lab's apiservers,
    `workers` at a time (at least one per apiserver), at `rate` calls/s (None: flat out), until `stop` is set.
    Returns every KubeCall, failures included."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    check_kube_load(lab, mix)
    count = lab.apiserver_count
    if mix == "idle":  # the cluster's own writes only
        (stop or threading.Event()).wait(duration_s or 10.0)
        return []
    run, calls, lock = uuid.uuid4().hex[:6], [], threading.Lock()
    # Call i goes to apiserver i % count, and each worker serves one apiserver: a hung apiserver holds up only
    # its own workers, never the calls of the others.
    workers = max(workers, count)
    clock = clock or Clock()
    shapes: dict = {}

    def call(worker: int, i: int) -> None:
        apiserver = worker % count
        if worker not in shapes:
            shapes[worker] = _Shapes(lab, apiserver, random.Random(seed * 100 + worker), f"{run}w{worker}", nodes)
        t0 = time.perf_counter()
        try:
            verb, resource, name, obj = getattr(shapes[worker], mix)()
            rv = int(getattr(getattr(obj, "metadata", None), "resource_version", None) or 0)
            result = KubeCall(apiserver, verb, resource, name, True, (time.perf_counter() - t0) * 1000, rv,
                              t=clock.now(), namespace=NAMESPACES[mix])
        except ApiException as exc:
            result = KubeCall(apiserver, "?", mix, "", False, (time.perf_counter() - t0) * 1000, 0,
                              f"{exc.status} {exc.reason}", t=clock.now(), namespace=NAMESPACES[mix])
        except (HTTPError, OSError) as exc:  # the apiserver itself is unreachable
            result = KubeCall(apiserver, "?", mix, "", False, (time.perf_counter() - t0) * 1000, 0,
                              f"unreachable: {type(exc).__name__}", t=clock.now(), namespace=NAMESPACES[mix])
        with lock:
            calls.append(result)

    run_paced(call, workers=workers, rate=rate, ops=ops, duration_s=duration_s, stop=stop, lanes=count)
    return calls
