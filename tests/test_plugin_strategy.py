"""A researcher's own strategy, in a module outside anther, selected by ``_target_``.

The module -- the plug-in example of docs/strategies.md, read from there -- is written to a
temporary directory (not under the anther package) and made importable, exactly as an
experiment config names it. Its strategy asks clients for a mask with the round-config key
``send-mask``; its client half (an ``after_training`` extra) answers with an extra
ArrayRecord ``mask`` (1 where the client changed an element); the strategy averages each
element over the clients that changed it. Unit tests check both halves; the slow test runs
two rounds of a real ``flwr run`` simulation with the module only on ``PYTHONPATH`` (under the
cross-modality scenario, whose end-to-end check it carries too).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes import FakeGrid, play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import load_file
from simulation_run import simulate

import anther
from anther.client.extras import ExtraContext, add_reply_records
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


def write_my_lab(folder: Path) -> Path:
    """``folder/my_lab/strategies.py``, the documented plug-in."""
    package = folder / "my_lab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "strategies.py").write_text(plugin_source())
    return package


@pytest.fixture
def my_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``my_lab/strategies.py`` in a temporary directory, importable for the test only."""
    package = write_my_lab(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


def test_documented_example_is_under_60_lines():
    assert len(plugin_source().split("class NotAStrategy")[0].strip().splitlines()) < 60


def _record(arrays: dict[str, list]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()})


def _reply(node_id: int, weights: list, mask: list, loss: float) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": _record({"w": weights}), "mask": _record({"w": mask}),
                          "metrics": MetricRecord({"num-examples": 1, "train_loss": loss})})
    return Message(content, reply_to=instruction)


SPEC = {"_target_": "my_lab.strategies.MaskedFedAvg", "min_train_nodes": 1, "min_available_nodes": 1,
        "client_modules": ["my_lab.strategies"]}


def test_plugin_module_lives_outside_anther(my_lab: Path):
    assert Path(anther.__file__).parent not in my_lab.parents


def test_build_strategy_by_target_returns_the_plugin(my_lab: Path):
    strategy = build_strategy(SPEC)  # client_modules is for the clients, not the constructor
    assert type(strategy).__name__ == "MaskedFedAvg" and type(strategy).__module__ == "my_lab.strategies"
    assert isinstance(strategy, FedAvg) and strategy.min_train_nodes == 1


def test_plugin_strategy_asks_for_masks_and_aggregates(my_lab: Path):
    strategy = build_strategy(SPEC)
    global_arrays = _record({"w": [10, 10, 10]})
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(), FakeGrid([1, 2])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]
    assert all(m.content["config"]["send-mask"] for m in messages)
    replies = [_reply(1, [1, 2, 3], mask=[1, 1, 0], loss=1.0), _reply(2, [5, 6, 7], mask=[0, 1, 0], loss=3.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # element 0: client 1 only; element 1: (2 + 6) / 2; element 2: nobody -> global 10
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 4.0, 10.0])
    assert metrics["train_loss"] == pytest.approx(2.0)


def test_plugin_client_half_adds_the_mask_to_the_reply(my_lab: Path):
    import my_lab.strategies  # noqa: F401  (registers the extra, as client_modules makes a client do)

    received = {"w": torch.tensor([1.0, 2.0, 3.0])}
    edge = SimpleNamespace(adapter_state=lambda: {"w": torch.tensor([1.0, 5.0, 3.0])})
    ctx = ExtraContext(ConfigRecord({"send-mask": True}), None, SimpleNamespace(edge=edge), [], received,
                       RecordDict(), 0)
    content = RecordDict({"arrays": ArrayRecord(edge.adapter_state()), "metrics": MetricRecord({"num-examples": 1})})
    add_reply_records(ctx, content)
    np.testing.assert_array_equal(content["mask"]["w"].numpy(), [0.0, 1.0, 0.0])
    untouched = RecordDict({"metrics": MetricRecord({"num-examples": 1})})
    add_reply_records(ExtraContext(ConfigRecord(), None, None, [], received, RecordDict(), 0), untouched)
    assert list(untouched) == ["metrics"]  # not asked: nothing added


def test_target_that_is_not_a_strategy_is_refused(my_lab: Path):
    with pytest.raises(TypeError, match="NotAStrategy"):
        build_strategy({"_target_": "my_lab.strategies.NotAStrategy"})


def test_name_and_target_together_are_refused():
    with pytest.raises(ValueError, match="both name='fedavg' and _target_"):
        build_strategy({"name": "fedavg", "_target_": "my_lab.strategies.MaskedFedAvg"})


# -- two rounds of a real simulation --------------------------------------------------------
def experiment_yaml() -> str:
    """The experiment file of docs/strategies.md that selects the plug-in."""
    section = DOCS.read_text().split("## Plug in your own", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_plugin_strategy_runs_two_rounds_of_a_cross_modality_simulation(tmp_path: Path):
    """The plug-in and the documented experiment file that selects it, both in a folder outside the
    repository (``anther simulate -e that/folder/masked.yaml``, the module on ``PYTHONPATH``), train
    two real rounds under FedMLLM's cross-modality scenario (one image-only and one text-only
    client; one run shows both, since each run costs most of a minute), and the scenario's metrics
    (macro-F1, per client too) reach result.json."""
    outside = tmp_path / "outside"
    write_my_lab(outside)
    (outside / "masked.yaml").write_text(experiment_yaml())
    run_dir, result = simulate(tmp_path, ["scenario=cross_i5t5"], pythonpath=outside,
                               experiment=outside / "masked.yaml")
    assert result["config"]["name"] == "masked"
    assert result["config"]["strategy"]["_target_"] == "my_lab.strategies.MaskedFedAvg"
    for r in result["rounds"][1:]:
        assert r["clients"] == 2 and r["train_loss"] > 0
        # each client sent its adapters and a mask of the same size: the extra ran and was counted
        assert r["adapter_bytes_up"] == 2 * r["adapter_bytes_down"] > 0
    final = load_file(str(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors"))
    assert final["text.up.weight"].abs().sum() > 0, "the global adapters did not change from their zero init"

    assert result["config"]["scenario"]["name"] == "cross_i5t5"
    assert result["config"]["partition"] == {"scheme": "dirichlet", "alpha": 0.5, "seed": 0}
    assert 0 <= result["rounds"][-1]["f1_macro"] <= 1
    per_client = result["clients"]["per_client"]
    assert set(per_client) == {"0", "1"} and all("f1_macro" in m for m in per_client.values())
