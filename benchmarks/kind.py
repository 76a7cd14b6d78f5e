"""Benchmarks of the kind backend, measured side by side in one run on this shared machine.

1. Time to a Ready node with warm images (node image in the engine, binaries in the tool cache), broken down
   into the network and the datastore (started together), Kine, kind's node containers, kubeadm and node
   Ready: `Lab(backend="kind")` with one control plane on one Kine on embedded Postgres, against the same
   cluster on etcd (kinelab's pinned build, one member on the same gateway address, as kubeadm's external
   etcd, network and etcd started one after the other), rounds alternating. kind's own default (etcd in the
   node, from kind's node image) cannot run here: nothing can be pulled.
2. What the cluster writes into Kine per second, by resource: at rest, then while a Deployment of the
   preloaded workload scales 0 -> 20 -> 0 replicas (incremental captures before and after each phase).
3. With --cold (minutes): the offline node image from nothing (a fresh tool cache for the rootfs and the image;
   the Kubernetes binaries are linked in). With --cold-builds (half an hour): kind, kube-apiserver, the other
   five Kubernetes commands and kwok from empty Go build and module caches.

Writes benchmarks/results/kind.json and kind.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("KINELAB_PROGRESS", "0")

from keep import write_json  # noqa: E402  (benchmarks/keep.py: every run's JSON kept)

import kinelab as kl  # noqa: E402
from kinelab.provision import kind as k  # noqa: E402
from kinelab.provision import tools  # noqa: E402
from kinelab.provision.docker import PrivateEngine, ensure_engine  # noqa: E402
from kinelab.provision.kine import etcd_probe  # noqa: E402
from kinelab.provision.nodeimage import ensure_node_image  # noqa: E402
from kinelab.provision.process import ServedProcess, free_port  # noqa: E402
from kinelab.provision.wait import poll_until  # noqa: E402

ETCD_SIDE = f"etcd ({tools.ETCD_VERSION}, one member)"
PHASES = ["network_and_datastore", "kine", "kind_containers", "kind_config", "kind_kubeadm_init",
          "kind_storage_class", "nodes_ready"]


def kind_phases(timings_s: dict) -> dict:
    """kind's phases (`KindCluster.timings_s`) under the names of PHASES."""
    return {f"kind_{p}" if p != "nodes_ready" else p: v for p, v in timings_s.items() if p != "total"}


def etcd_cluster(engine, image, name: str, workdir: Path) -> dict:
    """The same one-node kind cluster, its external etcd one etcd member (kinelab's pinned build) on the
    network's gateway."""
    started = time.monotonic()
    network = k.create_network(engine, f"kinelab-{name}", {k.LABEL: name})
    port = free_port()
    endpoint = f"{network.gateway}:{port}"
    etcd_bin = str(tools.ensure(tools.ETCD).path)
    etcd = ServedProcess("etcd-0", [etcd_bin, "--name=etcd-0", f"--data-dir={workdir / 'etcd-data'}",
                                    f"--listen-client-urls=http://{endpoint}", f"--advertise-client-urls=http://{endpoint}",
                                    f"--listen-peer-urls=http://127.0.0.1:{free_port()}", "--logger=zap",
                                    "--log-outputs=stderr"], workdir, ready=etcd_probe(endpoint))
    cluster = k.KindCluster(name, engine, network.name, image.reference, [f"http://{endpoint}"], workdir / "cluster")
    try:
        etcd.start()
        timings = {"network_and_datastore": round(time.monotonic() - started, 1), "kine": 0.0}
        cluster.create(log=lambda _: None)
        timings.update(kind_phases(cluster.timings_s))
    finally:
        cluster.delete()
        etcd.stop()
        k.remove_network(engine, network.name)
    return timings


def kine_cluster(name: str) -> dict:
    # a temporary lab (no dir): its directory and its Postgres data go when it stops
    with kl.Lab(backend="kind", cluster_name=name, replicas=1, mode="single-kine") as lab:
        started = {c.role: c for c in lab.model.components}
        return {"network_and_datastore": max(started["network"].start_s, started["datastore"].start_s),
                "kine": started["kine"].start_s, **kind_phases(started["cluster"].details["timings_s"])}


def time_to_ready(engine, image, rounds: int) -> dict:
    runs = {"Kine on embedded Postgres": [], ETCD_SIDE: []}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for side in order:
            with tempfile.TemporaryDirectory(prefix="kinelab-bench-kind-") as tmp:
                started = time.monotonic()
                name = f"kl-bench-{r}-{'kine' if side.startswith('Kine') else 'etcd'}"
                timings = kine_cluster(name) if side.startswith("Kine") else \
                    etcd_cluster(engine, image, name, Path(tmp))
                timings["wall_with_teardown"] = round(time.monotonic() - started, 1)
            to_ready = sum(timings.get(p, 0) for p in PHASES)
            runs[side].append({"to_ready_s": round(to_ready, 1), **timings})
            print(f"  round {r} {side}: {to_ready:.1f} s to a Ready node {timings}", flush=True)
    out = {}
    for side, values in runs.items():
        out[side] = {"median_to_ready_s": statistics.median(v["to_ready_s"] for v in values),
                     "median_by_phase_s": {p: statistics.median(v.get(p, 0) for v in values) for p in PHASES},
                     "rounds": values}
    return out


def rate_by_resource(capture: Path, first_id: int, last_id: int, seconds: float) -> dict:
    with kl.open_capture(capture) as con:
        rows = con.execute("SELECT coalesce(resource, name), count(*) FROM kine_ops WHERE id > ? AND id <= ? "
                           "GROUP BY 1 ORDER BY 2 DESC", [first_id, last_id]).fetchall()
    return {"rows_per_s": round(sum(n for _, n in rows) / seconds, 2),
            "by_resource": {resource: round(n / seconds, 2) for resource, n in rows}}


def write_rates(image, rest_s: float, scale_to: int) -> dict:
    from kubernetes import client

    with tempfile.TemporaryDirectory(prefix="kinelab-bench-kind-") as tmp:
        capture = Path(tmp) / "rates.duckdb"
        with kl.Lab(backend="kind", cluster_name="kl-bench-rates", replicas=1, mode="single-kine", workers=1) as lab:
            apps, core = client.AppsV1Api(lab.kubernetes_client(0)), client.CoreV1Api(lab.kubernetes_client(0))
            deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                          "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                                   "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                                       {"name": "web", "image": image.workload_image, "imagePullPolicy": "Never",
                                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                           "periodSeconds": 2}}]}}}}
            apps.create_namespaced_deployment("default", deployment)
            time.sleep(60)  # registration tails (RegisteredNode events, TTL annotations) settle first
            marks = [(time.monotonic(), kl.capture(lab, capture, incremental=True).max_id)]
            time.sleep(rest_s)
            marks.append((time.monotonic(), kl.capture(lab, capture, incremental=True).max_id))
            for replicas in (scale_to, 0):
                apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": replicas}})

                def settled() -> bool:
                    available = apps.read_namespaced_deployment("web", "default").status.available_replicas or 0
                    pods = core.list_namespaced_pod("default", label_selector="app=web").items
                    return available == replicas and len(pods) == replicas

                poll_until(settled, timeout_s=180, interval_s=1, what=f"{replicas} pods")
                marks.append((time.monotonic(), kl.capture(lab, capture, incremental=True).max_id))
        phases = ["at rest (1 control plane, 1 worker)", f"scale 0 -> {scale_to}", f"scale {scale_to} -> 0"]
        out = {}
        for phase, (t0, id0), (t1, id1) in zip(phases, marks, marks[1:]):
            out[phase] = {"seconds": round(t1 - t0, 1), **rate_by_resource(capture, id0, id1, t1 - t0)}
            print(f"  {phase}: {out[phase]['rows_per_s']} rows/s over {t1 - t0:.0f} s", flush=True)
        return out


def cold_image(engine) -> dict:
    """The node image from nothing but the warm Go caches: a fresh tool cache for the rootfs and the image."""
    from kinelab.provision import tools

    with tempfile.TemporaryDirectory(prefix="kinelab-bench-cold-") as tmp:
        cache = Path(tmp) / "cache"
        (cache / "bin").mkdir(parents=True)
        warm = tools.cache_dir() / "bin"
        for binary in warm.glob("kube*-v1.37.2*"):  # the Kubernetes binaries: their cold builds are timed apart
            os.symlink(binary, cache / "bin" / binary.name)
        os.environ["KINELAB_CACHE"] = str(cache)
        try:
            started = time.monotonic()
            image = ensure_node_image(engine, log=print)
            total = time.monotonic() - started
        finally:
            os.environ.pop("KINELAB_CACHE")
        engine.docker("rmi", image.reference, check=False)
    return {"total_s": round(total, 1), "steps_s": image.timings_s, "size_mb": image.size_mb}


def cold_tool_builds() -> dict:
    """kind, kube-apiserver alone (as the apiserver tests build it first), then the five other Kubernetes
    commands in one `go build`, then kwok, from fresh Go build and module caches and a fresh tool cache."""
    from kinelab.provision import tools

    with tempfile.TemporaryDirectory(prefix="kinelab-bench-cold-builds-") as tmp:
        saved = {key: os.environ.get(key) for key in ("KINELAB_CACHE", "GOCACHE", "GOMODCACHE", "GOFLAGS")}
        os.environ.update(KINELAB_CACHE=f"{tmp}/cache", GOCACHE=f"{tmp}/gocache", GOMODCACHE=f"{tmp}/gomodcache",
                          GOFLAGS="-modcacherw")  # a module cache the temporary directory can remove
        try:
            out = {}
            started = time.monotonic()
            tools.ensure(tools.KIND, log=print)
            out["kind_s"] = round(time.monotonic() - started)
            started = time.monotonic()
            tools.ensure_kubernetes(["kube-apiserver"], log=print)
            out["kube_apiserver_alone_s"] = round(time.monotonic() - started)
            out["load_after_apiserver"] = os.getloadavg()[0]
            started = time.monotonic()
            tools.ensure_kubernetes(log=print)
            out["other_five_commands_s"] = round(time.monotonic() - started)
            out["load_end"] = os.getloadavg()[0]
            started = time.monotonic()
            tools.ensure(tools.KWOK, log=print)
            out["kwok_s"] = round(time.monotonic() - started)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rest", type=float, default=60.0)
    parser.add_argument("--scale-to", type=int, default=20)
    parser.add_argument("--cold", action="store_true", help="also build the node image from nothing")
    parser.add_argument("--cold-builds", action="store_true",
                        help="also time the tool builds from empty Go caches (half an hour on a busy 2-core machine)")
    args = parser.parse_args()
    engine, started_engine = ensure_engine(log=print)
    previous = json.loads((HERE / "results" / "kind.json").read_text()) if (HERE / "results" / "kind.json").exists() \
        else {}
    try:
        image = ensure_node_image(engine, log=print)
        results: dict = {"recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
                         "engine": engine.to_json(), "node_image": image.to_json()}
        # the cold figures take long: kept from the run that measured them unless measured again
        for key in ("cold_node_image", "cold_tool_builds"):
            if key in previous:
                results[key] = {"recorded_at": previous["recorded_at"], **previous[key]}
        if args.cold:
            print("node image from nothing...", flush=True)
            results["cold_node_image"] = {"recorded_at": results["recorded_at"], **cold_image(engine)}
        if args.cold_builds:
            print("tool builds from empty Go caches...", flush=True)
            results["cold_tool_builds"] = {"recorded_at": results["recorded_at"], **cold_tool_builds()}
        print("time to a Ready node, warm images...", flush=True)
        results["time_to_ready"] = time_to_ready(engine, image, args.rounds)
        print("write rates...", flush=True)
        results["write_rates"] = write_rates(image, args.rest, args.scale_to)
    finally:
        if started_engine:
            PrivateEngine().stop()
    out = HERE / "results"
    write_json("kind", results, date=results.get("recorded_at"))
    (out / "kind.md").write_text(report(results))
    print(report(results))


def report(r: dict) -> str:
    ready = r["time_to_ready"]
    kine, etcd = ready["Kine on embedded Postgres"], ready[ETCD_SIDE]
    lines = [f"# kind on Kine ({r['recorded_at']}, {r['machine']})", "",
             f"Engine: Docker {r['engine']['version']}{' (kinelab private)' if r['engine']['private'] else ''}; "
             f"node image {r['node_image']['reference']} ({r['node_image']['size_mb']:.0f} MB).", "",
             "## Time to a Ready node, warm images (median of "
             f"{len(kine['rounds'])} rounds, alternating)", "",
             "| phase | Kine on embedded Postgres | etcd (Debian 3.4, one member) |", "| --- | ---: | ---: |"]
    for phase in PHASES:
        lines.append(f"| {phase} | {kine['median_by_phase_s'][phase]:.1f} s | "
                     f"{etcd['median_by_phase_s'][phase]:.1f} s |")
    lines += [f"| **to a Ready node** | **{kine['median_to_ready_s']:.1f} s** | "
              f"**{etcd['median_to_ready_s']:.1f} s** |",
              "", f"Ratio Kine / etcd: {kine['median_to_ready_s'] / etcd['median_to_ready_s']:.2f}x.", "",
              "## What the cluster writes into Kine", "",
              "| phase | seconds | rows/s | top resources (rows/s) |", "| --- | ---: | ---: | --- |"]
    for phase, v in r["write_rates"].items():
        top = ", ".join(f"{res} {n}" for res, n in list(v["by_resource"].items())[:6])
        lines.append(f"| {phase} | {v['seconds']:.0f} | {v['rows_per_s']:.2f} | {top} |")
    if "cold_node_image" in r:
        c = r["cold_node_image"]
        lines += ["", f"## The node image from nothing (measured {c['recorded_at']})", "",
                  f"{c['total_s']:.0f} s in all ({', '.join(f'{k} {v} s' for k, v in c['steps_s'].items())}); "
                  f"{c['size_mb']:.0f} MB."]
    if "cold_tool_builds" in r:
        b = r["cold_tool_builds"]
        lines += ["", f"## Cold tool builds (fresh GOCACHE, GOMODCACHE and tool cache, in this order; measured "
                      f"{b['recorded_at']})", "",
                  f"kind {b['kind_s']} s; kube-apiserver alone {b['kube_apiserver_alone_s']} s; then "
                  f"kube-controller-manager, kube-scheduler, kubelet, kubeadm and kubectl in one `go build` "
                  f"{b['other_five_commands_s']} s; kwok {b['kwok_s']} s. The machine was shared: load average "
                  f"{b['load_after_apiserver']:.0f} after the kube-apiserver build and {b['load_end']:.0f} at "
                  "the end, on 2 cores, so these are upper bounds."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite kind.md from kind.json
        print(report(json.loads((HERE / "results" / "kind.json").read_text())), end="")
        (HERE / "results" / "kind.md").write_text(report(json.loads((HERE / "results" / "kind.json").read_text())))
    else:
        main()
