"""Which backend made a lab directory, and the calls every lab answers (kind's providers style).

The manifest (``lab.json``) names its backend: ``"kind"`` for `KindLab`, ``"local"`` (or nothing, as in labs
made before the kind backend) for `Lab`. `attach_lab` returns the right one; the CLI's ``status``, ``down``
and ``capture`` use only the `LabBackend` calls, so they work the same on both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from .lab import MANIFEST, Lab, read_manifest


class LabBackend(Protocol):
    dir: Path

    def status(self) -> dict:
        """JSON-ready; ``state`` says whether it runs (``backend`` is "kind" for kind labs)."""

    def down(self) -> int:
        """Stop everything the lab started and record it stopped; returns how many things were still running."""

    def capture(self, out: os.PathLike, *, incremental: bool = False):
        """One snapshot of the lab's kine table into the DuckDB file `out`."""


def attach_lab(dir: os.PathLike) -> LabBackend:
    """The lab recorded in `dir`, whichever backend made it."""
    from .kind import KindLab

    path = Path(dir).expanduser().resolve()
    manifest = read_manifest(path)
    if manifest is None:
        raise UsageError(f"no lab in {path}; start one with `kinelab up --dir {dir}`")
    backends = {"local": Lab, "kind": KindLab}
    backend = manifest.get("backend", "local")
    if backend not in backends:
        raise UsageError(f"{path / MANIFEST} names backend {backend!r}, which this kinelab does not know "
                         f"({', '.join(backends)}); upgrade kinelab or choose another --dir")
    return backends[backend].attach(path)
