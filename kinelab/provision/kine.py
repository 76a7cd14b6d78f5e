"""One Kine replica: the real binary, its own loopback client and metrics ports, ready when etcd answers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..dsn import Dsn
from ..errors import EtcdError, UsageError
from ..etcd import Etcd
from .process import LOOPBACK, ServedProcess, free_port, require_free_port
from .tools import KineBinary
from .wait import NETWORK_ERRORS, Probe

RESERVED_FLAGS = {"listen-address", "endpoint", "metrics-bind-address"}
KINELAB_OPTIONS = {"kine-version"}  # per-replica options kinelab reads itself (LabSpec.kine_version_of), not flags


def kine_flags(args: dict) -> list:
    """{"compact-interval": "5m", "debug": True} -> ["--compact-interval=5m", "--debug"]."""
    flags = []
    for key, value in (args or {}).items():
        name = key.lstrip("-").replace("_", "-")
        if name in KINELAB_OPTIONS:
            continue
        if name in RESERVED_FLAGS:
            raise UsageError(f"--{name} is set by kinelab for each replica; remove it from the Kine arguments")
        if value is True:
            flags.append(f"--{name}")
        elif value is not False and value is not None:
            flags.append(f"--{name}={value}")
    return flags


def etcd_probe(endpoint: str) -> Probe:
    """Ready when a Range answers: Kine serves only once its database answers and its schema exists."""

    def answers() -> bool:
        with Etcd(endpoint, timeout_s=1) as client:
            client.revision()
        return True

    return Probe(f"etcd Range on {endpoint}", answers, (EtcdError, *NETWORK_ERRORS))


class KineReplica(ServedProcess):
    """`host` is where clients reach it: 127.0.0.1, or the kind network's gateway for kind nodes."""

    def __init__(self, index: int, kine: KineBinary, dsn: Dsn, lab_dir: Path, *, args: Optional[dict] = None,
                 port: Optional[int] = None, metrics_port: Optional[int] = None, env: Optional[dict] = None,
                 host: str = LOOPBACK):
        self.index = index
        self.host = host
        self.port = require_free_port(port, host) if port else free_port(host)
        self.metrics_port = require_free_port(metrics_port) if metrics_port else free_port()
        self.flags = kine_flags(args)
        argv = [kine.path, f"--listen-address={self.endpoint}",
                f"--metrics-bind-address={LOOPBACK}:{self.metrics_port}", *self.flags]
        # The DSN carries a password: the environment keeps it out of `ps` and of the manifest.
        super().__init__(f"kine-{index}", argv, lab_dir, env={**(env or {}), "KINE_ENDPOINT": dsn.kine_endpoint},
                         ready=etcd_probe(self.endpoint), timeout_s=90)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"
