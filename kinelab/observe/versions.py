"""One scenario against several Kine releases, all in one results file: "did this release change what my cluster
can lose?"

The versions run one after the other on one lab, as an upgrade goes: before each run every replica is restarted
on the next release (`Lab.restart(i, kine_version=...)`, one replica at a time), so the runs share the datastore
and the results file, and `run_replicas` records which release served every write. Give the releases oldest
first: a release before v0.16.6 / v0.17.3 cannot read the rows later ones write (their creates leave
`create_revision` NULL), and it stops at start with Kine's "converting NULL to int64" error.
"""

from __future__ import annotations

from .. import progress
from ..errors import ProcessError, UsageError
from ..provision.tools import install_kine, normalise_kine_version
from .scenario import Scenario, run_scenario


def parse_versions(text) -> list:
    """"v0.16.4,0.17.2, v0.17.5" (or a list) -> ["v0.16.4", "v0.17.2", "v0.17.5"], each once, in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    versions = []
    for item in items:
        if str(item).strip():
            version = normalise_kine_version(item)
            if version not in versions:
                versions.append(version)
    if not versions:
        raise UsageError("name at least one Kine release, e.g. --kine-versions v0.17.2,v0.17.5")
    return versions


def install_versions(versions: list, log=progress.say) -> dict:
    """Every release found or built before any run starts: an unknown one or a failed build stops here."""
    return {version: install_kine(version=version, log=log) for version in versions}


def move_replicas_to(lab, version: str) -> None:
    """Restart each replica not yet on `version` on it, one at a time (a rolling upgrade with no load)."""
    for index, running in enumerate(lab.model.kine_versions):
        if running != version:
            try:
                lab.restart(index, kine_version=version)
            except ProcessError as exc:
                raise ProcessError(f"Kine {version} did not start on this lab's table (written by "
                                   f"{', '.join(sorted(set(lab.model.kine_versions) - {version}))}): "
                                   f"{str(exc).splitlines()[0]}; list older releases first") from exc


def run_versions(lab, out, scenario: Scenario, versions) -> list:
    """Run `scenario` on `lab` once per release in `versions` (oldest first), every run into the results file
    `out`; returns the run summaries, each with its "kine_version"."""
    versions = parse_versions(versions)
    install_versions(versions)
    summaries = []
    for version in versions:
        move_replicas_to(lab, version)
        progress.say(f"scenario {scenario.name} on Kine {version}")
        summaries.append({**run_scenario(lab, out, scenario), "kine_version": version})
    return summaries
