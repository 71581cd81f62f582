#!/usr/bin/env python3
"""Set up anther in ./.venv and run the default simulation or the test suite.

    python3 scripts/quickstart.py run  [HYDRA_OVERRIDE ...]   # set up, then `anther simulate`
    python3 scripts/quickstart.py test [PYTEST_ARG ...]       # set up, then the whole test suite

`test` without arguments runs the whole suite under coverage (the processes it starts
included), prints the report and fails below the floor in pyproject.toml
(``[tool.coverage.report] fail_under``); with arguments (a file, ``-m "not slow"``) it runs just
what they select, without coverage.

Needs only Python >= 3.11 with pip. Where no NVIDIA GPU is present, PyTorch 2.13.0 is
installed first so that pip never pulls a multi-GB CUDA build (pip takes the CPU wheel
where one is provided, e.g. through PIP_FIND_LINKS or
PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def has_module(name: str) -> bool:
    return subprocess.run([str(PY), "-c", f"import {name}"], check=False, capture_output=True).returncode == 0


def pip_install(*args: str) -> None:
    """``pip install`` without byte-compiling: :func:`setup` compiles everything once afterwards, on
    every core (pip compiles file by file on one)."""
    sh(PY, "-m", "pip", "install", "-qq", "--no-compile", *args)


def setup() -> None:
    installed = False
    if not PY.exists():
        print("anther: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        # the pip Python 3.11 ships resolves and installs this project's ~150 packages in about
        # twice the time of a current one
        pip_install("--upgrade", "pip")
    if not has_module("torch") and shutil.which("nvidia-smi") is None:
        print("anther: no GPU found; installing the CPU build of PyTorch 2.13.0", flush=True)
        pip_install("torch==2.13.0")
        installed = True
    # a venv from before a new dev tool
    if not all(has_module(m) for m in ("anther", "pytest", "importlinter", "pytest_cov")):
        print("anther: installing anther and its dependencies", flush=True)
        pip_install("-e", ".[dev]")
        installed = True
    if installed:
        compile_installed()


def compile_installed() -> None:
    """Byte-compile the venv's packages on every core. Where Python may not write bytecode
    (``PYTHONDONTWRITEBYTECODE``), each process would otherwise compile whatever it imports."""
    print("anther: compiling the installed packages", flush=True)
    site_packages = subprocess.run([str(PY), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    # -qq and no check: packages ship a few files that are not Python 3.11 source (templates, test
    # data), which nothing imports
    subprocess.run([str(PY), "-m", "compileall", "-qq", "-j", "0", site_packages], check=False, cwd=ROOT)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print(__doc__)
        return 2
    setup()
    action, rest = sys.argv[1], sys.argv[2:]
    if action == "run":
        cmd = [VENV / "bin" / "anther", "simulate", *rest]
    else:
        cmd = [PY, "-m", "pytest", "-ra", *(rest or ["--cov", "--cov-report=term"])]
    return subprocess.run([str(c) for c in cmd], check=False, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
