"""Replays: the notebooks on measurements recorded from real runs (the files in `data/`, made by
`data/record.py`), for machines where Kine cannot start. Nothing here starts or needs Kine.

  choose_mode(mode, apiservers=False, nodes=False, haproxy=False, kine_versions=())   a notebook's `mode`
                     parameter made "live" or "replay": "auto" is live where a lab can start here without building
                     anything, otherwise the replay, with one line saying why
  dataset(name)      a private copy of data/<name> in a temporary folder, so the recorded file never changes
  scratch_dir()      a temporary folder removed when Python exits, for the files a notebook's live run makes
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
from typing import Sequence

from ..drive.workload import Write
from ..errors import KinelabError, UsageError
from ..etcd import KV, TxnResult
from ..observe.apiprobe import Attempt, WatchLag
from ..observe.check import CheckReport, View
from ..observe.store import finish_run, new_run, open_capture_file, open_store, upgrade
from ..provision.apiserver import APISERVER_VERSION, find_apiserver
from ..provision.tools import KINE_VERSION, MIN_GO_VERSION, find_kine

REPLAY_LABEL = "REPLAY"  # every replayed chart's title starts with it
# An editable install (make install, Binder) runs the package from the repository, next to data/.
DATA = Path(__file__).resolve().parents[2] / "data"
MANIFEST = "datasets.json"  # what record.py made, and how: the source of each label
# The only classes a recording may hold: rebuilt by name, nothing else is ever instantiated.
TYPES = {cls.__name__: cls for cls in (Write, KV, TxnResult, WatchLag, Attempt, View, CheckReport)}


MODES = ("auto", "live", "replay")


def _missing(apiservers: bool, nodes: bool, haproxy: bool, kine_versions: Sequence[str]) -> str:
    """Why a live lab cannot start here without building anything, or "" when it can: the Kine releases (and
    the kube-apiserver, what simulated nodes need, HAProxy) already there."""
    from ..provision.haproxy import find_haproxy
    from ..provision.tools import KWOK, find, kubernetes_tool

    try:
        kines = [v for v in dict.fromkeys([KINE_VERSION, *kine_versions]) if find_kine(version=v) is None]
        if kines:
            how = ("`kinelab install` builds it" if kines == [KINE_VERSION]
                   else "`kinelab install --kine-version V` builds each")
            return (f"Kine {', '.join(kines)} {'is' if len(kines) == 1 else 'are'} not installed here; {how} "
                    f"(about 2 minutes, needs Go {MIN_GO_VERSION}+; pip install 'kinelab[go]' brings one)")
        if apiservers and find_apiserver() is None:
            return (f"kube-apiserver {APISERVER_VERSION} is not built here; `kinelab up --apiservers 1` builds it "
                    f"once (minutes, needs Go {MIN_GO_VERSION}+), or set KINELAB_KUBE_APISERVER_BIN")
        tools = [kubernetes_tool("kube-controller-manager"), kubernetes_tool("kube-scheduler"), KWOK] if nodes else []
        unbuilt = [tool.name for tool in tools if find(tool) is None]
        if unbuilt:
            return (f"{', '.join(unbuilt)} not built here; `kinelab up --nodes 1` builds them once (minutes, "
                    f"needs Go {MIN_GO_VERSION}+)")
        if haproxy:
            find_haproxy()
    except KinelabError as exc:  # e.g. KINELAB_KINE_BIN names no executable, HAProxy missing
        return str(exc)
    return ""


def choose_mode(mode: str, *, apiservers: bool = False, nodes: bool = False, haproxy: bool = False,
                kine_versions: Sequence[str] = ()) -> str:
    """A notebook's `mode` parameter as "live" or "replay". "auto" is live where a lab can start without
    building anything (the pinned Kine and every release in `kine_versions`; with `apiservers`, the
    kube-apiserver; with `nodes`, the controller-manager, scheduler and kwok; with `haproxy`, HAProxy),
    otherwise the replay, and prints one line saying which and why. "live" stays live, so a lab that cannot
    start fails loudly."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    missing = _missing(apiservers, nodes, haproxy, kine_versions)
    if missing:
        print(f"mode auto -> replay: {missing}; then set mode = \"live\" (or rerun) for a live lab")
        return "replay"
    print("mode auto -> live: everything this notebook runs is installed here")
    return "live"


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


def scratch_dir() -> Path:
    """A new temporary folder, removed when Python (the notebook's kernel) exits."""
    folder = Path(tempfile.mkdtemp(prefix="kinelab-notebook-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def dataset(name: str) -> Path:
    """A copy of data/<name> in a scratch folder: notebooks may open, capture or write next to it, and the
    recorded file stays as it was. A recording older than this kinelab is brought up to its capture schema and
    gets today's views (write_anomalies, ...) on the copy."""
    _entry(name)
    copy = Path(shutil.copyfile(DATA / name, scratch_dir() / name))
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
