"""JupyterLab as a workshop participant sees it: started by `make lab` (127.0.0.1, a token), driven by Playwright
with Debian's Chromium (never a downloaded browser), every request to an address off this machine blocked and
counted. Notebooks 04 and 05 run whole in live mode: every chart must draw marks with no error text and no bar
may leave a blank output; then their control panels are driven button by button, reading the status line and
the redrawn chart after each press. Screenshots go to build/screenshots/."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import psutil
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import REPO, wait_until
from kinelab.provision.apiserver import can_build, find_apiserver, install_apiserver
from kinelab.provision.process import free_port

CHROMIUM = Path("/usr/bin/chromium")
# A fresh profile (the user-data-dir) per run, and nothing Chromium would fetch for itself
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "build" / "screenshots"
NOTIFICATIONS = "@jupyterlab/apputils-extension/notification.jupyterlab-settings"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")


def _loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def jupyterlab(kine, tmp_path_factory):
    """`make lab` on a copy of the notebooks (JupyterLab saves what it runs), on a free port with a known token,
    its settings and workspaces fresh, and progress bars on as a participant has them."""
    work = tmp_path_factory.mktemp("jupyterlab")
    notebooks = work / "notebooks"
    notebooks.mkdir()
    for path in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(path, notebooks)
    settings = work / "settings" / NOTIFICATIONS
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no toast over the cells
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"), "IPYTHONDIR": str(work / "ipython"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    env.pop("KINELAB_PROGRESS", None)
    log = work / "jupyterlab.log"
    server = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_DIR={notebooks}",
         f"LAB_ARGS=--port={port} --IdentityProvider.token={token} --LabApp.expose_app_in_browser=True"],
        cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200
        except OSError:
            assert server.poll() is None, log.read_text()[-3000:]
            return False

    try:
        wait_until(answers, timeout_s=90, interval_s=0.5, what="JupyterLab to answer")
        yield SimpleNamespace(url=url, token=token, server=server, dir=notebooks, log=log)
    finally:
        try:  # Jupyter Server stops its kernels, then exits
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST"),
                                   timeout=10)
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium with a fresh profile; a request to anything but loopback is aborted and recorded in `blocked`."""
    blocked = []

    def gate(route):
        if _loopback(route.request.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 1000})
        context.route("**/*", gate)
        try:
            yield SimpleNamespace(context=context, blocked=blocked)
        finally:
            context.close()


# --- driving JupyterLab -------------------------------------------------------------------------------------

NOTEBOOK_STATE = """() => {
    const nb = window.jupyterapp.shell.currentWidget;
    const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
    const cells = nb.content.widgets.filter(c => c.model.type === 'code');
    return {kernel: kernel ? kernel.status : 'none',
            queued: [...nb.node.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('*')).length,
            executed: cells.filter(c => c.model.executionCount !== null).length, code_cells: cells.length,
            errors: cells.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error')
                         .map(o => o.ename + ': ' + o.evalue)};
}"""

# Per chart (JupyterLab's Vega renderer): the marks drawn (Vega's role-mark groups hold the data's marks, axes
# and legends have roles of their own), its title and subtitle lines, and any text outside the SVG (errors).
CHARTS = """scope => [...scope.querySelectorAll('.jp-RenderedVegaCommon5')].map(chart => ({
    marks: chart.querySelectorAll('g.role-mark > path, g.role-mark > line, g.role-mark > rect').length,
    title: [...chart.querySelectorAll('g.role-title text')].map(t => t.textContent).join(' | '),
    errors: [...chart.querySelectorAll('.error, pre')].map(e => e.textContent).join(' ')
}))"""

# Outputs that show nothing but take room: what a finished progress bar must not leave
BLANK_OUTPUTS = """nb => [...nb.querySelectorAll('.jp-OutputArea-child')]
    .filter(o => o.textContent.trim() === '' && !o.querySelector('svg, canvas, img, .jupyter-widgets, input, button'))
    .filter(o => o.getBoundingClientRect().height >= 8)
    .map(o => Math.round(o.getBoundingClientRect().height) + ' px: ' + o.outerHTML.slice(0, 400))"""


def open_notebook(browser, lab, name: str):
    page = browser.context.new_page()
    # A workspace of its own, reset: JupyterLab would otherwise reopen the notebooks an earlier test left open,
    # and one of them could be the current notebook that Run All runs.
    page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={lab.token}")
    page.wait_for_function(f"() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                           f"window.jupyterapp.shell.currentWidget.content && ({NOTEBOOK_STATE})().kernel === 'idle'",
                           timeout=90_000)
    return page


def run_all(page, timeout_s: float) -> dict:
    """Run > Run All Cells, and wait until every code cell ran (or one failed) and the kernel is idle."""
    deadline = time.monotonic() + timeout_s
    asked_at = None
    while True:
        state = page.evaluate(NOTEBOOK_STATE)
        finished = state["errors"] or state["executed"] == state["code_cells"]
        if finished and not state["queued"] and state["kernel"] == "idle":
            return state
        # The command acts on the notebook JupyterLab tracks as current; one that is not focused yet ignores it.
        untouched = not state["executed"] and not state["queued"] and state["kernel"] == "idle"
        if asked_at is None or (untouched and time.monotonic() - asked_at > 15):
            page.evaluate("(() => { const nb = window.jupyterapp.shell.currentWidget;"
                          " window.jupyterapp.shell.activateById(nb.id);"
                          " window.jupyterapp.commands.execute('notebook:run-all-cells'); })()")
            asked_at = time.monotonic()
        assert time.monotonic() < deadline, f"run all did not finish in {timeout_s} s: {state}"
        time.sleep(0.5)


def charts_in(locator) -> list:
    return locator.evaluate(CHARTS)


def assert_charts_drawn(locator, expected: int) -> list:
    """Wait for `expected` charts to have marks; none may show error text."""
    wait_until(lambda: len(drawn := charts_in(locator)) == expected and all(c["marks"] for c in drawn),
               timeout_s=30, what=f"{expected} charts with marks: {charts_in(locator)}")
    drawn = charts_in(locator)
    assert not any(c["errors"] for c in drawn), drawn
    assert "Error loading script" not in locator.inner_text()
    return drawn


def shot(page, name: str, locator=None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (locator or page).screenshot(path=str(SHOTS / f"{name}.png"))


def kernel_process(lab, page) -> psutil.Process:
    """The kernel of the notebook `page` shows (an earlier test's kernel may still run beside it)."""
    kernel_id = page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")
    (kernel,) = [p for p in psutil.Process(lab.server.pid).children(recursive=True)
                 if "ipykernel_launcher" in (argv := " ".join(p.cmdline())) and f"kernel-{kernel_id}.json" in argv]
    return kernel


class Panel:
    """The control panel in a notebook's last cell, driven as a participant drives it."""

    def __init__(self, page):
        self.page = page
        self.root = page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-Cell-outputArea")
        self.status = self.root.locator(".widget-html-content").first

    def button(self, name: str):
        # by its text: the accessible name also holds the icon's glyph
        return self.root.locator("button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))

    def status_text(self) -> str:
        return self.status.inner_text()

    def wait_status(self, predicate, what: str, timeout_s: float = 60) -> str:
        wait_until(lambda: predicate(self.status_text()), timeout_s=timeout_s, interval_s=0.25,
                   what=f"status line {what}; it says {self.status_text()!r}")
        return self.status_text()

    def chart_title(self) -> str:
        drawn = charts_in(self.root)
        return drawn[0]["title"] if drawn and drawn[0]["marks"] else ""

    def wait_chart(self, predicate, what: str, timeout_s: float = 45) -> str:
        wait_until(lambda: predicate(self.chart_title()), timeout_s=timeout_s, interval_s=0.25,
                   what=f"chart {what}; its title says {self.chart_title()!r}")
        return self.chart_title()

    def choose_target(self, replica: int) -> None:
        self.root.locator(".widget-dropdown", has=self.page.locator("label", has_text="replica")) \
            .locator("select").select_option(label=f"replica {replica}")


def totals(title: str) -> tuple:
    """(acknowledged, failed) writes from the panel chart's subtitle."""
    found = re.search(r"([\d,]+) writes acknowledged, ([\d,]+) failed", title)
    return tuple(int(x.replace(",", "")) for x in found.groups())


def drive_panel(page, lab, name: str, apiservers: bool) -> dict:
    """start lab, run load, kill replica 1, restart it, stop lab; the status line and the chart after each."""
    panel = Panel(page)
    seen = {}
    panel.root.scroll_into_view_if_needed()
    shot(page, f"{name}-panel-before", panel.root)
    assert panel.button("kill").is_disabled() and "mod-danger" not in panel.button("kill").get_attribute("class")
    seen["before"] = panel.wait_status(lambda s: "no lab running" in s, "before a lab")

    panel.button("start lab").click()
    ready = "apiserver 1 ready" if apiservers else "replica 1 up"
    seen["started"] = panel.wait_status(lambda s: ready in s and "replica 0 up" in s, "with the lab up", 120)
    assert "mod-danger" in panel.button("kill").get_attribute("class") and panel.button("kill").is_enabled()
    assert "starting lab" not in panel.root.inner_text()  # no progress bar left in the panel's log
    first = re.search(r"checked (\S+)", seen["started"]).group(1)
    panel.wait_status(lambda s: re.search(r"checked (\S+)", s).group(1) != first, "refreshed with no load running", 10)

    panel.button("run load").click()
    expect(panel.button("load running")).to_have_class(re.compile(r"\bmod-success\b"))  # green while it runs
    seen["loading"] = panel.wait_chart(lambda t: "writes acknowledged" in t and totals(t)[0] > 0, "with writes")
    shot(page, f"{name}-panel-load", panel.root)

    panel.choose_target(1)
    panel.button("kill").click()
    down = "apiserver 1 NOT READY" if apiservers else "replica 1 DOWN"
    seen["killed"] = panel.wait_status(lambda s: "replica 1 DOWN" in s and down in s, "with replica 1 down")
    failed_before = totals(panel.chart_title())[1]
    seen["killed_chart"] = panel.wait_chart(lambda t: totals(t)[1] > failed_before, "with failed writes")
    shot(page, f"{name}-panel-killed", panel.root)

    panel.button("restart").click()
    seen["restarted"] = panel.wait_status(lambda s: "DOWN" not in s and "NOT READY" not in s and ready in s,
                                          "with replica 1 back", 90)
    written = totals(panel.chart_title())[0]
    seen["restarted_chart"] = panel.wait_chart(lambda t: totals(t)[0] > written, "with new writes")
    shot(page, f"{name}-panel-restarted", panel.root)

    kernel = kernel_process(lab, page)
    assert kernel.children(recursive=True)  # the lab's processes run under the kernel
    panel.button("load running").click()
    panel.button("stop lab").click()
    seen["stopped"] = panel.wait_status(lambda s: "no lab running" in s, "with the lab stopped")
    seen["stopped_chart"] = panel.wait_chart(lambda t: t.startswith("OLD: "), "marked as old")
    wait_until(lambda: not kernel.children(recursive=True), timeout_s=20, what="the lab's processes to end")
    assert panel.button("kill").is_disabled() and "mod-danger" not in panel.button("kill").get_attribute("class")
    shot(page, f"{name}-panel-stopped", panel.root)

    # the chart stays interactive: a point's tooltip names its observer and lag
    point = panel.root.locator("g.mark-symbol.role-mark path").first
    point.hover(force=True)
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=5_000)
    seen["tooltip"] = tooltip.inner_text()
    assert "lag_ms" in seen["tooltip"] and "observer" in seen["tooltip"]
    return seen


def run_notebook(browser, lab, name: str, charts: int, timeout_s: float) -> tuple:
    """Open notebook `name`, Run All, and check it ran without error, drew `charts` charts and left no blank
    output boxes (finished progress bars); the page, the notebook's locator and the charts drawn."""
    page = open_notebook(browser, lab, name)
    started = time.monotonic()
    state = run_all(page, timeout_s=timeout_s)
    assert not state["errors"], state
    notebook = page.locator(".jp-Notebook")
    drawn = assert_charts_drawn(notebook, charts)
    assert notebook.evaluate(BLANK_OUTPUTS) == []
    print(f"notebook {name} ran in {time.monotonic() - started:.0f} s")
    return page, notebook, drawn


# --- the tests ----------------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_notebook_04_and_its_panel_in_jupyterlab(jupyterlab, browser):
    page, notebook, drawn = run_notebook(browser, jupyterlab, "04-watch-lag-across-replicas", 2, timeout_s=240)
    assert all(c["title"].startswith("watch lag per observer") for c in drawn), drawn
    assert "mode auto -> live" in notebook.text_content()
    shot(page, "04-notebook")

    started = time.monotonic()
    seen = drive_panel(page, jupyterlab, "04", apiservers=False)
    print(f"notebook 04's panel driven in {time.monotonic() - started:.0f} s:", json.dumps(seen, indent=1))
    assert seen["loading"] != seen["killed_chart"] != seen["restarted_chart"] != seen["stopped_chart"]
    assert browser.blocked == [], browser.blocked
    page.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(find_apiserver() is None and not can_build(), reason="no kube-apiserver, and no Go to build it")
def test_notebook_05_and_its_panel_in_jupyterlab(jupyterlab, browser):
    install_apiserver(log=print)  # built already where test_apiserver ran; a live notebook 05, not its replay
    page, _, drawn = run_notebook(browser, jupyterlab, "05-deployment-modes", 1, timeout_s=900)
    assert "writes accepted per kube-apiserver" in drawn[0]["title"], drawn
    shot(page, "05-notebook")

    started = time.monotonic()
    seen = drive_panel(page, jupyterlab, "05", apiservers=True)
    print(f"notebook 05's panel driven in {time.monotonic() - started:.0f} s:", json.dumps(seen, indent=1))
    assert "apiserver 0 ready" in seen["killed"]  # shared-db: only the dead replica's apiserver goes
    assert browser.blocked == [], browser.blocked
    page.close()
