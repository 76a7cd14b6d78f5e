"""The analysis layer: the same answers from a capture made the old way (capture schema 1, upgraded when opened)
and the new way, every DuckDB connection within its memory bound, and the figures the notebooks state.

The old-way captures are the replay recordings in data/, written by kinelab before capture schema 2 from real
runs of real Kine. The new way is rebuilt from each of them: every snapshot's table is put back into a Kine
SQLite table and captured again by today's code, full or incremental as it was, and the runs' own tables are
copied over. Nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import duckdb
import pytest

import kinelab as kl
from conftest import REPO, assert_one_line_error, run_cli
from kinelab.analyse import report, summary, troubleshoot
from kinelab.analyse import runs as analysed
from kinelab.analyse.views import VIEWS as ANALYSIS_VIEWS
from kinelab.errors import CaptureError, MemoryLimitError, UsageError
from kinelab.observe import store
from kinelab.observe.capture import COLUMNS
from kinelab.observe.scenario import Scenario
from kinelab.observe.store import MEMORY_ENV, SCHEMA_VERSION, TEMP_ENV, open_store, within_bounds
from kinelab.observe.store import VIEWS as CONTRACT_VIEWS
from kinelab.show import charts, replay


def _schema_version(path) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT value FROM capture_meta WHERE key = 'schema_version'").fetchall()[0][0]


# The recordings kinelab made before capture schema 2: old-way captures to compare with today's
RECORDED = sorted(p.name for p in replay.DATA.glob("*.duckdb") if _schema_version(p) == "1")
RUN_TABLES = ["runs", "writes", "load_errors", "watch_observers", "watch_events", "apiserver_watch_events",
              "kine_metrics", "compaction_timeline", "compaction_checks", "fault_events", "scenario_checks",
              "run_replicas", "revision_samples"]
KINE_SQLITE = """CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER,
                 deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB,
                 old_value BLOB)"""  # Kine's own, as in its SQLite files


def columns(con, table: str) -> list:
    return [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]


def rebuild_the_new_way(old, work):
    """Capture again, with today's code, every snapshot of the schema-1 file `old` from a Kine SQLite table that
    holds what the snapshot held (read with the file's own kine_at, as the old kinelab defined it)."""
    source, new = work / "state.db", work / f"new-{old.name}"
    with sqlite3.connect(source) as db:
        db.execute(KINE_SQLITE)
    open_store(new).close()  # a recording may hold runs and no snapshot
    recorded = duckdb.connect(str(old), read_only=True)
    try:
        for sid, mode in recorded.execute("SELECT snapshot_id, mode FROM snapshots ORDER BY 1").fetchall():
            rows = recorded.execute(f"SELECT {', '.join(COLUMNS)} FROM kine_at(?) ORDER BY id", [sid]).fetchall()
            with sqlite3.connect(source) as db:
                db.execute("DELETE FROM kine")
                db.executemany(f"INSERT INTO kine VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            snapshot = kl.capture(source, new, incremental=mode == "incremental")
            assert (snapshot.snapshot_id, snapshot.mode) == (sid, mode)
    finally:
        recorded.close()
    con = duckdb.connect(str(new))
    try:
        con.execute(f"ATTACH '{old}' AS recorded (READ_ONLY)")
        for table in RUN_TABLES:
            if table in {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                                   "'recorded'").fetchall()}:
                shared = [c for c in columns(con, f"recorded.{table}") if c in columns(con, table)]
                con.execute(f"INSERT INTO {table} ({', '.join(shared)}) SELECT {', '.join(shared)} "
                            f"FROM recorded.{table}")
    finally:
        con.close()
    return new


def same(value):
    """`value` with every float to 12 significant digits: sums over threads may add in any order."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: same(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [same(v) for v in value]
    return value


def chart_data(chart) -> dict:
    spec = chart.to_dict()
    return {"title": spec.get("title"), "data": sorted(json.dumps(same(rows), sort_keys=True)
                                                       for rows in spec.get("datasets", {}).values())}


def ids(con, table: str) -> list:
    return [r[0] for r in con.execute(f"SELECT DISTINCT run_id FROM {table} ORDER BY 1").fetchall()]


def every_answer(path) -> dict:
    """Every analysis kinelab has, on the capture at `path`: chart data, summaries, the report, the figures of
    runs, and the whole content of every view."""
    answers = {}
    with kl.open_capture(path) as con:
        snapshots = [r[0] for r in con.execute("SELECT snapshot_id FROM snapshots ORDER BY 1").fetchall()]
        if snapshots:
            answers["report"] = {k: v for k, v in report.datastore_report(con).items()
                                 if k not in ("captured_at", "source")}
            answers["ops_by_resource"] = summary.ops_by_resource(con)
            answers["row_counts"] = summary.row_counts(con)
            for name in ("revision_timeline", "key_chain", "ops_by_resource"):
                answers[f"chart {name}"] = chart_data(getattr(charts, name)(con))
        for sid in snapshots:
            answers[f"chart table_anatomy {sid}"] = chart_data(charts.table_anatomy(con, sid))
            for macro in ("kine_at", "kine_classified", "kine_class_counts"):
                answers[f"{macro}({sid})"] = con.execute(f"SELECT * FROM {macro}(?) ORDER BY ALL", [sid]).fetchall()
        for run in ids(con, "writes"):
            answers[f"chart revision_timeline over time {run}"] = chart_data(
                charts.revision_timeline(con, over="time", run_id=run))
            answers[f"mean_write_ms {run}"] = analysed.mean_write_ms(con, run)
        for run in ids(con, "compaction_timeline"):
            answers[f"chart compaction {run}"] = chart_data(charts.compaction(con, run))
            answers[f"compaction_samples {run}"] = analysed.compaction_samples(con, run).to_pylist()
        for run in ids(con, "watch_events"):
            answers[f"chart watch_lag {run}"] = chart_data(charts.watch_lag(con, run))
            answers[f"chart watch_lag_timeline {run}"] = chart_data(charts.watch_lag_timeline(con, run))
            answers[f"lag_by_locality {run}"] = analysed.lag_by_locality(con, run)
        for run in ids(con, "kine_metrics"):
            answers[f"chart sql_latency {run}"] = chart_data(charts.sql_latency(con, run))
            answers[f"pool_pressure {run}"] = troubleshoot.pool_pressure(con, run)
            answers[f"sql_time {run}"] = troubleshoot.sql_time(con, run)
        for run in ids(con, "scenario_checks"):
            answers[f"chart scenario_availability {run}"] = chart_data(charts.scenario_availability(con, run))
        for run in ids(con, "load_errors"):
            answers[f"error_counts {run}"] = analysed.error_counts(con, run)
        for run in ids(con, "revision_samples"):
            answers[f"chart failover_revisions {run}"] = chart_data(charts.failover_revisions(con, run))
        if ids(con, "run_replicas"):
            answers["chart write_anomalies"] = chart_data(charts.write_anomalies(con))
        for kind, name, _ in CONTRACT_VIEWS + ANALYSIS_VIEWS:
            if kind == "VIEW":
                answers[name] = con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()
    return answers


@pytest.mark.parametrize("name", RECORDED)
def test_every_analysis_gives_the_same_answers_on_a_capture_made_the_old_way_and_the_new_way(name, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setattr(store, "UPGRADE_ROWS", 64)  # the upgrade goes a slice at a time, as on a big file
    old = tmp_path / name
    shutil.copyfile(replay.DATA / name, old)
    with duckdb.connect(str(old), read_only=True) as con:  # recorded by kinelab before capture schema 2
        assert con.execute("SELECT value FROM capture_meta WHERE key = 'schema_version'").fetchall() == [("1",)]
        stored_classes = con.execute("SELECT run_id, t, rows_superseded, rows_tombstones, rows_gap "
                                     "FROM compaction_timeline ORDER BY ALL").fetchall()
        stored_summaries = dict(con.execute("SELECT run_id, summary FROM runs WHERE kind = 'watchlag'").fetchall())
    new = rebuild_the_new_way(old, tmp_path)
    old_answers, new_answers = every_answer(old), every_answer(new)  # the old file is upgraded when opened
    assert old_answers.keys() == new_answers.keys()
    for key in old_answers:
        assert same(old_answers[key]) == same(new_answers[key]), key
    with kl.open_capture(old) as con:
        assert con.execute("SELECT value FROM capture_meta WHERE key = 'schema_version'").fetchall() == [
            (SCHEMA_VERSION,)]
        # what the old kinelab stored as it ran is what today's analyses compute
        recomputed = [(run, row["seconds"] + con.execute("SELECT t0 FROM run_clock WHERE run_id = ?",
                                                         [run]).fetchall()[0][0],
                       row["rows_superseded"], row["rows_tombstones"], row["rows_gap"])
                      for run in ids(con, "compaction_timeline")
                      for row in analysed.compaction_samples(con, run).to_pylist()]
        assert [(r, pytest.approx(t), *c) for r, t, *c in stored_classes] == sorted(recomputed)
        for run, stored in stored_summaries.items():
            lag = json.loads(stored)["lag"]
            view = con.execute("SELECT observer, locality, events, p50_ms, p99_ms, max_ms FROM watch_lag_summary "
                               "WHERE run_id = ?", [run]).fetchall()
            assert [tuple(row.values()) for row in lag] == [pytest.approx(row) for row in view]


def test_the_kine_table_analyses_read_no_value_blob(tmp_path):
    """Sizes, classes and churn are column scans: with the blobs emptied, every answer stays the same."""
    path = replay.dataset("troubleshooting-slow.duckdb")
    before = every_answer(path)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE kine_rows SET value = NULL, old_value = NULL")
    after = every_answer(path)
    blob_views = {k for k in before
                  if k.startswith(("kine_at(", "kine_classified(")) or k in ("kine_latest", "kine_compacted")}
    assert same({k: v for k, v in before.items() if k not in blob_views}) == \
        same({k: v for k, v in after.items() if k not in blob_views})


def test_open_capture_is_a_context_manager_with_the_views_on_a_read_only_file(tmp_path):
    path = replay.dataset("quickstart.duckdb")
    with kl.open_capture(path) as con:
        assert con.execute("SELECT count(*) FROM resource_ops").fetchall()[0][0] > 0
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE scratch (a INT)")  # read-only
    duckdb.connect(str(path)).close()  # closed: it can be opened for writing again
    with kl.open_capture(path) as con:  # charts on a connection get the views on their own cursor
        assert chart_data(charts.ops_by_resource(con))["data"]


def test_an_old_capture_that_cannot_be_upgraded_says_so_in_one_line(tmp_path):
    old = tmp_path / "old.duckdb"
    shutil.copyfile(replay.DATA / "quickstart.duckdb", old)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"con = duckdb.connect({str(old)!r}, read_only=True)\nprint('open', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(CaptureError) as caught:
            kl.open_capture(old)
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert "\n" not in message and "older kinelab" in message and "another process" in message
    with kl.open_capture(old) as con:  # once nothing else holds it, it is upgraded
        assert con.execute("SELECT count(*) FROM kine_ops").fetchall()[0][0] == 89


def test_a_capture_of_a_newer_schema_is_refused(tmp_path):
    path = replay.dataset("quickstart.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE capture_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CaptureError, match="newer kinelab"):
        kl.open_capture(path)


def test_every_connection_is_bounded_by_the_memory_setting(tmp_path, monkeypatch):
    path = replay.dataset("quickstart.duckdb")
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv(MEMORY_ENV, "256MB")
    monkeypatch.setenv(TEMP_ENV, str(spill))
    with kl.open_capture(path) as con:
        limit, temp, threads = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
                                           "current_setting('threads')").fetchall()[0]
    assert limit == "244.1 MiB" and temp.startswith(str(spill)) and 1 <= threads <= 2
    with kl.open_capture(path, memory_limit="1GB") as con:  # the argument wins over the environment
        assert con.execute("SELECT current_setting('memory_limit')").fetchall() == [("953.6 MiB",)]
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(UsageError, match=f"{MEMORY_ENV}='lots' is not a size"):
        kl.open_capture(path)


@pytest.mark.parametrize("no_room", ["the spill directory is a file", "the spill disk is full"])
def test_an_analysis_past_the_bound_spills_or_fails_in_one_line_naming_the_settings(no_room, tmp_path, monkeypatch):
    path = replay.dataset("quickstart.duckdb")
    heavy = "SELECT count(DISTINCT i::VARCHAR || repeat('x', 40)) FROM range(6000000) t(i)"  # about 500 MB
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv(TEMP_ENV, str(spill))
    with kl.open_capture(path, memory_limit="128MB") as con, within_bounds(con, "the test"):
        assert con.execute(heavy).fetchall() == [(6000000,)]  # past 128 MB: spilled, and still right
    if no_room == "the spill directory is a file":
        (tmp_path / "a-file").write_text("not a directory")
        monkeypatch.setenv(TEMP_ENV, str(tmp_path / "a-file"))
    with kl.open_capture(path, memory_limit="128MB") as con:
        if no_room == "the spill disk is full":
            con.execute("SET max_temp_directory_size = '1MB'")
        with pytest.raises(MemoryLimitError) as caught, within_bounds(con, "the test"):
            con.execute(heavy).fetchall()
    message = str(caught.value)
    assert "\n" not in message and MEMORY_ENV in message and TEMP_ENV in message and "the test needs more" in message


def test_a_bad_memory_setting_is_one_line_from_the_cli(tmp_path):
    result = run_cli("capture", "--sqlite", replay.DATA / "sqlite-state.db", "--out", tmp_path / "c.duckdb",
                     env={MEMORY_ENV: "12 parsecs"})
    assert result.returncode == 2
    assert_one_line_error(result, f"{MEMORY_ENV}='12 parsecs' is not a size")
    assert not (tmp_path / "c.duckdb").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounts a tmpfs: needs root")
def test_a_disk_too_small_for_the_capture_fails_before_it_starts_with_the_estimate(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=300k tmpfs {small} && exec {sys.executable} -m kinelab.cli capture "
              f"--sqlite {replay.DATA / 'sqlite-state.db'} --out {small / 'c.duckdb'}")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "KINELAB_PROGRESS": "0"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result, "the capture needs about")
    assert "is free there" in result.stderr


def test_lag_by_locality_agrees_with_the_per_observer_summary():
    with kl.open_capture(replay.dataset("watch-lag.duckdb")) as con:
        run = ids(con, "watch_events")[0]
        lag = analysed.lag_by_locality(con, run)
        per_observer = con.execute("SELECT locality, sum(events), max(max_ms) FROM watch_lag_summary "
                                   "WHERE run_id = ? GROUP BY 1", [run]).fetchall()
        with pytest.raises(UsageError, match="no watch events"):
            analysed.lag_by_locality(con, 999)
    assert {loc: (lag[loc]["events"], lag[loc]["max_ms"]) for loc in lag} == {loc: (n, m) for loc, n, m in per_observer}
    assert lag["same-replica"]["mean_ms"] < 50 < lag["other-replica"]["mean_ms"] < 1000  # the writer vs the 1 s poll


def test_accepted_share_of_the_recorded_deployment_modes():
    recorded = replay.summary(replay.dataset("deployment-modes.duckdb"), "05-deployment-modes")
    after = recorded["kill_at_s"] + 1
    assert analysed.accepted_share(recorded["served"]["single-kine"], 0, after) == 0.0
    assert analysed.accepted_share(recorded["served"]["hybrid"], 1, after) == 1.0
    assert analysed.accepted_share(recorded["served"]["hybrid"], 1, 0) == 1.0
    with pytest.raises(UsageError, match="no writes were tried"):
        analysed.accepted_share(recorded["served"]["hybrid"], 7, after)


def test_the_troubleshooting_figures_of_the_recorded_runs():
    with kl.open_capture(replay.dataset("troubleshooting-pool-unlimited.duckdb")) as con:
        run = ids(con, "load_errors")[0]
        kinds = analysed.error_counts(con, run)
        assert kinds["too many connections"] > 0
        assert sum(kinds.values()) == con.execute("SELECT count(*) FROM load_errors WHERE run_id = ?",
                                                  [run]).fetchall()[0][0]
    with kl.open_capture(replay.dataset("troubleshooting-slow.duckdb")) as con:
        calm, slowed = ids(con, "scenario_checks")[:2]
        assert analysed.mean_write_ms(con, slowed) > 2 * analysed.mean_write_ms(con, calm)
        inserts = {run: troubleshoot.query_mean_ms(con, run, "InsertReturning") for run in (calm, slowed)}
        assert inserts[slowed] > 3 * inserts[calm]
        rows = [r for r in troubleshoot.sql_time(con, calm) if r["query"] == "InsertReturning"]
        assert min(r["mean_ms"] for r in rows) <= inserts[calm] <= max(r["mean_ms"] for r in rows)
        with pytest.raises(UsageError, match="no timings of Kine's Nope query"):
            troubleshoot.query_mean_ms(con, calm, "Nope")


def test_a_counter_that_restarts_grows_by_what_it_added():
    con = duckdb.connect()
    from kinelab.observe.store import create_views, ensure_schema

    ensure_schema(con)
    samples = [(1, 0.0, 0, "c", "{}", 5), (1, 1.0, 0, "c", "{}", 9), (1, 2.0, 0, "c", "{}", 2),  # restarted: +2
               (1, 3.0, 0, "c", "{}", 4), (1, 1.5, 0, "new", "{}", 3)]  # first seen during the run: +3
    con.executemany("INSERT INTO kine_metrics VALUES (?, ?, ?, ?, ?, ?)", samples)
    create_views(con, CONTRACT_VIEWS, temp=True)
    growth = dict(con.execute("SELECT metric, growth FROM metric_growth").fetchall())
    assert growth == {"c": 4 + 2 + 2, "new": 3}


def test_scenario_of_builds_a_checked_scenario():
    scenario = Scenario.of("calm", settle_s=3, mix="creates", rate=60, duration_s=4,
                           steps=[{"at": 2, "fault": "slow", "hold_ms": 100}])
    assert (scenario.name, scenario.load["mix"], scenario.steps[0].fault, scenario.settle_s) == ("calm", "creates",
                                                                                                 "slow", 3)
    with pytest.raises(UsageError, match="outside the load"):
        Scenario.of("late", duration_s=4, steps=[{"at": 9, "fault": "kill", "replica": 0}])
    with pytest.raises(UsageError, match="unknown load key"):
        Scenario.of("typo", rat=60)


def test_observe_imports_nothing_from_the_layers_above_it():
    import ast

    above = ("analyse", "show", "cli", "demo")
    for module in (REPO / "kinelab" / "observe").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):  # from ..analyse import x (level 2), from kinelab.analyse ...
                parts = ((node.module or "").split(".") if node.level != 1 else ["observe"])
                package = parts[1] if node.level == 0 and parts[0] == "kinelab" and len(parts) > 1 else parts[0]
                assert package not in above, (module.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[1:2] and a.name.split(".")[1] in above for a in node.names
                               if a.name.startswith("kinelab.")), module.name


def test_a_big_snapshot_is_written_in_parts_and_appears_at_once(tmp_path, monkeypatch):
    from kinelab.observe import capture as capturing

    source = replay.DATA / "sqlite-state.db"
    kl.capture(source, tmp_path / "whole.duckdb")
    monkeypatch.setattr(capturing, "BATCH_ROWS", 10)
    monkeypatch.setattr(capturing, "PART_BYTES", 1)  # the file detached and attached again after every batch
    kl.capture(source, tmp_path / "parts.duckdb")
    rows = "SELECT * EXCLUDE (snapshot_id) FROM kine_latest ORDER BY id"
    with kl.open_capture(tmp_path / "whole.duckdb") as whole, kl.open_capture(tmp_path / "parts.duckdb") as parts:
        assert parts.execute(rows).fetchall() == whole.execute(rows).fetchall()

    batches = capturing._read_ahead

    def interrupted(rows, depth=3):
        for n, batch in enumerate(batches(rows, depth)):
            if n == 5:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(capturing, "_read_ahead", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kl.capture(source, tmp_path / "parts.duckdb")  # five parts committed, then Ctrl-C
    with duckdb.connect(str(tmp_path / "parts.duckdb")) as con:
        assert con.execute("SELECT max(snapshot_id), count(*) FROM kine_rows").fetchall() == [(1, 175)]
        # a kill -9 leaves its parts behind: the next capture removes them
        con.execute("INSERT INTO kine_rows SELECT 2, * EXCLUDE (snapshot_id) FROM kine_rows WHERE id < 50")
    monkeypatch.setattr(capturing, "_read_ahead", batches)
    assert kl.capture(source, tmp_path / "parts.duckdb", incremental=True).rows_stored == 1  # compact_rev_key
    with kl.open_capture(tmp_path / "parts.duckdb") as con:
        assert con.execute("SELECT snapshot_id, count(*) FROM kine_rows GROUP BY 1 ORDER BY 1").fetchall() == [
            (1, 175), (2, 1)]
