"""`kinelab check` is quiet on a healthy lab, even under load, and catches injected divergence."""

import json
import threading

import pytest

import kinelab as kl
from conftest import run_cli, wait_until
from kinelab.db import connect_postgres
from kinelab.drive.workload import run_load
from kinelab.observe.check import check, recheck
from kinelab.show import replay


def test_no_false_alarm_on_a_healthy_lab_under_load(pg_lab):
    stop = threading.Event()
    loader = threading.Thread(target=run_load, args=([pg_lab.client(i) for i in range(3)], "configmaps"),
                              kwargs={"rate": 100, "duration_s": 60, "stop": stop}, daemon=True)
    loader.start()
    try:
        reports = [check(pg_lab.endpoints, pg_lab.dsn) for _ in range(12)]
    finally:
        stop.set()
        loader.join()
    assert all(r.consistent for r in reports), [r.to_json() for r in reports if not r.consistent][:1]
    assert len({r.revision for r in reports}) > 3  # the checks really ran at moving revisions
    assert all(len(r.views) == 4 and len({v.digest for v in r.views}) == 1 for r in reports)


def test_a_replica_on_a_different_database_is_caught(pg_lab, kine, tmp_path):
    with kl.Lab(replicas=1, datastore="sqlite", dir=tmp_path / "other") as other:
        for i in range(5):
            other.client(0).create(f"/registry/configmaps/default/stray-{i}", b"elsewhere")
        endpoints = pg_lab.endpoints + other.endpoints
        report = check(endpoints, pg_lab.dsn)
        cli = run_cli("check", "--endpoints", ",".join(endpoints), "--dsn", pg_lab.dsn.url, "--json")
    assert not report.consistent and report.divergent
    stray = [d for d in report.divergent if "stray-" in d["key"]]
    assert stray and all(d[report.views[3].source] is not None for d in stray)
    assert cli.returncode == 1
    parsed = json.loads(cli.stdout)
    assert parsed["consistent"] is False and len(parsed["divergent"]) == len(report.divergent)
    assert pg_lab.dsn.password not in cli.stdout


@pytest.fixture
def tamper_lab(kine, tmp_path):
    with kl.Lab(replicas=2, datastore="postgres", dir=tmp_path / "lab") as lab:
        yield lab


def _tamper(lab, row_id: int, value: bytes) -> None:
    with connect_postgres(lab.datastore.admin_dsn, database="kubernetes") as conn:
        conn.execute("UPDATE kine SET value = %s WHERE id = %s", (value, row_id))
        conn.commit()


def test_a_superseded_row_changed_behind_kines_back_breaks_the_history(tamper_lab, prefix):
    lab = tamper_lab
    first = lab.client(0).create(prefix + "k", b"original").revision
    second = lab.client(1).update(prefix + "k", b"newer", mod_revision=first).revision
    wait_until(lambda: lab.client(0).revision() >= second)
    assert check(lab.endpoints, lab.dsn).consistent
    _tamper(lab, first, b"forged")
    report = check(lab.endpoints, lab.dsn)
    assert not report.consistent
    assert report.history_breaks == [{"id": first, "name": prefix + "k", "successor": second}]
    assert run_cli("check", "--dir", lab.dir).returncode == 1


def test_a_live_row_changed_behind_kines_back_is_caught_against_a_baseline(tamper_lab, prefix, tmp_path):
    lab = tamper_lab
    rev = lab.client(0).create(prefix + "live", b"original").revision
    baseline = tmp_path / "baseline.duckdb"
    kl.capture(lab, baseline)
    assert check(lab.endpoints, lab.dsn, baseline=str(baseline)).consistent
    _tamper(lab, rev, b"forged")
    # Kine caches nothing on SQL backends: every replica reads the edited value at once, no poll, no retry
    replicas = range(len(lab.endpoints))
    assert [lab.client(i).get(prefix + "live").value for i in replicas] == [b"forged"] * len(replicas)
    report = check(lab.endpoints, lab.dsn, baseline=str(baseline))
    assert report.changed_rows == [{"id": rev, "name": prefix + "live"}]
    result = run_cli("check", "--dir", lab.dir, "--baseline", baseline, "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["changed_rows"][0]["id"] == rev


def test_a_recorded_report_is_judged_again_by_todays_comparison():
    """Notebook 07's replay: the recorded views decide, not the recorded verdict."""
    recorded = replay.summary(replay.dataset("consistency.duckdb"), "07-consistency-check")
    healthy, split = recorded["healthy"][0], recorded["split"]
    assert recheck(healthy).consistent and recheck(split).divergent == split.divergent
    key, (mod_revision, _) = next(iter(healthy.views[0].keys.items()))
    healthy.views[1].keys[key] = [mod_revision, "0" * 16]  # one replica now answers another value
    rejudged = recheck(healthy)
    assert not rejudged.consistent and [d["key"] for d in rejudged.divergent] == [key]
