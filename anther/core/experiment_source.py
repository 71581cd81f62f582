"""Where an experiment's YAML comes from: a name in the package, a name in a config directory of
the user's, or a file anywhere.

``-e NAME`` finds ``NAME.yaml`` in ``--config-dir DIR`` (when given), else in the package's
``anther/configs``; ``-e path/to/exp.yaml`` reads that file. A file of the user's is composed
over the package's defaults:

- without a ``defaults`` list it is merged over the package's ``default`` experiment (and the
  scenario that one picks): only what differs need be written, and a ``strategy`` section with a
  ``_target_`` replaces the default's ``name`` rather than joining it;
- with a ``defaults`` list it is the primary config, as in any Hydra app, and may name the
  package's configs (``- default``, ``- override scenario: missing_b30``).

Either way the user's folder, ``--config-dir`` and the package's folder are on Hydra's search
path, in that order, so scenario files of one's own (``DIR/scenario/mine.yaml``) are found by
``scenario=mine``. The composed config is what a run records (``config.yaml``), so a resumed run
needs none of these files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKAGE_CONFIGS = Path(__file__).parents[1] / "configs"
WRAPPER, USER_COPY = "__anther_experiment__", "__user_experiment__"


class ExperimentNotFound(ValueError):
    """The experiment named is in none of the places looked at."""


def is_path(experiment: str) -> bool:
    """Whether ``-e`` was given a file rather than a name."""
    return experiment.endswith((".yaml", ".yml")) or os.sep in experiment or "/" in experiment


def locate(experiment: str, config_dir: str | Path | None = None) -> Path:
    """The YAML file ``experiment`` names (module docstring), or :class:`ExperimentNotFound`."""
    if is_path(experiment):
        path = Path(experiment).expanduser()
        if not path.is_file():
            raise ExperimentNotFound(f"experiment file {experiment!r} does not exist")
        return path.resolve()
    folders = [Path(config_dir).expanduser()] if config_dir else []
    if folders and not folders[0].is_dir():
        raise ExperimentNotFound(f"config directory {str(config_dir)!r} does not exist")
    for folder in [*folders, PACKAGE_CONFIGS]:
        if (folder / f"{experiment}.yaml").is_file():
            return (folder / f"{experiment}.yaml").resolve()
    known = sorted({p.stem for folder in [*folders, PACKAGE_CONFIGS] for p in folder.glob("*.yaml")})
    raise ExperimentNotFound(f"unknown experiment {experiment!r}; known: {known}"
                             + ("" if config_dir else " (or give a path to a YAML file, or --config-dir)"))


@dataclass(frozen=True)
class Composition:
    """What Hydra composes: the primary config's folder and name, and the search path after it."""

    primary_dir: Path
    name: str
    search_path: tuple[Path, ...]

    def searchpath_override(self) -> str:
        """The ``hydra.searchpath=[...]`` override that puts ``search_path`` after the primary folder."""
        def quoted(p: Path) -> str:
            return '"file://' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"hydra.searchpath=[{','.join(quoted(p) for p in self.search_path)}]"


def _read(path: Path) -> dict:
    try:
        text = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ExperimentNotFound(f"experiment file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") \
            from None
    if not isinstance(text, dict):
        raise ExperimentNotFound(f"experiment file {str(path)!r} must hold a mapping of config keys, "
                                 f"not a {type(text).__name__}")
    return text


def _replacing_target(body: dict) -> dict:
    """``body`` with ``strategy.name: null`` when its strategy names a ``_target_`` (module docstring)."""
    strategy = body.get("strategy")
    if isinstance(strategy, dict) and "_target_" in strategy and "name" not in strategy:
        return {**body, "strategy": {"name": None, **strategy}}
    return body


@contextlib.contextmanager
def composition(experiment: str, config_dir: str | Path | None = None) -> Iterator[Composition]:
    """How to compose ``experiment``; a file of the user's is staged in a temporary folder meanwhile."""
    path = locate(experiment, config_dir)
    own = [Path(config_dir).expanduser().resolve()] if config_dir else []
    if path.parent == PACKAGE_CONFIGS.resolve():
        yield Composition(PACKAGE_CONFIGS, path.stem, (*own, PACKAGE_CONFIGS))
        return
    body = _replacing_target(_read(path))
    stage = Path(tempfile.mkdtemp(prefix="anther-experiment-"))
    try:
        search = tuple(dict.fromkeys([path.parent, *own, PACKAGE_CONFIGS]))
        if "defaults" in body:
            (stage / path.name).write_text(yaml.safe_dump(body, sort_keys=False))
            yield Composition(stage, path.stem, search)
        else:
            (stage / f"{USER_COPY}.yaml").write_text(yaml.safe_dump({"name": path.stem, **body}, sort_keys=False))
            (stage / f"{WRAPPER}.yaml").write_text(yaml.safe_dump({"defaults": ["default", USER_COPY, "_self_"]}))
            yield Composition(stage, WRAPPER, search)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
