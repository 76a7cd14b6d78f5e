"""The reaper: a small watchdog process that stops a lab once the Python process owning it is gone.

It covers what `with` and atexit cannot: a kernel restart, SIGKILL, a crash. It exits by itself when
the lab is stopped normally (the manifest's state leaves "starting"/"running").
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .lab import read_manifest, teardown, write_manifest


def start_reaper(lab_dir: Path) -> subprocess.Popen:
    """A reaper for the lab in `lab_dir`, owned by this Python process."""
    me = psutil.Process()
    return subprocess.Popen(
        [sys.executable, "-m", "kinelab.provision.reaper", str(lab_dir), str(me.pid), repr(me.create_time())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(Path(lab_dir) / "reaper.log", "ab"),
        start_new_session=True, env={**os.environ, "KINELAB_PROGRESS": "0"})


def owner_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(lab_dir: str, owner_pid: str, owner_create_time: str) -> int:
    pid, created = int(owner_pid), float(owner_create_time)
    while True:
        manifest = read_manifest(lab_dir)
        if manifest is None or manifest.get("state") not in ("starting", "running"):
            return 0
        if not owner_alive(pid, created):
            if manifest.get("backend") == "kind":  # its cluster, network, Kine and datastore
                from .kind import KindLab

                KindLab.attach(lab_dir).stop()
                return 0
            teardown(manifest)
            manifest["state"] = "stopped"
            write_manifest(lab_dir, manifest)
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
