"""Images for kind with no registry: kinelab's node image, assembled offline the way kind's node-image build
assembles one (``kind build node-image`` itself pulls images, so it cannot run here).

The steps, each cached and timed (`NodeImage.timings_s`):

1. **rootfs**: ``debootstrap --variant=minbase`` of Debian bookworm with systemd 252 (which still runs on
   cgroup v1), Debian's containerd 1.6, runc, the CNI plugins, iptables, conntrack and a few tools, cached as
   ``<cache>/kind/rootfs-bookworm-<key>.tar`` (key: suite, mirror, packages). Debian's mirror is a package
   registry, the only download; ``KINELAB_DEBIAN_MIRROR`` names another.
2. **binaries**: kubeadm, kubelet and kubectl, and the control-plane commands, from `tools.ensure_kubernetes`;
   kinelab's two small static programs (``node_files/cmd``): ``kinelab-pause`` (the pod sandbox) and
   ``kinelab-workload`` (an HTTP server for test pods).
3. **image archives**: one single-layer image per program, written here in ``docker save`` format under the
   exact names kubeadm lists (``kubeadm config images list``): kube-apiserver, kube-controller-manager,
   kube-scheduler and pause (no etcd: the etcd is external, Kine; no kube-proxy or CoreDNS: the cluster
   config turns them off), plus ``kinelab.local/workload:<key>``.
4. **assembly**: ``docker load`` of a stage image (the rootfs plus a layer of kinelab's own files: entrypoint,
   kubelet unit and its kubeadm drop-in, containerd config, a CNI config template, ``/kind/version`` and the
   three node binaries), a container of it in which containerd imports every archive into its ``k8s.io``
   namespace (pinned, so the kubelet never removes them), and ``docker commit`` of that container as
   ``kinelab/node:<version>-<key>``. The key covers every input, so a change to any of them makes a new image;
   an image with the key already in the engine is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

from ..errors import ToolError
from .docker import Engine, last_line, unmount_below
from .tools import GO_HINT, KUBERNETES_VERSION, Log, build_lock, cache_dir, ensure_kubernetes, find_go, go_version

SUITE = "bookworm"
VARIANT = "minbase"
ROOTFS_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "containerd", "runc", "containernetworking-plugins", "iptables",
    "conntrack", "ethtool", "socat", "iproute2", "kmod", "libseccomp2", "ca-certificates", "procps",
)
NODE_REPOSITORY = "kinelab/node"
WORKLOAD_REPOSITORY = "kinelab.local/workload"
FILES = Path(__file__).with_name("node_files")
PROGRAMS = ("kinelab-pause", "kinelab-workload", "kinelab-lb")
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_BINARIES = ("kubeadm", "kubelet", "kubectl")
IMAGE_DIR_IN_NODE = "/kind/images"
LABEL = "kinelab.node-image"
# Units that have nothing to do in a container (no devices, no consoles, no kernel tunables to load).
MASKED_UNITS = ("systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
                "systemd-modules-load.service", "getty.target", "console-getty.service", "getty@tty1.service",
                "sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount")


def debian_mirror() -> str:
    return os.environ.get("KINELAB_DEBIAN_MIRROR") or "http://deb.debian.org/debian"


def image_dir() -> Path:
    return cache_dir() / "kind"


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


# --- 1. the Debian root file system -----------------------------------------------------------------------
def rootfs_path() -> Path:
    return image_dir() / f"rootfs-{SUITE}-{_digest(SUITE, VARIANT, debian_mirror(), sorted(ROOTFS_PACKAGES))}.tar"


def ensure_rootfs(log: Log = print) -> Path:
    """The debootstrap'd bookworm tree as a tar (paths ``./...``, numeric owners), built once."""
    target = rootfs_path()
    if target.is_file():
        return target
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if os.geteuid() != 0 or not debootstrap:
        why = "it needs root" if os.geteuid() != 0 else "debootstrap is not installed (apt-get install debootstrap)"
        raise ToolError(f"cannot build the kind node image's Debian {SUITE} root file system: {why}")
    target.parent.mkdir(parents=True, exist_ok=True)
    build_log = target.with_suffix(".build.log")
    with build_lock(target.name, log):
        if target.is_file():
            return target
        log(f"debootstrapping Debian {SUITE} for the kind node image from {debian_mirror()} (a few minutes the "
            f"first time; log in {build_log})...")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix="rootfs-") as tmp, open(build_log, "wb") as out:
            tree = Path(tmp) / "tree"
            try:
                argv = [debootstrap, f"--variant={VARIANT}", "--components=main",
                        f"--include={','.join(ROOTFS_PACKAGES)}", SUITE, str(tree), debian_mirror()]
                out.write(("$ " + " ".join(argv) + "\n").encode())
                out.flush()
                result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
                if result.returncode != 0:
                    raise ToolError(f"debootstrap of Debian {SUITE} failed (exit {result.returncode}): "
                                    f"{last_line(build_log.read_bytes()[-2000:])}; see {build_log}")
                # What a node never needs: downloaded packages, package lists, documentation.
                for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                             "usr/share/info"):
                    shutil.rmtree(tree / junk, ignore_errors=True)
                partial = Path(tmp) / "rootfs.tar"
                result = subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(tree), "--exclude=./dev/*",
                                         "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(partial), "."],
                                        stdout=out, stderr=subprocess.STDOUT)
                if result.returncode != 0:
                    raise ToolError(f"packing the {SUITE} root file system failed; see {build_log}")
                os.replace(partial, target)
            finally:
                unmount_below([tree])  # debootstrap mounts /proc and /sys inside; an interrupted one leaves them
    return target


# --- 2. kinelab's own programs ------------------------------------------------------------------------------
def programs_dir() -> Path:
    sources = sorted((FILES / "cmd").rglob("*.go"))
    key = _digest(*[(str(p.relative_to(FILES)), p.read_text()) for p in sources])
    return cache_dir() / "bin" / f"kinelab-node-programs-{key}"


def ensure_programs(log: Log = print) -> Dict[str, Path]:
    """kinelab-pause and kinelab-workload, static, built from ``node_files/cmd`` (seconds)."""
    target = programs_dir()
    paths = {name: target / name for name in PROGRAMS}
    if all(p.is_file() for p in paths.values()):
        return paths
    go = find_go()
    if not go or (go_version(go) or (0, 0)) < (1, 22):
        raise ToolError(f"building kinelab's pause and workload programs for the kind node image needs Go 1.22+ "
                        f"({GO_HINT})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp) / "src"
        shutil.copytree(FILES / "cmd", work / "cmd")
        (work / "go.mod").write_text("module kinelab.local/node-programs\n\ngo 1.22\n")
        out_dir = Path(tmp) / "out"
        env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off", "GOFLAGS": "", "GOOS": "linux"}
        result = subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", f"{out_dir}/",
                                 *[f"./cmd/{name}" for name in PROGRAMS]], cwd=work, env=env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolError(f"building kinelab's node programs failed: {last_line(result.stderr)}")
        os.replace(out_dir, target)
    return paths


# --- 3. image archives in `docker save` format ----------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One file or directory of an image layer."""

    path: str                      # in the image, absolute
    source: Optional[Path] = None  # a file to copy
    data: Optional[bytes] = None   # or these bytes; neither: a directory
    mode: int = 0o644
    link: Optional[str] = None     # or a symbolic link to this target


def write_layer(out: Path, entries: Sequence[Entry]) -> str:
    """A layer tar of `entries` (parent directories added, owned by root); returns its ``sha256:`` digest."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()
        for entry in entries:
            parts = entry.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in seen:
                    seen.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            name = "/".join(parts)
            seen.add(name)
            info = tarfile.TarInfo(name)
            info.mode = entry.mode
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with open(entry.source, "rb") as handle:
                    tar.addfile(info, handle)
            elif entry.data is not None:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return file_digest(out)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_archive(out: Path, reference: str, layers: Sequence[Path], config: dict, history: Sequence[str],
                  digests: Optional[Sequence[str]] = None) -> Path:
    """An image archive as ``docker save`` writes it (``manifest.json``, the config, one tar per layer), which
    ``docker load`` and ``ctr images import`` both read. `layers` are layer tars (their digests are computed
    unless given)."""
    digests = list(digests) if digests else [file_digest(layer) for layer in layers]
    image_config = {
        "architecture": go_arch(), "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": digests},
        "history": [{"created_by": line, "comment": "kinelab"} for line in history],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{d.split(':', 1)[1]}/layer.tar" for d in digests]
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": layer_names}]
    with tarfile.open(out, "w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add_bytes(config_name, config_bytes)
        for layer, name in zip(layers, layer_names):
            tar.add(str(layer), arcname=name)
        add_bytes("manifest.json", json.dumps(manifest).encode())
    return out


def program_image(out: Path, reference: str, binary: Path, *, in_image: str, entrypoint: Sequence[str]) -> Path:
    """A one-program image: the static `binary` at `in_image`, and an empty /tmp."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer = Path(tmp) / "layer.tar"
        write_layer(layer, [Entry(in_image, source=binary, mode=0o755), Entry("/tmp", mode=0o1777)])
        config = {"Entrypoint": list(entrypoint), "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]}
        return write_archive(out, reference, [layer], config, [f"kinelab: {in_image} ({binary.name})"])


def kubeadm_images(kubeadm: Path, version: str) -> Dict[str, str]:
    """The image names kubeadm `version` pulls, by component (kube-apiserver, ..., pause), from the binary."""
    result = subprocess.run([str(kubeadm), "config", "images", "list", f"--kubernetes-version={version}"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ToolError(f"`kubeadm config images list` failed: {last_line(result.stderr)}")
    names = {}
    for line in result.stdout.split():
        component = line.rsplit("/", 1)[-1].split(":", 1)[0]
        names[component] = line
    missing = [c for c in (*CONTROL_PLANE, "pause") if c not in names]
    if missing:
        raise ToolError(f"`kubeadm config images list` names no image for {', '.join(missing)}: {result.stdout!r}")
    return names


# --- 4. the node image -----------------------------------------------------------------------------------------
@dataclass
class NodeImage:
    reference: str                  # kinelab/node:v1.37.2-<key>
    kubernetes_version: str
    workload_image: str             # preloaded into every node's containerd, and loaded into the engine
    preloaded: list                 # every image in the nodes' containerd
    built: bool                     # False: it was already in the engine
    size_mb: float = 0.0
    timings_s: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def node_files(version: str, sandbox_image: str, binaries: Dict[str, Path]) -> list:
    """kinelab's own files of the node image (`Entry` list)."""
    text = lambda name: (FILES / name).read_bytes()  # noqa: E731
    entries = [
        Entry("/usr/local/bin/kinelab-entrypoint", data=text("entrypoint"), mode=0o755),
        Entry("/etc/systemd/system/kubelet.service", data=text("kubelet.service")),
        Entry("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", data=text("10-kubeadm.conf")),
        Entry("/etc/systemd/system/multi-user.target.wants/kubelet.service",
              link="/etc/systemd/system/kubelet.service"),
        Entry("/etc/systemd/system/kinelab-kine-forward.service", data=text("kinelab-kine-forward.service")),
        Entry("/etc/systemd/system/multi-user.target.wants/kinelab-kine-forward.service",
              link="/etc/systemd/system/kinelab-kine-forward.service"),
        Entry("/etc/containerd/config.toml",
              data=text("containerd.toml").replace(b"@SANDBOX_IMAGE@", sandbox_image.encode())),
        Entry("/etc/cni/kinelab.conflist.template", data=text("kinelab.conflist.template")),
        Entry("/etc/cni/net.d", mode=0o755),
        Entry("/etc/machine-id", data=b""),
        Entry("/kind/version", data=f"{version}\n".encode()),
        *[Entry(f"/etc/systemd/system/{unit}", link="/dev/null") for unit in MASKED_UNITS],
        *[Entry(f"/usr/bin/{name}", source=binaries[name], mode=0o755) for name in NODE_BINARIES],
    ]
    return entries


def node_image_key(version: str, rootfs: Path, programs: Dict[str, Path], binaries: Dict[str, Path]) -> str:
    """Everything the image is made of: a change to any part makes a new image."""
    own = sorted((str(p.relative_to(FILES)), hashlib.sha256(p.read_bytes()).hexdigest())
                 for p in FILES.rglob("*") if p.is_file())
    programs_built = sorted((name, hashlib.sha256(path.read_bytes()).hexdigest()) for name, path in programs.items())
    # the Kubernetes binaries are large: their size and time stand for their content
    binaries_built = sorted((name, path.stat().st_size, path.stat().st_mtime_ns) for name, path in binaries.items())
    return _digest(version, rootfs.name, own, programs_built, binaries_built, ROOTFS_PACKAGES, MASKED_UNITS)


class _Steps:
    """Times each step, and runs docker with its output in the build log."""

    def __init__(self, engine: Engine, build_log: Path, log: Log):
        self.engine, self.build_log, self.log = engine, build_log, log
        self.timings: Dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 1)

    def docker(self, *args: str, input: Optional[bytes] = None, timeout: float = 900) -> str:
        with open(self.build_log, "ab") as out:
            out.write(("$ docker " + " ".join(args) + "\n").encode())
        result = self.engine.docker(*args, check=False, input=input, timeout=timeout)
        with open(self.build_log, "ab") as out:
            out.write(result.stdout[-20000:] + result.stderr[-20000:])
        if result.returncode != 0:
            raise ToolError(f"building the kind node image: `docker {args[0]}` failed: {last_line(result.stderr)}; "
                            f"see {self.build_log}")
        return result.stdout.decode()


# What runs inside the build container: containerd imports every archive into the namespace the kubelet uses,
# pinned so that image garbage collection never removes what cannot be pulled again.
IMPORT_SCRIPT = """
set -eu
containerd --config /etc/containerd/config.toml >/var/log/kinelab-import-containerd.log 2>&1 &
for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
for archive in {dir}/*.tar; do
    ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --no-unpack "$archive"
done
ctr --namespace=k8s.io images list -q
kill %1
wait || true
rm -rf {dir} /var/log/kinelab-import-containerd.log
"""


def image_present(engine: Engine, reference: str) -> bool:
    return engine.docker("image", "inspect", reference, check=False, timeout=60).returncode == 0


def ensure_node_image(engine: Engine, version: str = KUBERNETES_VERSION, log: Log = print) -> NodeImage:
    """kinelab's node image for Kubernetes `version` in `engine`, built when it is not there yet."""
    timings: Dict[str, float] = {}
    started = time.monotonic()
    rootfs = ensure_rootfs(log)
    timings["rootfs"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    binaries = {name: b.path for name, b in ensure_kubernetes((*CONTROL_PLANE, *NODE_BINARIES), version,
                                                              log=log).items()}
    programs = ensure_programs(log)
    timings["binaries"] = round(time.monotonic() - started, 1)
    key = node_image_key(version, rootfs, programs, binaries)
    reference = f"{NODE_REPOSITORY}:{version}-{key}"
    workload = f"{WORKLOAD_REPOSITORY}:{programs_dir().name.rsplit('-', 1)[1]}"
    names = kubeadm_images(binaries["kubeadm"], version)
    preloaded = [names[c] for c in (*CONTROL_PLANE, "pause")] + [workload]
    image = NodeImage(reference, version, workload, preloaded, built=False)
    if image_present(engine, reference) and image_present(engine, workload):
        image.timings_s = timings
        image.size_mb = _size_mb(engine, reference)
        return image
    image_dir().mkdir(parents=True, exist_ok=True)
    build_log = image_dir() / f"node-{version}-{key}.build.log"
    build_log.write_bytes(b"")
    steps = _Steps(engine, build_log, log)
    with build_lock(f"node-image-{key}", log):
        if image_present(engine, reference) and image_present(engine, workload):  # built while this one waited
            image.timings_s, image.size_mb = timings, _size_mb(engine, reference)
            return image
        log(f"assembling the kind node image {reference} (log in {build_log})...")
        with tempfile.TemporaryDirectory(dir=image_dir(), prefix="node-") as tmp:
            tmp_path = Path(tmp)
            with steps.step("archives"):
                archives = tmp_path / "images"
                archives.mkdir()
                for component in CONTROL_PLANE:
                    program_image(archives / f"{component}.tar", names[component], binaries[component],
                                  in_image=f"/usr/local/bin/{component}", entrypoint=[f"/usr/local/bin/{component}"])
                program_image(archives / "pause.tar", names["pause"], programs["kinelab-pause"],
                              in_image="/pause", entrypoint=["/pause"])
                program_image(archives / "workload.tar", workload, programs["kinelab-workload"],
                              in_image="/kinelab-workload", entrypoint=["/kinelab-workload"])
            with steps.step("stage"):
                files_layer = tmp_path / "files.tar"
                write_layer(files_layer, node_files(version, names["pause"], binaries))
                stage = f"{NODE_REPOSITORY}-stage:{key}"
                config = {"Entrypoint": ["/usr/local/bin/kinelab-entrypoint", "/sbin/init"],
                          "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                  "container=docker"],
                          "StopSignal": "SIGRTMIN+3", "Labels": {LABEL: key}}
                archive = write_archive(tmp_path / "stage.tar", stage, [rootfs, files_layer], config,
                                        [f"debootstrap --variant={VARIANT} {SUITE} ({', '.join(ROOTFS_PACKAGES)})",
                                         "kinelab's node files and Kubernetes binaries"])
                steps.docker("load", "--input", str(archive))
                steps.docker("load", "--input", str(archives / "workload.tar"))
            container = f"kinelab-node-build-{key}"
            steps.engine.docker("rm", "-f", container, check=False)
            try:
                with steps.step("preload"):
                    steps.docker("run", "-d", "--name", container, "--privileged", "--network", "none",
                                 "--entrypoint", "/bin/sleep", stage, "infinity")
                    steps.docker("exec", container, "mkdir", "-p", IMAGE_DIR_IN_NODE)
                    steps.docker("cp", f"{archives}/.", f"{container}:{IMAGE_DIR_IN_NODE}")
                    listed = steps.docker("exec", container, "bash", "-c", IMPORT_SCRIPT.format(dir=IMAGE_DIR_IN_NODE))
                    absent = [name for name in preloaded if not re.search(rf"^(docker\.io/)?{re.escape(name)}$",
                                                                           listed, re.M)]
                    if absent:
                        raise ToolError(f"building the kind node image: containerd did not import "
                                        f"{', '.join(absent)}; see {build_log}")
                with steps.step("commit"):
                    steps.docker("commit", "--change", 'ENTRYPOINT ["/usr/local/bin/kinelab-entrypoint", "/sbin/init"]',
                                 "--change", "CMD []", container, reference)
            finally:
                steps.engine.docker("rm", "-f", container, check=False)
                steps.engine.docker("rmi", stage, check=False)
    _remove_older(engine, NODE_REPOSITORY, reference)
    _remove_older(engine, WORKLOAD_REPOSITORY, workload)
    image.built = True
    image.timings_s = {**timings, **steps.timings}
    image.size_mb = _size_mb(engine, reference)
    record = image_dir() / f"node-{version}-{key}.json"
    record.write_text(json.dumps(image.to_json(), indent=2) + "\n")
    log(f"built {reference} ({image.size_mb:.0f} MB) in {sum(steps.timings.values()):.0f}s")
    return image


def _remove_older(engine: Engine, repository: str, keep: str) -> None:
    """Untag the images of `repository` that a rebuild replaced (an image a container still uses stays)."""
    tags = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout.decode()
    for tag in tags.split():
        if tag != keep and not tag.endswith(":<none>"):
            engine.docker("rmi", tag, check=False)


def _size_mb(engine: Engine, reference: str) -> float:
    size = engine.docker("image", "inspect", "--format", "{{.Size}}", reference, check=False).stdout.decode().strip()
    return round(int(size) / 1e6, 1) if size.isdigit() else 0.0


# --- the load balancer of several control planes -----------------------------------------------------------------
# The image kind v0.33.0 runs in front of several control-plane nodes (its pkg/cluster/internal/loadbalancer).
LB_IMAGE = "docker.io/envoyproxy/envoy:v1.36.2"


def ensure_lb_image(engine: Engine, log: Log = print) -> str:
    """kind's load balancer image, under the tag kind looks for: an engine that has it (pulled) keeps its own;
    otherwise kinelab's offline stand-in, the Debian root file system and ``kinelab-lb`` as ``envoy``."""
    if image_present(engine, LB_IMAGE):
        return LB_IMAGE
    rootfs = ensure_rootfs(log)
    program = ensure_programs(log)["kinelab-lb"]
    log(f"assembling kinelab's stand-in for kind's load balancer image {LB_IMAGE}...")
    with tempfile.TemporaryDirectory(dir=image_dir(), prefix="lb-") as tmp:
        layer = Path(tmp) / "lb.tar"
        write_layer(layer, [Entry("/usr/local/bin/envoy", source=program, mode=0o755)])
        config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                  "Labels": {"kinelab.lb-image": program.parent.name}}
        archive = write_archive(Path(tmp) / "lb-image.tar", LB_IMAGE, [rootfs, layer], config,
                                [f"debootstrap --variant={VARIANT} {SUITE}", "kinelab-lb as envoy"])
        result = engine.docker("load", "--input", str(archive), check=False)
        if result.returncode != 0:
            raise ToolError(f"loading the load balancer image failed: {last_line(result.stderr)}")
    return LB_IMAGE
