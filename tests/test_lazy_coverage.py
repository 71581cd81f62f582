"""A process the suite starts under ``--cov`` is measured from its first ``import anther`` on, and
one that never imports anther is not measured at all (``tests/lazy_coverage.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import coverage
from lazy_coverage import COVERAGE_VARIABLE, lazy_environment

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os, subprocess, sys
from coverage.control import process_startup
before = hasattr(process_startup, "coverage")
import anther.core.files
after = hasattr(process_startup, "coverage")
child = subprocess.run([sys.executable, "-c", "from coverage.control import process_startup as p; "
                        "print(hasattr(p, 'coverage'))"], capture_output=True, text=True, check=True).stdout
print(before, after, child.strip(), os.environ.get("COVERAGE_PROCESS_CONFIG") is None)
"""


def _environment(data_file: Path) -> dict[str, str]:
    config = coverage.Coverage(config_file=str(REPO / "pyproject.toml"), data_file=str(data_file)).config
    return lazy_environment({**os.environ, COVERAGE_VARIABLE: config.serialize()})


def test_coverage_starts_at_the_first_import_of_anther(tmp_path: Path) -> None:
    env = _environment(tmp_path / ".coverage")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    # not measured before, measured after; its child (which imports nothing) is not, and is lazy too
    assert out == ["False", "True", "False", "True"]
    (data_file,) = tmp_path.glob(".coverage.*")  # the one process that imported anther
    measured = coverage.CoverageData(str(data_file))
    measured.read()
    files = {Path(f).parts[-2:]: measured.lines(f) for f in measured.measured_files()}
    assert set(files) == {("anther", "__init__.py"), ("core", "__init__.py"), ("core", "files.py")}
    assert 1 in files[("core", "files.py")]  # anther's modules are measured from their first line


def test_a_process_that_never_imports_anther_is_not_measured(tmp_path: Path) -> None:
    env = _environment(tmp_path / ".coverage")
    subprocess.run([sys.executable, "-c", "import json, email"], env=env, cwd=tmp_path, timeout=120, check=True)
    assert not list(tmp_path.glob(".coverage*"))


def test_other_packages_are_imported_untraced_and_tracing_goes_on_after(tmp_path: Path) -> None:
    """``coverage_on_import/untraced_imports.py``: a module outside anther runs its import with the
    tracer stopped; an anther module it imports is traced all the same (a test module, a plug-in),
    and the tracer is back once the import returns."""
    (tmp_path / "outside.py").write_text("import sys\nimport anther.core.files\nTRACED = sys.gettrace() is not None\n")
    probe = "import sys\nimport anther\nimport outside\nprint(outside.TRACED, sys.gettrace() is not None)"
    lazy = _environment(tmp_path / ".coverage")
    env = {**lazy, "PYTHONPATH": os.pathsep.join([str(tmp_path), lazy["PYTHONPATH"]])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "True"]
    (data_file,) = tmp_path.glob(".coverage.*")
    measured = coverage.CoverageData(str(data_file))
    measured.read()
    assert not any("outside" in f for f in measured.measured_files())
    (files,) = [f for f in measured.measured_files() if f.endswith("files.py")]
    assert 1 in measured.lines(files)  # its module-level lines ran traced, inside outside's import
