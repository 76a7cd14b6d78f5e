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

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..drive.faults import FaultInjector
from ..drive.kube import KUBE_MIXES, run_kube_load
from ..drive.workload import LoadError, LoadResult, Write, check_load, run_load
from ..errors import UsageError
from .capture import capture_into
from .metrics import MetricsSampler
from .runs import load_summary, measured_run, metrics_urls, store_load, store_metrics, store_watch
# Replica faults make a client wait for its deadline: keep it short so one stalled replica does not stall the load.
FAULT_TIMEOUT_S = 2.0
from .store import finish_run, insert_rows
from .watchlag import WatchProbe

LOAD_KEYS = ("mix", "rate", "duration_s", "workers", "spread", "seed", "nodes", "value_bytes", "event_ttl_s",
             "through")
LAB_KEYS = ("replicas", "datastore", "kine_args", "replica_args", "datastore_settings", "apiservers", "mode")
CHECKS = ("writes_lost", "missed_by_survivors", "phantom_events", "max_recovery_s", "max_errors", "insert_errors")


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
    def from_file(cls, path) -> "Scenario":
        import yaml

        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read scenario {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
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
    through_apiservers = load.pop("through", "kine") == "apiservers"
    if through_apiservers:
        if not lab.manifest.get("apiservers"):
            raise UsageError(f"scenario {scenario.name} loads through apiservers: start the lab with apiservers=N")
        if load["mix"] not in KUBE_MIXES:
            raise UsageError(f"through apiservers the mix is one of {', '.join(KUBE_MIXES)}, not {load['mix']!r}")
    else:
        check_load(len(lab.endpoints), load["mix"], rate=load["rate"], duration_s=load["duration_s"],
                   spread=load["spread"], workers=int(load["workers"]))
    params = {"scenario": scenario.name, "load": load, "steps": [vars(s) for s in scenario.steps],
              "expect": scenario.expect}
    stop = threading.Event()
    injector = FaultInjector(lab)
    with measured_run(lab, out, "scenario", params, timeout_s=FAULT_TIMEOUT_S) as (clients, con, clock, run_id):
        try:
            start_revision = max(c.revision() for c in clients) + 1
            outcome: dict = {}
            fault_rows: list = []
            mix_options = {k: v for k, v in load.items() if k in ("nodes", "value_bytes", "event_ttl_s")}
            began = time.perf_counter()

            def load_through_apiservers():
                calls = run_kube_load(lab, load["mix"], ops=None, rate=load["rate"], workers=int(load["workers"]),
                                      seed=int(load["seed"]), duration_s=load["duration_s"], clock=clock, stop=stop,
                                      nodes=int(load.get("nodes", 20)))
                return _as_load_result(load["mix"], calls, time.perf_counter() - began)

            def load_through_kine():
                return run_load(clients, load["mix"], rate=load["rate"], duration_s=load["duration_s"],
                                spread=load["spread"], workers=int(load["workers"]), seed=int(load["seed"]),
                                clock=clock, stop=stop, **mix_options)

            def drive():
                try:
                    outcome["result"] = load_through_apiservers() if through_apiservers else load_through_kine()
                except BaseException as exc:  # raised again in the caller's thread, not lost with this one
                    outcome["error"] = exc

            with WatchProbe(lab.endpoints, prefix="/registry/", start_revision=start_revision, clock=clock) as probe, \
                    MetricsSampler(metrics_urls(lab), clock) as sampler:
                loader = threading.Thread(target=drive, name="kinelab-scenario-load", daemon=True)
                t0 = clock.now()
                loader.start()
                for step in scenario.steps:
                    time.sleep(max(0.0, t0 + step.at - clock.now()))
                    if not loader.is_alive():
                        break
                    t = clock.now()
                    try:
                        detail, ok = injector.inject(step.fault, **step.args), True
                    except Exception as exc:  # a fault that fails is a result too (e.g. a server that won't start)
                        detail, ok = str(exc).splitlines()[0], False
                    fault_rows.append((run_id, t - t0, step.fault, step.target, detail, ok))
                    progress.say(f"{t - t0:5.1f} s  {step.fault} {step.target}: {'' if ok else 'FAILED '}{detail}")
                loader.join()
                injector.close()
                if "error" in outcome:
                    raise outcome["error"]
                result = outcome["result"]
                last = max((w.revision for w in result.writes), default=start_revision)
                settled = probe.wait_for(last, scenario.settle_s)
            store_load(con, run_id, result)
            store_metrics(con, run_id, sampler)
            insert_rows(con, "fault_events", ["run_id", "t", "fault", "target", "detail", "ok"], fault_rows)
            store_watch(con, run_id, probe)
            snapshot = capture_into(con, lab.dsn, incremental=True)
            finish_run(con, run_id, result.duration_s, {"t0": t0})  # the views' time origin, before the checks
            checks = reconcile(con, run_id, scenario.expect)
            summary = {**load_summary(result), "run_id": run_id, "t0": t0, "snapshot_id": snapshot.snapshot_id,
                       "settled": settled, "faults": [(round(r[1], 2), r[2], r[3], r[5]) for r in fault_rows],
                       "checks": {name: {"value": value, "ok": ok} for name, value, ok, _ in checks},
                       "failed": [f"{name} = {value:g}" for name, value, ok, _ in checks if ok is False]}
            finish_run(con, run_id, result.duration_s, summary)
        finally:
            stop.set()  # an interrupted run must not leave its load thread writing
            injector.close()
    return summary


def _as_load_result(mix: str, calls: list, duration_s: float) -> LoadResult:
    """Calls through apiservers as writes and errors; `replica` then holds the apiserver's index. A delete returns
    no resourceVersion and a list no row, so only creates and updates take part in the reconciliation."""
    writes = [Write(c.key, c.verb, c.resource_version, c.apiserver, c.t, c.latency_ms)
              for c in calls if c.ok and c.verb in ("create", "update")]
    errors = [LoadError(c.t, c.apiserver, c.verb, c.key if c.name else "", c.error,
                        "UNAVAILABLE" if c.error.startswith("unreachable") else c.error.split(" ")[0])
              for c in calls if not c.ok]
    return LoadResult(mix, sorted(writes, key=lambda w: w.revision), sorted(errors, key=lambda e: e.t),
                      sum(1 for c in calls if c.ok and c.verb == "list"), duration_s)


def reconcile(con, run_id: int, expect: dict) -> list:
    """Check run `run_id` against the newest snapshot in `con`, store the (check, value, ok, detail) rows in
    scenario_checks and return them; ok is None for checks nobody expected. Run again after a later capture
    to check the same run against the table as it is then."""
    value = lambda sql: con.execute(sql, [run_id]).fetchall()[0][0]  # noqa: E731
    measured = {
        "writes_lost": value("SELECT count(*) FROM writes w WHERE run_id = ? AND NOT EXISTS "
                             "(SELECT 1 FROM kine_latest k WHERE k.id = w.revision AND k.name = w.key)"),
        "missed_by_survivors": value("SELECT count(*) FROM watch_missed m JOIN watch_observers o USING "
                                     "(run_id, observer) WHERE run_id = ? AND NOT o.cancelled"),
        "phantom_events": value("SELECT count(*) FROM watch_events e WHERE run_id = ? AND NOT EXISTS "
                                "(SELECT 1 FROM kine_latest k WHERE k.id = e.revision AND k.name = e.key)"),
        # A fault whose target never succeeded again counts as never recovered.
        "max_recovery_s": value("SELECT coalesce(max(coalesce(recovery_s, 'inf'::DOUBLE)), 0) FROM fault_recovery "
                                "WHERE run_id = ?"),
        "max_errors": value("SELECT count(*) FROM load_errors WHERE run_id = ?"),
        # Counted by Kine when an insert hits the (name, prev_revision) unique key, e.g. two replicas expiring
        # the same leased key: the growth of the counter on every replica over the run.
        "insert_errors": value("SELECT coalesce(sum(growth), 0) FROM metric_growth WHERE run_id = ? "
                               "AND metric = 'kine_insert_errors_total'"),
    }
    details = {
        "writes_lost": "acknowledged writes that are not rows of the table",
        "missed_by_survivors": "acknowledged writes a watcher on a never-failed replica did not deliver",
        "phantom_events": "watch events for revisions the table does not hold",
        "max_recovery_s": "longest time from a fault to the first success after its last error",
        "max_errors": "failed operations during the load",
        "insert_errors": "unique-key insert failures Kine counted (kine_insert_errors_total)",
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
