"""HAProxy (Debian's) in TCP mode, the two proxies of the article's high-availability advice:

* the database proxy, between Kine and its database: one address for whichever Postgres is primary (a failover
  repoints it through HAProxy's runtime API), and, with limits, the "circuit breaker" of a service mesh: Envoy's
  and Istio's circuit breaking is a cap on connections to a backend (``maxconn``) with the overflow failed fast
  (``timeout queue``), plus outlier detection (``observe layer4`` + ``error-limit``: a server that keeps failing
  is marked down and new connections fail at once until a health check brings it back);
* the Kine balancer, between kube-apiservers and the Kine pool (the hybrid mode "through a load balancer"):
  an L4 balancer sees a gRPC client's one long-lived HTTP/2 connection, not its calls, so each apiserver lands
  on one replica for as long as that connection lives.

Both listen on 127.0.0.1 only; HAProxy's admin socket sits in the lab directory (mode 0600).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ToolError, UsageError
from .process import LOOPBACK, ServedProcess
from .wait import NETWORK_ERRORS, Probe, tcp_open

HAPROXY_ENV = "KINELAB_HAPROXY_BIN"
# Debian installs it in /usr/sbin, which is not on an ordinary user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin")
# The breaker's knobs, named after what they do; HAProxy's own names are in the config below.
BREAKER_SETTINGS = {
    "maxconn": "connections each database server may have; more wait in HAProxy's queue",
    "queue_timeout_ms": "how long a connection may wait in that queue before HAProxy closes it (fail fast)",
    "connect_timeout_ms": "how long HAProxy waits for the server to accept a connection",
    "error_limit": "consecutive failed connections after which the server is marked down (outlier detection)",
}
CONNECT_TIMEOUT_MS = 2000
# Kine keeps pooled connections idle for up to --datastore-connection-max-idle-time (2 m) and gRPC streams idle
# between progress notifications: a short client/server timeout would cut both.
IDLE_TIMEOUT = "1h"


def find_haproxy() -> Path:
    """HAProxy's binary: $KINELAB_HAPROXY_BIN, else `haproxy` on PATH or in /usr/sbin. Raises ToolError."""
    given = os.environ.get(HAPROXY_ENV)
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise ToolError(f"{HAPROXY_ENV}={given} is not an executable HAProxy; apt-get install haproxy, or point "
                            f"{HAPROXY_ENV} at one")
        return Path(given)
    found = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if not found:
        raise ToolError("HAProxy is not installed (needed by --db-proxy and --balancer): apt-get install haproxy, "
                        f"or set {HAPROXY_ENV}")
    return Path(found)


def haproxy_version(binary: Path) -> str:
    """"2.6.12" from `haproxy -v` ("HAProxy version 2.6.12-1+deb12u4 2026/10/17 ..."), or "unknown"."""
    try:
        first = subprocess.run([str(binary), "-v"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"version (\d+\.\d+\.\d+)", first)
    return match[1] if match else "unknown"


def breaker_settings(settings: Optional[dict]) -> dict:
    """The database proxy's settings, checked: known keys, positive integers."""
    checked = {}
    for key, value in (settings or {}).items():
        name = key.replace("-", "_")
        if name not in BREAKER_SETTINGS:
            raise UsageError(f"unknown database proxy setting {key!r}: use {', '.join(BREAKER_SETTINGS)}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number <= 0:
            raise UsageError(f"database proxy setting {key} must be a positive integer, not {value!r}")
        checked[name] = number
    return checked


@dataclass
class Server:
    name: str
    endpoint: str  # host:port
    enabled: bool = True


def render_config(proxy: str, listen: str, servers: list, admin_socket: Path, *, balance: str = "roundrobin",
                  settings: Optional[dict] = None) -> str:
    """One `listen` section named `proxy` on `listen`, forwarding to `servers` (disabled ones in maintenance)."""
    settings = settings or {}
    connect_ms = settings.get("connect_timeout_ms", CONNECT_TIMEOUT_MS)
    queue_ms = settings.get("queue_timeout_ms", connect_ms)
    options = " check inter 500ms fall 2 rise 1"
    if "maxconn" in settings:
        options += f" maxconn {settings['maxconn']}"
    if "error_limit" in settings:
        options += f" observe layer4 error-limit {settings['error_limit']} on-error mark-down"
    lines = [
        "global",
        f"    stats socket {admin_socket} mode 600 level admin",
        "    log stdout format raw local0 info",
        "defaults",
        "    mode tcp",
        "    log global",
        f"    timeout connect {connect_ms}ms",
        f"    timeout queue {queue_ms}ms",
        f"    timeout client {IDLE_TIMEOUT}",
        f"    timeout server {IDLE_TIMEOUT}",
        "    retries 2",
        "    option redispatch 1",  # every retry of a connection that cannot reach its server may pick another
        f"listen {proxy}",
        f"    bind {listen}",
        f"    balance {balance}",
        *(f"    server {s.name} {s.endpoint}{options}{'' if s.enabled else ' disabled'}" for s in servers),
    ]
    return "\n".join(lines) + "\n"


def socket_path(lab_dir: Path, name: str, lab_id: str) -> Path:
    path = Path(lab_dir) / "haproxy" / f"{name}.sock"
    return path if len(str(path)) < 100 else Path("/tmp") / f"kinelab-{lab_id}-{name}.sock"  # AF_UNIX: 108 bytes


class HAProxy(ServedProcess):
    """One HAProxy process with one `listen` section, its config written into the lab directory."""

    def __init__(self, name: str, binary: Path, listen: str, servers: list, lab_dir: Path, lab_id: str, *,
                 proxy: str, balance: str = "roundrobin", settings: Optional[dict] = None):
        self.admin_socket = socket_path(lab_dir, name, lab_id)
        folder = Path(lab_dir) / "haproxy"
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / f"{name}.cfg"
        self.admin_socket.unlink(missing_ok=True)
        self.config_path.write_text(render_config(proxy, listen, servers, self.admin_socket, balance=balance,
                                                  settings=settings))
        host, port = listen.rsplit(":", 1)
        # -db: stay in the foreground, so the lab's records hold the process that serves
        super().__init__(name, [binary, "-db", "-f", self.config_path], lab_dir, timeout_s=20, ready=Probe(
            f"HAProxy on {listen}", lambda: tcp_open(host, int(port)) and self.admin_socket.exists(), NETWORK_ERRORS))


# --- the runtime API ---------------------------------------------------------------------------------------
def runtime(admin_socket: Path, command: str, timeout_s: float = 5.0) -> str:
    """Send one command to HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(admin_socket))
        except OSError as exc:
            raise ToolError(f"HAProxy's admin socket {admin_socket} does not answer ({exc.strerror}); is the proxy "
                            "running? (`kinelab status`)") from exc
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks).decode()
    if any(word in answer for word in ("Unknown command", "No such", "Require")):
        raise ToolError(f"HAProxy refused `{command}`: {answer.strip().splitlines()[0]}")
    return answer


def route_to(admin_socket: Path, proxy: str, server: str, others: list) -> None:
    """Send every new connection to `server` and none to `others`; connections still open to them are cut."""
    for other in others:
        runtime(admin_socket, f"set server {proxy}/{other} state maint")
        runtime(admin_socket, f"shutdown sessions server {proxy}/{other}")
    runtime(admin_socket, f"set server {proxy}/{server} state ready")


def set_maxconn(admin_socket: Path, proxy: str, servers: list, maxconn: int) -> None:
    """Cap the connections HAProxy opens to each of `servers` at `maxconn` (0: no cap), from now on; connections
    over the cap wait in its queue for the configured queue timeout."""
    for server in servers:
        runtime(admin_socket, f"set maxconn server {proxy}/{server} {int(maxconn)}")


def stats(admin_socket: Path) -> list:
    """`show stat` as dicts, one per server (and the frontend/backend totals): `scur` open connections, `stot`
    connections so far, `qcur` queued, `econ` connection errors, `status` UP/DOWN/MAINT, `dcon` refused..."""
    text = runtime(admin_socket, "show stat")
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def server_stats(admin_socket: Path, proxy: str) -> dict:
    """{server name: its `show stat` row} for the servers of `proxy`."""
    return {row["svname"]: row for row in stats(admin_socket)
            if row["pxname"] == proxy and row["svname"] not in ("FRONTEND", "BACKEND")}


def listen_endpoint(port: int) -> str:
    return f"{LOOPBACK}:{port}"
