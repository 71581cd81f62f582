"""The suite's child processes are measured from their first ``import anther`` (see
``coverage_on_import/sitecustomize.py`` for why); the session fixture that sets it up."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().with_name("coverage_on_import")  # its sitecustomize.py
LAZY_VARIABLE = "ANTHER_TEST_COVERAGE_CONFIG"  # the name that sitecustomize.py reads
COVERAGE_VARIABLE = "COVERAGE_PROCESS_CONFIG"  # coverage's own: measure from start-up


def lazy_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with coverage's request to measure child processes turned into the lazy one."""
    lazy = {k: v for k, v in environ.items() if k != COVERAGE_VARIABLE}
    lazy[LAZY_VARIABLE] = environ[COVERAGE_VARIABLE]
    lazy["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), environ.get("PYTHONPATH")]))
    return lazy


@pytest.fixture(autouse=True, scope="session")
def measure_children_from_their_import_of_anther() -> Iterator[None]:
    """Under ``--cov`` (coverage has started in this worker and asks for its children to be
    measured), every process a test starts is measured from its first ``import anther`` on."""
    if COVERAGE_VARIABLE not in os.environ:
        yield
        return
    lazy = lazy_environment(dict(os.environ))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(COVERAGE_VARIABLE)
        for name in (LAZY_VARIABLE, "PYTHONPATH"):
            mp.setenv(name, lazy[name])
        yield
