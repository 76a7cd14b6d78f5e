"""What a notebook shows without a network: charts as a Vega spec plus a PNG (never a CDN script), a chart that
an nbconvert export still shows, the renderer a user chose left alone, and the `mode = "auto"` choice.
The charts drawn in JupyterLab itself are tested in test_browser.py."""

import json
import re
import subprocess
import sys

import altair as alt
import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from kinelab.errors import UsageError
from kinelab.provision.tools import KINE_VERSION
from kinelab.show import charts, replay


@pytest.fixture(scope="module")
def watch_lag():
    """A copy of a recording: opening data/'s own file would upgrade it in place."""
    return replay.dataset("watch-lag.duckdb")


def test_importing_kinelab_show_makes_charts_offline(watch_lag):
    assert alt.renderers.active == charts.RENDERER
    data, metadata = charts.watch_lag_timeline(watch_lag)._repr_mimebundle_()
    assert set(data) == {charts.VEGA_MIME, "image/png", "text/plain"}
    vega = data[charts.VEGA_MIME]
    assert vega["$schema"].endswith("/vega/v5.json") and vega["marks"]
    assert data["image/png"].startswith("iVBORw0KGgo")  # base64 of the PNG signature
    assert "tooltip" in json.dumps(vega)  # hovering a point names its observer and lag
    assert "jsdelivr" not in json.dumps(data) and "<script" not in json.dumps(data)
    assert metadata[charts.VEGA_MIME]["embed_options"]["actions"]["editor"] is False  # no online editor link


def test_a_renderer_chosen_before_is_left_alone():
    chosen = subprocess.run([sys.executable, "-c", "import altair as alt; alt.renderers.enable('svg'); "
                             "import kinelab.show; print(alt.renderers.active)"], capture_output=True, text=True)
    assert chosen.stdout.strip() == "svg", chosen.stderr


def test_an_exported_notebook_shows_the_chart(tmp_path, monkeypatch, watch_lag):
    """nbconvert's HTML of an executed notebook has the chart as an image, with no script to fetch."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"from kinelab.show import charts\ncharts.watch_lag({str(watch_lag)!r}, label='exported')")])
    NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    (output,) = notebook.cells[0].outputs
    assert output["output_type"] == "execute_result" and charts.VEGA_MIME in output["data"]
    page, _ = HTMLExporter().from_notebook_node(notebook)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 1  # the chart, drawn by vl-convert
    assert "cdn.jsdelivr" not in page and "vegaEmbed" not in page


def test_auto_mode_is_live_only_where_a_lab_can_start(monkeypatch, tmp_path, capsys, kine):
    assert replay.choose_mode("live") == "live" and replay.choose_mode("replay") == "replay"
    with pytest.raises(UsageError, match="mode must be one of auto, live, replay, not 'life'"):
        replay.choose_mode("life")
    assert replay.choose_mode("auto") == "live"
    assert capsys.readouterr().out == "mode auto -> live: everything this notebook runs is installed here\n"

    monkeypatch.setenv("KINELAB_CACHE", str(tmp_path))  # an empty tool cache: no Kine
    monkeypatch.delenv("KINELAB_KINE_BIN", raising=False)
    assert replay.choose_mode("auto") == "replay"
    assert capsys.readouterr().out.startswith(f"mode auto -> replay: Kine {KINE_VERSION} is not installed here; ")

    monkeypatch.setenv("KINELAB_KINE_BIN", str(tmp_path / "no-such-kine"))  # a wrong setting is the reason given
    assert replay.choose_mode("auto") == "replay"
    assert "KINELAB_KINE_BIN=" in capsys.readouterr().out

    monkeypatch.setenv("KINELAB_KINE_BIN", str(kine.path))  # Kine, but no kube-apiserver for notebook 05
    monkeypatch.delenv("KINELAB_KUBE_APISERVER_BIN", raising=False)
    assert replay.choose_mode("auto", apiservers=True) == "replay"
    assert "kube-apiserver v1.37.2 is not built here" in capsys.readouterr().out

    monkeypatch.setenv("KINELAB_KWOK_BIN", str(tmp_path / "no-such-kwok"))  # notebook 11 needs kwok too
    assert replay.choose_mode("auto", nodes=True) == "replay"
    assert "KINELAB_KWOK_BIN=" in capsys.readouterr().out


def test_a_finished_progress_bar_leaves_an_empty_output(tmp_path, monkeypatch):
    """In a notebook kernel a bar is one display, updated in place, whose data is emptied when the step ends
    (JupyterLab then gives it no room; test_browser.py measures that); bars of other threads are not drawn."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("KINELAB_PROGRESS")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import threading\nfrom kinelab import progress\n"
        "with progress.bar('counting', total=3) as advance:\n"
        "    for _ in range(3):\n        advance()\n"
        "def in_a_thread():\n    with progress.bar('elsewhere', total=1) as advance:\n        advance()\n"
        "thread = threading.Thread(target=in_a_thread)\nthread.start()\nthread.join()\nprint('done')")])
    NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    outputs = notebook.cells[0].outputs
    assert [(o["output_type"], o.get("data"), o.get("text")) for o in outputs] == \
        [("display_data", {}, None), ("stream", None, "done\n")], outputs
