"""One client's round of local training and its own-split evaluation, as the ClientApp and the
baselines (:mod:`anther.simulations.baselines`) both run them.

Sharing them is what makes the baselines comparable: a local-only client's round ``r`` is the
round ``r`` a federated client would run from the same adapters (same seed, optimiser, batch
size, clipping and DP-SGD), and every client scores itself the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig

from anther.client.dp import DPSGD, dpsgd_for
from anther.client.inference import evaluate_samples
from anther.client.local_training import LocalTraining
from anther.client.runtime import ClientRuntime
from anther.client.trainer import GradientHook, TrainReport, train_adapters
from anther.core import protocol
from anther.core.sample import Sample


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of a client's local training in a round: distinct per round and per client."""
    return seed * 1_000_003 + server_round * 1009 + partition_id


def dp_for(cfg: DictConfig, num_samples: int, total_steps: int, site_seed: str | None = None) -> DPSGD | None:
    """DP-SGD settings for a trainer that will take ``total_steps`` steps over ``num_samples``
    samples in the whole run (None without ``privacy.dp``); batches and noise from the OS, or
    from ``site_seed`` (the site's own, for this round: :func:`anther.client.dp.dpsgd_for`)."""
    if not cfg.privacy.dp:
        return None
    return dpsgd_for(cfg.privacy, num_samples, cfg.train.batch_size, total_steps, site_seed)


def train_round(cfg: DictConfig, runtime: ClientRuntime, samples: list[Sample], seed: int,
                steps: int | None = None, hooks: Sequence[GradientHook] = (),
                dp: DPSGD | None = None) -> TrainReport:
    """``steps`` (default ``train.local_steps``) steps of the experiment's local training on the
    adapters loaded in ``runtime``, with the strategy's gradient ``hooks``."""
    torch.manual_seed(seed)
    return train_adapters(runtime.encoder, runtime.backbone, samples, LocalTraining.from_config(cfg.train, steps),
                          seed, hooks=hooks, dp=dp)


def own_split_metrics(cfg: DictConfig, runtime: ClientRuntime, test_set: list[Sample],
                      partition_id: int) -> dict[str, float]:
    """A client's score of the adapters loaded in ``runtime`` on its own test split (multiple
    choice only), keyed as the ClientApp replies it."""
    metrics = evaluate_samples(runtime.encoder, runtime.backbone, test_set, generate=False,
                               batch_size=cfg.eval.batch_size)
    return {protocol.NUM_EXAMPLES: len(test_set), protocol.PARTITION_ID: partition_id,
            **{k: v for k, v in metrics.items() if k != "num_examples"}}
