"""Measure a process the suite starts from the moment it imports anther, not from its start.

``tests/lazy_coverage.py`` puts this folder first on ``PYTHONPATH`` and renames coverage's
``COVERAGE_PROCESS_CONFIG`` (read by the ``.pth`` file coverage installs, which starts measuring
in every Python process at start-up) to ``LAZY_VARIABLE``. Most processes an end-to-end test
starts never run anther's code (Flower's SuperLink, SuperExec and CLI; Ray's agents, monitors and
idle workers) yet paid for tracing their start-up: a small simulation took a quarter more CPU
time under coverage. Here coverage starts when ``anther`` is first imported, so those processes
run untraced and the ones that run anther are measured from its first line on.

Once measuring, the process imports every other package untraced (``untraced_imports.py``): a
small simulation took 35 to 37 s of CPU time this way, against 42 to 43 s with only PyTorch and
transformers imported untraced (before coverage started) and 32 s without coverage.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

LAZY_VARIABLE = "ANTHER_TEST_COVERAGE_CONFIG"  # coverage's config, carried to every descendant
COVERAGE_VARIABLE = "COVERAGE_PROCESS_CONFIG"  # what coverage.process_startup() reads


class StartCoverageOnImport(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: at the first ``import anther`` starts coverage and steps aside
    (finding nothing, so the usual finders import it)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "anther":
            sys.meta_path.remove(self)
            _start_coverage()


def _start_coverage() -> None:
    import coverage
    import untraced_imports  # beside this file, first on sys.path

    os.environ[COVERAGE_VARIABLE] = os.environ[LAZY_VARIABLE]
    coverage.process_startup()
    # starting sets it again (patch = ["subprocess"]); this process's children start lazily too
    os.environ.pop(COVERAGE_VARIABLE, None)
    untraced_imports.install()


def _run_the_sitecustomize_this_one_hides() -> None:
    """A Python's own ``sitecustomize`` (Debian ships one) still runs, from later on ``sys.path``."""
    here = str(Path(__file__).resolve().parent)
    later = [p for p in sys.path if p and Path(p).resolve().as_posix() != Path(here).as_posix()]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", later)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get(LAZY_VARIABLE) and "anther" not in sys.modules:
    sys.meta_path.insert(0, StartCoverageOnImport())
_run_the_sitecustomize_this_one_hides()
