"""The live control panel of notebooks 04 and 05, without a browser: built on a real lab, its buttons call the
lab (start, kill, restart, a new lab with another replica count), its slices of load measure real watch lag,
and its chart redraws while the load runs in the background. Under papermill no panel is built."""

import pytest

import kinelab as kl
from conftest import wait_until
from kinelab.show.widgets import LabPanel, wanted


def test_a_panel_is_wanted_in_jupyterlab_only_unless_asked(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)  # papermill, nbclient, a terminal
    assert not wanted(None) and wanted(True)
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/04-watch-lag-across-replicas.ipynb")  # Jupyter Server
    assert wanted(None) and not wanted(False)


def lag_rows(panel) -> list:
    spec = panel.chart().to_dict()
    (points,) = [rows for rows in spec["datasets"].values() if rows and "lag_ms" in rows[0]]
    return points


@pytest.fixture
def panel(kine, monkeypatch, tmp_path):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # render() formats through an IPython shell
    made = LabPanel(lambda n: kl.Lab(replicas=n, datastore="postgres"), replicas=2, rate=40, slice_s=1.5)
    yield made
    made.close()
    assert made.lab is None


def test_panel_drives_a_lab_and_its_faults(panel):
    assert panel.kill_button.disabled and panel.running.disabled and "no lab" in panel.status.value
    panel.start_button.click()
    lab = panel.lab
    assert lab.replica_count == 2 and not panel.kill_button.disabled
    assert [value for _, value in panel.writer.options] == ["round-robin", 0, 1]
    assert (panel.writer.value, panel.target.value) == ("round-robin", 0)
    assert panel.status.value.startswith("replica 0 up &middot; replica 1 up")

    panel.writer.value = 0  # pinned: replica 1 sees replica 0's writes on its 1 s poll
    assert panel.step() > 0
    rows = lag_rows(panel)
    assert {(r["observer"], r["writer"]) for r in rows} == {("replica 0", "replica 0"), ("replica 1", "replica 0")}
    other = [r["lag_ms"] for r in rows if r["observer"] == "replica 1"]
    assert 100 < sum(other) / len(other) < 1600

    panel.target.value = 1
    panel.kill_button.click()
    assert not lab.status()["replicas"][1]["alive"] and "replica 1 <b>DOWN</b>" in panel.status.value
    panel.writer.value = "round-robin"
    before = len(lag_rows(panel))
    assert panel.step() > 0  # replica 0 still takes its share; the writes sent to replica 1 fail
    spec = panel.chart().to_dict()
    failed = [rows for rows in spec["datasets"].values() if rows and "error" in rows[0]]
    assert failed and {r["writer"] for r in failed[0]} == {"replica 1"}
    assert all(r["observer"] == "replica 0" for r in lag_rows(panel)[before:])

    panel.restart_button.click()
    assert lab.status()["replicas"][1]["alive"] and "DOWN" not in panel.status.value

    # "run load": slices run in the background and the chart redraws after each
    slices = panel.slices
    panel.running.value = True
    try:
        wait_until(lambda: panel.slices >= slices + 2 and panel.chart_area.outputs, timeout_s=30,
                   what="two background slices")
    finally:
        panel.running.value = False
    (output,) = panel.chart_area.outputs
    assert "watch lag over time" in str(output["data"])

    # another replica count: a new lab, the old one stopped
    panel.replicas.value = 3
    panel.start_button.click()
    assert panel.lab is not lab and panel.lab.replica_count == 3 and lab.model.state == "stopped"
    assert [value for _, value in panel.target.options] == [0, 1, 2]


def test_panel_chart_payload_stays_bounded(kine, monkeypatch, tmp_path):
    """A long session redraws the same amount: the chart holds the last `window_s` seconds, at most
    `max_points` points, while the totals in its subtitle keep counting the whole run."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    panel = LabPanel(lambda n: kl.Lab(replicas=n, datastore="postgres"), replicas=2, rate=100, slice_s=1.0,
                     window_s=3.0, max_points=150)
    try:
        panel.start_button.click()
        sizes, totals = [], []
        for _ in range(8):
            panel.step()
            panel.render()
            spec = panel.chart().to_dict()
            assert sum(len(rows) for rows in spec["datasets"].values()) <= 150
            sizes.append(panel.payload_bytes)
            totals.append(int(spec["title"]["subtitle"][0].split(" watch events")[0].split(", ")[-1].replace(",", "")))
    finally:
        panel.close()
    assert totals == sorted(totals) and totals[-1] > 4 * totals[1], totals  # the run keeps growing ...
    assert max(sizes) < 80_000 and sizes[-1] < 1.3 * max(sizes[2:4]), sizes  # ... and what is sent does not
    assert "OLD: the lab this chart measured was stopped" in str(panel.chart_area.outputs[0]["data"])
