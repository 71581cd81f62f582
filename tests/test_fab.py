"""The app bundle ``flwr run`` ships holds the package's code and configs only: results written
under docs/ (the heterogeneity grid's) must not grow it past Flower's 10 MB limit. ``anther
simulate`` submits a staged copy of the app, which must bundle to exactly the same files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from anther.simulations.launcher import APP_DIR, staged_app


def _bundled(app_dir: Path) -> dict[str, bytes]:
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app_dir)))
    return {name: fab.read(name) for name in fab.namelist() if not name.startswith(".info/")}


def test_the_fab_holds_the_package_and_nothing_of_docs_or_tests(tmp_path: Path) -> None:
    names = list(_bundled(APP_DIR))
    assert "anther/server_app.py" in names and "anther/configs/default.yaml" in names
    assert not [n for n in names if n.startswith(("docs/", "tests/", "scripts/", "docker/"))], names
    assert _bundled(staged_app(APP_DIR, tmp_path / "app")) == _bundled(APP_DIR)


def test_anther_app_writes_the_app_flwr_run_submits_and_refuses_any_other_folder(tmp_path: Path, capsys) -> None:
    """``anther app --out DIR`` (the deployment recipes' first step): the same bundle as the checkout's,
    rewritten in place on a second call; a folder holding anything else is refused, never emptied."""
    from anther.cli import main

    out = tmp_path / "app"
    assert main(["app", "--out", str(out)]) == 0 and main(["app", "--out", str(out)]) == 0
    assert _bundled(out) == _bundled(APP_DIR)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["app", "--out", str(tmp_path)]) == 2
    assert "is not an app folder anther wrote" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
