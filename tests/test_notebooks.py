"""Every notebook runs headless under papermill with its defaults and with one other parameter set; each
ends with a cell that asserts its lesson's claim against the measurement, so a wrong claim fails here. Every
notebook, opened with its defaults (`mode = "auto"`) where Kine and Go cannot be found, replays its recording in
data/ instead, saying so in one line, with every chart titled REPLAY and the claim still asserted; `mode = "live"`
there fails loudly."""

import hashlib
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest

from kinelab import KINE_VERSION
from kinelab.provision.tools import MIN_GO_VERSION, find_go, find_kine
from kinelab.show import charts, replay

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = NOTEBOOKS.parent / "build" / "notebooks"  # kept after the run: CI's artefacts, papermill's error banners
RUNS = [
    ("01-quickstart", {}), ("01-quickstart", {"replicas": 3, "datastore": "postgres", "seed": 5}),
    ("02-revisions-and-mvcc", {}), ("02-revisions-and-mvcc", {"datastore": "postgres", "updates": 5}),
    ("03-compaction", {}), ("03-compaction", {"duration_s": 8, "rate": 80}),
    ("04-watch-lag-across-replicas", {}), ("04-watch-lag-across-replicas", {"replicas": 2, "rate": 20}),
    ("05-deployment-modes", {}),
    ("05-deployment-modes", {"replicas": 2, "writes": 8, "duration_s": 6, "watch_cache": False}),
    ("06-troubleshooting", {}), ("06-troubleshooting", {"small_cap": 3, "duration_s": 6,
                                                        "isolation": "serializable"}),
    ("07-consistency-check", {}), ("07-consistency-check", {"checks": 3, "rate": 40}),
    ("08-investigate-your-datastore", {}),
    # two releases (the pinned one and v0.17.2, which tests/test_versions.py builds) instead of the four recorded
    ("09-did-this-release-lose-writes", {"versions": ["v0.17.2", "v0.17.5"], "mode": "live"}),
    ("10-high-availability", {}), ("10-high-availability", {"replication": "sync", "path": "proxy", "lag_s": 4}),
    # two small clusters instead of the recorded 10, 50 and 200 nodes (minutes each)
    ("11-what-a-cluster-writes", {"node_counts": [10, 40], "settle_s": 20, "idle_s": 30, "rollout_s": 10}),
]
REPLAYS = sorted({name for name, _ in RUNS})  # every notebook also replays its recording in data/


def test_every_notebook_is_covered():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == {name for name, _ in RUNS}


@pytest.mark.parametrize("name, parameters", RUNS, ids=[f"{n}-{'defaults' if not p else 'other'}" for n, p in RUNS])
def test_notebook_runs_and_its_claim_holds(kine, tmp_path, name, parameters):
    EXECUTED.mkdir(parents=True, exist_ok=True)
    output = EXECUTED / f"{name}-{'defaults' if not parameters else 'other'}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path))


def test_investigate_notebook_reads_a_sqlite_path_and_writes_its_report(kine, tmp_path):
    import kinelab as kl
    from kinelab.drive.workload import burst

    with kl.Lab(replicas=1, datastore="sqlite", dir=tmp_path / "lab") as lab:
        burst([lab.client(0)], configmaps=10, nodes=2, events=3)
        state = lab.dir / "sqlite" / "state.db"
        before = state.read_bytes()
        papermill.execute_notebook(str(NOTEBOOKS / "08-investigate-your-datastore.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"sqlite_path": str(state), "report_dir": str(tmp_path / "report")},
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
        assert state.read_bytes() == before  # never writes to the target
    assert "configmaps" in (tmp_path / "report" / "report.md").read_text()


def _data_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(replay.DATA.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@contextmanager
def without_kine_or_go(work: Path):
    """Where Kine cannot be found or built: KINELAB_KINE_BIN unset, an empty tool cache, and a PATH holding only
    this Python's directory (no kine, no go); papermill's kernel inherits this environment. Outside Jupyter
    Server (no JPY_SESSION_NAME) no control panel is built. Yields the empty cache."""
    cache = work / "empty-cache"
    cache.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("KINELAB_KINE_BIN", raising=False)
        env.delenv("JPY_SESSION_NAME", raising=False)
        env.setenv("KINELAB_CACHE", str(cache))
        env.setenv("PATH", str(Path(sys.executable).parent))
        assert find_kine() is None and shutil.which("kine") is None and find_go() is None
        yield cache


@pytest.fixture(scope="module", params=REPLAYS)
def replayed(request, tmp_path_factory):
    """The notebook run with its defaults (`mode = "auto"`) where Kine and Go are missing."""
    name, work = request.param, tmp_path_factory.mktemp("replay")
    output = EXECUTED / f"{name}-replay.ipynb"
    EXECUTED.mkdir(parents=True, exist_ok=True)
    before = _data_digest()
    with without_kine_or_go(work) as cache:
        try:
            papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), kernel_name="python3",
                                       progress_bar=False, cwd=str(work))
            error = None
        except papermill.PapermillExecutionError as exc:
            error = exc
    return SimpleNamespace(name=name, error=error, notebook=nbformat.read(output, as_version=4), cache=cache,
                           data_unchanged=_data_digest() == before)


def test_notebook_replays_without_kine(replayed):
    assert replayed.error is None, f"{replayed.name}: {replayed.error}"
    assert not any(replayed.cache.iterdir())  # nothing was built or fetched
    assert replayed.data_unchanged  # the replay worked on copies
    said = [line for cell in replayed.notebook.cells if cell.cell_type == "code" for out in cell.outputs
            for line in out.get("text", "").splitlines() if line.startswith("mode auto -> ")]
    assert len(said) == 1, said
    assert said[0].startswith(f"mode auto -> replay: Kine {KINE_VERSION}"), said
    assert "not installed here; `kinelab install" in said[0], said
    assert said[0].endswith(f"(about 2 minutes, needs Go {MIN_GO_VERSION}+; pip install 'kinelab[go]' brings one); "
                            'then set mode = "live" (or rerun) for a live lab'), said


def test_explicit_live_mode_fails_loudly_without_kine(tmp_path):
    with without_kine_or_go(tmp_path):
        with pytest.raises(papermill.PapermillExecutionError) as failed:
            papermill.execute_notebook(str(NOTEBOOKS / "01-quickstart.ipynb"), str(tmp_path / "out.ipynb"),
                                       parameters={"mode": "live"}, kernel_name="python3", progress_bar=False,
                                       cwd=str(tmp_path))
    assert failed.value.ename == "ToolError" and "Go is missing" in failed.value.evalue


def chart_titles(spec: dict) -> list:
    """The title of a compiled chart, or of each chart in a concatenation of charts (`a & b`): Vega puts the
    title of a part on the group mark that draws it."""
    if "title" in spec:
        title = spec["title"]
        return [title["text"] if isinstance(title, dict) else title]
    return [t for mark in spec.get("marks", []) if mark.get("type") == "group" for t in chart_titles(mark)]


def chart_spec(output: dict):
    """The Vega spec of a chart output (charts.mimebundle), after checking the PNG beside it that viewers
    without Vega show; None for other outputs."""
    data = output.get("data", {})
    if charts.VEGA_MIME not in data:
        return None
    assert data["image/png"] and "vnd.vegalite" not in str(data.keys()) and "text/html" not in data
    return data[charts.VEGA_MIME]


def test_replayed_charts_carry_the_replay_label(replayed):
    cells = [c for c in replayed.notebook.cells if c.cell_type == "code"]
    specs = [spec for c in cells for out in c.outputs if (spec := chart_spec(out)) is not None]
    assert len(specs) == sum("charts." in c.source for c in cells)  # every chart cell drew its chart
    for spec in specs:
        titles = chart_titles(spec)
        assert titles and all(t.startswith(replay.REPLAY_LABEL + " of data/") for t in titles), titles


def test_replay_datasets_are_small_and_each_is_described():
    manifest = replay.datasets()
    recorded = {p.name for p in replay.DATA.iterdir()} - {"README.md", "record.py", replay.MANIFEST}
    assert recorded == set(manifest)
    assert sum((replay.DATA / name).stat().st_size for name in manifest) < 11 * 2**20
    readme = (replay.DATA / "README.md").read_text()
    for name, entry in manifest.items():  # notebook 09 compares releases, the pinned one among them
        assert f"`{name}`" in readme and KINE_VERSION in entry["kine_version"].split(", ")
        assert {"notebook", "recorded_at", "datastore", "replicas", "parameters", "command"} <= set(entry)
        assert (NOTEBOOKS / f"{entry['notebook']}.ipynb").exists()
