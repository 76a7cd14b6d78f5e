"""Every notebook runs headless under papermill with its defaults and with one other parameter set; each
ends with a cell that asserts its lesson's claim against the measurement, so a wrong claim fails here. Every
notebook also replays its recording in data/ (`-p mode replay`) where Kine cannot be found, with every chart
titled REPLAY and the claim still asserted."""

import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest

from kinelab import KINE_VERSION
from kinelab.provision.tools import find_kine
from kinelab.show import replay

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = NOTEBOOKS.parent / "build" / "notebooks"  # kept after the run: CI's artefacts, papermill's error banners
RUNS = [
    ("01-quickstart", {}), ("01-quickstart", {"replicas": 3, "datastore": "postgres", "seed": 5}),
    ("02-revisions-and-mvcc", {}), ("02-revisions-and-mvcc", {"datastore": "postgres", "updates": 5}),
    ("03-compaction", {}), ("03-compaction", {"duration_s": 8, "rate": 80}),
    ("04-watch-lag-across-replicas", {}), ("04-watch-lag-across-replicas", {"replicas": 2, "rate": 20}),
    ("05-deployment-modes", {}), ("05-deployment-modes", {"replicas": 2, "writes": 8, "duration_s": 6}),
    ("06-troubleshooting", {}), ("06-troubleshooting", {"small_cap": 3, "duration_s": 6,
                                                        "isolation": "serializable"}),
    ("07-consistency-check", {}), ("07-consistency-check", {"checks": 3, "rate": 40}),
    ("08-investigate-your-datastore", {}),
    ("10-high-availability", {}), ("10-high-availability", {"replication": "sync", "path": "proxy", "lag_s": 4}),
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


@pytest.fixture(scope="module", params=REPLAYS)
def replayed(request, tmp_path_factory):
    """The notebook run with `mode=replay` where Kine cannot be found or built: KINELAB_KINE_BIN unset, an
    empty tool cache, and a PATH holding only this Python's directory (no kine, no go); papermill's kernel
    inherits this environment. Outside Jupyter Server (no JPY_SESSION_NAME) no control panel is built."""
    name, work = request.param, tmp_path_factory.mktemp("replay")
    cache = work / "empty-cache"
    cache.mkdir()
    output = EXECUTED / f"{name}-replay.ipynb"
    EXECUTED.mkdir(parents=True, exist_ok=True)
    before = _data_digest()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("KINELAB_KINE_BIN", raising=False)
        env.delenv("JPY_SESSION_NAME", raising=False)
        env.setenv("KINELAB_CACHE", str(cache))
        env.setenv("PATH", str(Path(sys.executable).parent))
        assert find_kine() is None and shutil.which("kine") is None and shutil.which("go") is None
        try:
            papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters={"mode": "replay"},
                                       kernel_name="python3", progress_bar=False, cwd=str(work))
            error = None
        except papermill.PapermillExecutionError as exc:
            error = exc
    return SimpleNamespace(name=name, error=error, notebook=nbformat.read(output, as_version=4), cache=cache,
                           data_unchanged=_data_digest() == before)


def test_notebook_replays_without_kine(replayed):
    assert replayed.error is None, f"{replayed.name}: {replayed.error}"
    assert not any(replayed.cache.iterdir())  # nothing was built or fetched
    assert replayed.data_unchanged  # the replay worked on copies


def chart_titles(spec: dict) -> list:
    """The title of a chart, or of each chart in a concatenation of charts (`a & b`)."""
    if "title" in spec:
        title = spec["title"]
        return [title["text"] if isinstance(title, dict) else title]
    return [t for part in ("vconcat", "hconcat", "concat") for sub in spec.get(part, []) for t in chart_titles(sub)]


def chart_spec(output: dict):
    """The Vega-Lite spec of a chart output: Altair's mime bundle, or the spec its HTML renderer embeds in
    `(function(spec, embedOpt){...})(SPEC, OPTIONS)`; None for other outputs."""
    data = output.get("data", {})
    for mime, value in data.items():
        if mime.startswith("application/vnd.vegalite"):
            return value
    page = data.get("text/html", "")
    if "vegaEmbed" in page:
        return json.JSONDecoder().raw_decode(page, page.rindex("})(") + 3)[0]
    return None


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
    for name, entry in manifest.items():
        assert f"`{name}`" in readme and entry["kine_version"] == KINE_VERSION
        assert {"notebook", "recorded_at", "datastore", "replicas", "parameters", "command"} <= set(entry)
        assert (NOTEBOOKS / f"{entry['notebook']}.ipynb").exists()
