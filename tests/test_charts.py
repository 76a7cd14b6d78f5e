"""Charts over real captures: a watch-lag run on the shared 3-replica lab (with one key created, updated,
deleted and created again), and a big load followed by a compaction run on a 2-replica lab of its own
(compact-min-retain 0). Nothing here is hand-made: every row comes from real Kine on embedded Postgres."""

import json
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from types import SimpleNamespace

import duckdb
import pytest

import kinelab as kl
from kinelab import show
from kinelab.observe import runs

LABEL = "REPLAY: recorded 2026-11-28"
BIG_OPS = 12000  # well over MAX_ROWS, in about 10 s
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def captures(pg_lab, kine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("charts")
    key = f"/registry/configmaps/charts-{uuid.uuid4().hex[:8]}/recreated"
    client = pg_lab.client(0)
    created = client.create(key, b"v1").revision
    updated = client.update(key, b"v2", mod_revision=created).revision
    deleted = client.delete(key, mod_revision=updated).revision
    recreated = client.create(key, b"v3").revision
    lag = folder / "lag.duckdb"
    runs.watch_lag(pg_lab, lag, duration_s=3, rate=40, idle_s=0.2)
    big = folder / "big.duckdb"
    with kl.Lab(replicas=2, datastore="postgres", kine_args={"compact-min-retain": 0}) as lab:
        load = runs.load(lab, big, mix="creates", ops=BIG_OPS, rate=None, duration_s=None, workers=8,
                         value_bytes=64)
        compacted = runs.compaction(lab, big, duration_s=6, sample_every_s=1.5, compact_every_s=2)
    return SimpleNamespace(lag=lag, big=big, key=key, chain=[created, updated, deleted, recreated],
                           load_run=load["run_id"], compaction=compacted)


def units(spec):
    """(mark, encoding) of every unit view in a Vega-Lite spec."""
    if "mark" in spec:
        mark = spec["mark"]
        yield (mark if isinstance(mark, str) else mark["type"]), spec.get("encoding", {})
    for part in ("layer", "vconcat", "hconcat", "concat"):
        for sub in spec.get(part, []):
            yield from units(sub)
    if isinstance(spec.get("spec"), dict):
        yield from units(spec["spec"])


def encodings(spec) -> set:
    return {(mark, channel, enc.get("field")) for mark, encoding in units(spec)
            for channel, enc in encoding.items() if isinstance(enc, dict)}


def data_rows(spec) -> int:
    """Every data row the spec carries: named datasets and inline values."""
    def inline(node):
        if isinstance(node, dict):
            values = node.get("data", {}).get("values") if isinstance(node.get("data"), dict) else None
            return len(values or []) + sum(inline(v) for k, v in node.items() if k != "datasets")
        if isinstance(node, list):
            return sum(inline(v) for v in node)
        return 0
    return sum(len(v) for v in spec.get("datasets", {}).values()) + inline(spec)


def dataset(spec) -> list:
    """The rows of a chart with one dataset."""
    (rows,) = spec["datasets"].values()
    return rows


CHARTS = {
    "revision_timeline": (lambda c, **kw: show.revision_timeline(c.lag, **kw),
                          {("bar", "x", "start"), ("bar", "x2", "stop"), ("bar", "y", "rows"), ("bar", "color", "op"),
                           ("bar", "row", "resource")}),
    "revision_timeline over time": (lambda c, **kw: show.revision_timeline(c.big, over="time", run_id=c.load_run,
                                                                           **kw),
                                    {("bar", "x", "start"), ("bar", "x2", "stop"), ("bar", "color", "op")}),
    "key_chain": (lambda c, **kw: show.key_chain(c.lag, c.key, **kw),
                  {("point", "x", "id"), ("point", "y", "name"), ("point", "shape", "op"), ("point", "color", "op"),
                   ("rule", "x", "link_from"), ("rule", "x2", "id")}),
    "table_anatomy": (lambda c, **kw: show.table_anatomy(c.big, **kw),
                      {("bar", "x", "rows"), ("bar", "y", "kind"), ("bar", "color", "kind"),
                       ("bar", "x", "column_bytes"), ("text", "text", "column")}),
    "compaction": (lambda c, **kw: show.compaction(c.big, **kw),
                   {("area", "y", "compact_revision"), ("area", "y2", "current_revision"), ("line", "y", "revision"),
                    ("line", "y", "rows"), ("area", "y", "table_bytes"), ("line", "x", "seconds")}),
    "watch_lag": (lambda c, **kw: show.watch_lag(c.lag, **kw),
                  {("line", "x", "lag_ms"), ("line", "y", "fraction"), ("line", "color", "locality"),
                   ("rule", "x", "min_ms"), ("rule", "x2", "max_ms"), ("bar", "x", "p25_ms"), ("bar", "x2", "p75_ms"),
                   ("tick", "x", "p50_ms"), ("rule", "x", "poll_ms")}),
    "watch_lag_timeline": (lambda c, **kw: show.watch_lag_timeline(c.lag, **kw),
                           {("point", "x", "seconds"), ("point", "y", "lag_ms"), ("point", "color", "observer"),
                            ("point", "shape", "locality"), ("rule", "y", "poll_ms")}),
    "ops_by_resource": (lambda c, **kw: show.ops_by_resource(c.lag, **kw),
                        {("bar", "y", "resource"), ("bar", "y", "namespace"), ("bar", "x", "rows"),
                         ("bar", "color", "op")}),
    "sql_latency": (lambda c, **kw: show.sql_latency(c.big, run_id=c.load_run, **kw),
                    {("rule", "x", "p50_ms"), ("rule", "x2", "p99_ms"), ("point", "x", "ms"),
                     ("point", "shape", "statistic"), ("point", "color", "replica"), ("point", "y", "query")}),
}


@pytest.mark.parametrize("name", CHARTS)
def test_chart_validates_carries_its_label_and_renders_offline(captures, name, tmp_path):
    make, expected = CHARTS[name]
    chart = make(captures, label=LABEL)
    spec = chart.to_dict()  # Altair validates against the Vega-Lite schema here
    assert re.search(r"/vega-lite/v[56][.\d]*\.json$", spec["$schema"])
    assert expected <= encodings(spec), sorted(expected - encodings(spec))
    assert 0 < data_rows(spec) <= show.MAX_ROWS
    assert spec["title"]["text"] == LABEL  # the replay label is the title itself
    svg = show.save(chart, tmp_path / "chart.svg").read_text()
    assert svg.startswith("<svg") and LABEL in svg  # and it is drawn
    png = show.save(chart, tmp_path / "chart.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1024


def test_watch_lag_timeline_plots_every_event_of_the_run(captures):
    rows = dataset(show.watch_lag_timeline(captures.lag).to_dict())
    con = kl.open_capture(captures.lag)
    try:
        events = con.execute("""SELECT count(*) FROM watch_events WHERE writer IS NOT NULL
                                AND run_id = (SELECT max(run_id) FROM watch_events)""").fetchall()[0][0]
    finally:
        con.close()
    assert len(rows) == events and min(r["seconds"] for r in rows) >= 0
    assert {r["observer"] for r in rows} == {"replica 0", "replica 1", "replica 2"}
    assert all((r["locality"] == "same-replica") == (r["observer"] == r["writer"]) for r in rows)


def test_apiserver_availability_of_the_recorded_deployment_modes(tmp_path):
    """On the probes recorded in data/ (real apiservers on real Kine): one row per mode, every attempt a tick,
    the kill a rule, and the replay label drawn as the title."""
    from kinelab.show import replay

    recorded = replay.summary(replay.dataset("deployment-modes.duckdb"), "05-deployment-modes")
    label = replay.label("deployment-modes.duckdb")
    chart = show.apiserver_availability(recorded["served"], kill_at_s=recorded["kill_at_s"], label=label)
    spec = chart.to_dict()
    assert spec["facet"]["row"]["field"] == "mode" and spec["title"]["text"] == label
    assert {("tick", "x", "t"), ("tick", "y", "apiserver"), ("tick", "color", "ok")} <= encodings(spec)
    assert any(mark == "rule" and enc["x"] == {"datum": recorded["kill_at_s"]} for mark, enc in units(spec))
    rows = spec["data"]["values"]
    assert len(rows) == sum(map(len, recorded["served"].values()))
    assert {r["mode"] for r in rows} == {"shared-db", "single-kine", "hybrid"}
    assert label in show.save(chart, tmp_path / "chart.svg").read_text()
    one = show.apiserver_availability(recorded["served"]["hybrid"]).to_dict()  # one mode: no facet, no rule
    assert "facet" not in one and not any(mark == "rule" for mark, _ in units(one))


def test_charts_combine_and_keep_their_own_selections(captures):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Altair warns when it merges the selections of two alike charts
        both = (show.compaction(captures.big) & show.compaction(captures.big, label=LABEL)).to_dict()
    zooms = [p["name"] for p in both["params"] if p["select"]["type"] == "interval"]
    assert len(zooms) == len(set(zooms)) == 2


def test_unlabelled_charts_say_what_they_show(captures):
    spec = show.watch_lag(captures.lag).to_dict()
    assert spec["title"]["text"].startswith("watch lag per observer") and LABEL not in json.dumps(spec)


def test_big_captures_are_binned_and_thinned_in_duckdb(captures):
    con = kl.open_capture(captures.big)
    try:
        table_rows = con.execute("SELECT count(*) FROM kine_latest").fetchall()[0][0]
        writes = con.execute("SELECT count(*) FROM writes WHERE run_id = ?", [captures.load_run]).fetchall()[0][0]
    finally:
        con.close()
    assert table_rows > BIG_OPS and writes == BIG_OPS
    # Ask for far more bins and keys than a chart may carry: DuckDB keeps every k-th row, in order.
    timeline = show.revision_timeline(captures.big, bins=BIG_OPS).to_dict()
    over_time = show.revision_timeline(captures.big, over="time", run_id=captures.load_run, bins=BIG_OPS).to_dict()
    chains = show.key_chain(captures.big, resource="configmaps", limit=BIG_OPS).to_dict()
    for spec in (timeline, over_time, chains):
        assert 1000 < data_rows(spec) <= show.MAX_ROWS
    for make, _ in CHARTS.values():
        assert data_rows(make(captures).to_dict()) <= show.MAX_ROWS


def test_key_chain_links_each_row_to_its_predecessor_and_marks_the_re_create(captures):
    rows = sorted(dataset(show.key_chain(captures.lag, captures.key).to_dict()), key=lambda r: r["id"])
    created, updated, deleted, recreated = captures.chain
    assert [(r["id"], r["op"]) for r in rows] == [(created, "create"), (updated, "update"), (deleted, "delete"),
                                                  (recreated, "re-create")]
    assert [r["link_from"] for r in rows] == [None, created, updated, deleted]


def test_key_chain_picks_the_busiest_keys(captures):
    rows = dataset(show.key_chain(captures.lag, resource="configmaps", limit=4).to_dict())
    assert len({r["name"] for r in rows}) == 4 and all(r["name"].startswith("/registry/configmaps/") for r in rows)
    busiest = dataset(show.key_chain(captures.lag).to_dict())
    per_key = {}
    for r in busiest:
        per_key[r["name"]] = per_key.get(r["name"], 0) + 1
    assert len(per_key) == 12 and min(per_key.values()) >= 2  # chains, not lone creates


def test_watch_lag_quantiles_agree_with_the_summary_view(captures):
    spec = show.watch_lag(captures.lag).to_dict()
    ecdf, boxes = (rows for rows in spec["datasets"].values())
    con = kl.open_capture(captures.lag)
    try:
        summary = {(o, loc): (p50, p99, events) for o, loc, p50, p99, events in con.execute(
            "SELECT observer, locality, p50_ms, p99_ms, events FROM watch_lag_summary").fetchall()}
    finally:
        con.close()
    assert len(ecdf) == len(summary) * 101 and {(r["observer"], r["locality"]) for r in ecdf} == set(summary)
    for row in ecdf:
        if row["fraction"] == 0.5:
            assert row["lag_ms"] == pytest.approx(summary[(row["observer"], row["locality"])][0])
    for row in boxes:
        p50, p99, events = summary[(row["observer"], row["locality"])]
        assert (row["p50_ms"], row["events"]) == (pytest.approx(p50), events)
        assert row["p99_ms"] == pytest.approx(p99) and row["min_ms"] <= row["p25_ms"] <= row["p75_ms"] <= row["max_ms"]
    # Other replicas wait for their poll; the writer's own watch is faster.
    medians = {(r["observer"], r["locality"]): r["p50_ms"] for r in boxes}
    assert all(medians[(o, "other-replica")] > medians[(o, "same-replica")] for o in range(3))


def test_table_anatomy_accounts_for_every_row_of_the_snapshot(captures):
    rows = {r["kind"]: r for r in dataset(show.table_anatomy(captures.big).to_dict())}
    con = kl.open_capture(captures.big)
    try:
        sid, row_count = con.execute("SELECT snapshot_id, row_count FROM snapshots ORDER BY 1 DESC LIMIT 1"
                                     ).fetchall()[0]
        tombstones, value_bytes = con.execute(f"""
            SELECT count(*) FILTER (WHERE deleted = 1 AND name NOT LIKE 'gap-%'),
                   sum(coalesce(octet_length(value), 0)) FROM kine_at({sid})""").fetchall()[0]
    finally:
        con.close()
    assert list(rows) == ["live", "superseded", "tombstone", "gap", "bookkeeping"]
    assert sum(r["rows"] for r in rows.values()) == row_count
    assert rows["tombstone"]["rows"] == tombstones and sum(r["value_bytes"] for r in rows.values()) == value_bytes
    assert rows["live"]["rows"] >= BIG_OPS and rows["bookkeeping"]["rows"] >= 1


def test_compaction_chart_follows_the_timeline_and_reports_the_checks(captures):
    spec = show.compaction(captures.big).to_dict()
    rows = dataset(spec)
    assert len(rows) == captures.compaction["samples"] >= 4
    assert rows[-1]["compact_revision"] == captures.compaction["compact_revision"] > 0
    assert all(r["compact_revision"] <= r["current_revision"] for r in rows)
    assert "range-below-compact at" in json.dumps(spec["title"]) and "FAILED" not in json.dumps(spec["title"])


def test_sql_latency_counts_the_runs_own_queries(captures):
    rows = dataset(show.sql_latency(captures.big, run_id=captures.load_run).to_dict())
    totals = dataset(show.sql_latency(captures.big, run_id=captures.load_run, cumulative=True).to_dict())

    def inserts(rows):
        return sum(r["queries"] for r in rows if r["query"].startswith("Insert"))

    # One insert per create, counted by the replica that made it. The run's window starts at the first
    # scrape, which races the first writes: it may miss a few; an insert Kine retried counts twice.
    assert BIG_OPS * 0.99 <= inserts(rows) <= BIG_OPS * 1.01 and inserts(rows) <= inserts(totals) < BIG_OPS * 1.1
    assert {r["replica"] for r in rows} == {"replica 0", "replica 1"}
    assert all(0 < r["p50_ms"] <= r["p99_ms"] <= 8192 and r["mean_ms"] > 0 for r in rows)


def test_charts_take_a_connection_and_leave_it_open_or_a_path_and_close_it(captures):
    con = kl.open_capture(captures.lag)
    try:
        pending = con.execute("SELECT id FROM kine_rows ORDER BY id")
        first = pending.fetchone()  # the caller's own unfinished result
        show.ops_by_resource(con).to_dict()
        assert pending.fetchone()[0] > first[0]  # still there, where it was
        assert con.execute("SELECT count(*) FROM kine_ops").fetchall()[0][0] > 0
    finally:
        con.close()
    show.ops_by_resource(str(captures.lag)).to_dict()
    duckdb.connect(str(captures.lag)).close()  # read-write: refused if the chart had left a connection open


def test_missing_data_and_unknown_formats_are_explained(captures, tmp_path):
    with pytest.raises(kl.KinelabError, match="kinelab watchlag"):
        show.watch_lag(captures.big)
    with pytest.raises(kl.KinelabError, match="kinelab compaction"):
        show.compaction(captures.lag)
    with pytest.raises(kl.KinelabError, match="no snapshot 99"):
        show.table_anatomy(captures.lag, snapshot_id=99)
    with pytest.raises(kl.KinelabError, match=r"\.png"):
        show.save(show.ops_by_resource(captures.lag), tmp_path / "chart.gif")


OFFLINE = """
import sys
from kinelab import show
chart = show.watch_lag(sys.argv[1], label=sys.argv[2])
for suffix in ("png", "svg", "html"):
    show.save(chart, f"{sys.argv[3]}/chart.{suffix}")
"""


def _no_network_namespace() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _no_network_namespace(), reason="needs `unshare -n` (root) for a process without network")
def test_export_needs_no_network(captures, tmp_path):
    """PNG, SVG and self-contained HTML from a process in a network namespace with no interfaces."""
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", OFFLINE, str(captures.lag), LABEL, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "chart.png").read_bytes().startswith(PNG_MAGIC)
    assert LABEL in (tmp_path / "chart.svg").read_text()
    html = (tmp_path / "chart.html").read_text()
    assert LABEL in html and not re.search(r"<script[^>]+src=", html)  # everything inline, nothing fetched
