"""The Docker engine the kind backend uses: one that already answers, or kinelab's own private dockerd.

`find_engine` takes the engine the ``docker`` CLI answers to as it is (``docker info``, with a timeout): a
laptop's Docker, Docker Desktop, a CI runner's. Where none answers but the CLI and Debian's engine are
installed (``apt-get install docker.io containerd runc iptables``) and we are root, `PrivateEngine` starts
one of kinelab's own:

* its own data root (``<cache>/docker/data``: images built there stay for the next run), exec root, pidfile,
  socket and ``daemon.json``, so it never touches a system Docker's state; every docker and kind command
  kinelab runs reaches it through ``DOCKER_HOST`` (`Engine.env`);
* addresses from the benchmarking range 198.18.0.0/15 (RFC 2544) only, never 10/8, 172.16/12 or
  192.168/16: ``--bip 198.18.0.1/24 --default-address-pool base=198.18.0.0/15,size=24``;
* where this machine's capability bounding set lacks CAP_SYS_RESOURCE (some VMs), ``--privileged``
  containers (every kind node) fail with "unable to apply caps". kinelab then makes its runc wrapper
  (`RUNC_WRAPPER`) the default runtime: it removes CAP_SYS_RESOURCE from the capability sets runc is asked to
  apply (``config.json`` on create/run, the ``--process`` file on exec) and execs the real runc.

`PrivateEngine.stop` removes every container, custom network and volume of that engine, stops the daemon
and unmounts whatever it left mounted. Images stay in its data root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import psutil

from ..errors import ProcessError, ToolError
from .process import tail
from .tools import cache_dir
from .wait import poll_until

ADDRESS_POOL = "198.18.0.0/15"
BRIDGE_ADDRESS = "198.18.0.1/24"
CAP_SYS_RESOURCE = 24
RUNTIME_NAME = "kinelab-runc"
INFO_TIMEOUT_S = 10.0
DEBIAN_ENGINE = "apt-get install docker.io containerd runc iptables"


# --- an engine that answers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Engine:
    """A Docker engine that answered ``docker info``."""

    host: Optional[str]  # the DOCKER_HOST that reaches it; None: the CLI's own default
    version: str
    private: bool = False

    def env(self, base: Optional[dict] = None) -> dict:
        """An environment whose ``docker`` (and ``kind``) reach this engine."""
        env = dict(os.environ if base is None else base)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 600, input: Optional[bytes] = None,
               env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """Run ``docker ARGS`` against this engine; a failure raises a one-line ToolError."""
        argv = ["docker", *args]
        try:
            result = subprocess.run(argv, capture_output=True, env=self.env(env), timeout=timeout, input=input)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolError(f"`docker {' '.join(args[:2])}` could not run: {exc}") from exc
        if check and result.returncode != 0:
            raise ToolError(f"`docker {' '.join(args[:2])}` failed (exit {result.returncode}): "
                            f"{last_line(result.stderr)}")
        return result

    def describe(self) -> str:
        where = f"kinelab's private engine at {self.host}" if self.private else (self.host or "the default engine")
        return f"Docker {self.version} ({where})"

    def to_json(self) -> dict:
        return {"host": self.host, "version": self.version, "private": self.private}


def last_line(output) -> str:
    """The line of a command's output that says what went wrong: the last error line, else the last line."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else (output or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1]


def engine_version(host: Optional[str] = None, timeout_s: float = INFO_TIMEOUT_S) -> Optional[str]:
    """The server version of the engine at `host` (None: where the CLI looks by default), or None when no
    engine answers within `timeout_s` or there is no docker CLI."""
    docker = shutil.which("docker")
    if not docker:
        return None
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    try:
        result = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                                env=env, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version and "error" not in version.lower() else None


def find_engine(private: Optional["PrivateEngine"] = None) -> Optional[Engine]:
    """The engine the docker CLI answers to as it is, else kinelab's private engine if it runs."""
    version = engine_version()
    if version:
        return Engine(os.environ.get("DOCKER_HOST") or None, version)
    private = private or PrivateEngine()
    if private.socket.exists():
        version = engine_version(private.host)
        if version:
            return Engine(private.host, version, private=True)
    return None


def ensure_engine(log=print, private: Optional["PrivateEngine"] = None) -> tuple:
    """(engine, started): an engine that answers, starting kinelab's private one where none does and this
    machine allows it (`started` is then True). Otherwise a one-line ToolError that says what to do."""
    private = private or PrivateEngine()
    found = find_engine(private)
    if found:
        return found, False
    return private.start(log=log), True


def has_capability(bit: int) -> bool:
    """Whether this process's capability bounding set (``CapBnd``) holds capability `bit`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return True


def needs_runc_wrapper() -> bool:
    return not has_capability(CAP_SYS_RESOURCE)


# --- kinelab's runc wrapper ----------------------------------------------------------------------------
# Run as `python -IS wrapper ARGS` by containerd's shim for every runc call: it must start fast and import
# nothing from kinelab. Global runc flags that take a value, so the subcommand can be found after them.
RUNC_WRAPPER = '''
"""kinelab's runc wrapper (generated by kinelab.provision.docker; do not edit).

This machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc cannot apply a capability set that
holds it and every --privileged container fails. Remove it from what runc is asked to apply, then exec the
real runc."""
import json
import os
import sys

RUNC = {runc!r}
DROP = "CAP_SYS_RESOURCE"
VALUED = {{"--root", "--log", "--log-format", "--criu", "--rootless"}}


def option(args, *names):
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def strip(path, capabilities_of):
    try:
        with open(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return
    capabilities = capabilities_of(document) or {{}}
    changed = False
    for key, values in capabilities.items():
        if isinstance(values, list) and DROP in values:
            capabilities[key] = [value for value in values if value != DROP]
            changed = True
    if changed:
        with open(path, "w") as handle:
            json.dump(document, handle)


def main(args):
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in VALUED else 1
    command, rest = (args[i], args[i + 1:]) if i < len(args) else (None, [])
    if command in ("create", "run"):
        bundle = option(rest, "--bundle", "-b") or "."
        strip(os.path.join(bundle, "config.json"), lambda d: (d.get("process") or {{}}).get("capabilities"))
    elif command == "exec":
        process = option(rest, "--process", "-p")
        if process:
            strip(process, lambda d: d.get("capabilities"))
    os.execv(RUNC, [RUNC, *args])


main(sys.argv[1:])
'''


def write_runc_wrapper(path: Path, runc: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable} -IS\n" + RUNC_WRAPPER.format(runc=runc))
    path.chmod(0o755)
    return path


# --- kinelab's private dockerd --------------------------------------------------------------------------
class PrivateEngine:
    """kinelab's own dockerd: everything under `home` (default ``<cache>/docker``) except its sockets, which
    live in a short directory under /run (a unix socket path must stay under 108 bytes)."""

    def __init__(self, home: Optional[os.PathLike] = None, *, runc_wrapper: Optional[bool] = None,
                 default_bridge: bool = True):
        self.home = Path(home).expanduser().resolve() if home else cache_dir() / "docker"
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:8]
        self.run_dir = Path("/run") / f"kinelab-docker-{digest}"
        self.runc_wrapper = needs_runc_wrapper() if runc_wrapper is None else runc_wrapper
        self.default_bridge = default_bridge  # a second engine on one machine cannot have docker0 too

    socket = property(lambda self: self.run_dir / "docker.sock")
    pidfile = property(lambda self: self.run_dir / "dockerd.pid")
    exec_root = property(lambda self: self.run_dir / "exec")
    wrapper = property(lambda self: self.run_dir / RUNTIME_NAME)
    data_root = property(lambda self: self.home / "data")
    log_path = property(lambda self: self.home / "dockerd.log")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def __repr__(self) -> str:
        return f"PrivateEngine(home={self.home}, host={self.host})"

    def why_not(self) -> Optional[str]:
        """Why this machine cannot run kinelab's private engine, or None when it can."""
        if not shutil.which("docker"):
            return "there is no docker CLI"
        if os.geteuid() != 0:
            return "it needs root"
        missing = [tool for tool in ("dockerd", "containerd", "runc", "iptables") if not _which(tool)]
        if missing:
            return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
        return None

    def argv(self) -> list:
        argv = [_which("dockerd"), f"--data-root={self.data_root}", f"--exec-root={self.exec_root}",
                f"--pidfile={self.pidfile}", f"--host={self.host}", f"--config-file={self.home / 'daemon.json'}",
                f"--default-address-pool=base={ADDRESS_POOL},size=24"]
        argv += [f"--bip={BRIDGE_ADDRESS}"] if self.default_bridge else ["--bridge=none"]
        if self.runc_wrapper:
            argv += [f"--add-runtime={RUNTIME_NAME}={self.wrapper}", f"--default-runtime={RUNTIME_NAME}"]
        return argv

    def process(self) -> Optional[psutil.Process]:
        """The running dockerd of this engine, found by its pidfile (and checked to be a dockerd)."""
        try:
            proc = psutil.Process(int(self.pidfile.read_text().strip()))
            if proc.status() != psutil.STATUS_ZOMBIE and "dockerd" in proc.name():
                return proc
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def engine(self) -> Optional[Engine]:
        version = engine_version(self.host) if self.socket.exists() else None
        return Engine(self.host, version, private=True) if version else None

    def start(self, log=print, timeout_s: float = 60.0) -> Engine:
        """Start the daemon (or return it if it already answers)."""
        running = self.engine()
        if running:
            return running
        why = self.why_not()
        if why:
            raise ToolError(f"no Docker engine answers `docker info`, and kinelab cannot start its own here ({why}): "
                            f"start Docker (or, as root on Debian, `{DEBIAN_ENGINE}`) and retry")
        popen = None
        if self.process() is None:
            self.pidfile.unlink(missing_ok=True)  # a stale pidfile stops dockerd from starting
            self.socket.unlink(missing_ok=True)
            self.home.mkdir(parents=True, exist_ok=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config = self.home / "daemon.json"
            if not config.exists():
                config.write_text("{}\n")  # not /etc/docker/daemon.json: nothing of a system engine's settings
            if self.runc_wrapper:
                write_runc_wrapper(self.wrapper, _which("runc"))
            log(f"starting kinelab's private Docker engine ({self.host}; log {self.log_path})...")
            # dockerd runs iptables, and Debian keeps it in /usr/sbin
            env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
            with open(self.log_path, "ab") as out:
                popen = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        def exited() -> Optional[str]:
            code = popen.poll() if popen is not None else None
            return None if code is None else f"exited (code {code})"

        try:
            return poll_until(self.engine, timeout_s=timeout_s, interval_s=0.3, exited=exited,
                              what="kinelab's private Docker engine to answer")
        except ProcessError as exc:  # WaitTimeout too
            self.stop()
            raise ToolError(f"{str(exc).splitlines()[0]}: {last_line(tail(self.log_path, 5))}; log {self.log_path}") \
                from exc

    def stop(self, timeout_s: float = 30.0) -> dict:
        """Remove every container, custom network and volume of this engine, stop the daemon, unmount what it
        left. Returns what was removed; safe to repeat."""
        removed = {"containers": 0, "networks": 0, "volumes": 0, "mounts": 0, "daemon": False}
        running = self.engine()
        if running:
            def ids(*args: str) -> list:
                return running.docker(*args, check=False, timeout=60).stdout.decode().split()

            containers = ids("ps", "-aq")
            if containers:
                running.docker("rm", "-f", "-v", *containers, check=False, timeout=300)
            networks = ids("network", "ls", "-q", "--filter", "type=custom")
            for network in networks:
                running.docker("network", "rm", network, check=False, timeout=60)
            volumes = ids("volume", "ls", "-q")
            if volumes:
                running.docker("volume", "rm", "-f", *volumes, check=False, timeout=120)
            removed.update(containers=len(containers), networks=len(networks), volumes=len(volumes))
        proc = self.process()
        if proc is not None:
            removed["daemon"] = True
            family = [proc, *proc.children(recursive=True)]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except psutil.TimeoutExpired:
                pass
            for leftover in family:  # its managed containerd, and anything that outlived it
                try:
                    leftover.kill()
                    leftover.wait(5)
                except psutil.Error:
                    pass
        removed["mounts"] = unmount_below([self.data_root, self.run_dir])
        for path in (self.socket, self.pidfile):
            path.unlink(missing_ok=True)
        return removed


def _which(tool: str) -> Optional[str]:
    """Debian keeps dockerd and runc in /usr/sbin, which a non-login PATH may leave out."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def mounts_below(roots: Sequence[Path]) -> list:
    """Mount points (from /proc/self/mountinfo) at or under any of `roots`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(root) or point.startswith(str(root) + "/") for root in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: -p.count("/"))


def unmount_below(roots: Sequence[Path]) -> int:
    points = mounts_below(roots)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True)
    return len(points)
