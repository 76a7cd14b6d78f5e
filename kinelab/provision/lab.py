"""`Lab`: Kine replicas on one shared datastore, as one lifecycle object.

A lab lives in a directory (kwokctl-style)::

    <dir>/lab.json       manifest: endpoints, masked DSN, pids with start times, versions, flags
    <dir>/secrets.json   the datastore passwords (mode 0600); only `kinelab dsn` prints them
    <dir>/pids/ logs/    one pid file and one log per process
    <dir>/postgres/ | mariadb/ | sqlite/   the data

Everything the manifest names can be stopped from the manifest alone, so `kinelab down`, the reaper
and a later `up` all clean up a lab whose Python process died.
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import psutil

from .. import progress
from ..dsn import Dsn
from ..errors import ProcessError, UsageError
from ..etcd import Etcd
from .datastores import ROOT_PG_HOME, Datastore, ExternalStore, SqliteStore, make_datastore
from .kine import KineReplica, kine_flags
from .process import LOOPBACK, ProcessRecord, tail
from .tools import KineBinary, install_kine

MANIFEST = "lab.json"
# How the article behind kinelab deploys apiservers on Kine: each on its own replica of one database (k3s HA),
# all on one Kine, or all on the whole pool (the etcd client balances over --etcd-servers).
MODES = ("shared-db", "single-kine", "hybrid")


def etcd_servers_for(mode: str, index: int, endpoints: Sequence[str]) -> list:
    """The Kine endpoints apiserver `index` gets in `mode`."""
    if mode == "single-kine":
        return [endpoints[0]]
    if mode == "hybrid":
        return list(endpoints)
    return [endpoints[index % len(endpoints)]]
SECRETS = "secrets.json"


def default_dir() -> Path:
    return Path(os.environ.get("KINELAB_HOME", Path.home() / ".kinelab")) / "labs" / "default"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _writable_dir(path: Path) -> Path:
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to lab directory {path} ({exc.strerror}); choose another --dir") from None
    return path


def read_manifest(path: Path) -> Optional[dict]:
    file = Path(path) / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or "kinelab_lab" not in manifest:
        raise UsageError(f"{file} is not a kinelab manifest; remove it or choose another --dir")
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    tmp = Path(path) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, Path(path) / MANIFEST)


def replica_kine_args(manifest: dict, index: int) -> dict:
    """The Kine flags replica `index` runs with: the lab's, overridden by the replica's own."""
    own = manifest.get("replica_args") or []
    return {**manifest.get("kine_args", {}), **(own[index] if index < len(own) else {})}


def manifest_records(manifest: dict) -> list:
    """Every process of the lab, in start order (datastore first, reaper last)."""
    records = [p for p in manifest.get("datastore", {}).get("processes", [])]
    records += [r["process"] for r in manifest.get("replicas", []) if r.get("process")]
    records += [a["process"] for a in manifest.get("apiservers", []) if a.get("process")]
    return [ProcessRecord(**r) for r in records]


def teardown(manifest: dict) -> int:
    """Stop every process the manifest names, newest first. Returns how many were still running."""
    running = 0
    for record in reversed(manifest_records(manifest)):
        if record.alive:
            running += 1
            record.stop()
    return running


class Lab:
    """Real Kine replicas sharing one datastore. Use as a context manager, or `start()` / `stop()`.

    >>> with Lab(replicas=3, datastore="postgres") as lab:   # doctest: +SKIP
    ...     lab.client(0).create("/registry/configmaps/default/a", b"x")
    """

    def __init__(self, replicas: int = 3, datastore: str = "postgres", *, kine_args: Optional[dict] = None,
                 replica_args: Optional[Sequence[dict]] = None, dir: Optional[os.PathLike] = None,
                 kine_bin: Optional[str] = None, allow_shared_sqlite: bool = False, base_port: Optional[int] = None,
                 keep: Optional[bool] = None, apiservers: int = 0, mode: str = "shared-db",
                 apiserver_args: Optional[dict] = None, datastore_settings: Optional[dict] = None,
                 kine_host: str = LOOPBACK):
        if replicas < 1:
            raise UsageError("a lab needs at least one Kine replica")
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
        if apiservers < 0:
            raise UsageError("--apiservers cannot be negative")
        if base_port is not None and not 0 < base_port < 65536 - (2 * replicas + 1):  # datastore + 2 per replica
            raise UsageError(f"--base-port {base_port} is out of range: the lab needs {2 * replicas + 1} consecutive "
                             "ports from it, below 65536; choose a lower one or leave it out")
        self.apiserver_count, self.mode, self.apiserver_args = apiservers, mode, dict(apiserver_args or {})
        if replica_args is not None and len(replica_args) != replicas:
            raise UsageError(f"replica_args has {len(replica_args)} entries for {replicas} replicas")
        self.replica_count = replicas
        self.datastore_settings = dict(datastore_settings or {})
        self.datastore: Datastore = make_datastore(datastore, self.datastore_settings)
        if isinstance(self.datastore, ExternalStore) and self.datastore.dsn.kind == "sqlite":
            shared_sqlite = True
        else:
            shared_sqlite = isinstance(self.datastore, SqliteStore)
        if shared_sqlite and replicas > 1 and not allow_shared_sqlite:
            raise UsageError("several Kine replicas on one SQLite file are unsupported (k3s-io/kine#499): use "
                             "--datastore postgres, or --allow-shared-sqlite to see why as a lesson")
        self.kine_args = dict(kine_args or {})
        self.replica_args = [dict(a or {}) for a in (replica_args or [{}] * replicas)]
        for args in [self.kine_args, *self.replica_args]:
            kine_flags(args)  # refuse reserved flags before anything starts
        self.dir = Path(dir).expanduser().resolve() if dir else None
        self.keep = keep if keep is not None else dir is not None
        self.kine_bin = kine_bin
        self.kine_host = kine_host  # where the replicas listen (the kind backend: its docker network's gateway)
        self.base_port = base_port
        self.id = _secrets.token_hex(4)
        self.manifest: dict = {}
        self._reaper: Optional[subprocess.Popen] = None
        self._clients: dict = {}

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, *, owned: bool = True) -> "Lab":
        """Start the datastore, then the replicas. With `owned`, a reaper stops them all if this
        Python process dies; `kinelab up` passes owned=False so the lab outlives the command."""
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="kinelab-"))
        self.dir = _writable_dir(self.dir)
        self._clear_previous()
        kine = install_kine(self.kine_bin, log=progress.say)
        self._load_secrets()
        self.manifest = {
            "kinelab_lab": 1, "id": self.id, "dir": str(self.dir), "state": "starting", "created_at": _now(),
            "kine_version": kine.version, "kine_bin": str(kine.path), "kine_args": self.kine_args,
            "replica_args": self.replica_args, "owner_pid": os.getpid() if owned else None,
            "owner_create_time": psutil.Process().create_time() if owned else None,
            "datastore": {"kind": self.datastore.kind}, "datastore_settings": self.datastore_settings,
            "replicas": [],
        }
        self._save()
        try:
            apiserver_bin = None
            if self.apiserver_count:  # first: no Go or a failed build stops the lab before anything runs
                from .apiserver import install_apiserver

                apiserver_bin = install_apiserver(log=progress.say)
            if owned:
                self._start_reaper()
            with progress.bar("starting lab", total=self.replica_count + 1) as advance:
                ports = self._ports()
                self.datastore.start(self.dir, self.id, port=next(ports) if self.datastore.serves else None)
                self.manifest["datastore"] = {**self.datastore.describe(),
                                              "processes": [p.record.to_json() for p in self.datastore.processes]}
                self._save_secrets()
                self._save()
                advance()
                for index in range(self.replica_count):
                    args = replica_kine_args(self.manifest, index)
                    replica = KineReplica(index, kine, self.datastore.dsn, self.dir, args=args, port=next(ports),
                                          metrics_port=next(ports), env={"KINELAB_LAB_ID": self.id},
                                          host=self.kine_host)
                    self.manifest["replicas"].append({"index": index, "endpoint": replica.endpoint,
                                                      "metrics_url": replica.metrics_url, "flags": replica.flags,
                                                      "process": None})
                    replica.start()
                    self.manifest["replicas"][index]["process"] = replica.record.to_json()
                    self._save()
                    advance()
            if self.apiserver_count:
                self._start_apiservers(apiserver_bin)
            self.manifest["state"] = "running"
            self._save()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_apiservers(self, binary) -> None:
        from .apiserver import ApiServer, generate_pki

        pki = generate_pki(self.dir / "pki")
        self.manifest.update(apiserver_version=binary.version, mode=self.mode, apiservers=[])
        with progress.bar("starting kube-apiservers", total=self.apiserver_count) as advance:
            for index in range(self.apiserver_count):
                servers = [f"http://{ep}" for ep in etcd_servers_for(self.mode, index, self.endpoints)]
                apiserver = ApiServer(index, binary, servers, self.dir, pki, flags=self.apiserver_args)
                entry = {"index": index, "url": apiserver.url, "kubeconfig": str(apiserver.kubeconfig),
                         "etcd_servers": servers, "process": None}
                self.manifest["apiservers"].append(entry)
                apiserver.start()
                entry["process"] = apiserver.record.to_json()
                self._save()
                advance()

    def stop(self) -> None:
        """Stop every process, safe to repeat. A lab made in a temporary directory is removed with it."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.manifest:
            teardown(self.manifest)
            self.manifest["state"] = "stopped"
            if self.dir and self.dir.exists():
                self._save()
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait()
            self._reaper = None
        if not self.keep and self.dir is not None and self.dir.exists():
            purge(self.dir)

    def down(self) -> int:
        """`kinelab down`: stop every process the manifest names, whoever started them, and record the lab
        stopped. Returns how many were still running."""
        stopped = teardown(self.manifest)
        self.manifest["state"] = "stopped"
        self._save()
        return stopped

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- attaching to a lab by its directory -------------------------------------------------------
    @classmethod
    def attach(cls, dir: os.PathLike) -> "Lab":
        """The lab recorded in `dir`, for status, capture and down (it may be running or not)."""
        path = Path(dir).expanduser().resolve()
        manifest = read_manifest(path)
        if manifest is None:
            raise UsageError(f"no lab in {path}; start one with `kinelab up --dir {dir}`")
        if manifest.get("backend", "local") != "local":
            raise UsageError(f"the lab in {path} runs on the {manifest['backend']} backend: `kinelab status`, "
                             "`down` and `capture` handle it, this needs a local lab")
        lab = cls.__new__(cls)
        lab.dir, lab.manifest, lab.keep, lab.id = path, manifest, True, manifest["id"]
        lab.replica_count = len(manifest["replicas"])
        lab._reaper, lab._clients = None, {}
        secrets = lab._read_secrets()
        lab._dsn = Dsn.parse(secrets["dsn"]) if secrets.get("dsn") else None
        return lab

    # --- addresses and clients ------------------------------------------------------------------------
    @property
    def endpoints(self) -> list:
        return [r["endpoint"] for r in self.manifest.get("replicas", [])]

    @property
    def dsn(self) -> Dsn:
        """The datastore DSN, password included (its repr masks it)."""
        if getattr(self, "_dsn", None) is not None:
            return self._dsn
        if not hasattr(self, "datastore"):  # attached to a directory whose secrets.json is gone
            raise UsageError(f"{self.dir / SECRETS} is missing, so the lab's DSN is unknown; restore it, or remove "
                             f"the lab with `kinelab down --dir {self.dir} --purge`")
        return self.datastore.dsn

    def client(self, index: int = 0) -> Etcd:
        """An etcd client bound to replica `index` (kept open until the lab stops)."""
        if not 0 <= index < len(self.endpoints):
            raise UsageError(f"no replica {index}: this lab has replicas 0..{len(self.endpoints) - 1}")
        if index not in self._clients:
            self._clients[index] = Etcd(self.endpoints[index])
        return self._clients[index]

    # --- faults: what a replica failure looks like, on demand -------------------------------------------
    def _replica_record(self, index: int) -> ProcessRecord:
        replicas = self.manifest.get("replicas", [])
        if not 0 <= index < len(replicas):
            raise UsageError(f"no replica {index}: this lab has replicas 0..{len(replicas) - 1}")
        return ProcessRecord(**replicas[index]["process"])

    def kill(self, index: int) -> None:
        """SIGKILL replica `index` (and its process group), as a crash would."""
        record = self._replica_record(index)
        if record.alive:
            os.killpg(record.pid, signal.SIGKILL)
            try:
                psutil.Process(record.pid).wait(10)  # reaps it too when this process started it
            except psutil.Error:
                pass
        self._clients.pop(index, None)

    def pause(self, index: int) -> None:
        """SIGSTOP replica `index`: alive but silent, like a stalled VM."""
        os.killpg(self._alive_record(index).pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        os.killpg(self._alive_record(index).pid, signal.SIGCONT)

    def _alive_record(self, index: int) -> ProcessRecord:
        record = self._replica_record(index)
        if not record.alive:
            raise UsageError(f"replica {index} is not running; `restart` it first")
        return record

    def restart(self, index: int) -> None:
        """Stop replica `index` if it runs, then start it again with the same ports, flags and datastore."""
        record = self._replica_record(index)
        record.stop()
        entry = self.manifest["replicas"][index]
        args = replica_kine_args(self.manifest, index)
        replica = KineReplica(index, KineBinary(Path(self.manifest["kine_bin"]), self.manifest["kine_version"]),
                              self.dsn, self.dir, args=args, port=int(entry["endpoint"].rsplit(":", 1)[1]),
                              metrics_port=int(entry["metrics_url"].rsplit(":", 1)[1].split("/")[0]),
                              env={"KINELAB_LAB_ID": self.id}, host=entry["endpoint"].rsplit(":", 1)[0])
        replica.start()
        entry["process"] = replica.record.to_json()
        self._save()
        self._clients.pop(index, None)

    # --- database faults: the server kinelab runs, stopped and started on the same data and port ----------
    def _served_datastore(self) -> Datastore:
        described = self.manifest.get("datastore", {})
        if described.get("external") or described.get("kind") == "sqlite":
            raise UsageError(f"this lab's datastore ({described.get('kind')}) has no server kinelab runs; "
                             "stop and start your own database server instead")
        store = make_datastore(described["kind"], self.manifest.get("datastore_settings"))
        store.secrets.update(self._read_secrets().get("datastore", {}))
        return store

    def stop_datastore(self) -> None:
        """Stop the database server (an orderly shutdown); the Kine replicas keep running without it."""
        self._served_datastore()  # refuses external datastores before anything stops
        for process in reversed(self.manifest["datastore"].get("processes", [])):
            ProcessRecord(**process).stop()

    def start_datastore(self) -> None:
        """Start the database server again on the same data directory, port and passwords."""
        store = self._served_datastore()
        if any(ProcessRecord(**p).alive for p in self.manifest["datastore"].get("processes", [])):
            raise UsageError("the datastore is already running; `restart` it, or stop it first")
        store.start(self.dir, self.id, port=self.dsn.port)
        self.manifest["datastore"]["processes"] = [p.record.to_json() for p in store.processes]
        self._save()

    def restart_datastore(self) -> None:
        self.stop_datastore()
        self.start_datastore()

    def status(self) -> dict:
        """The manifest's public view, with each replica's liveness, revision and, if dead, last log line."""
        replicas = []
        for replica in self.manifest.get("replicas", []):
            record = ProcessRecord(**replica["process"]) if replica.get("process") else None
            entry = {key: replica[key] for key in ("index", "endpoint", "metrics_url")}
            entry.update(pid=record.pid if record else None, alive=bool(record and record.alive))
            if entry["alive"]:
                try:
                    with Etcd(replica["endpoint"], timeout_s=2) as client:
                        entry["revision"] = client.revision()
                except Exception as exc:  # a live process that does not answer is worth reporting, not fatal
                    entry["revision"], entry["error"] = None, str(exc)
            else:
                entry["last_log_line"] = tail(Path(record.log), 1) if record else ""
            replicas.append(entry)
        apiservers = []
        for entry in self.manifest.get("apiservers", []):
            record = ProcessRecord(**entry["process"]) if entry.get("process") else None
            apiservers.append({**{k: entry[k] for k in ("index", "url", "kubeconfig", "etcd_servers")},
                               "pid": record.pid if record else None, "alive": bool(record and record.alive),
                               "ready": bool(record and record.alive and self._apiserver_ready(entry["url"]))})
        datastore = {k: v for k, v in self.manifest.get("datastore", {}).items() if k != "processes"}
        datastore["alive"] = all(ProcessRecord(**p).alive for p in self.manifest.get("datastore", {})
                                 .get("processes", []))
        status = {"dir": str(self.dir), "id": self.manifest.get("id"), "state": self.manifest.get("state"),
                  "replicas": replicas, "datastore": datastore, "kine_version": self.manifest.get("kine_version")}
        if apiservers:
            status.update(apiservers=apiservers, mode=self.manifest.get("mode"),
                          apiserver_version=self.manifest.get("apiserver_version"))
        return status

    def _apiserver_ready(self, url: str) -> bool:
        from .apiserver import Pki, readyz

        try:
            return readyz(url, Pki(self.dir / "pki").ssl_context())
        except OSError:
            return False

    def kubernetes_client(self, index: int = 0, *, retries: bool = True):
        """A `kubernetes` ApiClient for apiserver `index`, as the lab's admin user. With retries=False a call to a
        dead apiserver fails at once instead of after urllib3's three retries (what fault measurements need)."""
        from kubernetes import client, config

        apiservers = self.manifest.get("apiservers", [])
        if not 0 <= index < len(apiservers):
            raise UsageError(f"no apiserver {index}: this lab has {len(apiservers)} (start it with apiservers=N)")
        configuration = client.Configuration()
        config.load_kube_config(config_file=apiservers[index]["kubeconfig"], client_configuration=configuration)
        if not retries:
            configuration.retries = False  # read by the connection pool when the client is built
        return client.ApiClient(configuration)

    def capture(self, out: os.PathLike, *, incremental: bool = False):
        """Capture this lab's kine table into the DuckDB file `out`; returns the snapshot summary."""
        from ..observe.capture import capture

        return capture(self.dsn, out, incremental=incremental)

    def __repr__(self) -> str:
        state = self.manifest.get("state", "new")
        return (f"Lab(replicas={self.replica_count}, datastore={self.manifest.get('datastore', {}).get('dsn', '?')}, "
                f"state={state}, dir={self.dir})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{r['index']}</td><td>{r['endpoint']}</td><td>{r['metrics_url']}</td></tr>"
                       for r in self.manifest.get("replicas", []))
        return (f"<b>kinelab Lab</b> ({self.manifest.get('state', 'new')}) on "
                f"<code>{self.manifest.get('datastore', {}).get('dsn', '?')}</code>, Kine "
                f"{self.manifest.get('kine_version', '?')}<table><tr><th>replica</th><th>endpoint</th>"
                f"<th>metrics</th></tr>{rows}</table>")

    # --- internals ------------------------------------------------------------------------------------------
    def _ports(self):
        """Free ports by default; with base_port, consecutive ports from it (each checked free)."""
        if self.base_port is None:
            while True:
                yield None
        port = self.base_port
        while True:
            yield port
            port += 1

    def _clear_previous(self) -> None:
        previous = read_manifest(self.dir)
        if previous is None:
            return
        if previous.get("backend", "local") != "local" and previous.get("state") != "stopped":
            raise UsageError(f"a {previous['backend']} lab is recorded in {self.dir}; run "
                             f"`kinelab down --dir {self.dir}` first")
        alive = [r for r in manifest_records(previous) if r.alive]
        if previous.get("state") == "running" and alive and len(alive) == len(manifest_records(previous)) \
                and not _orphaned(previous):
            raise UsageError(f"a lab is already running in {self.dir}; run `kinelab down --dir {self.dir}` first")
        teardown(previous)  # leftovers of a lab whose owner died
        if previous.get("datastore", {}).get("kind") == self.datastore.kind:
            self.id = previous["id"]  # same data directory, same passwords

    def _read_secrets(self) -> dict:
        file = self.dir / SECRETS
        try:
            return json.loads(file.read_text()) if file.exists() else {}
        except ValueError:
            raise UsageError(f"{file} is corrupt (invalid JSON); restore it, or remove the lab with "
                             f"`kinelab down --dir {self.dir} --purge`") from None

    def _load_secrets(self) -> None:
        stored = self._read_secrets()
        if stored.get("kind") == self.datastore.kind and hasattr(self.datastore, "secrets"):
            self.datastore.secrets.update(stored.get("datastore", {}))

    def _save_secrets(self) -> None:
        file = self.dir / SECRETS
        payload = {"kind": self.datastore.kind, "dsn": self.datastore.dsn.url,
                   "datastore": getattr(self.datastore, "secrets", {})}
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)

    def _save(self) -> None:
        write_manifest(self.dir, self.manifest)

    def _start_reaper(self) -> None:
        me = psutil.Process()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "kinelab.provision.reaper", str(self.dir), str(me.pid), repr(me.create_time())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.dir / "reaper.log", "ab"),
            start_new_session=True)


def _orphaned(manifest: dict) -> bool:
    """True for a lab whose owning Python process is gone (killed together with its reaper): its processes are
    leftovers, not a lab someone is using. Labs of `kinelab up` have no owner and are never orphaned."""
    if not manifest.get("owner_pid"):
        return False
    owner = ProcessRecord("owner", manifest["owner_pid"], manifest.get("owner_create_time") or 0.0, "", [])
    return not owner.alive


def purge(dir: Path) -> None:
    """Remove a stopped lab's directory, and its Postgres data kept outside it when run as root."""
    manifest = read_manifest(dir) or {}
    if manifest and any(r.alive for r in manifest_records(manifest)):
        raise ProcessError(f"lab in {dir} still has running processes; run `kinelab down --dir {dir}` first")
    if manifest.get("id"):
        shutil.rmtree(ROOT_PG_HOME / manifest["id"], ignore_errors=True)
    shutil.rmtree(dir, ignore_errors=True)
