"""A researcher's own strategy, in a module outside anther, selected by ``_target_``.

The module -- the plug-in example of docs/strategies.md, read from there -- is written to a
temporary directory (not under the anther package), put on ``sys.path`` and built with
``build_strategy({"_target_": "my_lab.strategies.MaskedFedAvg", ...})``, exactly as an
experiment config names it. Clients send an extra ArrayRecord (``"mask"``: 1 where they
changed an element) and the strategy averages each element over the clients that changed it.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

import anther
from anther.strategies.registry import build_strategy

DOCS = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def plugin_source() -> str:
    """The plug-in example of docs/strategies.md (its first Python block after "Plug in your own"),
    so the documented code is the code tested, plus a class that is not a Strategy."""
    section = DOCS.read_text().split("## Plug in your own", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return code + textwrap.dedent('''

        class NotAStrategy:
            def __init__(self, **kwargs):
                pass
        ''')


@pytest.fixture
def my_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``my_lab/strategies.py`` in a temporary directory, importable for the test only."""
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "strategies.py").write_text(plugin_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.41 stamps new instruction Messages with the task identity the ServerApp runtime sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _record(arrays: dict[str, list]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()})


def _reply(node_id: int, weights: list, mask: list, loss: float) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": _record({"w": weights}), "mask": _record({"w": mask}),
                          "metrics": MetricRecord({"num-examples": 1, "train_loss": loss})})
    return Message(content, reply_to=instruction)


SPEC = {"_target_": "my_lab.strategies.MaskedFedAvg", "min_train_nodes": 1, "min_available_nodes": 1}


def test_plugin_module_lives_outside_anther(my_lab: Path):
    assert Path(anther.__file__).parent not in my_lab.parents


def test_build_strategy_by_target_returns_the_plugin(my_lab: Path):
    strategy = build_strategy(SPEC)
    assert type(strategy).__name__ == "MaskedFedAvg" and type(strategy).__module__ == "my_lab.strategies"
    assert isinstance(strategy, FedAvg) and strategy.min_train_nodes == 1 and strategy.mask_key == "mask"


def test_plugin_strategy_aggregates(my_lab: Path):
    strategy = build_strategy(SPEC)
    global_arrays = _record({"w": [10, 10, 10]})
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), FakeGrid([1, 2])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]
    replies = [_reply(1, [1, 2, 3], mask=[1, 1, 0], loss=1.0), _reply(2, [5, 6, 7], mask=[0, 1, 0], loss=3.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # element 0: client 1 only; element 1: (2 + 6) / 2; element 2: nobody -> global 10
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 4.0, 10.0])
    assert metrics["train_loss"] == pytest.approx(2.0)


def test_target_that_is_not_a_strategy_is_refused(my_lab: Path):
    with pytest.raises(TypeError, match="NotAStrategy"):
        build_strategy({"_target_": "my_lab.strategies.NotAStrategy"})
