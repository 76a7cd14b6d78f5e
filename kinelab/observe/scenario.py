"""Scenarios: load for a while with faults at given times, then reconcile what was acknowledged.

A scenario is a YAML file (or the same dict in Python)::

    name: kill-one-of-three
    lab: {replicas: 3, datastore: postgres}      # how `kinelab scenario` starts a lab when given none
    load: {mix: configmaps, rate: 60, duration_s: 30, workers: 3, spread: round-robin}
    steps:
      - {at: 10, fault: kill, replica: 1}
      - {at: 20, fault: restart, replica: 1}
    expect: {writes_lost: 0, missed_by_survivors: 0, max_recovery_s: 5}

Every replica watches the load's keys throughout. After the load the table is captured and the run is
reconciled: every acknowledged write must be a row of the table, every surviving watcher (one whose replica
never failed) must have delivered every acknowledged write, and no watcher may have delivered a revision the
table does not hold. Results go to the run's DuckDB file: fault_events and scenario_checks, plus the writes,
errors, watch events and metrics every run stores (see store.py for the views over them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..drive.faults import FaultInjector
from ..drive.kube import as_load_result, check_kube_load, run_kube_load
from ..drive.pool import Background
from ..drive.workload import check_load, run_load
from ..errors import UsageError
from .capture import capture_into
from .metrics import MetricsSampler
from .revisions import COLUMNS as REVISION_COLUMNS
from .revisions import RevisionSampler
from .runs import load_summary, measured_run, store_load, store_metrics, store_watch
from .store import finish_run, insert_rows
from .watchlag import WatchProbe

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"  # the shipped ones, next to the package
# Replica faults make a client wait for its deadline: keep it short so one stalled replica does not stall the load.
FAULT_TIMEOUT_S = 2.0

LOAD_KEYS = ("mix", "rate", "duration_s", "workers", "spread", "seed", "nodes", "value_bytes", "event_ttl_s",
             "through")
LAB_KEYS = ("replicas", "datastore", "kine_args", "replica_args", "datastore_settings", "apiservers", "mode",
            "kine_version", "replication", "db_proxy", "balancer")
CHECKS = ("writes_lost", "missed_by_survivors", "phantom_events", "max_recovery_s", "max_errors", "insert_errors",
          "failed_but_written", "revisions_reused", "revisions_reissued", "revisions_backwards", "watches_stalled",
          "failover_write_s")


@dataclass
class Step:
    at: float
    fault: str
    args: dict = field(default_factory=dict)

    @property
    def target(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.args.items())


@dataclass
class Scenario:
    name: str
    load: dict
    steps: list
    lab: dict = field(default_factory=dict)
    expect: dict = field(default_factory=dict)
    settle_s: float = 5.0

    @classmethod
    def from_dict(cls, spec: dict, source: str = "scenario") -> "Scenario":
        if not isinstance(spec, dict):
            raise UsageError(f"{source}: a scenario is a mapping with name, load and steps")
        unknown = set(spec) - {"name", "load", "steps", "lab", "expect", "settle_s"}
        if unknown:
            raise UsageError(f"{source}: unknown scenario keys {', '.join(sorted(unknown))}")
        load = dict(spec.get("load") or {})
        for key in set(load) - set(LOAD_KEYS):
            raise UsageError(f"{source}: unknown load key {key!r}; use {', '.join(LOAD_KEYS)}")
        for key in set(spec.get("lab") or {}) - set(LAB_KEYS):
            raise UsageError(f"{source}: unknown lab key {key!r}; use {', '.join(LAB_KEYS)}")
        for key in set(spec.get("expect") or {}) - set(CHECKS):
            raise UsageError(f"{source}: unknown expectation {key!r}; use {', '.join(CHECKS)}")
        duration = float(load.setdefault("duration_s", 30))
        steps = []
        for raw in spec.get("steps") or []:
            if not isinstance(raw, dict) or "at" not in raw or "fault" not in raw:
                raise UsageError(f"{source}: each step needs `at` (seconds into the load) and `fault`, got {raw!r}")
            args = {k: v for k, v in raw.items() if k not in ("at", "fault")}
            step = Step(float(raw["at"]), str(raw["fault"]), args)
            if not 0 <= step.at <= duration:
                raise UsageError(f"{source}: step {step.fault} at {step.at:g} s is outside the load's {duration:g} s")
            steps.append(step)
        return cls(str(spec.get("name") or source), load, sorted(steps, key=lambda s: s.at),
                   dict(spec.get("lab") or {}), dict(spec.get("expect") or {}), float(spec.get("settle_s", 5.0)))

    @classmethod
    def of(cls, name: str, *, steps=(), settle_s: float = 5.0, **load) -> "Scenario":
        """A scenario in Python: `load` as keyword arguments (mix, rate, duration_s, ...), `steps` as dicts
        ({"at": 2, "fault": "slow", ...}); checked like a scenario file."""
        return cls.from_dict({"name": name, "load": load, "steps": list(steps), "settle_s": settle_s}, source=name)

    @classmethod
    def named(cls, name) -> "Scenario":
        """A scenario that ships in scenarios/ (`connection-refusal`), or any scenario file's path."""
        path = Path(name)
        shipped = SCENARIOS / f"{name}.yaml"
        return cls.from_file(shipped if not path.suffix and shipped.is_file() else path)

    @classmethod
    def from_file(cls, path) -> "Scenario":
        import yaml

        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read scenario {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        return cls.from_dict(spec, source=path.stem)


def _check_names(lab, scenario: Scenario) -> None:
    injector = FaultInjector(lab)
    for step in scenario.steps:
        if step.fault not in injector.names:
            raise UsageError(f"scenario {scenario.name}: unknown fault {step.fault!r}; use {', '.join(injector.names)}")


def run_scenario(lab, out, scenario: Scenario) -> dict:
    """Run `scenario` against a running `lab`, store everything in the DuckDB file `out`, and return a summary
    with the checks; `summary["failed"]` lists the expectations the run did not meet."""
    _check_names(lab, scenario)
    load = {"mix": "configmaps", "rate": 50.0, "workers": 3, "spread": "round-robin", "seed": 1, **scenario.load}
    through = load.pop("through", "kine")
    through_apiservers = through == "apiservers"
    # through the balancer: one client connection per replica, each placed by HAProxy; `replica` in the writes
    # and errors is then the client's connection, not the Kine replica that served it
    endpoints = [lab.balancer_endpoint] * len(lab.endpoints) if through == "balancer" else list(lab.endpoints)
    if through not in ("kine", "apiservers", "balancer"):
        raise UsageError(f"scenario {scenario.name}: load goes through kine, apiservers or balancer, not {through!r}")
    if through == "balancer" and not lab.balancer_endpoint:
        raise UsageError(f"scenario {scenario.name} loads through the Kine balancer: start the lab with balancer=True")
    if through_apiservers:
        check_kube_load(lab, load["mix"])
    else:
        check_load(len(lab.endpoints), load["mix"], rate=load["rate"], duration_s=load["duration_s"],
                   spread=load["spread"], workers=int(load["workers"]))
    params = {"scenario": scenario.name, "load": {**load, "through": through},
              "steps": [vars(s) for s in scenario.steps], "expect": scenario.expect}
    injector = FaultInjector(lab)
    with measured_run(lab, out, "scenario", params, timeout_s=FAULT_TIMEOUT_S, endpoints=endpoints) as (
            clients, con, clock, run_id):
        try:
            start_revision = max(c.revision() for c in clients) + 1
            fault_rows: list = []
            mix_options = {k: v for k, v in load.items() if k in ("nodes", "value_bytes", "event_ttl_s")}
            began = time.perf_counter()

            def load_through_apiservers(stop):
                calls = run_kube_load(lab, load["mix"], ops=None, rate=load["rate"], workers=int(load["workers"]),
                                      seed=int(load["seed"]), duration_s=load["duration_s"], clock=clock, stop=stop,
                                      nodes=int(load.get("nodes", 20)))
                return as_load_result(load["mix"], calls, time.perf_counter() - began)

            def load_through_kine(stop):
                return run_load(clients, load["mix"], rate=load["rate"], duration_s=load["duration_s"],
                                spread=load["spread"], workers=int(load["workers"]), seed=int(load["seed"]),
                                clock=clock, stop=stop, **mix_options)

            with WatchProbe(endpoints, prefix="/registry/", start_revision=start_revision, clock=clock) as probe, \
                    MetricsSampler(lab.metrics_urls, clock) as sampler, \
                    RevisionSampler(endpoints, clock) as revisions, \
                    Background(load_through_apiservers if through_apiservers else load_through_kine,
                               name="kinelab-scenario-load") as loader:
                t0 = clock.now()
                for step in scenario.steps:
                    if loader.join(max(0.0, t0 + step.at - clock.now())):
                        break  # the load ended before this step was due
                    t = clock.now()
                    try:
                        detail, ok = injector.inject(step.fault, **step.args), True
                    except Exception as exc:  # a fault that fails is a result too (e.g. a server that won't start)
                        detail, ok = str(exc).splitlines()[0], False
                    fault_rows.append((run_id, t - t0, step.fault, step.target, detail, ok))
                    progress.say(f"{t - t0:5.1f} s  {step.fault} {step.target}: {'' if ok else 'FAILED '}{detail}")
                result = loader.result()
                injector.close()
                last = max((w.revision for w in result.writes), default=start_revision)
                settled = probe.wait_for(last, scenario.settle_s)
            store_load(con, run_id, result)
            store_metrics(con, run_id, sampler)
            insert_rows(con, "revision_samples", REVISION_COLUMNS, [(run_id, *row) for row in revisions.rows])
            insert_rows(con, "fault_events", ["run_id", "t", "fault", "target", "detail", "ok"], fault_rows)
            store_watch(con, run_id, probe)
            snapshot = capture_into(con, lab.dsn, incremental=True)
            finish_run(con, run_id, result.duration_s, {"t0": t0})  # the views' time origin, before the checks
            checks = reconcile(con, run_id, scenario.expect)
            summary = {**load_summary(result), "run_id": run_id, "t0": t0, "snapshot_id": snapshot.snapshot_id,
                       "settled": settled, "faults": [(round(r[1], 2), r[2], r[3], r[5]) for r in fault_rows],
                       "kine_versions": lab.model.kine_versions, "anomalies": anomalies(con, run_id),
                       "checks": {name: {"value": value, "ok": ok} for name, value, ok, _ in checks},
                       "failed": [f"{name} = {value:g}" for name, value, ok, _ in checks if ok is False]}
            finish_run(con, run_id, result.duration_s, summary)
        finally:
            injector.close()
    return summary


# Every (revision, key) a client was acknowledged or a watcher delivered in the run.
_SEEN = ("WITH seen AS (SELECT DISTINCT revision, key FROM writes WHERE run_id = $run UNION SELECT revision, key "
         "FROM watch_events WHERE run_id = $run)")
_AFTER_LAST_FAULT = ("WITH last_fault AS (SELECT e.run_id, CAST(json_extract_string(r.summary, '$.t0') AS DOUBLE) + "
                     "max(e.t) AS t_fault FROM fault_events e JOIN runs r USING (run_id) WHERE e.run_id = $run "
                     "GROUP BY e.run_id, r.summary)")


def measure(con, run_id: int) -> dict:
    """The reconciliation's measurements of run `run_id` against the newest snapshot in `con`, read only:
    {check name: value}, as `CHECKS` names them."""
    def value(sql, **more):
        return con.execute(sql, {"run": run_id, **more}).fetchall()[0][0]

    measured = {
        "writes_lost": value("SELECT count(*) FROM writes w WHERE run_id = $run AND NOT EXISTS "
                             "(SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key)"),
        "missed_by_survivors": value("SELECT count(*) FROM watch_missed m JOIN watch_observers o USING "
                                     "(run_id, observer) WHERE run_id = $run AND NOT o.cancelled"),
        "phantom_events": value("SELECT count(*) FROM watch_events e WHERE run_id = $run AND NOT EXISTS "
                                "(SELECT 1 FROM kine_latest k WHERE k.id = e.revision AND k.name = e.key)"),
        # A fault whose target never succeeded again counts as never recovered.
        "max_recovery_s": value("SELECT coalesce(max(coalesce(recovery_s, 'inf'::DOUBLE)), 0) FROM fault_recovery "
                                "WHERE run_id = $run"),
        "max_errors": value("SELECT count(*) FROM load_errors WHERE run_id = $run"),
        # Counted by Kine when an insert hits the (name, prev_revision) unique key, e.g. two replicas expiring
        # the same leased key: the growth of the counter on every replica over the run.
        "insert_errors": value("SELECT coalesce(sum(growth), 0) FROM metric_growth WHERE run_id = $run "
                               "AND metric = 'kine_insert_errors_total'"),
        "failed_but_written": value("SELECT count(*) FROM write_anomalies WHERE run_id = $run "
                                    "AND anomaly = 'reported failed but written'"),
        # What a failover can break, from what clients and watchers were told against the table afterwards.
        "revisions_reused": value(f"{_SEEN} SELECT count(DISTINCT s.revision) FROM seen s WHERE EXISTS (SELECT 1 "
                                  "FROM seen o WHERE o.revision = s.revision AND o.key <> s.key) OR EXISTS (SELECT 1 "
                                  "FROM kine_latest k WHERE k.id = s.revision AND k.name <> s.key)"),
        # the database handed an id out again: an acknowledged write is gone and a LATER one holds its id (a lost
        # create that Kine acknowledged anyway holds no id of its own: the row is the earlier write's)
        "revisions_reissued": value("SELECT count(DISTINCT w.revision) FROM writes w JOIN writes later ON "
                                    "later.run_id = w.run_id AND later.revision = w.revision AND later.key <> w.key "
                                    "AND later.t_commit > w.t_commit JOIN kine_latest k ON k.id = later.revision "
                                    "AND k.name = later.key WHERE w.run_id = $run"),
        "revisions_backwards": value("SELECT count(*) FILTER (WHERE revision < before) FROM (SELECT revision, max("
                                     "revision) OVER (PARTITION BY replica ORDER BY t ROWS BETWEEN UNBOUNDED "
                                     "PRECEDING AND 1 PRECEDING) AS before FROM revision_samples WHERE run_id = $run "
                                     "AND revision IS NOT NULL)"),
        "watches_stalled": value(f"{_AFTER_LAST_FAULT} SELECT count(*) FROM watch_observers o, last_fault f WHERE "
                                 "o.run_id = f.run_id AND NOT o.cancelled AND EXISTS (SELECT 1 FROM writes w WHERE "
                                 "w.run_id = o.run_id AND w.t_commit > f.t_fault AND w.revision >= o.start_revision) "
                                 "AND NOT EXISTS (SELECT 1 FROM watch_events e JOIN writes w ON w.run_id = e.run_id "
                                 "AND w.revision = e.revision AND w.key = e.key WHERE e.run_id = o.run_id AND "
                                 "e.observer = o.observer AND w.t_commit > f.t_fault)"),
    }
    failover = value("SELECT max(t) FROM fault_events WHERE run_id = $run AND fault = 'failover' AND ok")
    if failover is not None:  # the first acknowledged write after it that is a row of the table
        measured["failover_write_s"] = value(
            "SELECT min(w.t_commit) - any_value(c.t0 + $t) FROM writes w, (SELECT CAST(json_extract_string("
            "summary, '$.t0') AS DOUBLE) AS t0 FROM runs WHERE run_id = $run) c WHERE w.run_id = $run AND "
            "w.t_commit > c.t0 + $t "
            "AND EXISTS (SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key)", t=failover)
        if measured["failover_write_s"] is None:
            measured["failover_write_s"] = float("inf")  # no write landed after it
    return measured


def reconcile(con, run_id: int, expect: dict) -> list:
    """Check run `run_id` against the newest snapshot in `con`, store the (check, value, ok, detail) rows in
    scenario_checks and return them; ok is None for checks nobody expected. Run again after a later capture
    to check the same run against the table as it is then."""
    measured = measure(con, run_id)
    details = {
        "writes_lost": "acknowledged writes that are not rows of the table",
        "missed_by_survivors": "acknowledged writes a watcher on a never-failed replica did not deliver",
        "phantom_events": "watch events for revisions the table does not hold",
        "max_recovery_s": "longest time from a fault to the first success after its last error",
        "max_errors": "failed operations during the load",
        "insert_errors": "unique-key insert failures Kine counted (kine_insert_errors_total)",
        "failed_but_written": "creates and updates the client saw fail whose value is a row of the table",
        "revisions_reused": "revisions clients or watchers were given for two keys, or for a key the table's row "
                            "of that id does not hold",
        "revisions_reissued": "revisions the database handed out again: an acknowledged write gone, a later one "
                              "holding its id",
        "revisions_backwards": "samples where a replica reported a lower revision than it had before",
        "watches_stalled": "live watches that delivered none of the writes acknowledged after the last fault",
        "failover_write_s": "seconds from the failover to the first acknowledged write that is a row of the table",
    }
    rows = []
    for name, measured_value in measured.items():
        limit = expect.get(name)
        ok = None if limit is None else measured_value <= float(limit)
        rows.append((name, float(measured_value), ok, details[name] + (f" (expected <= {limit})" if limit is not None
                                                                      else "")))
    con.execute("DELETE FROM scenario_checks WHERE run_id = ?", [run_id])
    insert_rows(con, "scenario_checks", ["run_id", "check_name", "value", "ok", "detail"],
                [(run_id, *row) for row in rows])
    return rows


def anomalies(con, run_id: int) -> list:
    """The run's write anomalies per replica, kind and error kind: [{replica, kine_version, anomaly, op,
    error_kind, writes}], the most frequent first."""
    rows = con.execute("""SELECT a.replica, r.kine_version, a.anomaly, a.op, a.error_kind, count(*) AS writes
                          FROM write_anomalies a LEFT JOIN run_replicas r USING (run_id, replica)
                          WHERE a.run_id = ? GROUP BY ALL ORDER BY writes DESC, a.replica, a.anomaly, a.op""",
                       [run_id]).fetchall()
    return [dict(zip(("replica", "kine_version", "anomaly", "op", "error_kind", "writes"), row)) for row in rows]
