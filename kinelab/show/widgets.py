"""A live control panel for the watch-lag and deployment-mode notebooks (ipywidgets): start a lab of N Kine
replicas, write at a chosen rate through one writer replica or round-robin, kill and restart a replica, and
watch the lag chart redraw while the load runs.

The load runs in a background thread in short slices. Each slice watches `/registry/` on every live replica,
writes the `configmaps` mix for `slice_s` seconds through all of them (a write sent to a dead replica fails and
is recorded), waits for the watches, stores writes, errors and watch events in the panel's own in-memory DuckDB
(the capture contract's tables, replica indexes as observer and writer) and redraws
`charts.watch_lag_timeline`. Nothing runs until "run load" is pressed, and notebooks build a panel only when
`wanted`: under papermill the parameters drive the notebook.
"""

from __future__ import annotations

import html
import os
import threading
from typing import Callable, Optional

import duckdb
import ipywidgets as widgets

from ..clock import Clock
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
                 slice_s: float = 3.0, max_replicas: int = 5):
        self.make_lab, self.slice_s, self.lab = make_lab, slice_s, None
        self.con = duckdb.connect()  # the panel's measurements, in the capture contract's tables
        ensure_schema(self.con)
        self.run_id, self.clock, self.slices, self._thread = None, Clock(), 0, None
        self.replicas = widgets.IntSlider(value=replicas, min=1, max=max_replicas, description="replicas")
        self.start_button = widgets.Button(description="start lab", icon="play")
        self.stop_button = widgets.Button(description="stop lab", icon="stop")
        self.rate = widgets.IntSlider(value=rate, min=1, max=200, description="writes/s")
        self.writer = widgets.Dropdown(description="writer")
        self.running = widgets.ToggleButton(description="run load", icon="refresh")
        self.target = widgets.Dropdown(description="replica")
        self.kill_button = widgets.Button(description="kill", button_style="danger")
        self.restart_button = widgets.Button(description="restart", button_style="warning")
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
            self.lab = self.make_lab(self.replicas.value).start()
            self.run_id = new_run(self.con, "watchlag", {"panel": True, "replicas": self.replicas.value})
            self.clock, self.slices = Clock(), 0
            count = self.lab.replica_count
            self.writer.options = [("round-robin", "round-robin")] + [(f"replica {i}", i) for i in range(count)]
            self.target.options = [(f"replica {i}", i) for i in range(count)]
            self.writer.value, self.target.value = "round-robin", 0  # new options leave no value chosen
            self._refresh()

    def _stop_lab(self, _=None) -> None:
        self.running.value = False
        if self._thread is not None:
            self._thread.join()
        if self.lab is not None:
            self.lab.stop()
            self.lab = None
        self._refresh()

    def _fault(self, action) -> None:
        with self.log:
            action(self.target.value)
            self._refresh()

    def _toggled(self, change) -> None:
        if change["new"] and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._loop, name="kinelab-panel", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        # Progress bars drawn from this thread would land in whichever cell runs; the chart is the progress.
        previous = os.environ.get("KINELAB_PROGRESS")
        os.environ["KINELAB_PROGRESS"] = "0"
        try:
            while self.running.value and self.lab is not None:
                note = ""
                try:
                    self.step()
                except KinelabError as exc:  # e.g. every replica down: say so, try again next slice
                    note = str(exc)
                self.render(note)
        finally:
            if previous is None:
                os.environ.pop("KINELAB_PROGRESS", None)
            else:
                os.environ["KINELAB_PROGRESS"] = previous

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

    def chart(self):
        """The lag chart of everything measured on the current lab."""
        return charts.watch_lag_timeline(self.con, self.run_id)

    def render(self, note: str = "") -> None:
        """Redraw the chart and the status line; safe from the load thread (it sets the output, never prints)."""
        from IPython.core.formatters import format_display_data

        if self.run_id is not None and self.con.execute("SELECT count(*) FROM watch_events WHERE run_id = ?",
                                                        [self.run_id]).fetchall()[0][0]:
            data, metadata = format_display_data(self.chart())
            self.chart_area.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)
        self._refresh(note)

    def _refresh(self, note: str = "") -> None:
        """Enable what applies, and show which replicas (and apiservers) are up."""
        for control in (self.stop_button, self.running, self.kill_button, self.restart_button):
            control.disabled = self.lab is None
        if self.lab is None:
            self.status.value = "<i>no lab yet: choose the replicas and start one</i>"
            return
        status = self.lab.status()
        parts = [f"replica {r['index']} {'up' if r['alive'] else '<b>DOWN</b>'}" for r in status["replicas"]]
        parts += [f"apiserver {a['index']} {'ready' if a['ready'] else '<b>NOT READY</b>'}"
                  for a in status.get("apiservers", [])]
        self.status.value = (" &middot; ".join(parts) + f" &middot; {self.slices} slices measured"
                             + (f"<br><b>{html.escape(note)}</b>" if note else ""))

    def close(self) -> None:
        """Stop the load and the panel's lab, and close its widgets."""
        self._stop_lab()
        _close(self.box)
        self.con.close()


def _close(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close(child)
    widget.close()
