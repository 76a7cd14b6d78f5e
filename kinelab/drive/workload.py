"""Kubernetes-shaped writes through Kine, the way kube-apiserver issues them.

Keys follow /registry/<resource>/<namespace>/<name>; creates are Txn(MOD == 0), updates Txn(MOD == rev)
with a retry on conflict, deletes Txn(MOD == rev). Values are protobuf envelopes like the apiserver's.
Events and master leases carry TTL leases (Kine's lease id is the TTL in seconds).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Sequence

from ..etcd import Etcd
from ..k8s import encode_object

EVENT_TTL_S = 3660  # --event-ttl 1h plus the lease manager's 60 s reuse window
MASTERLEASE_TTL_S = 15


@dataclass(frozen=True)
class Write:
    key: str
    op: str  # create | update | delete
    revision: int
    replica: int
    wall_time: float  # time.time() when the write was acknowledged
    latency_ms: float
    conflicts: int = 0


class Writer:
    """Issues apiserver-shaped writes over a set of replicas and records every acknowledged one."""

    def __init__(self, clients: Sequence[Etcd], seed: int = 1):
        self.clients = list(clients)
        self.rng = random.Random(seed)
        self.writes: list = []
        self._turn = 0

    def _pick(self, replica):
        if replica is None:
            replica = self._turn % len(self.clients)
            self._turn += 1
        return replica, self.clients[replica]

    def _record(self, key, op, result_revision, replica, t0, conflicts=0) -> Write:
        now = time.time()
        write = Write(key, op, result_revision, replica, now, (time.perf_counter() - t0) * 1000, conflicts)
        self.writes.append(write)
        return write

    def value(self, api_version: str, kind: str, size: int) -> bytes:
        return encode_object(api_version, kind, self.rng.randbytes(size))

    def create(self, key, value, *, lease_ttl_s: int = 0, replica=None):
        replica, client = self._pick(replica)
        t0 = time.perf_counter()
        lease = client.lease_grant(lease_ttl_s) if lease_ttl_s else 0
        result = client.create(key, value, lease=lease)
        return self._record(key, "create", result.revision, replica, t0) if result.succeeded else None

    def update(self, key, make_value, *, replica=None, max_conflicts: int = 10):
        """Read-modify-write with compare-and-swap; retries from the current revision on conflict."""
        replica, client = self._pick(replica)
        t0 = time.perf_counter()
        current = client.get(key)
        for conflicts in range(max_conflicts + 1):
            if current is None:
                return None
            result = client.update(key, make_value(), mod_revision=current.mod_revision, lease=current.lease)
            if result.succeeded:
                return self._record(key, "update", result.revision, replica, t0, conflicts)
            current = result.current
        return None

    def delete(self, key, *, replica=None):
        replica, client = self._pick(replica)
        t0 = time.perf_counter()
        current = client.get(key)
        if current is None:
            return None
        result = client.delete(key, mod_revision=current.mod_revision)
        return self._record(key, "delete", result.revision, replica, t0) if result.succeeded else None


def burst(clients: Sequence[Etcd], *, configmaps: int = 30, nodes: int = 5, events: int = 20, seed: int = 1) -> list:
    """A short seeded burst touching the usual resources, spread round-robin over the replicas.
    Used by `kinelab demo`; returns every acknowledged `Write`."""
    writer = Writer(clients, seed)
    namespaces = ["default", "kube-system", "team-a"]
    cm_keys = [f"/registry/configmaps/{namespaces[i % 3]}/cm-{i:04d}" for i in range(configmaps)]
    for key in cm_keys:
        writer.create(key, writer.value("v1", "ConfigMap", writer.rng.randint(200, 2000)))
    for key in writer.rng.sample(cm_keys, configmaps // 2):
        writer.update(key, lambda: writer.value("v1", "ConfigMap", writer.rng.randint(200, 2000)))
    for key in writer.rng.sample(cm_keys, configmaps // 5):
        writer.delete(key)
    for n in range(nodes):
        key = f"/registry/leases/kube-node-lease/node-{n:03d}"
        writer.create(key, writer.value("coordination.k8s.io/v1", "Lease", 250))
        writer.update(key, lambda: writer.value("coordination.k8s.io/v1", "Lease", 250))
        writer.create(f"/registry/minions/node-{n:03d}", writer.value("v1", "Node", writer.rng.randint(3000, 6000)))
    for e in range(events):
        writer.create(f"/registry/events/{writer.rng.choice(namespaces)}/cm-{e:04d}.{writer.rng.getrandbits(40):x}",
                      writer.value("v1", "Event", writer.rng.randint(300, 700)), lease_ttl_s=EVENT_TTL_S)
    writer.create("/registry/masterleases/127.0.0.1", writer.value("v1", "Endpoints", 120),
                  lease_ttl_s=MASTERLEASE_TTL_S)
    return writer.writes
