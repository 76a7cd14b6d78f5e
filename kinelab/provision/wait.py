"""The one way kinelab waits: `poll_until` and small readiness probes (kwok's `wait.Poll`, testcontainers'
wait strategies).

A probe is a callable that answers True when the thing is ready. While it raises one of its `transient`
errors (a refused connection, a server still starting) the poll goes on; any other error is raised at once.
A poll can also end early: when the process it waits for exits (`exited` returns a reason), or when a
`cancel` event is set (a stop that races a start must win).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

from ..errors import KinelabError, ProcessError

T = TypeVar("T")
NETWORK_ERRORS = (OSError, urllib.error.URLError, ssl.SSLError, TimeoutError)


class WaitTimeout(ProcessError):
    """A poll ran out of time; the message says what was awaited and, where there is one, the log's tail."""


class Cancelled(KinelabError):
    """A poll was cancelled because the lab is being stopped."""


def poll_until(check: Callable[[], Optional[T]], *, timeout_s: float, what: str, interval_s: float = 0.1,
               transient: tuple = (Exception,), exited: Optional[Callable[[], Optional[str]]] = None,
               cancel: Optional[threading.Event] = None, detail: Callable[[], str] = lambda: "") -> T:
    """Call `check` every `interval_s` until it returns something truthy, and return that.

    `transient` errors mean "not yet"; others propagate. `exited()` returning a reason ends the wait with a
    ProcessError, `cancel` set ends it with Cancelled, and the deadline with WaitTimeout. `detail()` (a log
    tail, say) is appended to the error on the next line, where `-v` shows it."""
    deadline = time.monotonic() + timeout_s
    last_error: Optional[BaseException] = None
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped while waiting for {what}")
        reason = exited() if exited else None
        if reason:
            raise ProcessError(_with_detail(f"{reason} before {what}", detail()))
        try:
            value = check()
            if value:
                return value
        except transient as exc:
            last_error = exc
        if time.monotonic() > deadline:
            because = f" (last error: {str(last_error).splitlines()[0][:200]})" if last_error else ""
            raise WaitTimeout(_with_detail(f"gave up after {timeout_s:g}s waiting for {what}{because}", detail()))
        if cancel is not None:
            cancel.wait(interval_s)
        else:
            time.sleep(interval_s)


def _with_detail(message: str, detail: str) -> str:
    return f"{message}\n{detail}" if detail else message


# --- probes -------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """Something to poll. `describe` names it in errors; `transient` are the errors that mean "not yet"."""

    describe: str
    check: Callable[[], bool]
    transient: tuple = field(default=(Exception,))

    def __call__(self) -> bool:
        return bool(self.check())

    def wait(self, timeout_s: float, **kwargs) -> bool:
        return poll_until(self, timeout_s=timeout_s, what=self.describe, transient=self.transient, **kwargs)


def tcp_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tcp_probe(host: str, port: int) -> Probe:
    return Probe(f"TCP {host}:{port}", lambda: tcp_open(host, port), NETWORK_ERRORS)


def http_probe(url: str, *, context: Optional[ssl.SSLContext] = None, expect: Optional[bytes] = None,
               timeout_s: float = 2.0) -> Probe:
    """GET `url` answers 200 (and, with `expect`, exactly that body)."""

    def check() -> bool:
        with urllib.request.urlopen(url, context=context, timeout=timeout_s) as response:
            return response.status == 200 and (expect is None or response.read().strip() == expect)

    return Probe(f"GET {url}" + (f" == {expect.decode()}" if expect else ""), check, NETWORK_ERRORS)


def answers(url: str, context: Optional[ssl.SSLContext]) -> bool:
    """Whether an HTTPS health endpoint (/readyz, /healthz) answers ``ok`` right now."""
    try:
        return http_probe(url, context=context, expect=b"ok")()
    except OSError:
        return False
