"""The Binder spec: the files parse, and postBuild's steps run in a clean virtualenv here.
(mybinder.org itself cannot be reached from here; the README says what was not verified.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def test_binder_files_parse():
    packages = [line.split("#")[0].strip() for line in (BINDER / "apt.txt").read_text().splitlines()]
    assert [p for p in packages if p] == ["golang-go"]
    requirements = [line for line in (BINDER / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == []  # postBuild installs kinelab itself
    post_build = (BINDER / "postBuild").read_text()
    assert post_build.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in post_build
    assert os.access(BINDER / "postBuild", os.X_OK)
    subprocess.run(["bash", "-n", str(BINDER / "postBuild")], check=True)


@pytest.mark.slow
def test_post_build_runs_in_a_clean_virtualenv(tmp_path, kine):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "KINELAB_CACHE": str(tmp_path / "cache"), "KINELAB_KINE_BIN": ""}
    result = subprocess.run(["bash", str(BINDER / "postBuild")], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "cache" / "bin" / "kine-v0.17.5").exists()
    check = subprocess.run([str(venv / "bin" / "kinelab"), "install", "--json"], env=env, capture_output=True,
                           text=True)
    assert '"version": "v0.17.5"' in check.stdout
