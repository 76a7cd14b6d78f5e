"""Real etcd members, the independent anchor Kine is measured against: `tools.ETCD`, built from the etcd
module at a pinned version (kube-apiserver v1.37 needs etcd 3.5 or newer; Debian bookworm's etcd-server is 3.4).
`Lab(datastore="etcd", replicas=3)` runs them in place of Kine replicas (a three-member cluster on loopback, the
same apiservers, controllers and nodes on top), so every measurement of a Kine lab can be made on etcd too.

Each member keeps its data in ``<lab>/data/etcd-<i>/``; every client and peer URL is on 127.0.0.1. A member
is ready when a Range through `kinelab.etcd.Etcd` answers, the same check as a Kine replica's.
"""

from __future__ import annotations

from pathlib import Path

from .kine import etcd_probe
from .process import LOOPBACK, ServedProcess


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
