"""A thin etcd v3 client for Kine, over etcd-sdk-python's generated gRPC stubs (import name `pyetcd`).

It speaks only the request shapes Kine accepts (see Kine's ``pkg/server``): Range with revision and
limit, the create / update / delete Txn shapes, leases, Compact, and Watch from a revision.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import grpc
from pyetcd import etcdrpc

from .errors import EtcdError


def prefix_end(prefix: bytes) -> bytes:
    """The etcd range_end that covers every key starting with `prefix`."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv) -> "KV":
        return cls(kv.key.decode("utf-8", "surrogateescape"), kv.value, kv.mod_revision, kv.create_revision,
                   kv.version, kv.lease)


@dataclass(frozen=True)
class RangeResult:
    kvs: list
    revision: int  # the header revision: this replica's view of the store
    count: int
    more: bool


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # on success, the revision of the write
    current: Optional[KV] = None  # on a failed compare, the key as it is now (None if absent)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    key: str
    mod_revision: int
    value: bytes
    prev_value: Optional[bytes]


@dataclass(frozen=True)
class WatchBatch:
    """One WatchResponse: events, or none at all for a progress notification."""

    revision: int
    events: list
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0

    @property
    def is_progress(self) -> bool:
        return not self.events and not self.canceled


def _raise(exc: grpc.RpcError, what: str):
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    raise EtcdError(f"{what}: {detail} ({code})", code) from exc


class Etcd:
    """One connection to one etcd endpoint (a Kine replica), ``host:port``."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        # gRPC's reconnect back-off grows to 120 s by default: capped at 1 s, a restarted replica is found again
        # within a second, so recovery times measure Kine rather than this client.
        # (grpc.min_reconnect_backoff_ms is left alone: it is also the connect timeout.)
        # A subchannel pool of its own: gRPC otherwise shares one TCP connection between every channel of the
        # process to the same address, and a load balancer in front of Kine would see one client, not several.
        self._channel = grpc.insecure_channel(endpoint, options=[("grpc.initial_reconnect_backoff_ms", 200),
                                                                 ("grpc.max_reconnect_backoff_ms", 1000),
                                                                 ("grpc.use_local_subchannel_pool", 1)])
        self._kv = etcdrpc.KVStub(self._channel)
        self._lease = etcdrpc.LeaseStub(self._channel)
        self._maintenance = etcdrpc.MaintenanceStub(self._channel)
        self._watch = etcdrpc.WatchStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Etcd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Etcd({self.endpoint!r})"

    def _call(self, method, request, what: str):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            _raise(exc, f"{what} on {self.endpoint}")

    # --- reads -----------------------------------------------------------------------------------
    def range(self, key, range_end=None, *, revision: int = 0, limit: int = 0, keys_only: bool = False,
              count_only: bool = False) -> RangeResult:
        request = etcdrpc.RangeRequest(key=_b(key), revision=revision, limit=limit, keys_only=keys_only,
                                       count_only=count_only)
        if range_end is not None:
            request.range_end = _b(range_end)
        response = self._call(self._kv.Range, request, f"range {key!r}")
        return RangeResult([KV.from_pb(kv) for kv in response.kvs], response.header.revision, response.count,
                           response.more)

    def range_prefix(self, prefix, **kwargs) -> RangeResult:
        return self.range(prefix, prefix_end(_b(prefix)), **kwargs)

    def get(self, key, *, revision: int = 0) -> Optional[KV]:
        kvs = self.range(key, revision=revision).kvs
        return kvs[0] if kvs else None

    def revision(self) -> int:
        """This replica's current revision (Kine's Status carries none, so ask a cheap Range)."""
        return self.range(b"/registry/health", count_only=True).revision

    def iter_prefix(self, prefix, *, revision: int, page: int = 1000) -> Iterator[KV]:
        """Every key under `prefix` at one fixed revision, fetched in pages of `page` keys."""
        key, end = _b(prefix), prefix_end(_b(prefix))
        while True:
            result = self.range(key, end, revision=revision, limit=page)
            yield from result.kvs
            if not result.more or not result.kvs:
                return
            key = result.kvs[-1].key.encode("utf-8", "surrogateescape") + b"\x00"

    # --- the Txn shapes Kine accepts --------------------------------------------------------------
    def _txn(self, compare, success, failure, what: str) -> TxnResult:
        request = etcdrpc.TxnRequest(compare=compare, success=success, failure=failure)
        response = self._call(self._kv.Txn, request, what)
        current = None
        for op in response.responses:
            if op.WhichOneof("response") == "response_range" and op.response_range.kvs:
                current = KV.from_pb(op.response_range.kvs[0])
        return TxnResult(response.succeeded, response.header.revision, current)

    def create(self, key, value, *, lease: int = 0) -> TxnResult:
        """Create only if absent: compare MOD == 0, then Put (kube-apiserver's create)."""
        compare = [etcdrpc.Compare(key=_b(key), target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                   mod_revision=0)]
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_b(key), value=_b(value), lease=lease))
        return self._txn(compare, [put], [], f"create {key!r} on {self.endpoint}")

    def update(self, key, value, *, mod_revision: int, lease: int = 0) -> TxnResult:
        """Compare-and-swap on mod_revision; on conflict returns the current key (kube-apiserver's update)."""
        compare = [etcdrpc.Compare(key=_b(key), target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                   mod_revision=mod_revision)]
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_b(key), value=_b(value), lease=lease))
        get = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=_b(key)))
        return self._txn(compare, [put], [get], f"update {key!r} on {self.endpoint}")

    def delete(self, key, *, mod_revision: int) -> TxnResult:
        """Delete only at `mod_revision`: Txn(MOD == rev, [DeleteRange], failure [Range]), as kube-apiserver
        does. (Kine v0.17 also parses the compare-less [Range, DeleteRange] shape, but it cannot delete an
        existing key: the tombstone collides with the create row on (name, prev_revision=0).)"""
        compare = [etcdrpc.Compare(key=_b(key), target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                   mod_revision=mod_revision)]
        delete = etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=_b(key)))
        get = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=_b(key)))
        return self._txn(compare, [delete], [get], f"delete {key!r} on {self.endpoint}")

    # --- leases, compaction, status ------------------------------------------------------------------
    def lease_grant(self, ttl_s: int) -> int:
        """Kine's lease id IS the TTL in seconds."""
        return self._call(self._lease.LeaseGrant, etcdrpc.LeaseGrantRequest(TTL=ttl_s), "lease grant").ID

    def compact_txn(self, version: int, value: bytes) -> TxnResult:
        """kube-apiserver's compaction bookkeeping: Txn(VERSION(compact_rev_key) == version, [Put], failure
        [Range]). Kine stores it under compact_rev_key_apiserver. On failure `current.version` is the
        version another apiserver moved it to."""
        key = b"compact_rev_key"
        compare = [etcdrpc.Compare(key=key, target=etcdrpc.Compare.VERSION, result=etcdrpc.Compare.EQUAL,
                                   version=version)]
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=_b(value)))
        get = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
        return self._txn(compare, [put], [get], f"compact txn on {self.endpoint}")

    def compact(self, revision: int) -> int:
        response = self._call(self._kv.Compact, etcdrpc.CompactionRequest(revision=revision), "compact")
        return response.header.revision

    def status(self):
        return self._call(self._maintenance.Status, etcdrpc.StatusRequest(), "status")

    # --- watch ---------------------------------------------------------------------------------------
    def watch_prefix(self, prefix, *, start_revision: int = 0, progress_notify: bool = True) -> "Watch":
        return Watch(self, _b(prefix), prefix_end(_b(prefix)), start_revision, progress_notify)


class Watch:
    """A watch stream: iterate for `WatchBatch`es, `cancel()` to end it. Kine always sends prev_kv."""

    def __init__(self, client: Etcd, key: bytes, range_end: bytes, start_revision: int, progress_notify: bool):
        self.client = client
        self._requests: "queue.Queue" = queue.Queue()
        create = etcdrpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision,
                                            progress_notify=progress_notify, prev_kv=True)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._stream = client._watch.Watch(self._request_iter())
        self._closed = threading.Event()
        try:
            first = next(self._stream)
        except grpc.RpcError as exc:
            _raise(exc, f"watch on {client.endpoint}")
        if first.canceled:
            raise EtcdError(f"watch on {client.endpoint} was refused: {first.cancel_reason or 'compacted'} "
                            f"(compact revision {first.compact_revision})", "CANCELLED")
        self.watch_id = first.watch_id
        self.start_header_revision = first.header.revision

    def _request_iter(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for response in self._stream:
                events = [WatchEvent("DELETE" if ev.type == 1 else "PUT",
                                     ev.kv.key.decode("utf-8", "surrogateescape"), ev.kv.mod_revision, ev.kv.value,
                                     ev.prev_kv.value if ev.HasField("prev_kv") else None)
                          for ev in response.events]
                yield WatchBatch(response.header.revision, events, response.canceled, response.cancel_reason,
                                 response.compact_revision)
                if response.canceled:
                    return
        except grpc.RpcError as exc:
            if self._closed.is_set():
                return
            _raise(exc, f"watch on {self.client.endpoint}")

    def cancel(self) -> None:
        self._closed.set()
        self._requests.put(None)
        self._stream.cancel()
