"""Notebooks run headless under papermill with their defaults and with one other parameter set."""

from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("parameters", [{}, {"replicas": 1, "datastore": "sqlite", "seed": 5}],
                         ids=["defaults", "sqlite"])
def test_first_lab_notebook(kine, tmp_path, parameters):
    papermill.execute_notebook(str(NOTEBOOKS / "00-first-lab.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=parameters, kernel_name="python3", progress_bar=False,
                               cwd=str(tmp_path))
    assert "writes found at their revisions" in (tmp_path / "out.ipynb").read_text()
