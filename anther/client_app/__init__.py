"""The Flower ClientApp: a NanoEdge site that trains and evaluates NanoAdapters.

Message handlers:

- ``query``: report this node's partition, how much it holds of its data (counts only; the
  run's partition table is built from these) and, when its node config sets one, its ``adapter-rank`` (the
  round loop samples clients by partition id and tells node-aware strategies, such as
  ``hetero_rank``, what it learnt);
- ``train``: load the global adapters, run local split-learning steps, reply with the new
  adapters, example counts (``num-examples``, ``num-image-examples``, ``num-text-examples``),
  ``adapter-rank``, loss and traffic, with ``privacy.dp`` the epsilon it has spent so far
  (``dp_epsilon``, from the opacus accountant kept in ``Context.state``), plus whatever the
  round's strategy asks for;
- ``evaluate``: score the global adapters on this client's own test split.

The server sends the whole experiment config (YAML) with every message; the node's own
config (``partition-id``, ``num-partitions``, ``data-path``, ``adapter-rank``, ``backbone-*``)
says which data is local, how big an adapter this node trains and how it reaches the
backbone. Every such key is defined in :mod:`anther.core.protocol`. What a strategy needs
beyond plain training (a proximal term, a Fisher, a personal adapter) it asks for with keys
in the round config, answered by the extras of its client modules (:mod:`anther.client.extras`).

In a deployment Flower starts a ClientApp process for every message, and every site answers a
``query`` at the start of every run. So this module imports only what a query needs (about a
second); ``train`` and ``evaluate`` import :mod:`anther.client_app.rounds`, with PyTorch,
transformers and the model code (about five more), when their message arrives.

This package and :mod:`anther.server_app` compose the layers; nothing imports them.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from anther.client_app.node import experiment, local_data, partition
from anther.core import protocol
from anther.data.partition_report import holdings
from anther.strategies.privacy.client_mods import privacy_mod

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """This node's partition id and how much it holds (sample counts and modality presence of the
    data it will train and evaluate on, nothing of their content: the run's table is built from
    these answers)."""
    pid, n = partition(context)
    train_set, test_set = local_data(experiment(msg), context)
    info = ConfigRecord({protocol.PARTITION_ID: pid, protocol.NUM_PARTITIONS: n,
                         protocol.HOLDINGS: json.dumps(holdings(train_set, test_set, own_data=protocol.DATA_PATH in
                                                                 context.node_config))})
    if protocol.ADAPTER_RANK in context.node_config:
        info[protocol.ADAPTER_RANK] = int(context.node_config[protocol.ADAPTER_RANK])
    return Message(RecordDict({protocol.INFO: info}), reply_to=msg)


@app.train(mods=[privacy_mod])  # client-side DP clipping and SecAgg+, when the run asks for them
def train(msg: Message, context: Context) -> Message:
    """Local training on this node's data (:func:`anther.client_app.rounds.train`)."""
    from anther.client_app import rounds

    return rounds.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global adapters scored on this node's test split (:func:`anther.client_app.rounds.evaluate`)."""
    from anther.client_app import rounds

    return rounds.evaluate(msg, context)
