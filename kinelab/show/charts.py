"""Altair charts over a capture: each function takes a DuckDB connection or a capture path, aggregates in
DuckDB (selecting from the shared views of kinelab/analyse/views.py and the capture contract's), and returns an
Altair chart (it never displays one) carrying at most MAX_ROWS rows of data.

  revision_timeline   rows per revision bin (or per second of a run's writes), by op, one row per resource
  key_chain           each chosen key's rows at their revisions, linked from prev_revision, styled by op
  table_anatomy       live, superseded, tombstone, gap and bookkeeping rows of one snapshot, and their bytes
  compaction          compact and current revision, row counts and table size over a compaction run
  watch_lag           ECDF and box plots of watch lag per observer, same-replica vs other-replica writes
  watch_lag_timeline  each watch event's lag over the run's time, per observer, with the writes that failed
  apiserver_availability  writes accepted or refused per kube-apiserver over time; it takes the attempts of
                      kinelab.observe.apiprobe.availability, which no table holds
  failover_revisions  a failover scenario's acknowledged writes at their revisions, kept / lost / reissued, with
                      each replica's reported revision
  ops_by_resource     rows by resource, namespace and op (click a resource to see its namespaces)
  sql_latency         Kine's SQL latency per query and replica from its Prometheus histograms
  write_anomalies     per Kine release and scenario: errors the clients saw, writes acknowledged but missing,
                      and writes reported failed but written
  save                write a chart to .png, .svg or .html (self-contained) with vl-convert, offline
  mimebundle          what a chart shows as in a notebook (see "How charts display" below)

Every chart takes `label=`: a replayed capture labelled e.g. "REPLAY: recorded 2026-11-28" shows that label
as its title, in red, above what the chart is, so it is never mistaken for a live lab.

How charts display: importing `kinelab.show` enables the "kinelab" Altair renderer (`use_offline_renderer`),
which needs no network. Altair 6's own renderers do not fit: "default"/"html" load Vega 6 from a CDN at view
time, "mimetype" emits Vega-Lite 6 JSON that no notebook front end renders (JupyterLab 4 and Notebook 7 ship
Vega 5 and Vega-Lite 5.6), "jupyter" needs anywidget and sends a megabyte of script per chart that papermill
outputs lose, and "svg"/"png" drop the tooltips. So vl-convert compiles each chart's Vega-Lite 6 spec with the
compiler Altair targets, in this process, into a Vega spec, sent as `application/vnd.vega.v5+json`: JupyterLab,
Notebook 7 (Binder) and VS Code draw it with the Vega they bundle, interactively (tooltips, zoom, legend
clicks). Beside it goes a PNG drawn by vl-convert, which is what nbconvert exports, GitHub, papermill outputs
viewed elsewhere and untrusted notebooks show; it also keeps JupyterLab from drawing a PNG of its own.
"""

from __future__ import annotations

import base64
import itertools
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import altair as alt
import pyarrow as pa
import pyarrow.compute as pc

from ..analyse.runs import compaction_samples
from ..analyse.views import install, open_capture
from ..errors import ToolError, UsageError
from ..observe.store import within_bounds

MAX_ROWS = 5000        # the most data rows a chart carries; Altair's own default limit
POLL_MS = 1000         # Kine's poll interval: other replicas see a write on their next poll

OPS = ["create", "re-create", "update", "delete", "gap", "compact", "other"]
OP_COLORS = ["#2ca02c", "#9467bd", "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e", "#bcbd22"]
OP_SHAPES = ["circle", "triangle-up", "square", "cross", "triangle-down", "diamond", "triangle-left"]
ROW_KINDS = ["live", "superseded", "tombstone", "gap", "bookkeeping"]
ROW_KIND_COLORS = ["#2ca02c", "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e"]
LOCALITIES = ["same-replica", "other-replica"]
LOCALITY_COLORS = ["#1f77b4", "#d62728"]
LABEL_COLOR = "#b30000"
LAG_TICKS = [-100, -10, -1, 0, 1, 10, 100, 1000, 10000, 100000]

# --- data ------------------------------------------------------------------------------------------------

@contextmanager
def _connected(source) -> Iterator:
    """A connection to `source`: a capture path is opened read-only and closed afterwards; a connection is
    used through a cursor of its own (with the shared views: a cursor does not see its parent's TEMP views), so
    the caller's pending results and state are left as they were."""
    if isinstance(source, (str, os.PathLike)):
        con = open_capture(source)
    else:
        con = source.cursor()
        install(con)
    try:
        with within_bounds(con, "the chart"):
            yield con
    finally:
        con.close()


def _table(con, sql: str, params: Sequence = (), *, order_by: str, limit: int = MAX_ROWS) -> pa.Table:
    """The rows of `sql` as Arrow, at most `limit` of them: a bigger result keeps every k-th row in `order_by`
    order, chosen in DuckDB, so a big capture never reaches the chart whole. Decimals (DuckDB's sums of
    integers) become plain numbers, which JSON and Vega understand."""
    table = con.sql(f"""
        SELECT * EXCLUDE (kl_n, kl_total) FROM (
            SELECT *, row_number() OVER (ORDER BY {order_by}) - 1 AS kl_n, count(*) OVER () AS kl_total
            FROM ({sql}))
        WHERE kl_n % greatest(1, ceil(kl_total / {int(limit)}))::BIGINT = 0
        ORDER BY kl_n""", params=list(params)).to_arrow_table()
    for i, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type):
            target = pa.int64() if field.type.scale == 0 else pa.float64()
            table = table.set_column(i, field.name, pc.cast(table.column(i), target))
    return table


def _run_id(con, run_id: Optional[int], table: str, what: str, how: str) -> int:
    """`run_id`, or the newest run with rows in `table`; a clear error when there is none."""
    if run_id is None:
        run_id = con.execute(f"SELECT max(run_id) FROM {table}").fetchall()[0][0]
        if run_id is None:
            raise UsageError(f"this capture has no {what} (table {table} is empty); {how}")
    elif not con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        raise UsageError(f"run {run_id} has no {what} (no rows in {table}); leave run_id out for the newest")
    return int(run_id)


def _snapshot_id(con, snapshot_id: Optional[int]) -> int:
    known = [r[0] for r in con.execute("SELECT snapshot_id FROM snapshots ORDER BY 1").fetchall()]
    if not known:
        raise UsageError("this capture has no snapshots; make one with `kinelab capture`")
    if snapshot_id is None:
        return known[-1]
    if snapshot_id not in known:
        raise UsageError(f"no snapshot {snapshot_id} in this capture: it has {known[0]}..{known[-1]}")
    return snapshot_id


# --- presentation ----------------------------------------------------------------------------------------

def _finish(chart, title: str, label: Optional[str], notes: Sequence[str] = ()):
    """Title the chart. A `label` becomes the title itself, bold and red, with what the chart shows below it."""
    if label:
        params = alt.TitleParams(text=label, subtitle=[title, *notes], color=LABEL_COLOR, fontSize=16,
                                 fontWeight="bold", anchor="start")
    else:
        params = alt.TitleParams(text=title, subtitle=list(notes) or alt.Undefined, anchor="start")
    return chart.properties(title=params)


_param_ids = itertools.count(1)


def _param_name(kind: str) -> str:
    """A name of its own for each selection, so charts combined with & or | keep their own selections
    (Altair names them by content, and merges those of two alike charts)."""
    return f"{kind}_{next(_param_ids)}"


def _zoom():
    """Drag to pan, wheel to zoom, along x."""
    return alt.selection_interval(name=_param_name("zoom"), encodings=["x"], bind="scales")


def _legend_pick(field: str):
    """A selection made by clicking the legend of `field` (shift-click adds)."""
    return alt.selection_point(name=_param_name(f"pick_{field}"), fields=[field], bind="legend")


def _highlight(selection):
    return alt.condition(selection, alt.value(1.0), alt.value(0.12))


def _op_color(title: str = "op"):
    return alt.Color("op:N", title=title, scale=alt.Scale(domain=OPS, range=OP_COLORS))


def _poll_rule(channel: str = "x"):
    """A dashed rule at Kine's 1 s poll interval on the lag axis `channel` ("x" or "y"), labelled, on its own
    one-row data."""
    base = alt.Chart(alt.Data(values=[{"poll_ms": POLL_MS, "text": "1 s poll"}]))
    rule = base.mark_rule(strokeDash=[4, 3], color="black").encode(**{channel: "poll_ms:Q"})
    if channel == "x":
        text = base.mark_text(align="right", dx=-3, dy=2, baseline="top", fontSize=10).encode(
            x="poll_ms:Q", y=alt.value(0), text="text:N")
    else:
        text = base.mark_text(align="left", dx=2, dy=2, baseline="top", fontSize=10).encode(
            y="poll_ms:Q", x=alt.value(0), text="text:N")
    return rule + text


# --- charts ----------------------------------------------------------------------------------------------

def revision_timeline(source, *, over: str = "revision", run_id: Optional[int] = None, bins: int = 60,
                      top: int = 8, label: Optional[str] = None):
    """Rows of the newest snapshot per revision bin (`over="revision"`, from kine_ops), or acknowledged writes
    per slice of a run's wall time (`over="time"`, from writes: t_commit since the run began, run_clock), stacked
    by op, one panel per resource (the `top` busiest; the rest together). Click the legend to pick ops."""
    if over not in ("revision", "time"):
        raise UsageError(f"over must be 'revision' or 'time', not {over!r}")
    with _connected(source) as con:
        if over == "revision":
            events = """SELECT id AS x, op, coalesce(resource, '(' || op || ')') AS resource FROM kine_ops"""
            params, axis = [], "revision (kine row id)"
            width = "greatest(ceil((max(x) - min(x) + 1) / ?), 1)"  # whole revisions per bin
            title = "kine table rows per revision, by op and resource (newest snapshot)"
        else:
            run_id = _run_id(con, run_id, "writes", "acknowledged writes", "record some with `kinelab load`")
            events = """SELECT w.t_commit - c.t0 AS x, w.op, coalesce(o.resource, split_part(w.key, '/', 3)) AS resource
                        FROM writes w JOIN run_clock c USING (run_id) LEFT JOIN kine_ops o ON o.id = w.revision
                        WHERE w.run_id = ?"""
            params, axis = [run_id], "seconds since the run began"
            width = "greatest((max(x) - min(x)) / ?, 1e-3)"
            title = f"acknowledged writes over time, by op and resource (run {run_id})"
        data = _table(con, f"""
            WITH e AS ({events}),
            busiest AS (SELECT resource FROM e GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT ?),
            span AS (SELECT min(x) AS lo, {width} AS width FROM e),
            binned AS (SELECT floor((x - lo) / width) AS b, lo, width, op,
                              CASE WHEN resource IN (SELECT resource FROM busiest) THEN resource
                                   ELSE '(other resources)' END AS resource
                       FROM e, span)
            SELECT lo + least(b, ? - 1) * width AS start, lo + (least(b, ? - 1) + 1) * width AS stop,
                   op, resource, count(*)::BIGINT AS rows
            FROM binned GROUP BY ALL""", [*params, top, bins, bins, bins], order_by="resource, start, op")
    pick = _legend_pick("op")
    chart = alt.Chart(data).mark_bar(stroke=None).encode(
        x=alt.X("start:Q", bin="binned", title=axis), x2="stop:Q",
        y=alt.Y("sum(rows):Q", title="rows" if over == "revision" else "writes"),
        color=_op_color(), opacity=_highlight(pick),
        row=alt.Row("resource:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
        tooltip=["resource:N", "op:N", alt.Tooltip("start:Q", format=",.3~f"), alt.Tooltip("stop:Q", format=",.3~f"),
                 "rows:Q"],
    ).add_params(pick).properties(width=640, height=70).resolve_scale(y="independent")
    return _finish(chart, title, label)


def key_chain(source, key: Union[str, Sequence[str], None] = None, *, resource: Optional[str] = None,
              limit: int = 12, label: Optional[str] = None):
    """Per-key revision chains in the newest snapshot: a mark at each row id of the chosen keys (`key`: one
    name or several; default the `limit` keys with the most rows, of `resource` if given), a rule from each
    row's predecessor (prev_revision) to it, and marks styled by op: create, update, delete (the tombstone),
    re-create (a create after a delete). Long chains keep their newest rows. Drag to pan, wheel to zoom."""
    names = [key] if isinstance(key, str) else list(key) if key is not None else None
    with _connected(source) as con:
        if names is None:
            names = [r[0] for r in con.execute("""
                SELECT name FROM kine_ops WHERE op NOT IN ('compact', 'gap') AND (? IS NULL OR resource = ?)
                GROUP BY name ORDER BY count(*) DESC, max(id) DESC, name LIMIT ?""",
                [resource, resource, limit]).fetchall()]
        if not names:
            raise UsageError("no keys to show" + (f" for resource {resource!r}" if resource else ""))
        data = _table(con, """
            WITH k AS (SELECT *, lag(id) OVER (PARTITION BY name ORDER BY id) AS earlier
                       FROM kine_ops WHERE list_contains(?, name))
            SELECT id, name, object_name, prev_revision, create_revision, value_bytes, lease,
                   CASE WHEN op = 'create' AND (prev_revision > 0 OR earlier IS NOT NULL) THEN 're-create'
                        ELSE op END AS op,
                   CASE WHEN op = 'create' THEN coalesce(nullif(prev_revision, 0), earlier)
                        WHEN op IN ('update', 'delete') AND prev_revision > 0 THEN prev_revision END AS link_from,
                   min(id) OVER (PARTITION BY name) AS first_id
            FROM k QUALIFY row_number() OVER (PARTITION BY name ORDER BY id DESC) <= ?""",
                      [names, max(1, MAX_ROWS // len(names))], order_by="name, id")
    pick, zoom = _legend_pick("op"), _zoom()
    y = alt.Y("name:N", title=None, sort=alt.EncodingSortField("first_id", op="min"),
              axis=alt.Axis(labelLimit=420))
    base = alt.Chart(data).encode(y=y)
    links = base.mark_rule(color="#999", strokeWidth=1.5).encode(
        x=alt.X("link_from:Q", title="revision (kine row id)"), x2="id:Q",
        opacity=_highlight(pick)).transform_filter("isValid(datum.link_from)")
    marks = base.mark_point(size=90, filled=True).encode(
        x="id:Q", color=_op_color(),
        shape=alt.Shape("op:N", scale=alt.Scale(domain=OPS, range=OP_SHAPES)),
        opacity=_highlight(pick),
        tooltip=["name:N", "id:Q", "op:N", "prev_revision:Q", "create_revision:Q", "value_bytes:Q", "lease:Q"],
    ).add_params(pick, zoom)
    chart = (links + marks).properties(width=640, height=alt.Step(22))
    shown = ", ".join(names) if len(names) <= 2 else f"{len(names)} keys"
    return _finish(chart, f"revision chains of {shown}", label,
                   ["a rule runs from a row's prev_revision to it; a re-create follows a tombstone"])


def table_anatomy(source, snapshot_id: Optional[int] = None, *, label: Optional[str] = None):
    """What one snapshot's kine table holds (kine_class_counts): live rows, superseded versions (a later row names
    them as prev_revision), tombstones, gap fills and Kine's bookkeeping (compact_rev_key*), counted and sized
    (the bytes of value and old_value, stored at capture). Click the legend to pick kinds."""
    with _connected(source) as con:
        sid = _snapshot_id(con, snapshot_id)
        compact_revision = con.execute("SELECT compact_revision FROM snapshots WHERE snapshot_id = ?",
                                       [sid]).fetchall()[0][0]
        data = _table(con, """
            WITH kinds AS (SELECT unnest(?::VARCHAR[]) AS kind, generate_subscripts(?::VARCHAR[], 1) AS ord)
            SELECT k.kind, k.ord, coalesce(c.rows, 0)::BIGINT AS rows,
                   coalesce(c.value_bytes, 0)::BIGINT AS value_bytes,
                   coalesce(c.old_value_bytes, 0)::BIGINT AS old_value_bytes,
                   coalesce(c.value_bytes + c.old_value_bytes, 0)::BIGINT AS bytes
            FROM kinds k LEFT JOIN kine_class_counts(?) c ON c.row_class = k.kind""",
                      [ROW_KINDS, ROW_KINDS, sid], order_by="ord")
    total_rows, total_bytes = pc.sum(data.column("rows")).as_py(), pc.sum(data.column("bytes")).as_py()
    pick = _legend_pick("kind")
    color = alt.Color("kind:N", title="row kind", scale=alt.Scale(domain=ROW_KINDS, range=ROW_KIND_COLORS))
    y = alt.Y("kind:N", title=None, sort=ROW_KINDS)
    tooltip = ["kind:N", alt.Tooltip("rows:Q", format=","), alt.Tooltip("value_bytes:Q", format=","),
               alt.Tooltip("old_value_bytes:Q", format=","), alt.Tooltip("bytes:Q", format=",")]
    base = alt.Chart(data).encode(y=y, color=color, opacity=_highlight(pick), tooltip=tooltip)
    rows = base.mark_bar().encode(x=alt.X("rows:Q", title="rows")).add_params(pick)
    columns = ["value", "old_value"]
    folded = base.transform_fold(["value_bytes", "old_value_bytes"], as_=["column", "column_bytes"]) \
        .transform_calculate(column="replace(datum.column, '_bytes', '')") \
        .encode(x=alt.X("column_bytes:Q", title="bytes of value and of old_value", axis=alt.Axis(format="~s")),
                yOffset=alt.YOffset("column:N", sort=columns))
    sizes = folded.mark_bar() + folded.mark_text(align="left", dx=3, fontSize=9, color="black").encode(
        text="column:N", opacity=alt.value(1))
    chart = alt.hconcat(rows.properties(width=300, height=alt.Step(30), title="rows"),
                        sizes.properties(width=300, height=alt.Step(15), title="bytes"))
    return _finish(chart, f"kine table anatomy at snapshot {sid}", label,
                   [f"{total_rows:,} rows, {total_bytes:,} bytes of value + old_value; compact revision "
                    f"{compact_revision}"])


def compaction(source, run_id: Optional[int] = None, *, label: Optional[str] = None):
    """A compaction run over time (kinelab.analyse.runs.compaction_samples): compact and current revision with
    the revisions kept between them, the table's rows (total, superseded, tombstones, gap fills), and its size as the
    database reports it. The panels zoom together (wheel, drag); the checks below the compact revision
    are listed under the title."""
    with _connected(source) as con:
        run_id = _run_id(con, run_id, "compaction_timeline", "compaction timeline",
                         "record one with `kinelab compaction`")
        data = compaction_samples(con, run_id)
        checks = con.execute("""SELECT check_name, ok, revision FROM compaction_checks WHERE run_id = ?
                                ORDER BY t, check_name""", [run_id]).fetchall()
    method = data.column("method")[0].as_py() if data.num_rows else "?"
    zoom = _zoom()
    x = alt.X("seconds:Q", title="seconds since the run began")
    base = alt.Chart(data).encode(x=x)
    kept = base.mark_area(opacity=0.12, color="#1f77b4").encode(
        y=alt.Y("compact_revision:Q", title="revision"), y2="current_revision:Q")
    revisions = base.transform_fold(["current_revision", "compact_revision"], as_=["series", "revision"]) \
        .mark_line(point=True).encode(
            y="revision:Q", color=alt.Color("series:N", title="revision"),
            tooltip=["seconds:Q", "series:N", "revision:Q", "snapshot_id:Q"]).add_params(zoom)
    row_series = ["rows_total", "rows_superseded", "rows_tombstones", "rows_gap"]
    rows = base.transform_fold(row_series, as_=["series", "rows"]).mark_line(point=True).encode(
        y=alt.Y("rows:Q", title="rows"), color=alt.Color("series:N", title="rows", sort=row_series),
        tooltip=["seconds:Q", "series:N", "rows:Q", "snapshot_id:Q"]).add_params(zoom)
    size = base.mark_area(line=True, point=True, opacity=0.3, color="#8c564b").encode(
        y=alt.Y("table_bytes:Q", title="table bytes", axis=alt.Axis(format="~s")),
        tooltip=["seconds:Q", alt.Tooltip("table_bytes:Q", format=","), "snapshot_id:Q"]).add_params(zoom)
    with warnings.catch_warnings():  # one zoom shared by the panels is what we want; Altair warns about it
        warnings.filterwarnings("ignore", "Automatically deduplicated selection parameter")
        chart = alt.vconcat((kept + revisions).properties(width=640, height=170),
                            rows.properties(width=640, height=150),
                            size.properties(width=640, height=110)).resolve_scale(x="shared", color="independent")
    notes = [", ".join(f"{name} at {revision}: {'ok' if ok else 'FAILED'}" for name, ok, revision in checks)
             or "no checks below the compact revision (nothing was compacted)"]
    return _finish(chart, f"compaction ({method}) over run {run_id}", label, notes)


def watch_lag(source, run_id: Optional[int] = None, *, quantiles: int = 100, label: Optional[str] = None):
    """Watch lag per observer (a watch on each replica), split into writes made through the same replica and
    through another one: an ECDF (from `quantiles` + 1 quantiles computed in DuckDB) above box plots
    (whiskers min..max, box p25..p75, tick at the median), with a rule at Kine's 1 s poll. The x scale is
    symmetric-log: a watch event can arrive a little before the write's own acknowledgement (negative lag)."""
    steps = [i / quantiles for i in range(quantiles + 1)]
    with _connected(source) as con:
        run_id = _run_id(con, run_id, "watch_events", "watch events", "record some with `kinelab watchlag`")
        events = "SELECT observer, locality, lag_ms FROM watch_deliveries WHERE run_id = ?"
        ecdf = _table(con, f"""
            SELECT observer, 'replica ' || observer AS watcher, locality, events,
                   unnest(?::DOUBLE[]) AS fraction, unnest(lags) AS lag_ms
            FROM (SELECT observer, locality, count(*) AS events, quantile_cont(lag_ms, ?::DOUBLE[]) AS lags
                  FROM ({events}) GROUP BY ALL)""", [steps, steps, run_id], order_by="observer, locality, fraction")
        boxes = _table(con, f"""
            SELECT observer, 'replica ' || observer AS watcher, locality, count(*) AS events,
                   min(lag_ms) AS min_ms, quantile_cont(lag_ms, 0.25) AS p25_ms, median(lag_ms) AS p50_ms,
                   quantile_cont(lag_ms, 0.75) AS p75_ms, quantile_cont(lag_ms, 0.99) AS p99_ms,
                   max(lag_ms) AS max_ms, avg(lag_ms) AS mean_ms
            FROM ({events}) GROUP BY ALL""", [run_id], order_by="observer, locality")
        missed, cancelled = con.execute("""
            SELECT (SELECT count(*) FROM watch_missed WHERE run_id = $1),
                   (SELECT count(*) FROM watch_observers WHERE run_id = $1 AND cancelled)""", [run_id]).fetchall()[0]
    pick = _legend_pick("locality")
    lag_scale = alt.Scale(type="symlog", constant=1, nice=False)
    lag_axis = alt.Axis(values=LAG_TICKS, format=",~f")
    color = alt.Color("locality:N", scale=alt.Scale(domain=LOCALITIES, range=LOCALITY_COLORS))
    curves = alt.Chart(ecdf).mark_line(interpolate="step-after").encode(
        x=alt.X("lag_ms:Q", title="lag (ms, symlog)", scale=lag_scale, axis=lag_axis),
        y=alt.Y("fraction:Q", title="fraction of events", axis=alt.Axis(format="%")),
        color=color, strokeDash=alt.StrokeDash("watcher:N", title="observer"),
        opacity=_highlight(pick),
        tooltip=["watcher:N", "locality:N", alt.Tooltip("fraction:Q", format=".0%"),
                 alt.Tooltip("lag_ms:Q", format=",.2f"), "events:Q"],
    ).add_params(pick)
    box = alt.Chart(boxes).encode(y=alt.Y("watcher:N", title="observer"), yOffset=alt.YOffset("locality:N",
                                                                                              sort=LOCALITIES),
                                  color=color, opacity=_highlight(pick),
                                  tooltip=["watcher:N", "locality:N", "events:Q",
                                           *(alt.Tooltip(f"{c}:Q", format=",.2f") for c in
                                             ("min_ms", "p25_ms", "p50_ms", "p75_ms", "p99_ms", "max_ms",
                                              "mean_ms"))])
    whiskers = box.mark_rule().encode(x=alt.X("min_ms:Q", title="lag (ms, symlog)", scale=lag_scale,
                                                       axis=lag_axis), x2="max_ms:Q")
    iqr = box.mark_bar(size=9).encode(x="p25_ms:Q", x2="p75_ms:Q")
    medians = box.mark_tick(color="black", thickness=2, size=11).encode(x="p50_ms:Q")
    chart = alt.vconcat((curves + _poll_rule()).properties(width=640, height=240),
                        (whiskers + iqr + medians + _poll_rule()).properties(width=640, height=alt.Step(14))
                        ).resolve_scale(x="shared")
    return _finish(chart, f"watch lag per observer, run {run_id}", label,
                   [f"{missed} acknowledged writes never delivered; {cancelled} watches cancelled"])


def watch_lag_timeline(source, run_id: Optional[int] = None, *, window_s: Optional[float] = None,
                       max_points: int = MAX_ROWS, label: Optional[str] = None):
    """Watch lag over a run's time: one point per delivered event (x: seconds since the run began, y:
    its lag, symlog, with Kine's 1 s poll dashed), coloured by the observer's replica, shaped by locality;
    below it, a red tick for each write that failed, on the replica it was sent to (one that was down). Drag
    to pan, wheel to zoom. With `window_s`, only the run's last `window_s` seconds are drawn; at most
    `max_points` points and ticks are (every k-th, chosen in DuckDB), so a chart redrawn during a long run
    stays the same size. The subtitle holds the whole run's totals."""
    with _connected(source) as con:
        run_id = _run_id(con, run_id, "watch_events", "watch events", "record some with `kinelab watchlag`")
        # the run's clock (run_clock's t0) and its last outcome, which a window counts back from
        span = """(SELECT c.t0, greatest((SELECT max(t_commit) FROM writes WHERE run_id = $1),
                                         (SELECT max(t) FROM load_errors WHERE run_id = $1)) AS t1
                   FROM run_clock c WHERE c.run_id = $1) span"""
        shown = "($2 IS NULL OR {t} >= span.t1 - $2)"  # in the window
        params = [run_id, window_s]
        failed = _table(con, f"""SELECT e.t - span.t0 AS seconds, 'replica ' || e.replica AS writer, e.op, e.error
                                 FROM load_errors e, {span} WHERE e.run_id = $1 AND {shown.format(t="e.t")}""",
                        params, order_by="seconds", limit=max(1, max_points // 5))
        events = _table(con, f"""
            SELECT d.seconds, 'replica ' || d.observer AS observer, d.locality, 'replica ' || d.writer AS writer,
                   d.revision, d.lag_ms
            FROM watch_deliveries d, {span}
            WHERE d.run_id = $1 AND {shown.format(t="d.t_commit")}""", params,
                        order_by="seconds, observer", limit=max(1, max_points - failed.num_rows))
        writes, errors, delivered, seconds, in_window = con.execute(f"""
            SELECT (SELECT count(*) FROM writes WHERE run_id = $1),
                   (SELECT count(*) FROM load_errors WHERE run_id = $1),
                   (SELECT count(*) FROM watch_events WHERE run_id = $1), span.t1 - span.t0,
                   (SELECT count(*) FROM watch_deliveries d WHERE d.run_id = $1 AND {shown.format(t="d.t_commit")})
            FROM {span}""", params).fetchall()[0]
    zoom = _zoom()
    x = alt.X("seconds:Q", title="seconds since the run began")
    points = alt.Chart(events).mark_point(size=18, filled=True).encode(
        x=x, y=alt.Y("lag_ms:Q", title="lag (ms, symlog)", scale=alt.Scale(type="symlog", constant=1, nice=False),
                     axis=alt.Axis(values=LAG_TICKS, format=",~f")),
        color=alt.Color("observer:N", title="observer"),
        shape=alt.Shape("locality:N", scale=alt.Scale(domain=LOCALITIES, range=["circle", "triangle-up"])),
        tooltip=["seconds:Q", "observer:N", "writer:N", "locality:N", "revision:Q",
                 alt.Tooltip("lag_ms:Q", format=",.2f")]).add_params(zoom)
    chart = (points + _poll_rule("y")).properties(width=640, height=240)
    if failed.num_rows:
        ticks = alt.Chart(failed).mark_tick(color=LABEL_COLOR, thickness=2).encode(
            x=x, y=alt.Y("writer:N", title="failed writes"), tooltip=["seconds:Q", "writer:N", "op:N", "error:N"])
        chart = alt.vconcat(chart, ticks.properties(width=640, height=alt.Step(14))).resolve_scale(x="shared")
    notes = [f"{writes:,} writes acknowledged, {errors:,} failed, {delivered:,} watch events in {seconds or 0:.0f} s"]
    if window_s is not None:
        drawn = f"{events.num_rows:,}" + (f" of {in_window:,}" if in_window > events.num_rows else "")
        notes.append(f"showing the last {window_s:g} s: {drawn} events, {failed.num_rows:,} failed writes")
    return _finish(chart, f"watch lag over time per observer, run {run_id}", label, notes)


def apiserver_availability(attempts, *, kill_at_s: Optional[float] = None, label: Optional[str] = None):
    """Writes tried through each kube-apiserver over time (`kinelab.observe.apiprobe.availability`), a tick each,
    green if accepted, red if refused: `attempts` is a list of its Attempts, or a dict of such lists by
    deployment mode (one row each). A dashed rule at `kill_at_s` marks when a Kine replica was killed. Unlike
    the charts above it takes the probe's results, which no capture table holds."""
    by_mode = attempts if isinstance(attempts, dict) else {"": attempts}
    rows = [{"mode": mode, "apiserver": f"apiserver {a.apiserver}", "t": round(a.t, 2), "ok": a.ok,
             "error": a.error} for mode, listed in by_mode.items() for a in listed]
    rows = rows[::max(1, math.ceil(len(rows) / MAX_ROWS))]  # every k-th, when more than a chart carries
    ticks = alt.Chart().mark_tick(thickness=3).encode(
        x=alt.X("t:Q", title="seconds since the probe started"), y=alt.Y("apiserver:N", title=None),
        color=alt.Color("ok:N", title="accepted", scale=alt.Scale(domain=[True, False], range=["#4c9f4c", "#d62728"])),
        tooltip=["apiserver:N", "t:Q", "ok:N", "error:N"])
    layers = [ticks]
    if kill_at_s is not None:  # one rule per panel: aggregate the panel's rows to one
        layers.append(alt.Chart().transform_aggregate(attempts="count()").mark_rule(strokeDash=[4, 3], color="black")
                      .encode(x=alt.datum(kill_at_s)))
    chart = alt.layer(*layers, data=alt.Data(values=rows)).properties(width=600, height=alt.Step(18))
    if len(by_mode) > 1:
        chart = chart.facet(row=alt.Row("mode:N", title=None, sort=list(by_mode),
                                        header=alt.Header(labelAngle=0, labelAlign="left")))
    notes = [f"dashed: a Kine replica killed at {kill_at_s} s"] if kill_at_s is not None else []
    return _finish(chart, "writes accepted per kube-apiserver over time", label, notes)


def scenario_availability(source, run_id: Optional[int] = None, *, label: Optional[str] = None):
    """A scenario run (`kinelab scenario`) second by second: successful writes above the axis and errors below
    it, one row per replica (or apiserver), with a labelled rule at each fault. Hover for the counts."""
    with _connected(source) as con:
        run_id = _run_id(con, run_id, "scenario_checks", "scenario run", "run one with `kinelab scenario FILE`")
        data = _table(con, """SELECT 'replica ' || replica AS replica, second, ok::BIGINT AS ok,
                                     -errors::BIGINT AS errors FROM availability WHERE run_id = ?""",
                      [run_id], order_by="replica, second")
        faults = con.execute("SELECT round(t, 1), fault || ' ' || coalesce(target, '') FROM fault_events "
                             "WHERE run_id = ? ORDER BY t", [run_id]).fetchall()
    base = alt.Chart().encode(x=alt.X("second:Q", title="seconds since the load began", scale=alt.Scale(nice=False)),
                              tooltip=["replica:N", "second:Q", "ok:Q", "errors:Q"])  # rows come from the facet
    bars = base.mark_bar(color="#4c9f4c").encode(y=alt.Y("ok:Q", title="writes/s (errors < 0)")) + \
        base.mark_bar(color="#d62728").encode(y="errors:Q")
    layers = [bars]
    if faults:
        marks = alt.Chart(alt.Data(values=[{"t": t, "fault": text.strip()} for t, text in faults]))
        layers += [marks.mark_rule(strokeDash=[4, 3], color="black").encode(x="t:Q"),
                   marks.mark_text(align="left", dx=3, baseline="top", fontSize=10, angle=0).encode(
                       x="t:Q", y=alt.value(0), text="fault:N")]
    chart = alt.layer(*layers).properties(width=600, height=90).facet(
        row=alt.Row("replica:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")), data=data)
    return _finish(chart, f"availability per second, scenario run {run_id}", label,
                   ["dashed: the faults, at the time each was injected"])


FATES = ["kept", "lost", "reissued"]
FATE_COLORS = ["#4c9f4c", "#d62728", "#ff7f0e"]


def failover_revisions(source, run_id: Optional[int] = None, *, label: Optional[str] = None):
    """A failover scenario's revisions over time: every acknowledged write at its revision, coloured by its fate
    against the table afterwards (kept; lost; reissued: kept at a revision an earlier write of another key had
    been acknowledged with), each replica's reported revision as a line, and the faults as rules. After an
    asynchronous failover the lines drop and the orange points repeat revisions the red ones had."""
    from ..analyse.failover import FATES_SQL, failover_times

    with _connected(source) as con:
        run_id = _run_id(con, run_id, "scenario_checks", "scenario run", "run scenarios/failover-async.yaml")
        t0 = failover_times(con, run_id)["t0"]
        writes = _table(con, FATES_SQL, [run_id, t0], order_by="seconds", limit=MAX_ROWS * 3 // 4)
        samples = _table(con, """SELECT t - $2 AS seconds, 'replica ' || replica AS replica, revision
                                 FROM revision_samples WHERE run_id = $1 AND revision IS NOT NULL""",
                         [run_id, t0], order_by="seconds", limit=MAX_ROWS // 5)
        faults = con.execute("SELECT round(t, 1), fault FROM fault_events WHERE run_id = ? ORDER BY t",
                             [run_id]).fetchall()
        counts = dict(con.execute(f"SELECT fate, count(*) FROM ({FATES_SQL}) GROUP BY 1", [run_id, t0]).fetchall())
    zoom = _zoom()
    x = alt.X("seconds:Q", title="seconds since the load began")
    points = alt.Chart(writes).mark_point(size=14, filled=True).encode(
        x=x, y=alt.Y("revision:Q", title="revision (row id)", scale=alt.Scale(zero=False)),
        color=alt.Color("fate:N", title="acknowledged write", scale=alt.Scale(domain=FATES, range=FATE_COLORS)),
        tooltip=["seconds:Q", "revision:Q", "fate:N", "op:N", "key:N", "replica:N"]).add_params(zoom)
    lines = alt.Chart(samples).mark_line(interpolate="step-after", strokeWidth=1).encode(
        x=x, y="revision:Q", detail="replica:N", color=alt.value("black"), tooltip=["replica:N", "revision:Q"])
    layers = [points, lines]
    if faults:
        marks = alt.Chart(alt.Data(values=[{"t": t, "fault": f} for t, f in faults]))
        layers += [marks.mark_rule(strokeDash=[4, 3], color="black").encode(x="t:Q"),
                   marks.mark_text(align="left", dx=3, baseline="top", fontSize=10).encode(
                       x="t:Q", y=alt.value(0), text="fault:N")]
    chart = alt.layer(*layers).properties(width=640, height=300)
    return _finish(chart, f"revisions acknowledged and reported, failover run {run_id}", label,
                   [", ".join(f"{counts.get(f, 0)} {f}" for f in FATES) + "; black: each replica's reported "
                    "revision"])


def ops_by_resource(source, *, top_namespaces: int = 15, label: Optional[str] = None):
    """Rows of the newest snapshot by resource and op (left) and by namespace (right: the `top_namespaces`
    busiest of each resource, the rest together). Click a resource bar to see only its namespaces; click
    the legend to pick ops."""
    with _connected(source) as con:
        data = _table(con, """
            WITH o AS (SELECT * FROM resource_ops),
            counts AS (SELECT resource, namespace, sum(rows) AS n FROM o GROUP BY ALL),
            ranked AS (SELECT *, row_number() OVER (PARTITION BY resource ORDER BY n DESC, namespace) AS r,
                              count(*) OVER (PARTITION BY resource) AS namespaces FROM counts)
            SELECT o.resource, CASE WHEN r.r <= ? THEN o.namespace
                                    ELSE '(' || (r.namespaces - ?) || ' other namespaces)' END AS namespace,
                   o.op, sum(o.rows)::BIGINT AS rows
            FROM o JOIN ranked r USING (resource, namespace) GROUP BY ALL""",
                      [top_namespaces, top_namespaces], order_by="resource, namespace, op")
    pick, chosen = _legend_pick("op"), alt.selection_point(name=_param_name("resource"), fields=["resource"])

    def bars(by: str):
        return alt.Chart(data).transform_aggregate(rows="sum(rows)", groupby=[by, "op"]).mark_bar().encode(
            y=alt.Y(f"{by}:N", sort="-x", title=None), x=alt.X("sum(rows):Q", title="rows"), color=_op_color(),
            tooltip=[f"{by}:N", "op:N", alt.Tooltip("rows:Q", format=",")])

    resources = bars("resource").encode(opacity=alt.condition(pick & chosen, alt.value(1.0), alt.value(0.25))) \
        .add_params(pick, chosen)
    namespaces = bars("namespace").encode(opacity=_highlight(pick)).transform_filter(chosen)
    chart = alt.hconcat(resources.properties(width=320, height=alt.Step(16), title="by resource"),
                        namespaces.properties(width=320, height=alt.Step(16),
                                              title="by namespace (of the clicked resource)"))
    return _finish(chart, "kine table rows by resource, namespace and op (newest snapshot)", label)


def write_rates(rows: Sequence[dict], *, x: str, color: str, title: str, label: Optional[str] = None):
    """Stacked bars of `rows_per_s` (`kinelab.analyse.cluster`'s tables): one bar per value of `x` (a node count,
    a writer), split by `color` (a resource)."""
    data = pa.Table.from_pylist([{x: str(r[x]), color: r[color], "rows_per_s": r["rows_per_s"]} for r in rows])
    order = sorted({str(r[x]) for r in rows}, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v))
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X(f"{x}:N", sort=order, title=x), y=alt.Y("sum(rows_per_s):Q", title="rows per second"),
        color=alt.Color(f"{color}:N", title=color), tooltip=[f"{x}:N", f"{color}:N",
                                                               alt.Tooltip("sum(rows_per_s):Q", format=".2f")])
    return _finish(chart.properties(width=420, height=260), title, label)


def sql_latency(source, run_id: Optional[int] = None, *, cumulative: bool = False, label: Optional[str] = None):
    """Kine's SQL latency per query name and replica, from its Prometheus histogram
    (kine_sql_time_seconds_*): mean from _sum/_count, p50 and p99 interpolated within the buckets like
    Prometheus' histogram_quantile. The counters are cumulative since Kine started: by default the chart
    shows the run's own window (what the counters grew by between the first sample and the last, metric_growth;
    the first is taken as the run starts, so it may miss the first few queries); `cumulative=True` shows the
    totals at the last sample. Click the legend to pick
    replicas."""
    with _connected(source) as con:
        run_id = _run_id(con, run_id, "kine_metrics", "Kine metrics",
                         "record some with `kinelab load` or `kinelab watchlag`")
        data = _table(con, """
            WITH d AS (
                SELECT replica, metric,
                       json_extract_string(labels, '$.name') || CASE
                           WHEN coalesce(json_extract_string(labels, '$.error_code'), '') = '' THEN ''
                           ELSE ' (error ' || json_extract_string(labels, '$.error_code') || ')' END AS query,
                       json_extract_string(labels, '$.le') AS le,
                       sum(CASE WHEN ? THEN last_value ELSE growth END) AS value
                FROM metric_growth WHERE run_id = ? AND metric IN ('kine_sql_time_seconds_bucket',
                    'kine_sql_time_seconds_sum', 'kine_sql_time_seconds_count')
                GROUP BY ALL),
            buckets AS (
                SELECT replica, query, CAST(le AS DOUBLE) AS le, value AS cum,
                       coalesce(lag(CAST(le AS DOUBLE)) OVER w, 0) AS lo, coalesce(lag(value) OVER w, 0) AS cum_lo,
                       max(value) OVER (PARTITION BY replica, query) AS total
                FROM d WHERE metric = 'kine_sql_time_seconds_bucket'
                WINDOW w AS (PARTITION BY replica, query ORDER BY CAST(le AS DOUBLE))),
            q AS (SELECT replica, query, p,
                         arg_min(CASE WHEN isinf(le) THEN lo ELSE lo + (le - lo) * (p * total - cum_lo) / (cum - cum_lo)
                                 END, le) * 1000 AS ms
                  FROM buckets, (VALUES (0.5), (0.99)) ps(p) WHERE total > 0 AND cum >= p * total GROUP BY ALL),
            totals AS (SELECT replica, query,
                              max(value) FILTER (WHERE metric = 'kine_sql_time_seconds_count') AS queries,
                              max(value) FILTER (WHERE metric = 'kine_sql_time_seconds_sum') AS seconds
                       FROM d GROUP BY ALL)
            SELECT 'replica ' || t.replica AS replica, t.query, t.queries::BIGINT AS queries,
                   t.seconds * 1000 / t.queries AS mean_ms,
                   max(q.ms) FILTER (WHERE q.p = 0.5) AS p50_ms, max(q.ms) FILTER (WHERE q.p = 0.99) AS p99_ms
            FROM totals t JOIN q USING (replica, query) WHERE t.queries > 0 GROUP BY ALL""",
                      [cumulative, run_id], order_by="query, replica")
    pick = _legend_pick("replica")
    ms = alt.Scale(type="log")
    base = alt.Chart(data).encode(
        y=alt.Y("query:N", title="Kine query", sort=alt.EncodingSortField("queries", op="sum", order="descending")),
        yOffset="replica:N", color=alt.Color("replica:N"), opacity=_highlight(pick),
        tooltip=["query:N", "replica:N", alt.Tooltip("queries:Q", format=","),
                 *(alt.Tooltip(f"{c}:Q", format=",.3f") for c in ("mean_ms", "p50_ms", "p99_ms"))])
    spread = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("p50_ms:Q", title="latency (ms, log scale)", scale=ms), x2="p99_ms:Q")
    stats = ["p50", "p99", "mean"]
    points = base.transform_fold([f"{s}_ms" for s in stats], as_=["statistic", "ms"]) \
        .transform_calculate(statistic="replace(datum.statistic, '_ms', '')").mark_point(size=60, filled=True) \
        .encode(x="ms:Q", shape=alt.Shape("statistic:N", sort=stats,
                                           scale=alt.Scale(domain=stats, range=["circle", "square", "diamond"])))
    chart = (spread + points.add_params(pick)).properties(width=560, height=alt.Step(22))
    window = "totals since Kine started" if cumulative else "this run's window (growth from first sample to last)"
    return _finish(chart, f"Kine SQL latency per query and replica, run {run_id}", label,
                   [f"{window}; quantiles interpolated in Kine's histogram buckets (1 ms to 8.192 s)"])


# --- display ---------------------------------------------------------------------------------------------

RENDERER = "kinelab"
VEGA_MIME = "application/vnd.vega.v5+json"  # the Vega that JupyterLab, Notebook 7 and VS Code bundle
# The chart's "..." menu: saving as SVG or PNG works offline; the online Vega editor and the spec views do not help
EMBED_OPTIONS = {"renderer": "svg", "actions": {"export": True, "source": False, "compiled": False, "editor": False}}
# vl-convert compiles with the Vega-Lite version Altair writes its specs for ("v6.4.1" -> "6.4")
VEGALITE_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def _vl_convert():
    try:
        import vl_convert
    except ImportError as exc:
        raise ToolError("drawing and saving charts needs vl-convert: pip install vl-convert-python") from exc
    return vl_convert


def mimebundle(chart, *, static: bool = True) -> tuple:
    """(data, metadata) of `chart` (an Altair chart or its Vega-Lite dict) for a notebook: the Vega spec that
    front ends draw interactively, a title line as text/plain and, if `static`, a PNG for every viewer
    that cannot run Vega. Nothing is fetched: vl-convert compiles and draws in this process."""
    spec = chart if isinstance(chart, dict) else chart.to_dict()
    vl_convert = _vl_convert()
    vega = vl_convert.vegalite_to_vega(spec, vl_version=VEGALITE_VERSION)
    vega["$schema"] = "https://vega.github.io/schema/vega/v5.json"  # what the front ends' Vega 5 reads
    title = spec.get("title", "")
    title = title.get("text", "") if isinstance(title, dict) else title
    data = {VEGA_MIME: vega, "text/plain": f"<kinelab chart: {title or 'untitled'}>"}
    metadata = {VEGA_MIME: {"embed_options": EMBED_OPTIONS}}
    if static:
        png = vl_convert.vega_to_png(vega, scale=1)
        data["image/png"] = base64.b64encode(png).decode()
    return data, metadata


def use_offline_renderer() -> None:
    """Show Altair charts through `mimebundle` (Altair's renderer "kinelab")."""
    if RENDERER not in alt.renderers.names():
        alt.renderers.register(RENDERER, mimebundle)
    alt.renderers.enable(RENDERER)


# --- export ----------------------------------------------------------------------------------------------

SAVE_FORMATS = {".png": "png", ".svg": "svg", ".html": "html"}


ANOMALIES = ["errors the clients saw", "acknowledged but missing", "reported failed but written"]
ANOMALY_COLORS = ["#9e9e9e", "#d62728", "#ff7f0e"]


def write_anomalies(*sources, label: Union[str, Sequence[str], None] = None):
    """What each Kine release did under the same scenario (runs of `kinelab scenario --kine-versions`): per
    release, the errors its clients saw next to the writes the table contradicts (view anomalies_by_version),
    one panel per scenario. Several results files (one per scenario) are drawn one below the other, each with
    its own `label` when a list is given. Hover for the run and the counts."""
    labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(sources)
    drawn = [_write_anomalies(source, text) for source, text in zip(sources, labels)]
    return drawn[0] if len(drawn) == 1 else alt.vconcat(*drawn)


def _write_anomalies(source, label: Optional[str]):
    with _connected(source) as con:
        rows = con.execute("""SELECT scenario, kine_version, run_id, errors, acknowledged_but_missing,
                                     reported_failed_but_written FROM anomalies_by_version""").fetchall()
    if not rows:
        raise UsageError("this file has no scenario runs with their Kine releases; run one with "
                         "`kinelab scenario FILE --kine-versions V1,V2`")
    versions = sorted({r[1] for r in rows}, key=lambda v: tuple(int(x) for x in v.lstrip("v").split(".")[:3])
                      if v.lstrip("v").replace(".", "").isdigit() else (math.inf,))
    data = [{"scenario": scenario or "scenario", "kine_version": version, "run": run_id, "measure": measure,
             "writes": int(n)}
            for scenario, version, run_id, *counts in rows for measure, n in zip(ANOMALIES, counts)]
    base = alt.Chart().encode(
        x=alt.X("kine_version:N", title="Kine release", sort=versions, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("measure:N", sort=ANOMALIES),
        y=alt.Y("writes:Q", title="operations"),
        color=alt.Color("measure:N", title=None, scale=alt.Scale(domain=ANOMALIES, range=ANOMALY_COLORS),
                        legend=alt.Legend(orient="top")),
        tooltip=["scenario:N", "kine_version:N", "run:Q", "measure:N", "writes:Q"])
    chart = alt.layer(base.mark_bar(), base.mark_text(dy=-4, baseline="bottom", fontSize=10).encode(
        text="writes:Q")).properties(width=max(160, 70 * len(versions)), height=220).facet(
        column=alt.Column("scenario:N", title=None), data=alt.Data(values=data))
    return _finish(chart, "what each Kine release did under the same scenario", label,
                   ["acknowledged but missing: the client was told the write succeeded, and no row holds it",
                    "reported failed but written: the client saw an error or a refusal, and the row is there"])


def save(chart, path, *, scale: float = 2.0) -> Path:
    """Write `chart` to `path` as PNG, SVG or a self-contained HTML page (by suffix), rendered by vl-convert
    in this process: no browser and no network. Returns the path."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot save a chart as {path.suffix or 'a file without suffix'!r}: use "
                         f"{', '.join(SAVE_FORMATS)}")
    _vl_convert()  # Altair renders through it
    if fmt == "html":
        chart.save(str(path), format="html", inline=True)
    else:
        chart.save(str(path), format=fmt, engine="vl-convert", scale_factor=scale)
    return path
