"""The README's figures and verdicts against the results files and recordings they cite: each test fails when a
sentence of the README no longer says what its file records (fast: no lab, only Kine's --help)."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import REPO
from kinelab.show import replay

README = (REPO / "README.md").read_text()
RESULTS = REPO / "benchmarks" / "results"


def _observe_rows(locality: str, spread: str) -> list:
    rows = json.loads((RESULTS / "observe.json").read_text())["watch_lag"]
    return [r for r in rows if r["locality"] == locality and r["spread"] == spread]


def test_the_watch_lag_grid_is_observe_json_rounded_once():
    expected = {}
    for spread in ("pinned-0", "round-robin"):
        for r in _observe_rows("other", spread):
            expected.setdefault(r["replicas"], {}).setdefault(spread, {})[r["rate"]] = f"{r['p50_ms']:.0f}"
    rendered = (RESULTS / "observe.md").read_text()
    for replicas, by_spread in expected.items():
        cells = [" / ".join(by_spread[s][rate] for rate in sorted(by_spread[s])) + " ms"
                 for s in ("pinned-0", "round-robin")]
        line = f"| {replicas} | {cells[0]} | {cells[1]} |"
        assert line in README and line in rendered, line


def test_the_other_replica_lag_sentence_is_what_observe_json_records():
    pinned = _observe_rows("other", "pinned-0")
    means = sorted(r["mean_ms"] for r in pinned)
    busy = [r for r in pinned if r["rate"] == 10]
    p99s = sorted(r["p99_ms"] for r in busy)
    writer_max = max(r["max_ms"] for r in _observe_rows("same", "pinned-0") if r["rate"] == 10)
    figures = [f"mean {means[0]:.0f}-{means[-1]:.0f} ms",
               f"the max was {max(r['max_ms'] for r in pinned if r['rate'] > 10) / 1000:.2f} s",
               f"took up to {writer_max:.0f} ms", f"p99 was\n{p99s[0] / 1000:.2f}-{p99s[-1] / 1000:.2f} s",
               f"the max {max(r['max_ms'] for r in busy) / 1000:.2f} s"]
    sentence = README[README.index("What these measure here"):README.index("With writes spread round-robin")]
    for figure in figures:
        assert figure in sentence, (figure, sentence)


def test_the_recordings_size_is_what_data_holds():
    sizes = {name: (replay.DATA / name).stat().st_size for name in replay.datasets()}
    total = sum(sizes.values()) / 2**20
    versions = sum(size for name, size in sizes.items() if name.startswith("versions-")) / 2**20
    assert f"The recordings ({total:.1f} MiB in all, of which {versions:.1f} MiB\nfor notebook 09" in README


def test_the_isolation_verdict_is_what_faults_json_records():
    runs = json.loads((RESULTS / "faults.json").read_text())["isolation"]
    row = next(line for line in README.splitlines() if line.startswith("| isolation must be READ COMMITTED"))
    assert all(r["checks"]["writes_lost"] == r["checks"]["missed_by_survivors"] == 0 for r in runs.values())
    assert all(r["checks"]["phantom_events"] == 0 for r in runs.values())
    if all(r["errors"] == 0 for r in runs.values()):  # then the README may not say SERIALIZABLE costs errors
        writes = sorted(r["writes"] for r in runs.values())
        assert f"{writes[0]:,} to {writes[-1]:,} writes each gave no error" in row
        assert "40001" not in row and "costs errors" not in row
    else:
        assert "40001" in row or "serialization" in row


def test_no_text_says_kind_cannot_run_for_want_of_a_docker_engine():
    texts = [README] + [p.read_text() for p in (REPO / "benchmarks").rglob("*.py")] + \
        [p.read_text() for p in RESULTS.glob("*.md")]
    assert not [t for t in texts if "cannot run here (no Docker engine)" in t]


def test_every_verdict_names_what_records_it_and_what_asserts_it():
    lines = README.splitlines()
    start = lines.index("| claim of the article | verdict | recorded in | asserted by |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append(line.split(" | "))
    assert len(rows) >= 13 and all(len(r) == 4 for r in rows)
    for claim, _, recorded, asserted in rows:
        assert recorded.strip() and asserted.strip(" |"), claim
        for path in re.findall(r"`(data/[\w.-]+)`", recorded) + \
                [f"benchmarks/results/{name}" for name in re.findall(r"\]\(benchmarks/results/([\w.]+)\)", recorded)]:
            assert (REPO / path).exists(), (claim, path)
        named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", asserted)
        notebooks = re.findall(r"`(\d\d)`", asserted)
        assert named or notebooks, claim
        for path, test in named:
            assert f"def {test}(" in (REPO / path).read_text(), (claim, path, test)
        for number in notebooks:
            assert list((REPO / "notebooks").glob(f"{number}-*.ipynb")), (claim, number)


def test_kines_help_has_the_flags_the_verdicts_name(kine):
    """The verdicts on flags: `--transaction-mode` and `connection-timeout` do not exist, nor does a
    `consistency-check` command; `--datastore-max-open-connections` and `--compact-interval` do."""
    said = subprocess.run([str(kine.path), "--help"], capture_output=True, text=True, timeout=30)
    text = said.stdout + said.stderr
    assert "--datastore-max-open-connections" in text and "--compact-interval" in text, text[:500]
    assert "--compact-min-retain" in text and "--datastore-connection-max-lifetime" in text
    for absent in ("transaction-mode", "connection-timeout", "consistency-check"):
        assert absent not in text, absent


def test_no_figure_is_quoted_from_an_earlier_run_that_no_file_keeps():
    """A figure of an earlier run belongs in benchmarks/results/runs/ (or ha/history/), cited from there."""
    assert not re.findall(r"earlier (?:synchronous |benchmark )?(?:run|one)\b", README)


def test_notebook_05_shows_the_readmes_claims_table():
    """The workshop's copy of the verdicts is the README's, links made relative to notebooks/."""
    readme = (REPO / "README.md").read_text().splitlines()
    notebook = json.loads((REPO / "notebooks" / "05-deployment-modes.ipynb").read_text())
    table = next("".join(cell["source"]) for cell in notebook["cells"]
                 if cell["cell_type"] == "markdown" and "| claim of the article" in "".join(cell["source"]))
    rows = [line.replace("](../benchmarks/", "](benchmarks/").replace("(../README.md#", "(#")
            for line in table.splitlines() if line.startswith("| ")]
    start = readme.index(rows[0])
    assert readme[start:start + len(rows)] == rows and len(rows) > 10


def test_the_ci_times_are_what_ci_json_records():
    runs = json.loads((RESULTS / "ci.json").read_text())

    def minutes(seconds: int) -> str:
        return f"{seconds // 60} min {seconds % 60} s"

    builds = runs["cold"]["build_seconds"]
    others = sum(v for k, v in builds.items() if k.split("-v")[0] in ("kube-controller-manager", "kube-scheduler",
                                                                       "kubelet", "kubeadm", "kubectl"))
    text = " ".join(README.split())
    assert f"took **{minutes(runs['cold']['seconds'])}**" in text
    assert f"About {round(sum(builds.values()) / 60)} minutes of it are builds" in text
    assert f"Kine {builds['kine-v0.17.5']} s, kube-apiserver {builds['kube-apiserver-v1.37.2']} s" in text
    assert f"the other five Kubernetes commands {others} s" in text
    assert f"A warm run (everything cached) took {minutes(runs['warm']['seconds'])}" in text
