"""Workload, watch lag, compaction and metrics, measured on real Kine replicas and real databases."""

import pytest
from test_capture import database_rows

import kinelab as kl
from conftest import wait_until
from kinelab.drive.workload import run_load
from kinelab.observe import runs
from kinelab.observe.metrics import scrape


def _con(path):
    return kl.open_capture(path)


def test_every_acknowledged_write_is_in_the_table_and_in_every_replicas_watch(pg_lab, tmp_path):
    out = tmp_path / "lag.duckdb"
    summary = runs.watch_lag(pg_lab, out, mix="configmaps", rate=60, duration_s=4, idle_s=0.5)
    assert summary["writes"] > 150 and summary["errors"] == 0 and summary["settled"]
    con = _con(out)
    try:
        writes = con.execute("SELECT revision, key, op FROM writes WHERE run_id = ?", [summary["run_id"]]).fetchall()
        rows = dict(con.execute("SELECT id, name FROM kine_latest").fetchall())
        assert all(rows.get(revision) == key for revision, key, _ in writes)  # every write is its row
        per_observer = con.execute("""SELECT observer, count(DISTINCT revision) FROM watch_events
                                      WHERE run_id = ? AND writer IS NOT NULL GROUP BY 1 ORDER BY 1""",
                                   [summary["run_id"]]).fetchall()
        assert per_observer == [(i, len(writes)) for i in range(3)]
        assert con.execute("SELECT count(*) FROM watch_missed WHERE run_id = ?",
                           [summary["run_id"]]).fetchall()[0][0] == 0
    finally:
        con.close()
    assert summary["missed"] == {} and summary["cancelled"] == {}


def test_other_replica_lag_exceeds_same_replica_lag_and_follows_the_1s_poll(pg_lab, tmp_path):
    """Writes pinned to replica 0: it delivers at once, the others on their next 1 s poll (mean ~0.5 s)."""
    out = tmp_path / "pinned.duckdb"
    summary = runs.watch_lag(pg_lab, out, rate=20, duration_s=6, spread=0, idle_s=0.5)
    con = _con(out)
    try:
        same, other = con.execute("""SELECT avg(lag_ms) FILTER (WHERE writer = observer),
                                            avg(lag_ms) FILTER (WHERE writer <> observer),
                                     FROM watch_events WHERE run_id = ?""", [summary["run_id"]]).fetchall()[0]
        slowest = con.execute("SELECT max(lag_ms) FROM watch_events WHERE run_id = ? AND writer <> observer",
                              [summary["run_id"]]).fetchall()[0][0]
    finally:
        con.close()
    assert same < 50, f"the writing replica should deliver within milliseconds, mean {same:.1f} ms"
    assert 200 < other < 900, f"other replicas should lag about half the 1 s poll, mean {other:.0f} ms"
    assert slowest < 1600
    assert other > 10 * same


def test_round_robin_load_still_shows_other_replica_lag_above_same_replica_lag(pg_lab, tmp_path):
    summary = runs.watch_lag(pg_lab, tmp_path / "rr.duckdb", rate=40, duration_s=3, idle_s=0.2)
    by = {(row["observer"], row["locality"]): row["p50_ms"] for row in summary["lag"]}
    for observer in range(3):
        assert by[(observer, "other-replica")] > by[(observer, "same-replica")]


def test_conflicting_updates_retry_and_never_report_a_write_the_table_lacks(pg_lab, prefix):
    """Two replicas update the same key concurrently from a stale revision: Kine's (name, prev_revision)
    unique index lets one win, the loser retries from the value the failed Txn returned."""
    import threading

    from kinelab.drive.workload import Writer

    key = prefix + "contended"
    base = pg_lab.client(0).create(key, b"v").revision
    wait_until(lambda: pg_lab.client(1).revision() >= base)
    writers = [Writer([pg_lab.client(0), pg_lab.client(1)], worker=w) for w in range(2)]

    def hammer(writer, replica):  # retrying as long as it takes, like the apiserver's GuaranteedUpdate
        for i in range(40):
            writer.update(replica, key, lambda: f"{replica}-{i}".encode(), known_revision=base, max_conflicts=1000)

    threads = [threading.Thread(target=hammer, args=(w, w.worker)) for w in writers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    acknowledged = [w for writer in writers for w in writer.writes]
    assert len(acknowledged) == 80 and not any(writer.errors for writer in writers)
    assert sum(w.conflicts for w in acknowledged) > 0, "stale revisions must have caused conflicts"
    rows = {row[0]: row for row in database_rows(pg_lab.dsn)}
    chain = sorted(w.revision for w in acknowledged)
    assert all(rows[r][1] == key and rows[r][3] == 0 for r in chain)  # each write is a live update row
    assert [rows[r][5] for r in chain] == [base] + chain[:-1]  # one unbroken prev_revision chain


@pytest.mark.parametrize("mix", ["heartbeat", "events"])
def test_named_mixes_write_kubernetes_shaped_keys(pg_lab, mix, tmp_path):
    result = run_load([pg_lab.client(i) for i in range(3)], mix, ops=60, rate=None, nodes=20, seed=3)
    assert len(result.writes) == 60 and not result.errors
    if mix == "heartbeat":
        assert {w.key.rsplit("/", 1)[0] for w in result.writes} == {"/registry/leases/kube-node-lease"}
        assert sum(w.op == "create" for w in result.writes) == 20  # each node creates once, then renews
    else:
        assert all(w.key.startswith("/registry/events/") for w in result.writes)
        leased = pg_lab.client(0).get(result.writes[0].key)
        assert leased.lease == 3660


def test_load_records_writes_errors_and_metrics(pg_lab, tmp_path):
    out = tmp_path / "load.duckdb"
    summary = runs.load(pg_lab, out, mix="configmaps", ops=200, rate=None, workers=2, duration_s=None)
    assert 150 < summary["writes"] + summary["lists"] <= 200 and summary["errors"] == 0
    con = _con(out)
    try:
        metrics = {r[0] for r in con.execute("SELECT DISTINCT metric FROM kine_metrics").fetchall()}
        inserts = con.execute("""SELECT max(value) FROM kine_metrics WHERE metric = 'kine_sql_total'
                                 AND starts_with(json_extract_string(labels, '$.name'), 'Insert')
                                 AND json_extract_string(labels, '$.error_code') = ''""").fetchall()[0][0]
        stored = con.execute("SELECT count(*) FROM writes").fetchall()[0][0]
    finally:
        con.close()
    assert stored == summary["writes"]
    for family in ("kine_sql_total", "kine_sql_time_seconds_bucket", "go_sql_open_connections"):
        assert family in metrics, sorted(metrics)[:40]
    assert inserts is not None and inserts >= summary["writes"] / 3  # each replica counts its own inserts


def test_scrape_parses_kines_metrics(pg_lab):
    samples = scrape(pg_lab.metrics_urls[0])
    names = {name for name, _, _ in samples}
    assert "kine_sql_total" in names and all(n.startswith(("kine_", "go_sql_")) for n in names)


@pytest.fixture
def compacting_lab(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab",
                kine_args={"compact-min-retain": 0}) as lab:
        yield lab


def test_compaction_removes_exactly_superseded_and_tombstone_rows_up_to_the_compact_revision(compacting_lab,
                                                                                             tmp_path):
    lab, out = compacting_lab, tmp_path / "c.duckdb"
    run_load([lab.client(0), lab.client(1)], "configmaps", ops=300, rate=None, seed=9)
    first = kl.capture(lab, out)
    target = lab.client(0).revision() - 20
    lab.client(0).compact(target)
    second = kl.capture(lab, out, incremental=True)
    con = _con(out)
    try:
        expected = {r[0] for r in con.execute("""
            WITH s AS (SELECT * FROM kine_at(1))
            SELECT id FROM s WHERE id <= ? AND (deleted <> 0 OR id IN (
                SELECT prev_revision FROM s WHERE id <= ? AND prev_revision > 0))
              AND name <> 'compact_rev_key'""", [target, target]).fetchall()}
        removed = {r[0] for r in con.execute("SELECT id FROM kine_removed WHERE snapshot_id = 2").fetchall()}
    finally:
        con.close()
    assert second.compact_revision == target and first.compact_revision == 0
    assert len(expected) > 50 and removed == expected


@pytest.mark.parametrize("method", ["explicit", "interval", "none"])
def test_compaction_timeline_by_method(kine, tmp_path, method):
    args = {"compact-min-retain": 0, **({"compact-interval": "2s"} if method == "interval" else {})}
    with kl.Lab(replicas=2, datastore="postgres", kine_args=args) as lab:
        summary = runs.compaction(lab, tmp_path / "t.duckdb", method=method, duration_s=7, sample_every_s=1.5,
                                  compact_every_s=2, rate=120)
    con = _con(tmp_path / "t.duckdb")
    try:
        timeline = con.execute("""SELECT compact_revision, current_revision, rows_total, table_bytes
                                  FROM compaction_timeline ORDER BY t""").fetchall()
        checks = dict(con.execute("SELECT check_name, ok FROM compaction_checks").fetchall())
    finally:
        con.close()
    assert len(timeline) >= 4 and all(b > 0 for *_, b in timeline)
    if method == "none":
        assert {c for c, *_ in timeline} == {0} and summary["stalled"]
        assert [r for _, _, r, _ in timeline] == sorted(r for _, _, r, _ in timeline)  # the table only grows
        assert checks == {}
    else:
        assert timeline[-1][0] > 0 and not summary["stalled"]
        assert checks == {"range-below-compact": True, "watch-below-compact": True}
        assert timeline[-1][2] < timeline[-1][1]  # fewer rows than revisions: compaction deleted some


def test_interval_method_without_kines_compactor_is_refused(pg_lab, tmp_path):
    with pytest.raises(kl.KinelabError, match="compact-interval"):
        runs.compaction(pg_lab, tmp_path / "x.duckdb", method="interval", duration_s=1)


def test_watch_below_the_compact_revision_is_reported_as_cancelled(compacting_lab, tmp_path):
    from kinelab.observe.watchlag import WatchProbe

    lab = compacting_lab
    run_load([lab.client(0)], "configmaps", ops=100, rate=None)
    target = lab.client(0).revision() - 5
    lab.client(0).compact(target)
    wait_until(lambda: lab.client(1).revision() >= target)
    with WatchProbe(lab.endpoints, start_revision=target - 10) as probe:
        wait_until(lambda: all(o.cancelled for o in probe.observers), what="Kine to cancel the watches")
    assert all(o.compact_revision == target for o in probe.observers)
    assert all("compacted" in o.cancel_reason for o in probe.observers)
