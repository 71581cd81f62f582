"""Where benchmarks write: one folder per benchmark under ``$ANTHER_HOME/bench`` unless told
``--out``. Results worth keeping are copied into the repository's ``docs/bench/``."""

from __future__ import annotations

from pathlib import Path

from anther.core.config import anther_home


def results_dir(name: str) -> Path:
    """``$ANTHER_HOME/bench/<name>``, the default output folder of benchmark ``name``."""
    return anther_home() / "bench" / name
