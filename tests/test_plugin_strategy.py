"""A researcher's own strategy, in a module outside anther, selected by ``_target_``.

The modules -- the two plug-in examples of docs/strategies.md, read from there -- are written to
a temporary directory (not under the anther package) and made importable, exactly as an
experiment config names them. MaskedFedAvg asks clients for a mask with the round-config key
``send-mask``; its client half (an ``after_training`` extra) answers with an extra ArrayRecord
``mask`` (1 where the client changed an element); the strategy averages each element over the
clients that changed it. Mime-Lite sends its momentum with the adapters, its clients step with it
(a gradient hook) and answer with their gradient at the global adapters. Unit tests check every
half; the slow test runs two rounds of Mime-Lite in a real ``flwr run`` simulation from its
documented experiment file, outside the repository, the module only on ``PYTHONPATH`` (under the
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
from fakes import FakeGrid, MeanBackbone, ScalarEncoder, play_serverapp_runtime
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import load_file
from simulation_run import simulate

import anther
from anther.client.api import ExtraContext, LocalTraining
from anther.client.extras import add_reply_records, build_hooks
from anther.client.trainer import train_adapters
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


# -- the client-side example: Mime-Lite ------------------------------------------------------
CLIENT_SIDE = "## A client-side algorithm, end to end"


def _block(section: str, language: str) -> str:
    """The first ``language`` code block of the docs section headed ``section``."""
    text = DOCS.read_text().split(section, 1)[1]
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def write_mime(folder: Path) -> Path:
    """``folder/my_lab/mime.py`` and ``folder/mime.yaml``, as docs/strategies.md has them."""
    package = folder / "my_lab"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "mime.py").write_text(_block(CLIENT_SIDE, "python"))
    (folder / "mime.yaml").write_text(_block(CLIENT_SIDE, "yaml"))
    return folder / "mime.yaml"


@pytest.fixture
def mime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    write_mime(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_lab.mime

    yield my_lab.mime
    for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        del sys.modules[name]


def _scalar_client(config: dict, records: dict) -> ExtraContext:
    encoder = ScalarEncoder()
    runtime = SimpleNamespace(edge=encoder.edge, encoder=encoder, backbone=MeanBackbone())
    received = encoder.edge.adapter_state()
    return ExtraContext(ConfigRecord(config), None, runtime, [SimpleNamespace(h=1.0, answer="a")], received,
                        RecordDict(), 0, records, LocalTraining(steps=1, batch_size=1, lr=0.1, max_grad_norm=0.0,
                                                                optimizer="sgd"))


def test_client_side_example_steps_with_the_servers_momentum(mime):
    """At h = 1 the task gradient of (u, b2, d, b1) is (1, 1, 2, 2), none for the image adapter; with
    beta = 0.5 and m = 1 one SGD step of 0.1 moves each weight by 0.1 (0.5 g + 0.5)."""
    ctx = _scalar_client({"mime-beta": 0.5}, {})
    ctx.records = {"mime-momentum": ArrayRecord({n: torch.ones_like(p) for n, p in ctx.parameters().items()})}
    before = ctx.runtime.edge.adapter_state()
    train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples, ctx.training, seed=0,
                   hooks=build_hooks(ctx))
    after = ctx.runtime.edge.adapter_state()
    expected = {"text.up.weight": 1.0, "text.up.bias": 1.0, "text.down.weight": 1.5, "text.down.bias": 1.5,
                "image.up.bias": 0.5}
    for name, step in expected.items():
        assert (before[name] - after[name]).item() == pytest.approx(0.1 * step, rel=1e-5), name
    reply = mime.gradient_at_global(ctx)["mime-gradient"].to_torch_state_dict()
    # at the global adapters, not the trained ones; and the trained ones are back in place
    assert reply["text.down.weight"].item() == pytest.approx(2.0) and reply["text.up.weight"].item() == 1.0
    assert torch.equal(ctx.runtime.edge.adapter_state()["text.up.weight"], after["text.up.weight"])


def test_client_side_example_server_updates_its_momentum_by_hand(mime):
    strategy = mime.MimeLite(beta=0.5, min_train_nodes=1, min_available_nodes=1)
    messages = list(strategy.configure_train(1, _record({"w": [1.0, 1.0]}), ConfigRecord(), FakeGrid([1, 2])))
    assert all(m.content["config"]["mime-beta"] == 0.5 for m in messages)
    np.testing.assert_array_equal(messages[0].content["mime-momentum"]["w"].numpy(), [0.0, 0.0])
    replies = [_reply(1, [0.0, 2.0], [0, 0], 1.0), _reply(2, [2.0, 2.0], [0, 0], 1.0)]
    for r, g in zip(replies, ([2.0, 4.0], [4.0, 0.0]), strict=True):
        del r.content["mask"]
        r.content["mime-gradient"] = _record({"w": g})
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 2.0])  # FedAvg of the adapters
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1])))
    np.testing.assert_allclose(messages[0].content["mime-momentum"]["w"].numpy(), [1.5, 1.0])  # 0.5 mean(g)


# -- two rounds of a real simulation --------------------------------------------------------
@pytest.mark.slow
def test_client_side_example_runs_two_rounds_from_a_folder_outside_the_repository(tmp_path: Path):
    """The documented Mime-Lite module and its experiment file, in a folder outside the repository
    (``anther simulate -e that/folder/mime.yaml``, the module only on ``PYTHONPATH``), train two
    real rounds under FedMLLM's cross-modality scenario (one image-only and one text-only client;
    one run shows both, since each run costs most of a minute); the momentum down and the gradient
    up are counted, and the scenario's metrics (macro-F1, per client too) reach result.json."""
    outside = tmp_path / "outside"
    experiment = write_mime(outside)
    run_dir, result = simulate(tmp_path, ["scenario=cross_i5t5"], pythonpath=outside, experiment=experiment)
    assert result["config"]["name"] == "mime" and result["config"]["train"]["optimizer"] == "sgd"
    assert result["config"]["strategy"]["_target_"] == "my_lab.mime.MimeLite"
    adapters = None
    for r in result["rounds"][1:]:
        assert r["clients"] == 2 and r["train_loss"] > 0 and r["skipped"] is None
        per_client = next(iter(r["per_client"].values()))
        adapters = adapters or per_client["adapter_bytes_down"] / 2
        # down: the adapters and the momentum; up: the adapters and the gradient, all the same size
        assert per_client["adapter_bytes_down"] == per_client["adapter_bytes_up"] == 2 * adapters > 0
    final = load_file(str(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors"))
    assert final["text.up.weight"].abs().sum() > 0, "the global adapters did not change from their zero init"

    assert result["config"]["scenario"]["name"] == "cross_i5t5"
    assert result["config"]["partition"] == {"scheme": "dirichlet", "alpha": 0.5, "seed": 0}
    assert 0 <= result["rounds"][-1]["f1_macro"] <= 1
    per_client = result["clients"]["per_client"]
    assert set(per_client) == {"0", "1"} and all("f1_macro" in m for m in per_client.values())
