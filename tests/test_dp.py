"""Sample-level DP-SGD through the split exchange (anther/client/dp.py).

Each sample's gradient is checked against a loop that trains on that sample alone through
the same split path, and against opacus's own per-sample gradients; the clipped sum against
the same loop; the noise against its configured std; DP with no noise and no effective
clipping against plain training; the accountant against opacus's own; the batches against
what the server can know.
"""

from __future__ import annotations

import random

import pytest
import torch
from flwr.app import RecordDict
from omegaconf import OmegaConf
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant
from transformers import AutoProcessor

from anther.backbone.in_process import InProcessBackbone
from anther.client.dp import (
    DPSGD,
    dp_optimizer,
    dpsgd_for,
    per_sample_cotangents,
    per_sample_grads,
    poisson_batch,
    spend,
)
from anther.client.local_training import LocalTraining
from anther.client.trainer import dp_split_step, split_step, train_adapters
from anther.client.training_round import round_seed
from anther.core.config import ConfigError
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder
from anther.simulations.experiment import load_config


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return InProcessBackbone.from_pretrained(tiny_model_dir)


def _edge(tiny_model_dir, seed: int = 1) -> NanoEdge:
    """Adapters with non-zero up projections, so every weight gets a gradient."""
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edge.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return edge


def _params(edge: NanoEdge) -> list[torch.Tensor]:
    return list(edge.adapters.parameters())


def _alone(encoder: SampleEncoder, backbone, params, sample) -> list[torch.Tensor]:
    """The gradient of one sample's own loss, from an exchange with that sample alone."""
    for p in params:
        p.grad = None
    split_step(encoder, backbone, [sample])
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _mixed(samples):
    return [s if i % 3 else s.without_image() for i, s in enumerate(samples[:6])]


def test_per_sample_grads_equal_each_sample_trained_alone(tiny_model_dir, processor, backbone, samples):
    edge = _edge(tiny_model_dir)
    encoder, params, batch_samples = SampleEncoder(edge, processor), _params(edge), _mixed(samples)
    batch = encoder(batch_samples, [s.answer for s in batch_samples])
    embeds = edge(batch)
    _, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels)
    got = per_sample_grads(embeds, per_sample_cotangents(grad, batch.labels), params)
    for i, sample in enumerate(batch_samples):
        for g, ref in zip(got, _alone(encoder, backbone, params, sample)):
            torch.testing.assert_close(g[i], ref, rtol=1e-4, atol=1e-6)


def test_per_sample_grads_equal_opacus_per_sample_grads(tiny_model_dir, processor, backbone, samples):
    """opacus's hooks on the same forward give the same per-sample gradients. Its hooks take the
    image adapter's rows (every image token of the batch, concatenated) for samples, so its
    per-token gradients are summed over each sample's image tokens."""
    edge = _edge(tiny_model_dir)
    encoder, params, batch_samples = SampleEncoder(edge, processor), _params(edge), samples[:5]
    assert all(s.has_image for s in batch_samples)
    batch = encoder(batch_samples, [s.answer for s in batch_samples])
    embeds = edge(batch)
    _, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels)
    cotangents = per_sample_cotangents(grad, batch.labels)
    ours = per_sample_grads(embeds, cotangents, params)

    adapters = dict(edge.adapters.items())
    hooked = {name: GradSampleModule(a, batch_first=True, loss_reduction="sum") for name, a in adapters.items()}
    for name, module in hooked.items():
        edge.adapters[name] = module
    edge(batch).backward(cotangents)
    tokens_per_image = int((batch.input_ids == edge.image_token_id).sum()) // len(batch_samples)
    theirs = []
    for name, adapter in adapters.items():
        for p in adapter.parameters():
            g = p.grad_sample
            theirs.append(g.view(len(batch_samples), tokens_per_image, *p.shape).sum(1) if name == "image" else g)
    for module in hooked.values():
        module._close()
    assert [g.shape for g in theirs] == [g.shape for g in ours]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _clipped(params, per_sample: list[list[torch.Tensor]], clip: float) -> list[torch.Tensor]:
    """What opacus's DPOptimizer (no noise, expected batch size 1) leaves in ``.grad`` for the
    per-sample gradients ``per_sample[i][k]`` of sample i and parameter k."""
    opt = dp_optimizer(torch.optim.SGD(params, lr=0.0), DPSGD(0.0, clip, 1.0, 1.0, torch.Generator()))
    opt.zero_grad()
    for k, p in enumerate(params):
        p.grad_sample = torch.stack([grads[k] for grads in per_sample])
    opt.pre_step()
    return [p.grad.clone() for p in params]


def test_clipping_bounds_each_samples_contribution(tiny_model_dir, processor, backbone, samples):
    edge = _edge(tiny_model_dir)
    encoder, params, batch_samples = SampleEncoder(edge, processor), _params(edge), _mixed(samples)
    alone = [_alone(encoder, backbone, params, s) for s in batch_samples]
    norms = [torch.cat([g.flatten() for g in grads]).norm().item() for grads in alone]
    clip = sorted(norms)[len(norms) // 2]  # half the samples are clipped, half are not
    opt = dp_optimizer(torch.optim.SGD(params, lr=0.0), DPSGD(0.0, clip, 1.0, 1.0, torch.Generator()))
    opt.zero_grad()
    dp_split_step(encoder, backbone, batch_samples, params)
    opt.pre_step()
    for k, p in enumerate(params):
        expected = sum(min(1.0, clip / n) * grads[k] for n, grads in zip(norms, alone))
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)
    for grads in alone:  # each clipped contribution has norm <= clip, on its own
        assert torch.cat([g.flatten() for g in _clipped(params, [grads], clip)]).norm() <= clip * (1 + 1e-5)


@pytest.mark.parametrize("secure_mode", [False, True])
def test_noise_has_the_configured_std(secure_mode):
    params = [torch.zeros(200_000, requires_grad=True), torch.zeros(50, 40, requires_grad=True)]
    dp = DPSGD(noise_multiplier=1.5, max_grad_norm=2.0, sample_rate=0.1, expected_batch_size=4.0,
               generator=torch.Generator().manual_seed(0), secure_mode=secure_mode)
    opt = dp_optimizer(torch.optim.SGD(params, lr=0.0), dp)
    for p in params:
        p.grad_sample = torch.zeros((1, *p.shape))
    opt.pre_step()
    noise = torch.cat([p.grad.flatten() for p in params])
    expected = 1.5 * 2.0 / 4.0
    assert abs(noise.mean().item()) < 0.01 * expected
    assert noise.std().item() == pytest.approx(expected, rel=0.01)


def _equal_length(encoder: SampleEncoder, samples, n: int):
    """``n`` samples whose answers have the same number of labelled tokens: then the batch's
    token-mean loss is the mean of per-sample losses that DP-SGD clips."""
    by_count: dict[int, list] = {}
    for s in samples:
        labels = encoder([s], [s.answer]).labels
        by_count.setdefault(int((labels != -100).sum()), []).append(s)
    group = max(by_count.values(), key=len)
    assert len(group) >= n, "the fixture needs more samples with equal-length answers"
    return group[:n]


def test_no_noise_and_huge_clip_equals_plain_training(tiny_model_dir, processor, backbone, samples):
    from anther.data import shapes_vqa

    edges = [_edge(tiny_model_dir), _edge(tiny_model_dir)]
    edges[1].load_adapter_state(edges[0].adapter_state())
    chosen = _equal_length(SampleEncoder(edges[0], processor), shapes_vqa.generate(40, seed=5), 4)
    # batch_size = all samples: plain training takes them all, Poisson at rate 1 too
    plain = train_adapters(SampleEncoder(edges[0], processor), backbone, chosen,
                           LocalTraining(3, 4, 1e-2, max_grad_norm=0), seed=0)
    dp = DPSGD(0.0, 1e9, sample_rate=1.0, expected_batch_size=4.0, generator=torch.Generator())
    private = train_adapters(SampleEncoder(edges[1], processor), backbone, chosen, LocalTraining(3, 4, 1e-2),
                             seed=0, dp=dp)
    assert private.loss == pytest.approx(plain.loss, rel=1e-5)
    # Summed per-sample gradients and the batch gradient agree to float rounding, which AdamW
    # can lift to ~1e-5 on a weight whose gradient is near 0 (seen under 2 xdist workers);
    # a wrong clip or a stray noise term moves weights by ~lr = 1e-2.
    for a, b in zip(_params(edges[0]), _params(edges[1])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_empty_poisson_batch_is_a_noise_only_step(tiny_model_dir, processor, backbone):
    edge = _edge(tiny_model_dir)
    params = _params(edge)
    dp = DPSGD(1.0, 1.0, sample_rate=0.1, expected_batch_size=2.0, generator=torch.Generator().manual_seed(0))
    opt = dp_optimizer(torch.optim.SGD(params, lr=0.0), dp)
    opt.zero_grad()
    up = backbone.bytes_up
    assert dp_split_step(SampleEncoder(edge, processor), backbone, [], params) is None
    assert backbone.bytes_up == up, "nothing goes to the backbone"
    opt.pre_step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def _privacy(**kw):
    return OmegaConf.create({"dp": True, "noise_multiplier": None, "target_epsilon": None, "delta": 1e-5,
                             "max_grad_norm": 1.0, "accountant": "rdp", "secure_mode": False, **kw})


def test_epsilon_grows_with_steps_and_matches_opacus():
    privacy = _privacy(noise_multiplier=1.1)
    state = RecordDict()
    dp = dpsgd_for(privacy, num_samples=400, batch_size=16, total_steps=100)
    assert dp.sample_rate == pytest.approx(0.04) and dp.expected_batch_size == pytest.approx(16)
    spent = [spend(state, privacy, dp, steps=25) for _ in range(4)]  # four rounds of 25 steps
    assert spent == sorted(spent) and spent[0] < spent[-1]
    reference = RDPAccountant()
    for _ in range(100):
        reference.step(noise_multiplier=1.1, sample_rate=0.04)
    assert spent[-1] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_no_noise_spends_infinite_epsilon():
    privacy = _privacy(noise_multiplier=0.0)
    assert spend(RecordDict(), privacy, dpsgd_for(privacy, 400, 16, 10), steps=10) == float("inf")


def test_prv_accountant_matches_opacus():
    privacy = _privacy(noise_multiplier=1.0, accountant="prv")
    state = RecordDict()
    dp = dpsgd_for(privacy, num_samples=200, batch_size=10, total_steps=40)
    spent = [spend(state, privacy, dp, steps=20) for _ in range(2)]
    reference = PRVAccountant()
    for _ in range(40):
        reference.step(noise_multiplier=1.0, sample_rate=0.05)
    assert spent[0] < spent[1] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)


def test_target_epsilon_picks_noise_for_the_whole_run():
    privacy = _privacy(target_epsilon=3.0)
    dp = dpsgd_for(privacy, num_samples=400, batch_size=16, total_steps=150)
    assert dp.noise_multiplier > 0
    state = RecordDict()
    eps = [spend(state, privacy, dp, steps=25) for _ in range(6)]
    assert eps[-1] <= 3.0 and eps[-1] == pytest.approx(3.0, rel=0.05)


def test_dp_batches_are_secret_from_the_server():
    """Two clients given one configuration (the server's seed in it) draw different batches, and
    neither is the batch the server could draw from its seed, round and the partition id."""
    privacy = _privacy(noise_multiplier=1.0)
    clients = [dpsgd_for(privacy, num_samples=200, batch_size=100, total_steps=10) for _ in range(2)]
    assert all(dp.randomness == "secret" for dp in clients)
    drawn = [poisson_batch(dp.sampler, 200, dp.sample_rate) for dp in clients]
    servers = [poisson_batch(random.Random(round_seed(0, 1, pid)), 200, 0.5) for pid in (0, 1)]
    assert drawn[0] != drawn[1] and not set(map(tuple, drawn)) & set(map(tuple, servers))


def test_a_site_seed_makes_its_dp_training_reproducible(tiny_model_dir, processor, backbone, samples):
    """``dp-sampling-seed`` (the site's own) fixes batches and noise: the same seed trains the same
    weights, another seed others; the trainer's batches are the sampler's, not the server's seed."""
    privacy = _privacy(noise_multiplier=1.0)
    trained, start = {}, _edge(tiny_model_dir).adapter_state()
    for name, site_seed in (("a", "s"), ("b", "s"), ("c", "t")):
        edge = _edge(tiny_model_dir)
        edge.load_adapter_state(start)
        dp = dpsgd_for(privacy, len(samples), 6, 2, site_seed=site_seed)
        assert dp.randomness == "site-seeded"
        report = train_adapters(SampleEncoder(edge, processor), backbone, samples, LocalTraining(2, 6, 1e-2), seed=4,
                                dp=dp)
        trained[name] = (report.examples, _params(edge))
    replay = dpsgd_for(privacy, len(samples), 6, 2, site_seed="s")
    replayed = [poisson_batch(replay.sampler, len(samples), replay.sample_rate) for _ in range(2)]
    assert trained["a"][0] == sum(map(len, replayed))
    assert all(torch.equal(x, y) for x, y in zip(trained["a"][1], trained["b"][1]))
    assert not all(torch.equal(x, y) for x, y in zip(trained["a"][1], trained["c"][1]))


@pytest.mark.parametrize(("override", "key"), [
    ("privacy.dp=true", "privacy.noise_multiplier"),
    ("privacy.dp=true privacy.noise_multiplier=1 privacy.target_epsilon=2", "privacy.noise_multiplier"),
    ("privacy.dp=true privacy.noise_multiplier=-1", "privacy.noise_multiplier"),
    ("privacy.dp=true privacy.target_epsilon=0", "privacy.target_epsilon"),
    ("privacy.dp=true privacy.noise_multiplier=1 privacy.delta=1", "privacy.delta"),
    ("privacy.dp=true privacy.noise_multiplier=1 privacy.max_grad_norm=0", "privacy.max_grad_norm"),
    ("privacy.dp=true privacy.noise_multiplier=1 privacy.accountant=moments", "privacy.accountant"),
    ("privacy.dp=true privacy.noise_multiplier=1 strategy.name=fisher", "privacy.dp"),
    ("privacy.dp=true privacy.noise_multiplier=0 privacy.accountant=prv", "privacy.noise_multiplier"),
])
def test_bad_privacy_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("default", override)


def test_privacy_config_loads():
    cfg = load_config("default", "privacy.dp=true privacy.target_epsilon=4")
    assert cfg.privacy.dp and cfg.privacy.target_epsilon == 4 and cfg.privacy.noise_multiplier is None


def test_clients_report_their_spent_epsilon_round_after_round(tiny_model_dir, tmp_path, monkeypatch):
    """The real train handler: each node's accountant lives in its Context.state between rounds."""
    from fakes import FakeGrid, play_serverapp_runtime
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from transformers import AutoConfig

    from anther import client_app
    from anther.core.config import to_yaml
    from anther.core.sample import write_split
    from anther.data import shapes_vqa
    from anther.data.client_data import client_data
    from anther.model.nano_edge import initial_adapter_state
    from anther.strategies.registry import build_strategy

    play_serverapp_runtime(monkeypatch)
    write_split(shapes_vqa.generate(24, seed=1, prefix="train"), tmp_path, "train")
    write_split(shapes_vqa.generate(4, seed=2, prefix="test"), tmp_path, "test")
    cfg = load_config("default", [f"model.path={tiny_model_dir}", f"data.path={tmp_path}", "federation.num_clients=2",
                                  "federation.rounds=2", "train.local_steps=2", "train.batch_size=4",
                                  "adapter.rank=4", "privacy.dp=true", "privacy.noise_multiplier=0.8"])
    nodes = {11: 0, 12: 1}
    contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={},
                           node_config={"partition-id": p, "num-partitions": 2}) for n, p in nodes.items()}
    dim = AutoConfig.from_pretrained(tiny_model_dir).text_config.hidden_size
    arrays = ArrayRecord(initial_adapter_state(dim, NanoAdapterConfig(4, 16.0), 0))
    strategy = build_strategy({"name": "fedavg"})
    spent: dict[int, list[float]] = {n: [] for n in nodes}
    for server_round in (1, 2):
        config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": server_round})
        for m in strategy.configure_train(server_round, arrays, config, FakeGrid(list(nodes))):
            node = m.metadata.dst_node_id
            spent[node].append(client_app.train(m, contexts[node]).content["metrics"]["dp_epsilon"])
    for node, pid in nodes.items():
        train_set, _ = client_data(cfg, tmp_path, pid, 2)
        reference = RDPAccountant()
        for _ in range(4):
            reference.step(noise_multiplier=0.8, sample_rate=4 / len(train_set))
        assert spent[node][0] < spent[node][1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_round_table_shows_epsilon_only_with_dp():
    from rich.console import Console

    from anther.server.run_report import RoundTable, round_columns

    assert "dp_epsilon_max" not in [k for k, _, _ in round_columns(dp=False)]
    console = Console(record=True, width=200)
    RoundTable(console, round_columns(dp=True)).add({"round": 1, "dp_epsilon_max": 2.345})
    text = console.export_text()
    assert "eps (max)" in text and "2.35" in text


@pytest.mark.slow
def test_simulation_records_each_rounds_epsilon(tmp_path):
    """A real ``anther simulate`` with a target epsilon: result.json has the spent epsilon per round."""
    from simulation_run import simulate

    _, result = simulate(tmp_path, ["privacy.dp=true", "privacy.target_epsilon=8"])
    trained = result["rounds"][1:]
    assert all(r["dp_epsilon_mean"] <= r["dp_epsilon_max"] <= 8.0 for r in trained)
    assert trained[0]["dp_epsilon_max"] < trained[1]["dp_epsilon_max"]
    assert trained[1]["dp_epsilon_max"] == pytest.approx(8.0, rel=0.05), "the whole budget is spent by the end"
    assert "dp_epsilon_max" not in result["rounds"][0]
    assert all(r["dp_randomness"] == ["secret"] for r in trained), "the record says batches and noise were secret"
