"""A live control panel for the watch-lag and deployment-mode notebooks (ipywidgets): start a lab of N Kine
replicas, write at a chosen rate through one writer replica or round-robin, kill and restart a replica, and
watch the lag chart redraw while the load runs.

The load runs in a background thread in short slices. Each slice watches `/registry/` on every live replica,
writes the `configmaps` mix for `slice_s` seconds through all of them (a write sent to a dead replica fails and
is recorded), waits for the watches, stores writes, errors and watch events in the panel's own in-memory DuckDB
(the capture contract's tables, replica indexes as observer and writer) and redraws
`charts.watch_lag_timeline` over the last `window_s` seconds, at most `max_points` points: each redraw sends
about the same few hundred kilobytes however long the session runs. While a lab is up, another thread
refreshes the status line every `status_every_s` seconds, load or not. Nothing runs until "run load" is
pressed, and notebooks build a panel only when `wanted`: under papermill the parameters drive the notebook.
"""

from __future__ import annotations

import html
import os
import threading
import time
from typing import Callable, Optional

import duckdb
import ipywidgets as widgets

from .. import progress
from ..clock import Clock
from ..drive.pool import Background
from ..drive.workload import run_load
from ..errors import KinelabError, UsageError
from ..etcd import Etcd
from ..observe.runs import store_load, store_watch
from ..observe.store import ensure_schema, new_run
from ..observe.watchlag import WatchProbe
from . import charts

SETTLE_S = 1.5  # a slice waits this long for the watches: Kine's 1 s poll, and a margin


def wanted(interactive: Optional[bool]) -> bool:
    """Whether a notebook should build its panel: `interactive` when set; by default only in a kernel that
    Jupyter Server started for a notebook (it sets JPY_SESSION_NAME; papermill and nbclient do not)."""
    return bool(os.environ.get("JPY_SESSION_NAME")) if interactive is None else bool(interactive)


class LabPanel:
    """Controls over a lab made by `make_lab(replicas)` (an unstarted `kinelab.Lab`), with a live lag chart.
    The panel owns the labs it starts: "stop lab" stops one, and an owned lab's reaper stops it with the kernel."""

    def __init__(self, make_lab: Callable[[int], object], *, replicas: int = 3, rate: int = 30,
                 slice_s: float = 3.0, max_replicas: int = 5, window_s: float = 60.0, max_points: int = 1500,
                 status_every_s: float = 2.0):
        self.make_lab, self.slice_s, self.lab = make_lab, slice_s, None
        self.window_s, self.max_points, self.status_every_s = window_s, max_points, status_every_s
        self.con = duckdb.connect()  # the panel's measurements, in the capture contract's tables
        ensure_schema(self.con)
        self.run_id, self.clock, self.slices, self._load = None, Clock(), 0, None
        self.payload_bytes = 0  # the size of the last chart sent to the browser
        self._note, self._status_lock = "", threading.Lock()
        self._status: Optional[Background] = None
        self.replicas = widgets.IntSlider(value=replicas, min=1, max=max_replicas, description="replicas")
        self.start_button = widgets.Button(description="start lab", icon="play")
        self.stop_button = widgets.Button(description="stop lab", icon="stop")
        self.rate = widgets.IntSlider(value=rate, min=1, max=200, description="writes/s")
        self.writer = widgets.Dropdown(description="writer")
        self.running = widgets.ToggleButton(description="run load", icon="play", tooltip="start writing")
        self.target = widgets.Dropdown(description="replica")
        self.kill_button = widgets.Button(description="kill", icon="times")
        self.restart_button = widgets.Button(description="restart", icon="redo")
        self.status = widgets.HTML()
        self.chart_area = widgets.Output()
        self.log = widgets.Output()  # what the buttons print: lab start-up, errors
        self.start_button.on_click(self._start_lab)
        self.stop_button.on_click(self._stop_lab)
        self.kill_button.on_click(lambda _: self._fault(self.lab.kill))
        self.restart_button.on_click(lambda _: self._fault(self.lab.restart))
        self.running.observe(self._toggled, names="value")
        self.box = widgets.VBox([widgets.HBox([self.replicas, self.start_button, self.stop_button]),
                                 widgets.HBox([self.rate, self.writer, self.running]),
                                 widgets.HBox([self.target, self.kill_button, self.restart_button]),
                                 self.status, self.chart_area, self.log])
        self._refresh()

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    # --- the buttons ----------------------------------------------------------------------------------------
    def _start_lab(self, _=None) -> None:
        """(Re)start: stop the load and the panel's lab, then start a lab of `replicas` replicas."""
        with self.log:
            self._stop_lab()
            self.status.value = f"<i>starting a lab of {self.replicas.value} replicas...</i>"
            try:
                with progress.silenced():  # the status line tells; a bar in the log output could never be cleared
                    self.lab = self.make_lab(self.replicas.value).start()
            finally:
                self._refresh()  # on a failure: "no lab running", and the error below it
            self.run_id = new_run(self.con, "watchlag", {"panel": True, "replicas": self.replicas.value})
            self.clock, self.slices, self._note = Clock(), 0, ""
            count = self.lab.replica_count
            self.writer.options = [("round-robin", "round-robin")] + [(f"replica {i}", i) for i in range(count)]
            self.target.options = [(f"replica {i}", i) for i in range(count)]
            self.writer.value, self.target.value = "round-robin", 0  # new options leave no value chosen
            self.chart_area.outputs = ()  # the previous lab's chart
            self._status = Background(self._status_loop, name="kinelab-panel-status").start()
            self._refresh()

    def _stop_lab(self, _=None) -> None:
        self.running.value = False
        for loop in (self._load, self._status):
            if loop is not None:
                loop.close()
        self._load = self._status = None
        if self.lab is not None:
            self.lab.stop()
            self.lab = None
            if self._measured():  # the last chart stays, marked as the record of a lab that is gone
                self._draw(label=f"OLD: the lab this chart measured was stopped at {time.strftime('%H:%M:%S')}; "
                                 "start a lab to measure again")
        self._refresh()

    def _fault(self, action) -> None:
        with self.log:
            action(self.target.value)
            self._refresh()

    def _toggled(self, change) -> None:
        on = change["new"]
        self.running.description, self.running.icon = ("load running", "pause") if on else ("run load", "play")
        self.running.button_style = "success" if on else ""
        self.running.tooltip = "click to stop the load" if on else "start writing"
        if on and self._load is not None and self._load.stop.is_set():
            self._load.close()  # switched off and on again: the old load's last slice ends first
        if on and (self._load is None or not self._load.alive):
            self._load = Background(self._loop, name="kinelab-panel").start()
        elif not on and self._load is not None:
            self._load.stop.set()  # the slice under way ends; the button does not wait for it

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set() and self.lab is not None:
            try:
                self.step()
                self._note = ""
            except KinelabError as exc:  # e.g. every replica down: say so, try again next slice
                self._note = str(exc)
            self.render()

    def _status_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.status_every_s):
            try:
                self._refresh()
            except KinelabError:  # the lab went away between two looks: the next refresh tells
                pass

    # --- measuring and drawing ------------------------------------------------------------------------------
    def step(self) -> int:
        """One slice of load with a watch on every live replica, stored; the number of writes acknowledged."""
        lab = self.lab
        if lab is None:
            raise UsageError("no lab: start one first")
        alive = [r["index"] for r in lab.status()["replicas"] if r["alive"]]
        if not alive:
            raise UsageError("every replica is down: restart one")
        clients = [Etcd(endpoint) for endpoint in lab.endpoints]
        try:
            start_revision = max(clients[i].revision() for i in alive) + 1
            with WatchProbe([lab.endpoints[i] for i in alive], start_revision=start_revision,
                            clock=self.clock) as probe:
                result = run_load(clients, "configmaps", rate=self.rate.value, duration_s=self.slice_s,
                                  spread=self.writer.value, seed=self.slices + 1, clock=self.clock)
                probe.wait_for(max((w.revision for w in result.writes), default=start_revision), SETTLE_S)
        finally:
            for client in clients:
                client.close()
        for observer, replica in zip(probe.observers, alive):
            observer.index = replica  # the probe numbers its watches; the chart names replicas
        store_load(self.con, self.run_id, result)
        store_watch(self.con, self.run_id, probe)
        self.slices += 1
        return len(result.writes)

    def chart(self, label: Optional[str] = None):
        """The lag chart of the current lab's last `window_s` seconds, with the totals of all it measured."""
        return charts.watch_lag_timeline(self.con, self.run_id, window_s=self.window_s, max_points=self.max_points,
                                         label=label)

    def _measured(self) -> bool:
        return self.run_id is not None and self.con.execute(
            "SELECT count(*) FROM watch_events WHERE run_id = ?", [self.run_id]).fetchall()[0][0] > 0

    def _draw(self, label: Optional[str] = None) -> None:
        # Only the interactive Vega spec: a live panel's chart is not kept in a saved notebook, so no PNG
        data, metadata = charts.mimebundle(self.chart(label), static=False)
        self.payload_bytes = len(str(data))
        self.chart_area.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)

    def render(self) -> None:
        """Redraw the chart and the status line; safe from the load thread (it sets the output, never prints)."""
        if self._measured():
            self._draw()
        self._refresh()

    def _refresh(self) -> None:
        """Enable what applies (disabled buttons turn grey), and show which replicas (and apiservers) are up."""
        with self._status_lock:
            lab = self.lab
            for control in (self.stop_button, self.running, self.kill_button, self.restart_button):
                control.disabled = lab is None
            self.kill_button.button_style = "" if lab is None else "danger"
            self.restart_button.button_style = "" if lab is None else "warning"
            self.start_button.button_style = "primary" if lab is None else ""
            if lab is None:
                self.status.value = "<i>no lab running: choose the replicas and start one</i>"
                return
            status = lab.status()
            parts = [f"replica {r['index']} {'up' if r['alive'] else '<b>DOWN</b>'}" for r in status["replicas"]]
            parts += [f"apiserver {a['index']} {'ready' if a['ready'] else '<b>NOT READY</b>'}"
                      for a in status.get("apiservers", [])]
            load = "load running" if self.running.value else "load stopped"
            self.status.value = (" &middot; ".join(parts) + f" &middot; {load}, {self.slices} slices measured"
                                 f" &middot; checked {time.strftime('%H:%M:%S')}"
                                 + (f"<br><b>{html.escape(self._note)}</b>" if self._note else ""))

    def close(self) -> None:
        """Stop the load and the panel's lab, and close its widgets."""
        self._stop_lab()
        _close(self.box)
        self.con.close()


def _close(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close(child)
    widget.close()
