"""Shared fixtures: one tiny checkpoint per test session, made offline like the default run's."""

from __future__ import annotations

import json
from pathlib import Path

from coverage_on_import import untraced_imports

untraced_imports.install()  # under --cov, this worker imports PyTorch and the rest untraced too

import pytest
import transformers
from lazy_coverage import measure_children_from_their_import_of_anther  # noqa: F401  (autouse, session)
from process_tags import stop_what_each_test_started  # noqa: F401  (autouse: nothing a test starts outlives it)
from simulation_run import scheduling_groups
from xdist.scheduler import LoadFileScheduling

from anther.model.families import FAMILIES

transformers.logging.set_verbosity_error()

pytest_plugins = ["pytester"]  # tests/test_process_tags.py runs pytest on a test of its own


def _tiny(factory: pytest.TempPathFactory, family: str) -> Path:
    """A tiny checkpoint of ``family`` with random weights (no pretraining: correctness does not
    need it), made once per session."""
    from anther.model.tiny_model import init_tiny

    return init_tiny(factory.mktemp("model") / f"tiny-{family}", seed=0, pretrain_steps=0, family=family)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA, the default run's model."""
    return _tiny(tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Idefics3 (SmolVLM's class): tiled images, padded tiles."""
    return _tiny(tmp_path_factory, "idefics3")


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA-NeXT: AnyRes tiles, unpadding, a newline per row."""
    return _tiny(tmp_path_factory, "llava_next")


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL: native-resolution patches, M-RoPE positions."""
    return _tiny(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL: Qwen2-VL's with windowed vision attention."""
    return _tiny(tmp_path_factory, "qwen2_5_vl")


# registered family -> the fixture of its tiny checkpoint
FAMILY_FIXTURES = {"llava": "tiny_model_dir", "llava_next": "tiny_llava_next_dir", "idefics3": "tiny_idefics3_dir",
                   "qwen2_vl": "tiny_qwen2_vl_dir", "qwen2_5_vl": "tiny_qwen2_5_vl_dir"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model_dir(request: pytest.FixtureRequest) -> Path:
    """Each registered family's tiny checkpoint, one test per family (a family registered
    without a fixture here fails with a KeyError naming it)."""
    return request.getfixturevalue(FAMILY_FIXTURES[request.param])


@pytest.fixture(scope="session")
def samples():
    from anther.data import shapes_vqa

    return shapes_vqa.generate(12, seed=3)


# seconds each test file took at the last `scripts/suite_bench.py --update-durations` run
DURATIONS_FILE = Path(__file__).with_name("durations.json")
UNKNOWN_SLOW_FILE_S, UNKNOWN_FILE_S = 120.0, 1.0  # a file added since: guessed from its marks
GROUPS = scheduling_groups()


def group_of(file: Path) -> str:
    """The unit of work a test file belongs to: its group of files sharing a run, else itself."""
    return GROUPS.get(file.name, str(file))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
    """``--dist loadfile``, with the files that read one shared run as one unit of work."""
    return FileGroupScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


class FileGroupScheduling(LoadFileScheduling):
    """A whole file per worker at a time; the files of a group of :func:`simulation_run.scheduling_groups`
    go to the same worker, one after the other. (With pytest 9.2 and pytest-xdist 3.8, ``--dist
    loadgroup`` spread even a module marked ``xdist_group`` over both workers.)"""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(Path(nodeid.split("::", 1)[0]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files (or groups of files) first, so that under ``-n 2 --dist loadfile`` the long
    ones start early and the short ones fill the gaps at the end (longest-first is how one balances
    jobs over two workers without knowing the future). The order is the same in every worker, as
    xdist needs."""
    durations = json.loads(DURATIONS_FILE.read_text()) if DURATIONS_FILE.exists() else {}
    root = Path(__file__).resolve().parents[1]
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def seconds(path: Path) -> float:
        guess = UNKNOWN_SLOW_FILE_S if path in slow_files else UNKNOWN_FILE_S
        return durations.get(path.resolve().relative_to(root).as_posix(), guess)

    group_s: dict[str, float] = {}
    for path in {item.path for item in items}:
        group_s[group_of(path)] = group_s.get(group_of(path), 0.0) + seconds(path)
    items.sort(key=lambda item: (-group_s[group_of(item.path)], group_of(item.path)))
