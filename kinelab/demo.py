"""`kinelab demo`: the whole path once, on the embedded default, in well under a minute."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .analyse.summary import ops_by_resource, row_counts, writes_by_replica
from .analyse.views import open_capture
from .drive.workload import burst
from .errors import Finding, UsageError
from .observe.capture import capture
from .provision.lab import Lab
from .provision.wait import WaitTimeout, poll_until


def run_demo(replicas: int = 3, datastore: str = "postgres", out: str = "kinelab-demo.duckdb", seed: int = 1,
             console: Console | None = None) -> dict:
    console = console or Console()
    out_path = Path(out).resolve()
    if out_path.is_dir():
        raise UsageError(f"--out {out} is a directory; name a file such as kinelab-demo.duckdb")
    with Lab(replicas=replicas, datastore=datastore) as lab:
        console.print(f"[bold]lab[/] {lab.replica_count} Kine {lab.model.versions['kine']} replicas on "
                      f"{lab.model.datastore_dsn}")
        clients = [lab.client(i) for i in range(replicas)]
        writes = burst(clients, seed=seed)
        last = max(w.revision for w in writes)
        # Each replica sees other replicas' writes on its next poll: wait until all report the last revision.
        revisions = _wait_for_revision(clients, last)
        # The demo's own file: each run starts a fresh capture, the old one kept until this run got here.
        out_path.unlink(missing_ok=True)
        snapshot = capture(lab, out_path)
    with open_capture(out_path) as con:
        ops = ops_by_resource(con)
        counts = row_counts(con)

    table = Table("resource", "creates", "updates", "deletes", "other", "rows", title="ops by resource (kine_ops)")
    for row in ops:
        table.add_row(*map(str, row))
    console.print(table)
    table = Table("replica", "writes acknowledged", "first revision", "last revision", "revision it reports now",
                  title="revisions per replica")
    for (replica, n, first, last_rev), now in zip(writes_by_replica(writes), revisions):
        table.add_row(str(replica), str(n), str(first), str(last_rev), str(now))
    console.print(table)
    table = Table("rows", "live", "superseded", "tombstones", "gap fills", "max id (revision)", title="the kine table")
    table.add_row(*(str(counts[k]) for k in ("rows", "live", "superseded", "tombstones", "gap_fills", "max_id")))
    console.print(table)
    console.print(f"capture: {out_path} (snapshot {snapshot.snapshot_id}); open it with kinelab.open_capture and "
                  "SELECT * FROM kine_ops")
    return {"writes": len(writes), "snapshot": snapshot.to_json(), "rows": counts}


def _wait_for_revision(clients, revision: int, timeout_s: float = 10.0) -> list:
    seen: list = []

    def caught_up() -> bool:
        seen[:] = [c.revision() for c in clients]
        return min(seen) >= revision

    try:
        poll_until(caught_up, timeout_s=timeout_s, what=f"every replica to report revision {revision}", transient=())
    except WaitTimeout as exc:
        raise Finding(f"replicas report revisions {seen} {timeout_s:.0f}s after write {revision}") from exc
    return seen
