"""Every notebook runs headless under papermill with its defaults and with one other parameter set; each
ends with a cell that asserts its lesson's claim against the measurement, so a wrong claim fails here."""

from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXECUTED = NOTEBOOKS.parent / "build" / "notebooks"  # kept after the run: CI's artefacts, papermill's error banners
RUNS = [
    ("01-quickstart", {}), ("01-quickstart", {"replicas": 3, "datastore": "postgres", "seed": 5}),
    ("02-revisions-and-mvcc", {}), ("02-revisions-and-mvcc", {"datastore": "postgres", "updates": 5}),
    ("03-compaction", {}), ("03-compaction", {"duration_s": 8, "rate": 80}),
    ("04-watch-lag-across-replicas", {}), ("04-watch-lag-across-replicas", {"replicas": 2, "rate": 20}),
    ("05-deployment-modes", {}), ("05-deployment-modes", {"replicas": 2, "writes": 8, "duration_s": 6}),
    ("07-consistency-check", {}), ("07-consistency-check", {"checks": 3, "rate": 40}),
    ("08-investigate-your-datastore", {}),
]


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
