"""Every benchmark run's figures are kept, not only the last: results/<name>.json is the latest run and
results/runs/<name>-<date>.json each run, so a figure the README quotes from an earlier run stays on record."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, results: dict, date: Optional[str] = None) -> Path:
    """Write `results` as the latest `name` run and as one more kept run; the kept file's path."""
    date = date or results.get("date") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(results, indent=2, default=str) + "\n"
    (RESULTS / "runs").mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text)
    kept = RESULTS / "runs" / f"{name}-{date.replace(':', '')}.json"
    kept.write_text(text)
    return kept
