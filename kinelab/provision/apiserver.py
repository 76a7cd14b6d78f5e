"""A real kube-apiserver in front of Kine: the pinned binary, its PKI, and the served process.

The binary is one of the Kubernetes commands `kinelab.provision.tools` builds from the Go module proxy
(``<cache>/bin/kube-apiserver-<version>``, reused; ``KINELAB_KUBE_APISERVER_BIN`` names one you have).

The PKI (``cryptography``): a CA, a serving certificate for 127.0.0.1/localhost, a service-account key
pair and an admin client certificate (O=system:masters), keys mode 0600. Every apiserver binds to
127.0.0.1 and gets its own kubeconfig next to the PKI.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UsageError
from .labdir import write_private
from .process import LOOPBACK, ServedProcess, free_port, require_free_port
from .tools import (  # noqa: F401
    KUBERNETES_MIN_GO,
    KUBERNETES_MODULE,
    KUBERNETES_VERSION,
    Binary,
    build_gomod,
    can_build,
    ensure_kubernetes,
    find,
    kubernetes_tool,
    staging_modules,
    staging_version,
)
from .wait import http_probe

APISERVER_VERSION = KUBERNETES_VERSION
MIN_GO = KUBERNETES_MIN_GO
ENV_BIN = kubernetes_tool("kube-apiserver").env_var


# --- the binary --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiServerBinary(Binary):
    name: str = "kube-apiserver"


def cached_apiserver_path(version: str = APISERVER_VERSION) -> Path:
    return kubernetes_tool("kube-apiserver", version).cached_path()


def find_apiserver(apiserver_bin: Optional[str] = None) -> Optional[ApiServerBinary]:
    """The binary to use without building anything: an explicit path, the env var, or the cache."""
    found = find(kubernetes_tool("kube-apiserver"), apiserver_bin, flag="apiserver_bin")
    return ApiServerBinary(found.path, found.version) if found else None


def install_apiserver(apiserver_bin: Optional[str] = None, log=print,
                      version: str = APISERVER_VERSION) -> ApiServerBinary:
    """Return a usable kube-apiserver, building it from the Go module proxy when none is there yet (several
    minutes and about 200 MB of Go modules the first time)."""
    built = ensure_kubernetes(["kube-apiserver"], version, explicit={"kube-apiserver": apiserver_bin},
                              log=log)["kube-apiserver"]
    return ApiServerBinary(built.path, built.version)


# --- the PKI -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """Paths of the files `generate_pki` writes (keys mode 0600, the directory 0700)."""

    dir: Path

    ca_cert = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    serving_cert = property(lambda self: self.dir / "apiserver.crt")
    serving_key = property(lambda self: self.dir / "apiserver.key")
    sa_public = property(lambda self: self.dir / "sa.pub")
    sa_private = property(lambda self: self.dir / "sa.key")
    admin_cert = property(lambda self: self.dir / "admin.crt")
    admin_key = property(lambda self: self.dir / "admin.key")

    def files(self) -> list:
        return [self.ca_cert, self.ca_key, self.serving_cert, self.serving_key, self.sa_public, self.sa_private,
                self.admin_cert, self.admin_key]

    def complete(self) -> bool:
        return all(path.is_file() for path in self.files())

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the lab's CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context


SERVICE_CIDR = "10.96.0.0/16"
SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")


def generate_pki(directory: os.PathLike, *, days: int = 365) -> Pki:
    """A CA, a serving certificate for 127.0.0.1/localhost (and the in-cluster names), a service-account
    key pair and an admin client certificate (CN=kinelab-admin, O=system:masters). Reused when complete."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki = Pki(Path(directory).expanduser().resolve())
    if pki.complete():
        return pki
    pki.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki.dir, 0o700)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(cn: str, org: Optional[str] = None) -> x509.Name:
        attrs = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []) + \
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("kinelab-ca")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    def leaf(subject: x509.Name, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(until)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                                content_commitment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    serving_key, serving_cert = leaf(
        name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.IPAddress(service_ip),
         *[x509.DNSName(n) for n in SERVING_NAMES]])
    admin_key, admin_cert = leaf(name("kinelab-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = ec.generate_private_key(ec.SECP256R1())

    pem = serialization.Encoding.PEM
    write_private(pki.ca_key, key_pem(ca_key))
    write_private(pki.serving_key, key_pem(serving_key))
    write_private(pki.admin_key, key_pem(admin_key))
    write_private(pki.sa_private, key_pem(sa_key))
    pki.sa_public.write_bytes(sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    pki.serving_cert.write_bytes(serving_cert.public_bytes(pem))
    pki.admin_cert.write_bytes(admin_cert.public_bytes(pem))
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))  # last: `complete()` means every file is there
    return pki


# --- the served process ------------------------------------------------------------------------------
RESERVED_FLAGS = {"bind-address", "secure-port", "etcd-servers", "tls-cert-file", "tls-private-key-file",
                  "client-ca-file", "service-account-key-file", "service-account-signing-key-file", "cert-dir"}


def advertise_address(index: int) -> str:
    """The address apiserver `index` advertises: 192.0.2.<index+1>, from TEST-NET-1 (RFC 5737, never routed).

    Nothing binds to it (every listener is on 127.0.0.1). It names the apiserver in the `kubernetes`
    Endpoints and in its master lease ``/registry/masterleases/<address>``; kube-apiserver refuses a loopback
    address there ("cannot use public IP 127.0.0.1 with endpoint reconciler"), and distinct addresses per
    apiserver are what a real HA control plane has."""
    if not 0 <= index < 254:
        raise UsageError(f"apiserver index {index} is out of range 0..253")
    return f"192.0.2.{index + 1}"


def default_flags(index: int = 0) -> dict:
    """What every kinelab apiserver gets unless `flags` overrides it (None drops a flag)."""
    return {
        "advertise-address": advertise_address(index),
        "etcd-prefix": "/registry",
        "service-cluster-ip-range": SERVICE_CIDR,
        "endpoint-reconciler-type": "lease",     # each apiserver keeps /registry/masterleases/<ip> alive
        "authorization-mode": "RBAC",
        "service-account-issuer": "https://kubernetes.default.svc.cluster.local",
        "allow-privileged": True,
        "profiling": False,
        "v": 1,
    }


def apiserver_flags(flags: Optional[dict], index: int = 0) -> list:
    """{"watch-cache": False, "storage-media-type": "application/json"} ->
    ["--watch-cache=false", "--storage-media-type=application/json"], over `default_flags()`."""
    merged = default_flags(index)
    for key, value in (flags or {}).items():
        name = key.lstrip("-").replace("_", "-")
        if name in RESERVED_FLAGS:
            raise UsageError(f"--{name} is set by kinelab for each apiserver; remove it from the apiserver flags")
        merged[name] = value
    out = []
    for name, value in merged.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out.append(f"--{name}={value}")
    return out


_UTS_PREFIX: Optional[list] = None


def uts_prefix() -> list:
    """The command that runs a program in a UTS namespace of its own (``unshare --uts``, with
    ``--map-root-user`` when not root), or [] when this machine does not allow it.

    kube-apiserver derives its identity (the Lease ``kube-system/apiserver-<hash>`` renewed every 10 s, and
    ``/registry/peerserverleases/<id>``) from the host name, so two apiservers on one host would share one
    identity and fight over one lease. A host name of their own per apiserver gives each its own, like the
    separate machines of a real control plane."""
    global _UTS_PREFIX
    if _UTS_PREFIX is None:
        _UTS_PREFIX = []
        unshare = shutil.which("unshare")
        if unshare:
            prefix = [unshare, "--uts"] if os.geteuid() == 0 else [unshare, "--map-root-user", "--uts"]
            try:
                probe = subprocess.run([*prefix, "sh", "-c", "printf probe > /proc/sys/kernel/hostname"],
                                       capture_output=True, timeout=10)
                if probe.returncode == 0:
                    _UTS_PREFIX = prefix
            except (OSError, subprocess.TimeoutExpired):
                pass
    return list(_UTS_PREFIX)


def _with_hostname(hostname: str, argv: list) -> Optional[list]:
    prefix = uts_prefix()
    if not prefix:
        return None
    # unshare and sh both exec, so the apiserver keeps the pid (and process group) ServedProcess started.
    return [*prefix, "sh", "-c", 'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"', hostname, *argv]


_KLOG_HEADER = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] ")


class ApiServer(ServedProcess):
    """One kube-apiserver on loopback, talking to the Kine endpoints it is given."""

    def __init__(self, index: int, binary: ApiServerBinary, etcd_servers: Sequence[str], lab_dir: Path,
                 pki: Pki, *, port: Optional[int] = None, flags: Optional[dict] = None,
                 own_hostname: bool = True, timeout_s: float = 180.0):
        if not etcd_servers:
            raise UsageError("an apiserver needs at least one etcd server (a Kine endpoint)")
        self.index = index
        self.binary = binary
        self.pki = pki
        self.etcd_servers = [s if "://" in s else f"http://{s}" for s in etcd_servers]
        self.port = require_free_port(port) if port else free_port()
        self.flags = apiserver_flags(flags, index)
        lab_dir = Path(lab_dir)
        cert_dir = lab_dir / "apiserver" / f"kube-apiserver-{index}"
        argv = [binary.path,
                f"--bind-address={LOOPBACK}", f"--secure-port={self.port}",
                f"--etcd-servers={','.join(self.etcd_servers)}",
                f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                f"--cert-dir={cert_dir}",
                *self.flags]
        # Its own host name, hence its own apiserver identity, where the machine allows (see uts_prefix).
        self.hostname: Optional[str] = None
        if own_hostname:
            wrapped = _with_hostname(f"kinelab-apiserver-{index}", argv)
            if wrapped:
                argv, self.hostname = wrapped, f"kinelab-apiserver-{index}"
        self._context = pki.ssl_context()
        super().__init__(f"kube-apiserver-{index}", argv, lab_dir, timeout_s=timeout_s,
                         ready=http_probe(f"{self.url}/readyz", context=self._context, expect=b"ok"))

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def advertise_address(self) -> Optional[str]:
        """The address in this apiserver's master lease key (``/registry/masterleases/<address>``)."""
        for flag in self.flags:
            if flag.startswith("--advertise-address="):
                return flag.split("=", 1)[1]
        return None

    @property
    def kubeconfig(self) -> Path:
        return self.pki.dir / f"kubeconfig-{self.name}.yaml"

    def write_kubeconfig(self) -> Path:
        """A kubeconfig for the admin user against this apiserver (JSON, which every YAML reader accepts)."""
        name = f"kinelab-{self.name}"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url,
                                                     "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "kinelab-admin", "user": {"client-certificate": str(self.pki.admin_cert),
                                                         "client-key": str(self.pki.admin_key)}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": "kinelab-admin"}}],
        }
        write_private(self.kubeconfig, (json.dumps(config, indent=2) + "\n").encode())
        return self.kubeconfig

    def start(self, **start_options) -> "ApiServer":
        (self.lab_dir / "apiserver" / self.name).mkdir(parents=True, exist_ok=True)
        self.write_kubeconfig()
        super().start(**start_options)
        return self

    def failure_line(self) -> str:
        """The last log line without klog's header: the error it exited on ("command failed", cobra's "Error:
        unknown flag"), or what it was retrying when it never became ready (an unreachable etcd)."""
        return _KLOG_HEADER.sub("", super().failure_line())

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET a path (``/version``, ``/readyz?verbose``) as the admin user."""
        with urllib.request.urlopen(f"{self.url}{path}", context=self._context, timeout=timeout) as response:
            return response.read()
