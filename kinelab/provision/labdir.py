"""The lab directory, kwokctl-style; this module is its only reader and writer::

    <dir>/lab.json       the manifest: the typed `LabModel` (masked DSN, process records, versions, flags)
    <dir>/secrets.json   passwords and the full DSN (mode 0600); only `kinelab dsn` prints them
    <dir>/pids/ logs/    one pid file (a process record) and one log per process
    <dir>/postgres/ | mariadb/ | sqlite/ | pki/   the data

Every lab also leaves a line in an index (``$KINELAB_HOME/index/<id>.json``) naming its directory, so that
`kinelab labs` finds temporary labs in /tmp as well as named ones, and what a dead owner left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

from ..errors import KinelabError, ProcessError, UsageError
from .model import SCHEMA, LabModel
from .process import ProcessRecord

MANIFEST = "lab.json"
SECRETS = "secrets.json"
# As root, Postgres runs as a system user with its data here, outside the lab directory (see datastores).
ROOT_PG_HOME = Path("/var/lib/kinelab/postgres")
OWNER_FILE = "lab-dir"  # in each data set there: the directory of the lab it belongs to


def kinelab_home() -> Path:
    return Path(os.environ.get("KINELAB_HOME") or Path.home() / ".kinelab")


def default_dir() -> Path:
    return kinelab_home() / "labs" / "default"


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (keys, kubeconfigs, secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


class LabDir:
    def __init__(self, path: os.PathLike):
        self.path = Path(path).expanduser().resolve()

    manifest_path = property(lambda self: self.path / MANIFEST)
    secrets_path = property(lambda self: self.path / SECRETS)
    pids = property(lambda self: self.path / "pids")
    logs = property(lambda self: self.path / "logs")

    def __repr__(self) -> str:
        return f"LabDir({self.path})"

    def ensure_writable(self) -> "LabDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write to lab directory {self.path} ({exc.strerror}); choose another --dir") \
                from exc
        return self

    # --- the manifest ----------------------------------------------------------------------------------
    def read(self) -> Optional[LabModel]:
        """The lab recorded here, or None when there is none. A file that is not a current kinelab manifest is
        refused with what to do (a manifest of an older kinelab: its processes are still found by their pid
        files, so `down` works on it)."""
        if not self.manifest_path.exists():
            return None
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError:
            data = None
        if not isinstance(data, dict) or "kinelab_lab" not in data:
            raise UsageError(f"{self.manifest_path} is not a kinelab manifest; remove it or choose another --dir")
        if data["kinelab_lab"] != SCHEMA:
            raise UsageError(f"{self.manifest_path} was written by another kinelab version; stop that lab with "
                             f"`kinelab down --dir {self.path} --purge`, then start it again")
        try:
            return LabModel.from_json(data)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{self.manifest_path} is corrupt ({exc}); stop the lab with "
                             f"`kinelab down --dir {self.path} --purge`") from exc

    def read_if_current(self) -> Optional[LabModel]:
        """The lab recorded here, or None when there is none or this version cannot read it (its pid files
        still name its processes)."""
        try:
            return self.read()
        except UsageError:
            return None

    def is_kinelab(self) -> bool:
        """Whether a kinelab manifest of any version is here."""
        try:
            return "kinelab_lab" in json.loads(self.manifest_path.read_text())
        except (OSError, ValueError, TypeError):
            return False

    def write(self, model: LabModel) -> None:
        """Atomically: a reader (the reaper, `kinelab status`) never sees half a manifest."""
        tmp = self.path / (MANIFEST + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(model.to_json(), indent=2) + "\n")
        os.replace(tmp, self.manifest_path)

    # --- secrets ---------------------------------------------------------------------------------------
    def read_secrets(self) -> dict:
        try:
            return json.loads(self.secrets_path.read_text()) if self.secrets_path.exists() else {}
        except ValueError as exc:
            raise UsageError(f"{self.secrets_path} is corrupt (invalid JSON); restore it, or remove the lab with "
                             f"`kinelab down --dir {self.path} --purge`") from exc

    def write_secrets(self, secrets: dict) -> None:
        write_private(self.secrets_path, json.dumps(secrets).encode())

    # --- processes -------------------------------------------------------------------------------------
    def pid_records(self) -> list:
        """Every process record in pids/: written right after each fork, so they name processes a manifest may
        not have caught (an owner killed in the middle of a start)."""
        records = []
        for file in sorted(self.pids.glob("*.pid")) if self.pids.is_dir() else []:
            try:
                records.append(ProcessRecord(**json.loads(file.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # half-written by a process killed mid-write: its process record is in the manifest
        return records

    def sweep(self, model: Optional[LabModel]) -> int:
        """Stop everything of the lab, newest stage first: each component as its runtime is stopped (a process
        by its records; kind's cluster, nodes and network by the backend that owns them), then any process a
        pid file names. Returns how many were still running. A component that cannot be reached (a Docker
        engine that does not answer) does not keep the others running: its error is raised at the end."""
        from .backends import teardown  # the backends build on this module

        stopped, failure = 0, None
        if model is not None:
            for component in [c for stage in reversed(model.stages()) for c in stage]:
                try:
                    stopped += teardown(model, component)
                except KinelabError as exc:
                    failure = failure or exc
        for record in self.pid_records():
            if record.alive:
                stopped += 1
                record.stop()
        if failure is not None:
            raise failure
        return stopped

    def strays(self, lab_id: Optional[str]) -> list:
        """Processes of this lab found without its records (its directory was removed under it): those whose
        command line names the directory or the lab's data, or whose environment carries the lab's id."""
        import psutil

        marks = [str(self.path)] + ([str(ROOT_PG_HOME / lab_id)] if lab_id else [])
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if any(mark in cmdline for mark in marks) or \
                        (lab_id and proc.environ().get("KINELAB_LAB_ID") == lab_id):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile, or not ours to read
                pass
        return found

    def alive(self, model: Optional[LabModel]) -> list:
        """The lab's live processes, each once, found by the manifest or the pid files."""
        unique = {(r.pid, r.create_time): r for r in (model.records if model else []) + self.pid_records()}
        return [r for r in unique.values() if r.alive]

    # --- removal ---------------------------------------------------------------------------------------
    def purge(self, lab_id: Optional[str] = None) -> None:
        """Remove the directory of a stopped lab, and its Postgres data kept outside it when run as root."""
        model = self.read_if_current()
        if self.alive(model):
            raise ProcessError(f"lab in {self.path} still has running processes; run `kinelab down --dir {self.path}`"
                               " first")
        lab_id = lab_id or (model.id if model else _recorded_id(self))
        if lab_id:
            shutil.rmtree(ROOT_PG_HOME / lab_id, ignore_errors=True)
            index_file(lab_id).unlink(missing_ok=True)
            for socket_file in Path("/tmp").glob(f"kinelab-{lab_id}-*.sock"):  # HAProxy's, when the path was long
                socket_file.unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _recorded_id(labdir: LabDir) -> Optional[str]:
    try:
        return json.loads(labdir.manifest_path.read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None


# --- the index of labs ------------------------------------------------------------------------------------
def data_owner(data: Path) -> Optional[LabDir]:
    """The lab a Postgres data set under ROOT_PG_HOME belongs to, as its owner file names it; None when it does not
    say (a data set of an older kinelab)."""
    try:
        return LabDir(Path((data / OWNER_FILE).read_text().strip()))
    except OSError:
        return None


def index_file(lab_id: str) -> Path:
    return kinelab_home() / "index" / f"{lab_id}.json"


def register(model: LabModel) -> None:
    file = index_file(model.id)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"id": model.id, "dir": model.dir, "keep": model.keep}) + "\n")


def indexed_labs() -> Iterator[tuple]:
    """(lab id, LabDir) for every lab in the index, whether its directory still exists or not."""
    folder = kinelab_home() / "index"
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(file.read_text())
            yield entry["id"], LabDir(entry["dir"])
        except (OSError, ValueError, KeyError, TypeError):
            file.unlink(missing_ok=True)
