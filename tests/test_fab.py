"""The app bundle ``flwr run`` ships holds the package's code and configs only: results written
under docs/ (the heterogeneity grid's) must not grow it past Flower's 10 MB limit."""

from __future__ import annotations

import io
import zipfile

from flwr.cli.build import build_fab_from_disk

from anther.simulations.launcher import APP_DIR


def test_the_fab_holds_the_package_and_nothing_of_docs_or_tests():
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(APP_DIR))).namelist()
    assert "anther/server_app.py" in names and "anther/configs/default.yaml" in names
    assert not [n for n in names if n.startswith(("docs/", "tests/", "scripts/", "docker/"))], names
