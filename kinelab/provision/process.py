"""Served processes: one protocol for Kine, Postgres and MariaDB (start, ready, stop, endpoint, logs).

The layout follows kwokctl's binary runtime: ``<lab>/pids/<name>.pid`` and ``<lab>/logs/<name>.log``.
Each process runs in its own process group so that a stop reaches its children too, and each pid is
recorded together with its start time so that a recycled pid is never signalled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil

from ..dsn import mask_text
from ..errors import ProcessError, UsageError
from .wait import Probe, WaitTimeout

LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel just handed out on `host` (kwokctl probes the same way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def require_free_port(port: int, host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a port whose last connections linger in TIME_WAIT (a replica restarted
        # on its old ports) is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"port {host}:{port} is in use; choose another --base-port "
                             "or leave it out to pick free ports") from exc
    return port


def as_user(argv: list, user: Optional[str]) -> list:
    """`argv` run as `user` through setpriv (util-linux). Popen(user=...) makes Python fork without vfork, and
    the forked copy of a process holding gRPC channels can die before exec (CI saw initdb fail that way)."""
    if not user:
        return [str(a) for a in argv]
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *(str(a) for a in argv)]


def tail(path: Path, lines: int = 10) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return mask_text(_ANSI.sub("", "\n".join(text.splitlines()[-lines:])))


@dataclass
class ProcessRecord:
    """What the manifest keeps of a started process: enough to find it again, and only it."""

    name: str
    pid: int
    create_time: float
    log: str
    argv: list
    stop_signal: int = int(signal.SIGTERM)

    def process(self) -> Optional[psutil.Process]:
        """The live process, or None when it is gone or the pid now belongs to someone else."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    @property
    def alive(self) -> bool:
        return self.process() is not None

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the whole process group, then SIGKILL what is left after `timeout`."""
        proc = self.process()
        if proc is None:
            return
        _signal_group(self.pid, self.stop_signal)
        _signal_group(self.pid, signal.SIGCONT)  # a paused process must wake up to handle the stop
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            try:
                proc.wait(5)
            except psutil.TimeoutExpired as exc:
                raise ProcessError(f"{self.name} (pid {self.pid}) did not exit after SIGKILL") from exc
        # Children that outlived the leader (e.g. postgres backends) share its group.
        _signal_group(self.pid, signal.SIGKILL)

    def to_json(self) -> dict:
        return asdict(self)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_new_children(children_before: set) -> None:
    """SIGKILL (with their groups) the children of this process that are not in `children_before`: a Popen
    interrupted right after its fork leaves a child nobody holds."""
    for child in psutil.Process().children():
        if child.pid not in children_before:
            _signal_group(child.pid, signal.SIGKILL)
            try:
                child.kill()  # before its setsid the child has no group of its own
                child.wait(5)
            except psutil.Error:
                pass


class ServedProcess:
    """A long-running binary with a log, a pid file, a readiness probe and an orderly stop."""

    def __init__(self, name: str, argv: list, lab_dir: Path, *, ready: Probe, env: Optional[dict] = None,
                 user: Optional[str] = None, cwd: Optional[Path] = None, stop_signal: int = signal.SIGTERM,
                 timeout_s: float = 60.0):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.lab_dir = Path(lab_dir)
        self.ready = ready
        self.env = env
        self.user = user
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.timeout_s = timeout_s
        self.record: Optional[ProcessRecord] = None
        self._popen: Optional[subprocess.Popen] = None

    @property
    def log_path(self) -> Path:
        return self.lab_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.lab_dir / "pids" / f"{self.name}.pid"

    def start(self, *, on_started: Optional[Callable[[ProcessRecord], None]] = None,
              cancel: Optional[threading.Event] = None) -> "ServedProcess":
        """Launch, record (pid file, then `on_started(record)` so the lab's manifest names the process before
        anything waits on it), and wait until ready. A failure or a `cancel` stops what was started."""
        for sub in ("logs", "pids"):
            (self.lab_dir / sub).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        children_before, popen = {c.pid for c in psutil.Process().children()}, None
        try:
            with open(self.log_path, "ab") as log:
                popen = subprocess.Popen(as_user(self.argv, self.user), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.cwd, start_new_session=True)
            self._popen = popen
            self.record = ProcessRecord(self.name, popen.pid, psutil.Process(popen.pid).create_time(),
                                        str(self.log_path), [mask_text(a) for a in self.argv], int(self.stop_signal))
            self.pid_path.write_text(json.dumps(self.record.to_json()) + "\n")
            if on_started is not None:
                on_started(self.record)
            self._wait_ready(cancel)
        except BaseException as exc:
            # Ctrl-C can land anywhere in here, even inside Popen: whatever was started is ours to stop.
            if popen is None:
                _kill_new_children(children_before)
            elif self.record is None:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
            self.stop()
            if popen is None and isinstance(exc, OSError):
                raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror}") from exc
            raise
        return self

    def _exited(self) -> Optional[str]:
        code = self._popen.poll() if self._popen is not None else None
        return None if code is None else f"{self.name} exited with code {code}"

    def _wait_ready(self, cancel: Optional[threading.Event]) -> None:
        try:
            self.ready.wait(self.timeout_s, exited=self._exited, cancel=cancel, detail=lambda: tail(self.log_path))
        except WaitTimeout as exc:
            raise WaitTimeout(f"{self.name} was not ready ({self.ready.describe}) after {self.timeout_s:.0f}s: "
                              f"{self.failure_line()}; log {self.log_path}\ncommand: {' '.join(self.record.argv)}\n"
                              f"{tail(self.log_path)}") from exc
        except ProcessError as exc:
            raise ProcessError(f"{self._exited()} before it was ready: {self.failure_line()}; log {self.log_path}"
                               f"\n{tail(self.log_path)}") from exc

    def failure_line(self) -> str:
        """The log line most likely to say what went wrong: the last one (servers log their fatal error last)."""
        lines = [line for line in tail(self.log_path, 5).splitlines() if line.strip()]
        line = lines[-1].strip() if lines else "(empty log)"
        return line if len(line) <= 400 else line[:400] + "..."

    def stop(self) -> None:
        if self.record is not None:
            self.record.stop()
            if self._popen is not None:
                self._popen.poll()  # reap, so no zombie is left behind
        self.pid_path.unlink(missing_ok=True)

    @property
    def pid(self) -> Optional[int]:
        return self.record.pid if self.record else None

    @property
    def alive(self) -> bool:
        return self.record is not None and self.record.alive
