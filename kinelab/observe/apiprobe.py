"""Probes through real kube-apiservers (the `kubernetes` client): how soon a write made through one apiserver
reaches a watch on another, and which apiservers keep taking writes while a Kine replica is down."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..clock import Clock
from ..drive.pool import Background, run_paced

RESOURCE = "configmaps"
EVENT_COLUMNS = ["run_id", "apiserver", "writer", "resource", "namespace", "name", "key", "type", "resource_version",
                 "t_commit", "t_observed", "lag_ms"]


def _core(lab, index: int, *, retries: bool = True):
    from kubernetes import client

    return client.CoreV1Api(lab.kubernetes_client(index, retries=retries))


def _configmap(name: str, labels: dict):
    from kubernetes import client

    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data={"probe": name})


@dataclass(frozen=True)
class WatchLag:
    observer: int  # the apiserver whose watch saw it
    writer: int  # the apiserver the write went through
    name: str
    resource_version: int  # = the Kine revision
    lag_ms: float


def apiserver_watch_lag(lab, *, writes: int = 20, interval_s: float = 0.25, writer: int = 0,
                        namespace: str = "default", timeout_s: float = 15.0, out=None) -> list:
    """Create `writes` ConfigMaps through apiserver `writer` while every apiserver watches them; the lag is
    the watch event's arrival minus the create's acknowledgement, on one clock.

    With `out` (a DuckDB file) every watch event also goes to `apiserver_watch_events` under a `runs` row of
    kind ``apiserver-watchlag``, followed by a capture of the lab's table into the same file, so the view
    `apiserver_watch_rows` shows the Kine row each event's resourceVersion names."""
    from kubernetes import watch

    clock, run = Clock(), uuid.uuid4().hex[:8]
    started = time.monotonic()
    selector = f"kinelab-probe={run}"
    count = lab.apiserver_count
    acked: dict = {}
    events: dict = {i: [] for i in range(count)}  # observer -> [(type, name, resourceVersion, t_observed)]
    watches = [watch.Watch() for _ in range(count)]
    ready = threading.Barrier(count + 1)

    def follow(index: int) -> None:
        core = _core(lab, index)
        rv = core.list_namespaced_config_map(namespace, label_selector=selector).metadata.resource_version
        ready.wait()
        added = 0
        for event in watches[index].stream(core.list_namespaced_config_map, namespace, label_selector=selector,
                                           resource_version=rv, timeout_seconds=int(timeout_s) + 30):
            meta = event["object"].metadata
            events[index].append((event["type"], meta.name, int(meta.resource_version), clock.now()))
            added += event["type"] == "ADDED"
            if added >= writes:
                return

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    core = _core(lab, writer)
    for n in range(writes):
        name = f"probe-{run}-{n:03d}"
        created = core.create_namespaced_config_map(namespace, _configmap(name, {"kinelab-probe": run}))
        acked[name] = (clock.now(), int(created.metadata.resource_version))
        time.sleep(interval_s)
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    for w in watches:
        w.stop()
    if out is not None:
        params = {"writes": writes, "interval_s": interval_s, "writer": writer, "namespace": namespace,
                  "mode": lab.mode, "probe": run}
        _store(lab, out, params, events, acked, writer, namespace, time.monotonic() - started)
    return [WatchLag(observer, writer, name, acked[name][1], (t - acked[name][0]) * 1000)
            for observer in range(count)
            for name, t in sorted({n: t for etype, n, _, t in events[observer] if etype == "ADDED"}.items())]


def _store(lab, out, params: dict, events: dict, acked: dict, writer: int, namespace: str,
           duration_s: float) -> None:
    """One `runs` row, the events (with the write each came from, when the probe made it), then a capture."""
    from ..provision.apiserver import default_flags
    from .capture import capture_into
    from .store import finish_run, insert_rows, new_run, open_store

    prefix = default_flags()["etcd-prefix"]
    con = open_store(out, lab.dsn.identity)
    try:
        run_id = new_run(con, "apiserver-watchlag", params)
        rows = []
        for observer, seen in events.items():
            for etype, name, rv, t in seen:
                made = etype == "ADDED" and name in acked  # one of the probe's creates: its acknowledgement is known
                t_commit = acked[name][0] if made else None
                rows.append((run_id, observer, writer if made else None, RESOURCE, namespace, name,
                             f"{prefix}/{RESOURCE}/{namespace}/{name}", etype, rv, t_commit, t,
                             (t - t_commit) * 1000 if made else None))
        insert_rows(con, "apiserver_watch_events", EVENT_COLUMNS, rows)
        snapshot = capture_into(con, lab.dsn, incremental=True)
        finish_run(con, run_id, duration_s, {"run_id": run_id, "snapshot_id": snapshot.snapshot_id,
                                             "events": len(rows), "writes": len(acked)})
    finally:
        con.close()


@dataclass(frozen=True)
class Attempt:
    apiserver: int
    t: float  # seconds since the probe started
    ok: bool
    error: str


def availability(lab, *, duration_s: float = 10.0, interval_s: float = 0.25, namespace: str = "default",
                 during=None) -> list:
    """Try a ConfigMap create through every apiserver every `interval_s` for `duration_s`, one thread per
    apiserver so a dead one does not slow the others; `during(t)` is called every `interval_s` (e.g. to kill a
    Kine replica once t >= 2 s). Returns every attempt, in time order."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    count = lab.apiserver_count
    run, attempts, lock, started = uuid.uuid4().hex[:8], [], threading.Lock(), time.monotonic()
    # a dead path must show as an error, not a retry loop
    cores = [_core(lab, index, retries=False) for index in range(count)]

    def attempt(index: int, n: int) -> None:
        t = time.monotonic() - started
        try:
            cores[index].create_namespaced_config_map(namespace, _configmap(f"avail-{run}-{index}-{n:05d}", {}),
                                                      _request_timeout=2)
            result = Attempt(index, t, True, "")
        except (ApiException, HTTPError, OSError) as exc:
            result = Attempt(index, t, False, type(exc).__name__)
        with lock:
            attempts.append(result)

    # One lane and one worker per apiserver, each trying once per interval: a dead one slows only itself.
    with Background(run_paced, attempt, workers=count, lanes=count, rate=count / interval_s,
                    duration_s=duration_s, name="kinelab-availability") as attempts_loop:
        while not attempts_loop.join(interval_s):
            if during is not None:
                during(time.monotonic() - started)
        attempts_loop.result()
    return sorted(attempts, key=lambda a: a.t)


def etcd_connections(lab) -> dict:
    """{apiserver index: {Kine replica name: open TCP connections}}: where each kube-apiserver's etcd clients
    are connected. Through the Kine balancer, HAProxy's `show sess` names the replica behind each client
    connection; with the endpoint list, the apiserver connects to the replicas itself. A kube-apiserver opens many
    etcd clients (one per resource's storage, plus leases and health checks), each with its own HTTP/2 connection,
    and every call and watch of that client stays on that connection."""
    import psutil

    from ..provision.haproxy import runtime

    replicas = {int(c.port): c.name for c in lab.model.replicas}
    balancer = lab.model.balancer
    behind = {}  # a client's source port -> the replica HAProxy connected it to
    if balancer is not None:
        for line in runtime(Path(balancer.details["admin_socket"]), "show sess").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("be") == "kine" and "src" in fields and "srv" in fields:
                behind[int(fields["src"].rsplit(":", 1)[1])] = fields["srv"]
    spread = {}
    for component in lab.model.apiservers:
        counts = {name: 0 for name in replicas.values()}
        for record in component.records:
            try:
                connections = psutil.Process(record.pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in connections:
                if not conn.raddr or conn.status != psutil.CONN_ESTABLISHED:
                    continue
                replica = behind.get(conn.laddr.port) if balancer is not None and conn.raddr.port == \
                    balancer.port else replicas.get(conn.raddr.port)
                if replica is not None:
                    counts[replica] += 1
        spread[component.index] = counts
    return spread
