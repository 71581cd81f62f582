"""SCAFFOLD (Karimireddy et al., 2020): control variates that correct each client's drift.

The server keeps a control variate ``c`` (one tensor per adapter weight, zeros at first) and
sends it with the adapters as the ArrayRecord ``scaffold-c``; each client keeps its own
``c_i`` in its node state. Every local step the client corrects its gradient,
``g <- g - c_i + c`` (a gradient hook), and after training it updates its variate by the
paper's option II,

    c_i+ = c_i - c + (x - y_i) / sum_t lr_t

(``K * lr`` for a constant learning rate; ``x`` the global adapters it was sent, ``y_i`` its
own after training) and sends ``delta_c_i = c_i+ - c_i`` as the ArrayRecord ``scaffold-dc``.
The server then takes

    x <- x + eta_g * (sum_i w_i y_i / sum_i w_i - x)        (w_i = num-examples, as FedAvg)
    c <- c + (|S| / N) * mean_i delta_c_i

with ``N`` the federation's nodes (their QUERY answers) and ``|S|`` those that replied.
The correction is exact for SGD (``train.optimizer=sgd``); with Adam or AdamW the hook
corrects the gradient the optimiser normalises, as most implementations do. The control
variate doubles the adapter bytes each way, and the run's traffic counts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies

from anther.client.api import ExtraContext, GradientHook, Record, after_training, gradient_hook
from anther.strategies.array_utils import (
    NDArray,
    array_record,
    metric_value,
    numpy_arrays,
    reply_arrays,
    weighted_mean,
)
from anther.strategies.merging_fedavg import MergingFedAvg
from anther.strategies.node_info import NodeInfo

SCAFFOLD = "scaffold"  # round-config key: asks clients to correct their gradients
SERVER_VARIATE = "scaffold-c"  # ArrayRecord sent with the adapters
VARIATE_DELTA = "scaffold-dc"  # ArrayRecord of a reply
CLIENT_VARIATE = "scaffold-ci"  # the client's own variate, in its node state


# ---------------------------------------------------------------- client half


@gradient_hook(SCAFFOLD)
def correct_drift(ctx: ExtraContext) -> GradientHook:
    """``g <- g + (c - c_i)`` on every trainable adapter weight, every step."""
    params, server, own = ctx.parameters(), ctx.array(SERVER_VARIATE), ctx.kept(CLIENT_VARIATE)
    correction = {name: (server[name] - own[name]).to(p) for name, p in params.items()}

    def hook() -> None:
        for name, p in params.items():
            if p.grad is None:  # a weight this batch did not reach still drifts by c - c_i
                p.grad = torch.zeros_like(p)
            p.grad.add_(correction[name])
    return hook


@after_training(SCAFFOLD)
def variate_update(ctx: ExtraContext) -> Mapping[str, Record]:
    """Option II: the new c_i from how far the adapters moved; keep it, send its change."""
    if ctx.report is None or not ctx.report.lrs:
        raise ValueError("SCAFFOLD's variate update needs the round's local training report")
    step_sum = float(sum(ctx.report.lrs))
    server, own = ctx.array(SERVER_VARIATE), ctx.kept(CLIENT_VARIATE)
    new = {name: own[name] - server[name] + (ctx.received[name] - p.detach().cpu()) / step_sum
           for name, p in ctx.parameters().items()}
    ctx.state[CLIENT_VARIATE] = ArrayRecord(new)
    return {VARIATE_DELTA: ArrayRecord({name: new[name] - own[name] for name in new})}


# ---------------------------------------------------------------- server half


class Scaffold(MergingFedAvg):
    """SCAFFOLD's server: FedAvg with a server step and the server control variate.

    Parameters
    ----------
    server_learning_rate:
        ``eta_g``; 1.0 (the paper's default) makes the adapters' update FedAvg's.
    **fedavg_kwargs:
        Passed to Flower's ``FedAvg``.
    """

    validate_replies = False  # replies carry two ArrayRecords: the adapters and delta_c

    def __init__(self, server_learning_rate: float = 1.0, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        if server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be > 0, got {server_learning_rate}")
        self.server_learning_rate = server_learning_rate
        self.variate: dict[str, NDArray] | None = None  # c; zeros once the adapters' shapes are known
        self.num_nodes: int | None = None

    def set_node_info(self, info: NodeInfo) -> None:
        self.num_nodes = len(info)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[SCAFFOLD] = True
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.variate is None:
            self.variate = {name: np.zeros_like(value) for name, value in self.current_arrays.items()}
        for message in messages:
            message.content[SERVER_VARIATE] = array_record(self.variate)
        return messages

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        weights = [metric_value(m.content, self.weighted_by_key) for m in replies]
        deltas = [numpy_arrays(reply_arrays(m.content, VARIATE_DELTA)) for m in replies]
        for d in deltas:
            if {n: v.shape for n, v in d.items()} != {n: v.shape for n, v in self.variate.items()}:
                raise InconsistentMessageReplies(reason=f"a reply's {VARIATE_DELTA} does not match the adapters' "
                                                        "names and shapes")
        share = len(replies) / max(self.num_nodes or len(replies), len(replies))
        self.variate = {name: c + share * np.mean([d[name] for d in deltas], axis=0).astype(c.dtype)
                        for name, c in self.variate.items()}
        x = self.current_arrays
        return {name: x[name] + self.server_learning_rate * (weighted_mean([c[name] for c in clients], weights)
                                                             - x[name])
                for name in x}
