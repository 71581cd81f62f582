"""A site's privacy policy (anther/client/privacy_policy.py), through the real ClientApp handlers.

The server's message asks for whatever privacy it likes; the node config says what the site
accepts. These tests call ``anther.client_app.train`` / ``evaluate`` as Flower would, with a
node config per site: a weaker round is refused, a round past the budget is declined without
training or spending, and under DP nothing computed from the site's data leaves unnoised.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from transformers import AutoConfig

from anther import client_app
from anther.client.privacy_policy import PUBLIC_METRICS, SitePolicy
from anther.core.config import to_yaml
from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.simulations.experiment import load_config


@pytest.fixture(autouse=True)
def _runtime(monkeypatch):
    from fakes import play_serverapp_runtime

    play_serverapp_runtime(monkeypatch)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("policy-data")
    write_split(shapes_vqa.generate(24, seed=1, prefix="train"), folder, "train")
    write_split(shapes_vqa.generate(4, seed=2, prefix="test"), folder, "test")
    return folder


def _cfg(tiny_model_dir, data_dir, *privacy: str):
    return load_config("default", [f"model.path={tiny_model_dir}", f"data.path={data_dir}", "federation.num_clients=2",
                                   "federation.rounds=3", "train.local_steps=2", "train.batch_size=4",
                                   "adapter.rank=4", "eval.batch_size=4", *privacy])


def _message(cfg, tiny_model_dir, server_round: int, kind: str = MessageType.TRAIN) -> Message:
    dim = AutoConfig.from_pretrained(tiny_model_dir).text_config.hidden_size
    arrays = ArrayRecord(initial_adapter_state(dim, NanoAdapterConfig(4, 16.0), 0))
    config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": server_round})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=7, message_type=kind)


def _site(**node_config) -> Context:
    return Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                   node_config={"partition-id": 0, "num-partitions": 2, **node_config})


def test_a_malformed_policy_names_its_key():
    for bad, key in (({"dp-max-epsilon": "lots"}, "dp-max-epsilon"), ({"dp-min-noise-multiplier": -1},
                     "dp-min-noise-multiplier"), ({"dp-policy-delta": 2}, "dp-policy-delta"),
                     ({"dp-unnoised-metrics": "maybe"}, "dp-unnoised-metrics")):
        with pytest.raises(ValueError, match=key):
            SitePolicy.from_node_config(bad)
    assert not SitePolicy.from_node_config({"partition-id": 0}).requires_dp


@pytest.mark.parametrize(("privacy", "reason"), [
    (["privacy.dp=true", "privacy.noise_multiplier=0.5"], "noise multiplier 0.5 is below this site's minimum 1"),
    (["privacy.dp=true", "privacy.noise_multiplier=2", "privacy.max_grad_norm=5"],
     "clipping norm 5 is above this site's maximum 1"),
    ([], "trains only with sample-level DP"),
])
def test_a_round_weaker_than_the_sites_policy_is_refused(tiny_model_dir, data_dir, privacy, reason):
    cfg = _cfg(tiny_model_dir, data_dir, *privacy)
    site = _site(**{"dp-min-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0})
    reply = client_app.train(_message(cfg, tiny_model_dir, 1), site)
    said = reply.content.config_records["declined"]
    assert said["status"] == "refused" and reason in said["reason"], said
    assert not reply.content.array_records and len(site.state) == 0, "it trained, or spent, anyway"


def test_a_site_stops_before_its_budget_and_spends_nothing_more(tiny_model_dir, data_dir):
    cfg = _cfg(tiny_model_dir, data_dir, "privacy.dp=true", "privacy.noise_multiplier=1.0")
    open_site = _site()
    spent = [client_app.train(_message(cfg, tiny_model_dir, r), open_site).content["metrics"]["dp_epsilon"]
             for r in (1, 2)]
    budget = (spent[0] + spent[1]) / 2  # room for one round, not two
    site = _site(**{"dp-max-epsilon": budget, "dp-policy-delta": 1e-5})
    first = client_app.train(_message(cfg, tiny_model_dir, 1), site)
    assert first.content["metrics"]["dp_epsilon"] == pytest.approx(spent[0]) and spent[0] <= budget
    history = list(site.state.config_records["dp-accountant"]["steps"])
    second = client_app.train(_message(cfg, tiny_model_dir, 2), site)
    said = second.content.config_records["declined"]
    assert said["status"] == "budget-exhausted" and f"budget {budget:g} (dp-max-epsilon)" in said["reason"], said
    assert not second.content.array_records
    assert list(site.state.config_records["dp-accountant"]["steps"]) == history, "the refused round was accounted"


def test_under_dp_no_unnoised_value_leaves_unless_the_site_allows_it(tiny_model_dir, data_dir):
    cfg = _cfg(tiny_model_dir, data_dir, "privacy.dp=true", "privacy.noise_multiplier=1.0")
    trained = client_app.train(_message(cfg, tiny_model_dir, 1), _site())
    assert set(trained.content["metrics"]) <= PUBLIC_METRICS and "dp_epsilon" in trained.content["metrics"]
    assert trained.content.config_records["privacy"]["dp-randomness"] == "secret"
    scored = client_app.evaluate(_message(cfg, tiny_model_dir, 3, MessageType.EVALUATE), _site())
    assert set(scored.content["metrics"]) <= PUBLIC_METRICS
    allowed = _site(**{"dp-unnoised-metrics": "true"})
    assert "train_loss" in client_app.train(_message(cfg, tiny_model_dir, 1), allowed).content["metrics"]
    assert "acc_mc" in client_app.evaluate(_message(cfg, tiny_model_dir, 3, MessageType.EVALUATE),
                                           allowed).content["metrics"]
    plain = client_app.train(_message(_cfg(tiny_model_dir, data_dir), tiny_model_dir, 1), _site())
    assert "train_loss" in plain.content["metrics"], "without DP the metrics are not filtered"
