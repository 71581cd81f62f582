"""Heterogeneity scenarios (issue 5): every named config composes, and each split has the
property it is named for, deterministically in the seed. Fast: no model, no training."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from anther.core.config import CONFIG_DIR, ConfigError
from anther.core.images import in_memory
from anther.core.sample import Sample, write_split
from anther.data import shapes_vqa
from anther.data.client_data import client_data
from anther.data.scenarios import (
    ClientModalities,
    apply_modalities,
    modality_plans,
    partition_indices,
    quantity_sizes,
)
from anther.simulations.experiment import load_config

SCENARIOS = sorted(p.stem for p in (CONFIG_DIR / "scenario").glob("*.yaml"))
N = 10
LABELS = [f"answer{i}" for i in range(16)]
DOMAINS = ("dark", "noisy", "plain", "striped")


def _pool(n: int = 3000, seed: int = 0) -> list[Sample]:
    """Text-and-image samples without pixels (the scenarios only look at labels, domains, ids)."""
    rng = random.Random(seed)
    return [Sample(id=f"s{i}", question="q?", answer=rng.choice(LABELS), options=LABELS, context="c.",
                   domain=rng.choice(DOMAINS)) for i in range(n)]


def _with_image(samples: list[Sample]) -> list[Sample]:
    from PIL import Image

    pixel = Image.new("RGB", (1, 1))
    return [Sample(**{**s.__dict__, "images": in_memory(pixel)}) for s in samples]


def _parts(samples: list[Sample], scheme: str, alpha: float = 0.5, seed: int = 0) -> list[list[Sample]]:
    idx = partition_indices(tuple(s.answer for s in samples), tuple(s.domain for s in samples), N, scheme,
                            alpha, seed)
    return [[samples[i] for i in part] for part in idx]


def _label_skew(parts: list[list[Sample]]) -> float:
    """Mean total-variation distance between each client's label distribution and the pooled one."""
    pooled = Counter(s.answer for p in parts for s in p)
    total = sum(pooled.values())
    tv = []
    for p in parts:
        mine = Counter(s.answer for s in p)
        tv.append(0.5 * sum(abs(mine[k] / len(p) - pooled[k] / total) for k in pooled))
    return sum(tv) / len(tv)


def test_fifteen_named_scenarios_compose_and_validate():
    assert len(SCENARIOS) == 15
    for name in SCENARIOS:
        cfg = load_config("default", [f"scenario={name}"])
        assert cfg.scenario.name == name
        if cfg.scenario.modality != "full":  # non-aligned scenarios build on FedMLLM's alpha 0.5 split
            assert (cfg.partition.scheme, cfg.partition.alpha) == ("dirichlet", 0.5)


def test_default_is_iid_and_overrides_still_win_over_the_scenario():
    cfg = load_config("default")
    assert (cfg.scenario.name, cfg.scenario.modality, cfg.partition.scheme) == ("iid", "full", "iid")
    cfg = load_config("default", ["scenario=missing_b40", "partition.alpha=1.0", "scenario.missing_rate=0.2"])
    assert (cfg.partition.alpha, cfg.scenario.missing_rate) == (1.0, 0.2)


@pytest.mark.parametrize("override, key", [
    ("scenario.modality=absent", "scenario.modality"), ("scenario.missing_rate=1.5", "scenario.missing_rate"),
    ("scenario.presence=-0.1", "scenario.presence"), ("partition.scheme=zipf", "partition.scheme"),
    ("data.format=csv", "data.format")])
def test_out_of_range_scenario_values_are_rejected_by_name(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("default", [override])


def test_label_skew_grows_as_alpha_falls():
    pool = _pool()
    skew = {scheme_alpha: _label_skew(_parts(pool, *scheme_alpha))
            for scheme_alpha in [("iid", 0.5), ("dirichlet", 5.0), ("dirichlet", 1.0), ("dirichlet", 0.5)]}
    values = list(skew.values())
    assert values == sorted(values), skew
    assert skew[("iid", 0.5)] < 0.1 and skew[("dirichlet", 0.5)] > 0.35, skew


def test_every_split_covers_each_sample_at_most_once():
    pool = _pool()
    for scheme in ("iid", "dirichlet", "domain", "quantity"):
        ids = [s.id for part in _parts(pool, scheme) for s in part]
        assert len(ids) == len(set(ids)), scheme
        assert len(ids) == len(pool), scheme  # 10 clients >= 4 domains: every domain is used


@pytest.mark.parametrize("beta", [0.3, 0.4, 0.5])
def test_missing_modality_drops_each_modality_at_rate_beta(beta):
    pool = _with_image(_pool())
    plan = modality_plans("missing", N, beta, 0.5, 1.0, seed=0)
    assert all(p == ClientModalities(drop_rate=beta) for p in plan)
    kept = apply_modalities(pool, plan[0], seed=0)
    no_image = sum(not s.has_image for s in kept) / len(kept)
    no_text = sum(not s.has_text for s in kept) / len(kept)
    neither = sum(not (s.has_image or s.has_text) for s in kept) / len(kept)
    assert abs(no_image - beta) < 0.04 and abs(no_text - beta) < 0.04, (no_image, no_text)
    assert abs(neither - beta * beta) < 0.04  # independent drops: a sample may keep only its question
    assert all(s.question == "q?" for s in kept)


@pytest.mark.parametrize("share, image_clients", [(0.3, 3), (0.5, 5), (0.7, 7)])
def test_cross_modality_clients_are_truly_single_modality(share, image_clients):
    pool = _with_image(_pool())
    plans = modality_plans("cross", N, 0.0, share, 1.0, seed=0)
    assert sum(p.kind == "image-only" for p in plans) == image_clients
    assert sum(p.kind == "text-only" for p in plans) == N - image_clients
    for part, plan in zip(_parts(pool, "dirichlet"), plans):
        kept = apply_modalities(part, plan, seed=0)
        if plan.kind == "image-only":
            assert all(s.has_image and not s.has_text for s in kept)
        else:
            assert all(s.has_text and not s.has_image for s in kept)


@pytest.mark.parametrize("p", [0.8, 0.7, 0.6])
def test_hybrid_clients_hold_each_modality_with_probability_p(p):
    plans = modality_plans("hybrid", 4000, 0.0, 0.5, p, seed=1)
    assert not any(plan.kind == "question-only" for plan in plans)  # neither -> one of the two at random
    has_image = sum(plan.image for plan in plans) / len(plans)
    expected = p + (1 - p) ** 2 / 2  # FedMLLM's generator: a client that draws neither gets a coin flip
    assert abs(has_image - expected) < 0.03
    both = sum(plan.kind == "multimodal" for plan in plans) / len(plans)
    assert abs(both - p * p) < 0.03


def test_domain_shift_gives_each_client_one_domain_round_robin():
    parts = _parts(_pool(), "domain")
    domains = [{s.domain for s in part} for part in parts]
    assert all(len(d) == 1 for d in domains)
    assert [d.pop() for d in domains] == [DOMAINS[i % len(DOMAINS)] for i in range(N)]


def test_domain_shift_refuses_data_with_one_domain():
    pool = [Sample(**{**s.__dict__, "domain": "default"}) for s in _pool(100)]
    with pytest.raises(ValueError, match="at least 2 visual domains"):
        _parts(pool, "domain")


def test_quantity_skew_sizes_differ_and_use_every_sample():
    sizes = quantity_sizes(3000, N, 1.0, seed=0)
    assert sum(sizes) == 3000 and min(sizes) >= 2 and max(sizes) / min(sizes) > 5
    parts = _parts(_pool(), "quantity", alpha=1.0)
    assert [len(p) for p in parts] == sizes
    assert _label_skew(parts) < _label_skew(_parts(_pool(), "dirichlet", alpha=0.5))


def test_quantity_skew_needs_two_samples_per_client():
    with pytest.raises(ValueError, match="at least 20 samples"):
        quantity_sizes(15, N, 1.0, seed=0)


@pytest.mark.parametrize("scheme, modality", [("dirichlet", "missing"), ("dirichlet", "hybrid"),
                                              ("dirichlet", "cross"), ("quantity", "full"), ("domain", "full")])
def test_scenarios_are_deterministic_in_the_seed(scheme, modality):
    pool = _with_image(_pool(600))

    def run(seed: int) -> list[list[tuple[str, bool, bool]]]:
        plans = modality_plans(modality, N, 0.4, 0.3, 0.6, seed)
        return [[(s.id, s.has_image, s.has_text) for s in apply_modalities(part, plan, seed)]
                for part, plan in zip(_parts(pool, scheme, seed=seed), plans)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_missing_drops_follow_the_sample_not_the_client():
    pool = _with_image(_pool(200))
    plan = ClientModalities(drop_rate=0.5)
    alone = {s.id: (s.has_image, s.has_text) for s in apply_modalities(pool[:50], plan, seed=2)}
    together = {s.id: (s.has_image, s.has_text) for s in apply_modalities(pool, plan, seed=2)}
    assert all(together[k] == v for k, v in alone.items())


def test_client_data_applies_the_scenario_to_its_partition(tmp_path):
    write_split(shapes_vqa.generate(200, seed=5, prefix="train"), tmp_path, "train")
    cfg = load_config("default", ["scenario=cross_i5t5", f"data.path={tmp_path}", "data.train_size=200"])
    seen, kinds = set(), Counter()
    for pid in range(N):
        train, test = client_data(cfg, tmp_path, pid, N)
        mine = train + test
        assert not {s.id for s in train} & {s.id for s in test}
        assert not seen & {s.id for s in mine}
        seen |= {s.id for s in mine}
        kinds[(all(s.has_image for s in mine), all(s.has_text for s in mine))] += 1
    assert len(seen) == 200
    assert kinds == {(True, False): 5, (False, True): 5}


def test_a_partition_is_computed_once_per_machine_and_read_back(tmp_path, monkeypatch):
    """The process that prepares a run stores its partition under ``$ANTHER_HOME/partitions``; a
    server or client process reads it without importing flwr-datasets; a damaged file is computed
    again and rewritten, never trusted."""
    import json
    import subprocess
    import sys

    monkeypatch.setenv("ANTHER_HOME", str(tmp_path))
    pool = _pool(400)
    args = (tuple(s.answer for s in pool), tuple(s.domain for s in pool), 4, "dirichlet", 0.5, 7)
    first = partition_indices.__wrapped__(*args)
    (stored,) = (tmp_path / "partitions").glob("*.txt")
    assert [tuple(int(i) for i in line.split()) for line in stored.read_text().split("\n")] == list(first)
    reader = ("import sys, json; from anther.data.scenarios import partition_indices as p; "
              "a = json.loads(sys.stdin.read()); "
              "print(json.dumps([p(tuple(a[0]), tuple(a[1]), *a[2:]), 'flwr_datasets' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", reader], input=json.dumps(args), capture_output=True, text=True,
                         check=True, timeout=120).stdout
    parts, imported = json.loads(out)
    assert [tuple(p) for p in parts] == list(first) and imported is False

    good = stored.read_text()
    for damaged in ("0 0\n1\n2\n3", "0\n1\n2", "0 1\n2\n3\n9999", "not numbers"):  # twice, short, out of range
        stored.write_text(damaged)
        assert partition_indices.__wrapped__(*args) == first and stored.read_text() == good
