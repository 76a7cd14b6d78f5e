"""Kubernetes-shaped load through Kine, written the way kube-apiserver writes.

Keys follow /registry/<resource>/<namespace>/<name>. Creates are Txn(MOD == 0); updates are
Txn(MOD == known revision) and, like the apiserver's GuaranteedUpdate, retry from the current value the
failed Txn returns; deletes are Txn(MOD == revision). Values are protobuf envelopes of realistic sizes.
Events carry a TTL lease (Kine's lease id is the TTL in seconds), renewed once a minute like the
apiserver's lease manager.

Mixes:
  configmaps  Kine's own load test: 20% create, 50% update, 20% delete, 10% list (values of 0.5-2 KB, or
              `value_bytes`)
  heartbeat   N nodes renewing their Lease in kube-node-lease every 10 s, as kubelets do
  events      an event storm: 80% new events with TTL leases, 20% updates of recent ones
  creates     unique keys, creates only, 1 KiB values: raw write throughput (the `benchmark put` shape)
"""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from ..clock import Clock
from ..errors import EtcdError, UsageError
from ..etcd import Etcd
from ..k8s import encode_object
from .pool import run_paced

EVENT_TTL_S = 3660  # --event-ttl 1h plus the lease manager's 60 s reuse window
LEASE_REUSE_S = 60
MASTERLEASE_TTL_S = 15
NODE_LEASE_PERIOD_S = 10


@dataclass(frozen=True)
class Write:
    key: str
    op: str  # create | update | delete
    revision: int
    replica: int
    t_commit: float  # Clock.now() when the write was acknowledged
    latency_ms: float
    conflicts: int = 0
    worker: int = 0


@dataclass(frozen=True)
class LoadError:
    t: float
    replica: int
    op: str
    key: str
    error: str
    code: str  # the gRPC status, or KEY_EXISTS / CONFLICT for a refused create or update (see Writer)
    value_sha256: Optional[str] = None  # of the value the failed create or update sent: was it written anyway?


def sha256(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


@dataclass
class LoadResult:
    mix: str
    writes: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    lists: int = 0
    duration_s: float = 0.0
    params: dict = field(default_factory=dict)

    @property
    def write_rate(self) -> float:
        return len(self.writes) / self.duration_s if self.duration_s else 0.0


class Writer:
    """Issues apiserver-shaped operations on chosen replicas and records what was acknowledged."""

    def __init__(self, clients: Sequence[Etcd], clock: Optional[Clock] = None, worker: int = 0):
        self.clients = list(clients)
        self.clock = clock or Clock()
        self.worker = worker
        self.writes: list = []
        self.errors: list = []
        self.lists = 0

    def _ack(self, key, op, revision, replica, t0, conflicts=0) -> Write:
        write = Write(key, op, revision, replica, self.clock.now(), (time.perf_counter() - t0) * 1000, conflicts,
                      self.worker)
        self.writes.append(write)
        return write

    def _failed(self, replica, op, key, exc: EtcdError, value: Optional[bytes] = None) -> None:
        self._refused(replica, op, key, str(exc), exc.code, value)

    def _refused(self, replica, op, key, error: str, code: str, value: Optional[bytes] = None) -> None:
        self.errors.append(LoadError(self.clock.now(), replica, op, key, error, code,
                                     sha256(value) if value is not None else None))

    @staticmethod
    def _current(client: Etcd, key: str) -> tuple:
        """(mod_revision, lease) of the key as it is now; (0, 0) when it does not exist."""
        current = client.get(key)
        return (current.mod_revision, current.lease) if current else (0, 0)

    def create(self, replica: int, key: str, value: bytes, *, lease: int = 0, new: bool = False) -> Optional[Write]:
        """Create `key` if absent. With `new` (a name nobody wrote before), a refused create is an error too: the
        apiserver would answer 409 AlreadyExists for a key that cannot exist."""
        t0 = time.perf_counter()
        try:
            result = self.clients[replica].create(key, value, lease=lease)
        except EtcdError as exc:
            return self._failed(replica, "create", key, exc, value)
        if result.succeeded:
            return self._ack(key, "create", result.revision, replica, t0)
        if new:
            self._refused(replica, "create", key, "create refused: the key exists (compare MOD == 0 failed)",
                          "KEY_EXISTS", value)
        return None

    def update(self, replica: int, key: str, make_value: Callable[[], bytes], *, known_revision: int = 0,
               lease: int = 0, max_conflicts: int = 10) -> Optional[Write]:
        """Compare-and-swap from `known_revision` (read first when 0) keeping `lease`; on conflict retry from
        the value the failed Txn returned, as the apiserver does."""
        t0 = time.perf_counter()
        client = self.clients[replica]
        try:
            revision, lease = (known_revision, lease) if known_revision else self._current(client, key)
            if not revision:
                return None
            value = None
            for conflicts in range(max_conflicts + 1):
                value = make_value()
                result = client.update(key, value, mod_revision=revision, lease=lease)
                if result.succeeded:
                    return self._ack(key, "update", result.revision, replica, t0, conflicts)
                if result.current is None:
                    return None  # deleted meanwhile
                if result.current.value == value:  # refused, yet the key holds this very value: a reported failure
                    self._refused(replica, "update", key, "update refused (compare failed), yet the key holds its "
                                  f"value at revision {result.current.mod_revision}", "CONFLICT", value)
                revision, lease = result.current.mod_revision, result.current.lease
        except EtcdError as exc:
            return self._failed(replica, "update", key, exc, value)
        return None

    def delete(self, replica: int, key: str, *, known_revision: int = 0) -> Optional[Write]:
        t0 = time.perf_counter()
        client = self.clients[replica]
        try:
            revision = known_revision or self._current(client, key)[0]
            if not revision:
                return None
            result = client.delete(key, mod_revision=revision)
            if not result.succeeded and result.current is not None:  # changed meanwhile: delete what is there
                result = client.delete(key, mod_revision=result.current.mod_revision)
        except EtcdError as exc:
            return self._failed(replica, "delete", key, exc)
        return self._ack(key, "delete", result.revision, replica, t0) if result.succeeded else None

    def list(self, replica: int, prefix: str, limit: int = 500) -> None:
        try:
            self.clients[replica].range_prefix(prefix, limit=limit)
            self.lists += 1
        except EtcdError as exc:
            self._failed(replica, "list", prefix, exc)


class Mix:
    """One worker's share of a named mix: `step` performs one operation on the given replica."""

    name = ""

    def __init__(self, rng: random.Random, worker: int, workers: int, **options):
        self.rng, self.worker, self.workers = rng, worker, workers
        # New objects get names no earlier run used, even with the same seed: a create must not collide.
        self.token = secrets.token_hex(3)

    def value(self, api_version: str, kind: str, low: int, high: int) -> bytes:
        return encode_object(api_version, kind, self.rng.randbytes(self.rng.randint(low, high)))

    def step(self, writer: Writer, replica: int) -> None:
        raise NotImplementedError


class ConfigMapMix(Mix):
    name = "configmaps"
    namespaces = ("default", "kube-system", "team-a")

    def __init__(self, rng, worker, workers, value_bytes: Optional[int] = None, **options):
        super().__init__(rng, worker, workers)
        self.live: dict = {}  # key -> mod revision this worker last saw
        self.serial = itertools.count()
        self.sizes = (value_bytes, value_bytes) if value_bytes else (500, 2000)  # small values, small recordings

    def _new_value(self) -> bytes:
        return self.value("v1", "ConfigMap", *self.sizes)

    def step(self, writer, replica):
        roll = self.rng.random()
        if roll < 0.2 or not self.live:
            ns = self.rng.choice(self.namespaces)
            key = f"/registry/configmaps/{ns}/load-{self.token}-w{self.worker}-{next(self.serial):06d}"
            done = writer.create(replica, key, self._new_value(), new=True)
            if done:
                self.live[key] = done.revision
        elif roll < 0.7:
            key = self.rng.choice(list(self.live))
            done = writer.update(replica, key, self._new_value, known_revision=self.live[key])
            if done:
                self.live[key] = done.revision
            else:
                self.live.pop(key, None)
        elif roll < 0.9:
            key = self.rng.choice(list(self.live))
            writer.delete(replica, key, known_revision=self.live.pop(key))
        else:
            writer.list(replica, f"/registry/configmaps/{self.rng.choice(self.namespaces)}/")


class HeartbeatMix(Mix):
    name = "heartbeat"

    def __init__(self, rng, worker, workers, nodes: int = 50, **options):
        super().__init__(rng, worker, workers)
        self.nodes = [f"/registry/leases/kube-node-lease/node-{n:04d}" for n in range(worker, nodes, workers)]
        self.revisions: dict = {}
        self.turn = itertools.cycle(self.nodes)

    def step(self, writer, replica):
        if not self.nodes:
            return
        key = next(self.turn)
        lease = lambda: self.value("coordination.k8s.io/v1", "Lease", 200, 300)  # noqa: E731
        if key not in self.revisions:
            done = writer.create(replica, key, lease()) or writer.update(replica, key, lease)
        else:
            done = writer.update(replica, key, lease, known_revision=self.revisions[key])
        if done:
            self.revisions[key] = done.revision


class EventStormMix(Mix):
    name = "events"
    namespaces = ("default", "kube-system", "team-a")

    def __init__(self, rng, worker, workers, event_ttl_s: int = EVENT_TTL_S, **options):
        super().__init__(rng, worker, workers)
        self.ttl = event_ttl_s
        self.lease, self.lease_granted = 0, float("-inf")
        self.recent: list = []
        self.serial = itertools.count()

    def step(self, writer, replica):
        if self.recent and self.rng.random() < 0.2:
            slot = self.rng.randrange(len(self.recent))
            key, revision, lease = self.recent[slot]
            done = writer.update(replica, key, lambda: self.value("v1", "Event", 300, 700), known_revision=revision,
                                 lease=lease)
            if done:
                self.recent[slot] = (key, done.revision, lease)
            return
        if time.monotonic() - self.lease_granted > LEASE_REUSE_S:
            try:
                self.lease, self.lease_granted = writer.clients[replica].lease_grant(self.ttl), time.monotonic()
            except EtcdError as exc:
                return writer._failed(replica, "lease", "", exc)
        ns = self.rng.choice(self.namespaces)
        pod = f"pod-{self.rng.randrange(1000):03d}"
        key = f"/registry/events/{ns}/{pod}.{self.token}w{self.worker}e{next(self.serial):07d}"
        done = writer.create(replica, key, self.value("v1", "Event", 300, 700), lease=self.lease, new=True)
        if done:
            self.recent = (self.recent + [(key, done.revision, self.lease)])[-50:]


class CreateMix(Mix):
    name = "creates"

    def __init__(self, rng, worker, workers, value_bytes: int = 1024, **options):
        super().__init__(rng, worker, workers)
        self.payload = encode_object("v1", "ConfigMap", rng.randbytes(value_bytes))
        self.serial = itertools.count()

    def step(self, writer, replica):
        writer.create(replica, f"/registry/configmaps/bench/{self.token}-w{self.worker}-{next(self.serial):09d}",
                      self.payload, new=True)


MIXES = {mix.name: mix for mix in (ConfigMapMix, HeartbeatMix, EventStormMix, CreateMix)}

Spread = Union[str, int]


def _replica_picker(spread: Spread, replicas: int, seed: int) -> Callable[[int], int]:
    if isinstance(spread, int) or (isinstance(spread, str) and spread.isdigit()):
        pinned = int(spread)
        if not 0 <= pinned < replicas:
            raise UsageError(f"cannot pin load to replica {pinned}: the lab has replicas 0..{replicas - 1}")
        return lambda i: pinned
    if spread == "round-robin":
        return lambda i: i % replicas
    if spread == "random":
        rng, lock = random.Random(seed ^ 0x5EED), threading.Lock()

        def pick(i):
            with lock:
                return rng.randrange(replicas)
        return pick
    raise UsageError(f"unknown spread {spread!r}: use round-robin, random, or a replica index")


def check_load(replicas: int, mix: str = "configmaps", *, rate: Optional[float] = None,
               duration_s: Optional[float] = None, ops: Optional[int] = None, spread: Spread = "round-robin",
               workers: int = 1) -> None:
    """Refuse parameters `run_load` cannot honour; runs call it before they open their results file."""
    if mix not in MIXES:
        raise UsageError(f"unknown mix {mix!r}: choose one of {', '.join(MIXES)}")
    if rate is not None and rate <= 0:
        raise UsageError("--rate must be positive (`kinelab load` without --rate writes flat out)")
    require_positive(("--duration", duration_s), ("--ops", ops), ("--workers", workers))
    _replica_picker(spread, replicas, 0)


def require_positive(*flags: tuple) -> None:
    """Each (flag, value) pair given a value must be above zero."""
    for flag, value in flags:
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, not {value:g}")


def run_load(clients: Sequence[Etcd], mix: str = "configmaps", *, rate: Optional[float] = None,
             duration_s: Optional[float] = None, ops: Optional[int] = None, spread: Spread = "round-robin",
             workers: int = 1, seed: int = 1, clock: Optional[Clock] = None, stop: Optional[threading.Event] = None,
             **mix_options) -> LoadResult:
    """Run `mix` at `rate` ops/s (None: flat out) for `duration_s` seconds or `ops` operations,
    spreading operations over `clients`. Every acknowledged write and every error is recorded."""
    check_load(len(clients), mix, rate=rate, duration_s=duration_s, ops=ops, spread=spread, workers=workers)
    if mix == "heartbeat" and rate is None:
        rate = mix_options.get("nodes", 50) / NODE_LEASE_PERIOD_S
    if duration_s is None and ops is None:
        duration_s = 10.0
    clock = clock or Clock()
    pick = _replica_picker(spread, len(clients), seed)
    writers = [Writer(clients, clock, worker) for worker in range(workers)]
    mixes = [MIXES[mix](random.Random(seed * 1000 + w), w, workers, **mix_options) for w in range(workers)]
    elapsed = run_paced(lambda worker, i: mixes[worker].step(writers[worker], pick(i)), workers=workers, rate=rate,
                        ops=ops, duration_s=duration_s, stop=stop, label=f"{mix} load",
                        done=lambda: sum(len(w.writes) for w in writers))
    result = LoadResult(mix, sorted((w for wr in writers for w in wr.writes), key=lambda w: w.revision),
                        sorted((e for wr in writers for e in wr.errors), key=lambda e: e.t),
                        sum(w.lists for w in writers), elapsed,
                        {"mix": mix, "rate": rate, "duration_s": duration_s, "ops": ops, "spread": spread,
                         "workers": workers, "seed": seed, **mix_options})
    return result


def burst(clients: Sequence[Etcd], *, configmaps: int = 30, nodes: int = 5, events: int = 20, seed: int = 1) -> list:
    """A short seeded burst touching the usual resources, spread round-robin over the replicas.
    Used by `kinelab demo` and the first notebook; returns every acknowledged `Write`."""
    rng = random.Random(seed)
    writer = Writer(clients)
    turn = itertools.cycle(range(len(clients)))
    value = lambda api, kind, low, high: encode_object(api, kind, rng.randbytes(rng.randint(low, high)))  # noqa: E731
    namespaces = ConfigMapMix.namespaces
    cm_keys = [f"/registry/configmaps/{namespaces[i % 3]}/cm-{i:04d}" for i in range(configmaps)]
    for key in cm_keys:
        writer.create(next(turn), key, value("v1", "ConfigMap", 200, 2000))
    for key in rng.sample(cm_keys, configmaps // 2):
        writer.update(next(turn), key, lambda: value("v1", "ConfigMap", 200, 2000))
    for key in rng.sample(cm_keys, configmaps // 5):
        writer.delete(next(turn), key)
    for n in range(nodes):
        key = f"/registry/leases/kube-node-lease/node-{n:03d}"
        writer.create(next(turn), key, value("coordination.k8s.io/v1", "Lease", 250, 250))
        writer.update(next(turn), key, lambda: value("coordination.k8s.io/v1", "Lease", 250, 250))
        writer.create(next(turn), f"/registry/minions/node-{n:03d}", value("v1", "Node", 3000, 6000))
    for e in range(events):
        replica = next(turn)
        writer.create(replica, f"/registry/events/{rng.choice(namespaces)}/cm-{e:04d}.{rng.getrandbits(40):x}",
                      value("v1", "Event", 300, 700), lease=clients[replica].lease_grant(EVENT_TTL_S))
    replica = next(turn)
    writer.create(replica, "/registry/masterleases/127.0.0.1", value("v1", "Endpoints", 120, 120),
                  lease=clients[replica].lease_grant(MASTERLEASE_TTL_S))
    if writer.errors:  # a demo burst on a healthy lab has none: surface the first instead of hiding it
        raise EtcdError(writer.errors[0].error, writer.errors[0].code)
    return writer.writes
