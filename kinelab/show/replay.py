"""Replays: the notebooks on measurements recorded from real runs (the files in `data/`, made by
`data/record.py`), for machines where Kine cannot start. Nothing here starts or needs Kine.

  dataset(name)      a private copy of data/<name> in a temporary folder, so the recorded file never changes
  label(name)        "REPLAY of data/<name>, recorded <date> on Kine <version> ...": the title of every replayed chart
  record(out, kind, **values)   store what a notebook measured that has no table of its own (Python values:
                     dataclasses such as `Write`, `TxnResult` or `CheckReport`, bytes, dicts) as one `runs` row
  summaries(path, kind), summary(path, kind)   the `runs` rows of `kind` (all, or the newest) as Python values
                     again; also the summaries `runs.load`, `runs.watch_lag` and `runs.compaction` store
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from ..drive.workload import Write
from ..errors import UsageError
from ..etcd import KV, TxnResult
from ..observe.apiprobe import Attempt, WatchLag
from ..observe.check import CheckReport, View
from ..observe.store import finish_run, new_run, open_capture_file, open_store, upgrade

REPLAY_LABEL = "REPLAY"  # every replayed chart's title starts with it
# An editable install (make install, Binder) runs the package from the repository, next to data/.
DATA = Path(__file__).resolve().parents[2] / "data"
MANIFEST = "datasets.json"  # what record.py made, and how: the source of each label
# The only classes a recording may hold: rebuilt by name, nothing else is ever instantiated.
TYPES = {cls.__name__: cls for cls in (Write, KV, TxnResult, WatchLag, Attempt, View, CheckReport)}


def datasets() -> dict:
    """data/datasets.json: for each recorded file, the notebook, date, Kine version, datastore, replicas,
    parameters and command that made it."""
    manifest = DATA / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"no replay datasets at {DATA}: replays need kinelab installed from its repository "
                         "(pip install -e .), where data/ lives")
    return json.loads(manifest.read_text())


def _entry(name: str) -> dict:
    known = datasets()
    if name not in known or not (DATA / name).is_file():
        raise UsageError(f"no replay dataset {name!r} in {DATA}: there are {', '.join(sorted(known))}")
    return known[name]


def dataset(name: str) -> Path:
    """A copy of data/<name> in a temporary folder removed when Python exits: notebooks may open, capture or
    write next to it, and the recorded file stays as it was. A capture recorded by an older kinelab is brought
    up to this one's capture schema on the copy."""
    _entry(name)
    folder = Path(tempfile.mkdtemp(prefix="kinelab-replay-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = Path(shutil.copyfile(DATA / name, folder / name))
    if copy.suffix == ".duckdb":
        upgrade(copy)
    return copy


def label(name: str) -> str:
    entry = _entry(name)
    return (f"{REPLAY_LABEL} of data/{name}, recorded {entry['recorded_at'][:10]} on Kine {entry['kine_version']} "
            f"({entry['replicas']} x {entry['datastore']}): not a live lab")


def _encode(value):
    if dataclasses.is_dataclass(value) and type(value).__name__ in TYPES:
        return {"@type": type(value).__name__,
                **{f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, bytes):
        return {"@bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):  # keys keep their type (revisions are ints)
        return {"@dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise UsageError(f"cannot record a {type(value).__name__}: use plain values or {', '.join(TYPES)}")


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "@bytes" in value:
        return base64.b64decode(value["@bytes"])
    if "@dict" in value:
        return {_decode(k): _decode(v) for k, v in value["@dict"]}
    if "@type" in value:
        return TYPES[value["@type"]](**{k: _decode(v) for k, v in value.items() if k != "@type"})
    return {k: _decode(v) for k, v in value.items()}  # a plain JSON summary, such as runs.compaction's


def record(out, kind: str, **values) -> int:
    """Store `values` as one `runs` row of `kind` in the DuckDB file `out` (created if missing); its run id."""
    con = open_store(out)
    try:
        run_id = new_run(con, kind, {})
        finish_run(con, run_id, None, _encode(values))
        return run_id
    finally:
        con.close()


def summaries(path, kind: str) -> list:
    """The summaries of the finished `runs` rows of `kind` in the capture at `path`, oldest first, as Python
    values (those of `record`, and the plain JSON of `runs.load`, `runs.watch_lag` and `runs.compaction`)."""
    with open_capture_file(path) as con:
        rows = con.execute("SELECT summary FROM runs WHERE kind = ? AND summary IS NOT NULL ORDER BY run_id",
                           [kind]).fetchall()
    if not rows:
        raise UsageError(f"{path} has no finished {kind!r} run")
    return [_decode(json.loads(row[0])) for row in rows]


def summary(path, kind: str) -> dict:
    """The newest of `summaries(path, kind)`."""
    return summaries(path, kind)[-1]
