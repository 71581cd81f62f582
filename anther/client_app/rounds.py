"""The ClientApp's ``train`` and ``evaluate``: load the global adapters into this node's runtime,
train or score them on its own data, and reply with what its privacy policy lets leave.

Imported by :mod:`anther.client_app` when a train or evaluate message first arrives (it brings
PyTorch, transformers and the model code; a ``query`` needs none of it).
"""

from __future__ import annotations

import math
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from omegaconf import DictConfig

from anther.client.dp import spend
from anther.client.extras import (
    ExtraContext,
    add_reply_records,
    build_hooks,
    evaluation_view,
    import_client_modules,
)
from anther.client.local_training import LocalTraining
from anther.client.privacy_policy import SitePolicy, declined_reply
from anther.client.runtime import ClientRuntime, runtime_for
from anther.client.state_store import folder_for, restore_state, save_state
from anther.client.training_round import dp_for, own_split_metrics, round_seed, train_round
from anther.client_app.node import experiment, local_data, partition
from anther.core import protocol
from anther.core.sample import Sample
from anther.strategies.hetero_rank import adapter_ranks
from anther.strategies.registry import client_modules


def _rank(config: ConfigRecord, context: Context) -> int | None:
    """The adapter rank to build: the one the strategy sent this node (``hetero_rank`` sends each
    node its own), else the node config's, else None (the experiment's ``adapter.rank``)."""
    rank = config.get(protocol.ADAPTER_RANK, context.node_config.get(protocol.ADAPTER_RANK))
    return None if rank is None else int(rank)


def _load(msg: Message, context: Context) -> tuple[DictConfig, ClientRuntime, dict[str, torch.Tensor]]:
    """The experiment, the runtime at this node's rank, and the global adapters loaded into it."""
    cfg = experiment(msg)
    import_client_modules(client_modules(cfg.strategy))
    runtime = runtime_for(
        cfg, rank=_rank(msg.content[protocol.CONFIG], context), node_config=context.node_config
    )
    received = msg.content[protocol.ARRAYS].to_torch_state_dict()
    own = runtime.edge.rank
    sent = adapter_ranks(received)
    if any(r != own for r in sent.values()):
        raise ValueError(f"this node trains rank-{own} adapters but the server sent ranks {sent}; "
                         "clients of different ranks need strategy.name=hetero_rank")
    runtime.edge.load_adapter_state(received)
    return cfg, runtime, received


def _strategy_records(msg: Message) -> dict[str, ArrayRecord | ConfigRecord]:
    """The records a strategy put into the message besides the adapters and the round config."""
    return {name: record for name, record in msg.content.items()
            if name not in (protocol.ARRAYS, protocol.CONFIG) and isinstance(record, (ArrayRecord, ConfigRecord))}


def _local_steps(config: ConfigRecord, num_samples: int, batch_size: int) -> int | None:
    """The local steps the strategy asked this node for this round (a number of steps, or of passes
    over its ``num_samples``), if it did."""
    steps, epochs = config.get(protocol.LOCAL_STEPS), config.get(protocol.LOCAL_EPOCHS)
    if epochs is not None:
        if not float(epochs) > 0:
            raise ValueError(f"the round config asks for {protocol.LOCAL_EPOCHS}={epochs}; it must be > 0")
        steps = math.ceil(float(epochs) * num_samples / batch_size)
    if steps is not None and int(steps) < 1:
        raise ValueError(f"the round config asks for {protocol.LOCAL_STEPS}={steps}; it must be >= 1")
    return None if steps is None else int(steps)


def _modality_counts(samples: list[Sample]) -> dict[str, int]:
    """How many samples carried each modality (an image; a text context), for modality-aware
    aggregation. The question's tokens always pass NanoAdapter-T; they do not count as text."""
    return {protocol.NUM_IMAGE_EXAMPLES: sum(s.has_image for s in samples),
            protocol.NUM_TEXT_EXAMPLES: sum(s.has_text for s in samples)}


def _site_seed(config: ConfigRecord, context: Context, partition_id: int) -> str | None:
    """This round's seed for DP batches and noise when the node config sets ``dp-sampling-seed``
    (the site's own secret, mixed with the run, round and partition), else None (the OS's)."""
    seed = context.node_config.get(protocol.DP_SAMPLING_SEED)
    if seed is None:
        return None
    return f"{seed}/{config.get(protocol.RUN_KEY)}/{int(config[protocol.SERVER_ROUND])}/{partition_id}"


def train(msg: Message, context: Context) -> Message:
    """Local training of the global adapters on this node's train split; the reply carries the new
    adapters, example counts, loss and traffic, and whatever the round's strategy asked for."""
    cfg, runtime, received = _load(msg, context)
    config = msg.content[protocol.CONFIG]
    pid, _ = partition(context)
    kept = folder_for(config, context.node_config, pid)  # Context.state on disk, for a resumed run
    if kept is not None:
        restore_state(context.state, kept, int(config[protocol.SERVER_ROUND]) - 1)
    train_set, _ = local_data(cfg, context)
    seed = round_seed(cfg.seed, int(config[protocol.SERVER_ROUND]), pid)
    training = LocalTraining.from_config(cfg.train, _local_steps(config, len(train_set), cfg.train.batch_size))
    ctx = ExtraContext(config, cfg, runtime, train_set, received, context.state, seed, _strategy_records(msg),
                       training)
    dp = dp_for(cfg, len(train_set), cfg.federation.rounds * cfg.train.local_steps, _site_seed(config, context, pid))
    if dp is not None and training.steps != cfg.train.local_steps:
        raise ValueError(f"the strategy asks for {training.steps} local steps ({protocol.LOCAL_STEPS}) but "
                         f"sample-level DP is calibrated for train.local_steps={cfg.train.local_steps} a round")
    policy = SitePolicy.from_node_config(context.node_config)
    if why := policy.refusal(dp):
        return declined_reply(msg, protocol.REFUSED, why)
    if dp is not None and (why := policy.exhausted(context.state, cfg.privacy, dp, cfg.train.local_steps)):
        return declined_reply(msg, protocol.BUDGET_EXHAUSTED, why)
    began = time.perf_counter()
    report = train_round(cfg, runtime, train_set, seed, training.steps, hooks=build_hooks(ctx), dp=dp)
    train_seconds = time.perf_counter() - began
    ctx.report = report
    metrics = MetricRecord({
        protocol.NUM_EXAMPLES: len(train_set),
        **_modality_counts(train_set),
        protocol.ADAPTER_RANK: runtime.edge.rank,
        protocol.PARTITION_ID: pid,
        protocol.TRAIN_LOSS: report.loss,
        protocol.LOCAL_STEPS_TAKEN: report.steps,
        protocol.ACTIVATION_BYTES_UP: report.activation_bytes_up,
        protocol.ACTIVATION_BYTES_DOWN: report.activation_bytes_down,
    })
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord(runtime.edge.adapter_state()),
            protocol.METRICS: metrics,
            protocol.TIMING: ConfigRecord({protocol.TRAIN_SECONDS: train_seconds}),
        }
    )
    if dp is not None:  # the epsilon this node has spent in the run so far, and where its randomness came from
        metrics[protocol.DP_EPSILON] = spend(context.state, cfg.privacy, dp, report.steps)
        content[protocol.PRIVACY] = ConfigRecord({protocol.DP_RANDOMNESS: dp.randomness})
    add_reply_records(ctx, content)
    content[protocol.METRICS] = policy.outgoing(content[protocol.METRICS], under_dp=dp is not None)
    if kept is not None:
        save_state(context.state, kept, int(config[protocol.SERVER_ROUND]))
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """The global adapters scored on this node's own test split."""
    cfg, runtime, received = _load(msg, context)
    pid, _ = partition(context)
    config = msg.content[protocol.CONFIG]
    kept = folder_for(config, context.node_config, pid)
    if kept is not None:
        restore_state(context.state, kept, int(config[protocol.SERVER_ROUND]))
    _, test_set = local_data(cfg, context)
    ctx = ExtraContext(config, cfg, runtime, test_set, received, context.state, cfg.seed, _strategy_records(msg),
                       LocalTraining.from_config(cfg.train))
    with evaluation_view(ctx):
        metrics = own_split_metrics(cfg, runtime, test_set, pid)
    outgoing = SitePolicy.from_node_config(context.node_config).outgoing(MetricRecord(metrics), cfg.privacy.dp)
    return Message(RecordDict({protocol.METRICS: outgoing}), reply_to=msg)
