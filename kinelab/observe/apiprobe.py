"""Probes through real kube-apiservers (the `kubernetes` client): how soon a write made through one apiserver
reaches a watch on another, and which apiservers keep taking writes while a Kine replica is down."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from ..clock import Clock


def _core(lab, index: int):
    from kubernetes import client

    return client.CoreV1Api(lab.kubernetes_client(index))


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
                        namespace: str = "default", timeout_s: float = 15.0) -> list:
    """Create `writes` ConfigMaps through apiserver `writer` while every apiserver watches them; the lag is
    the watch event's arrival minus the create's acknowledgement, on one clock."""
    from kubernetes import watch

    clock, run = Clock(), uuid.uuid4().hex[:8]
    selector = f"kinelab-probe={run}"
    count = len(lab.manifest.get("apiservers", []))
    acked: dict = {}
    seen: dict = {i: {} for i in range(count)}
    watches = [watch.Watch() for _ in range(count)]
    ready = threading.Barrier(count + 1)

    def follow(index: int) -> None:
        core = _core(lab, index)
        rv = core.list_namespaced_config_map(namespace, label_selector=selector).metadata.resource_version
        ready.wait()
        for event in watches[index].stream(core.list_namespaced_config_map, namespace, label_selector=selector,
                                           resource_version=rv, timeout_seconds=int(timeout_s) + 30):
            if event["type"] == "ADDED":
                seen[index][event["object"].metadata.name] = clock.now()
            if len(seen[index]) >= writes:
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
    return [WatchLag(observer, writer, name, acked[name][1], (t - acked[name][0]) * 1000)
            for observer in range(count) for name, t in sorted(seen[observer].items())]


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

    count = len(lab.manifest.get("apiservers", []))
    run, attempts, lock, started = uuid.uuid4().hex[:8], [], threading.Lock(), time.monotonic()

    def attempt(index: int) -> None:
        core = _core(lab, index)
        core.api_client.configuration.retries = False  # a dead path must show as an error, not a retry loop
        n = 0
        while (t := time.monotonic() - started) < duration_s:
            try:
                core.create_namespaced_config_map(namespace, _configmap(f"avail-{run}-{index}-{n:04d}", {}),
                                                  _request_timeout=2)
                result = Attempt(index, t, True, "")
            except (ApiException, HTTPError, OSError) as exc:
                result = Attempt(index, t, False, type(exc).__name__)
            with lock:
                attempts.append(result)
            n += 1
            time.sleep(max(0.0, interval_s - (time.monotonic() - started - t)))

    threads = [threading.Thread(target=attempt, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if during is not None:
            during(time.monotonic() - started)
        time.sleep(interval_s)
    return sorted(attempts, key=lambda a: a.t)
