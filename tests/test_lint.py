"""The code reads one way everywhere: ruff (pinned in the dev extra, configured in pyproject.toml) finds nothing
in the package, the tests, the benchmarks, the recording script or the notebooks' code cells."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "kinelab", "tests", "benchmarks",
                             "data", "notebooks"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
