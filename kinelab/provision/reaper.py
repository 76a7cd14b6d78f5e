"""The reaper: a small watchdog process that stops a lab once the Python process owning it is gone.

It covers what `with` and atexit cannot: a kernel restart, SIGKILL, SIGTERM from a scheduler, a crash. It stops
everything the manifest and the pid files name (processes, and a kind lab's cluster and network, through
`labdir.sweep`), and removes a temporary lab's directory and data. It exits
by itself when the lab is stopped normally (the manifest's state leaves "starting"/"running").
"""

import sys
import time

from ..errors import KinelabError
from .labdir import LabDir
from .process import ProcessRecord


def main(lab_dir: str, owner_pid: str, owner_create_time: str) -> int:
    labdir, owner = LabDir(lab_dir), ProcessRecord("owner", int(owner_pid), float(owner_create_time), "", [])
    while True:
        try:
            model = labdir.read()
        except KinelabError:  # the directory went away or was replaced: nothing of ours to watch
            return 0
        if model is None or model.state not in ("starting", "running"):
            return 0
        if not owner.alive:
            try:
                labdir.sweep(model)
            except KinelabError as exc:  # left recorded as it was: `kinelab down` or `labs --prune` retries
                print(f"kinelab reaper: {exc}", file=sys.stderr)
                return 1
            if model.keep:
                model.state = "stopped"
                labdir.write(model)
            else:
                labdir.purge(model.id)
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
