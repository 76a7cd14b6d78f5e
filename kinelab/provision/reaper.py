"""The reaper: a small watchdog process that stops a lab once the Python process owning it is gone.

It covers what `with` and atexit cannot: a kernel restart, SIGKILL, a crash. It exits by itself when
the lab is stopped normally (the manifest's state leaves "starting"/"running").
"""

import sys
import time

import psutil

from .lab import read_manifest, teardown, write_manifest


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
            teardown(manifest)
            manifest["state"] = "stopped"
            write_manifest(lab_dir, manifest)
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
