"""The Flower ClientApp: a NanoEdge site that trains and evaluates NanoAdapters.

Message handlers:

- ``query``: report this node's partition and capabilities (used to sample clients
  deterministically by partition id rather than by Flower's random node ids);
- ``train``: load the global adapters, run local split-learning steps, reply with the
  new adapters, example count and traffic;
- ``evaluate``: score the global adapters on this client's own test split.

The server sends the whole experiment config (YAML) with every message; the node's
own config (``partition-id``, ``num-partitions``, ``data-path``) says which data is local.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig, OmegaConf

from anther.client.inference import evaluate_samples
from anther.client.runtime import runtime_for
from anther.client.trainer import train_adapters
from anther.simulations.data import client_data

app = ClientApp()


def _experiment(msg: Message) -> DictConfig:
    return OmegaConf.create(str(msg.content["config"]["experiment"]))


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    return int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))


def _local_data(cfg: DictConfig, context: Context):
    """This node's (train, test): its own ``data-path`` if set, else its partition of the run's data."""
    own = context.node_config.get("data-path")
    pid, n = _partition(context)
    folder = Path(str(own)) if own else Path(cfg.data.path)
    return client_data(cfg, folder, 0 if own else pid, 1 if own else n)


@app.query()
def query(msg: Message, context: Context) -> Message:
    pid, n = _partition(context)
    info = ConfigRecord({"partition-id": pid, "num-partitions": n})
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = _experiment(msg)
    server_round = int(msg.content["config"]["server-round"])
    pid, _ = _partition(context)
    runtime = runtime_for(cfg)
    runtime.edge.load_adapter_state(msg.content["arrays"].to_torch_state_dict())
    train_set, _ = _local_data(cfg, context)
    seed = cfg.seed * 1_000_003 + server_round * 1009 + pid
    torch.manual_seed(seed)
    t = cfg.train
    report = train_adapters(runtime.encoder, runtime.backbone, train_set, t.local_steps, t.batch_size,
                            t.lr, seed, t.weight_decay, t.max_grad_norm)
    arrays = ArrayRecord(runtime.edge.adapter_state())
    metrics = MetricRecord({
        "num-examples": len(train_set),
        "partition-id": pid,
        "train_loss": report.loss,
        "activation_bytes_up": report.activation_bytes_up,
        "activation_bytes_down": report.activation_bytes_down,
    })
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = _experiment(msg)
    pid, _ = _partition(context)
    runtime = runtime_for(cfg)
    runtime.edge.load_adapter_state(msg.content["arrays"].to_torch_state_dict())
    _, test_set = _local_data(cfg, context)
    metrics = evaluate_samples(runtime.encoder, runtime.backbone, test_set, generate=False,
                               batch_size=cfg.eval.batch_size)
    metrics = {"num-examples": len(test_set), "partition-id": pid,
               **{k: v for k, v in metrics.items() if k != "num_examples"}}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
