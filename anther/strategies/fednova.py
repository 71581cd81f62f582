"""FedNova (Wang et al., 2020): normalised averaging for clients that take different numbers of steps.

When client i takes ``tau_i`` local steps, FedAvg weighs the clients that took more steps
more than their data warrants (their updates are longer), and the global model drifts
towards their objectives. FedNova divides each update by how much the local optimiser
accumulated, then rescales the average by the clients' mean accumulation:

    d_i = (x - y_i) / a_i,      tau_eff = sum_i p_i a_i,      x <- x - tau_eff * sum_i p_i d_i

with ``p_i = num-examples / total``. For SGD, ``x - y_i = sum_s w_s g_s``: every local
gradient ``g_s`` enters the update with a weight ``w_s`` set by the learning rates and
momentum; ``a_i = sum_s w_s`` (``tau_i * lr`` for plain SGD at a constant rate; the paper's
``[tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) * lr`` with momentum ``rho``). The client
computes it from the rates its schedule set and its optimiser's momentum, dampening and
Nesterov setting, and sends it as the ConfigRecord ``fednova``. Adaptive optimisers (Adam,
AdamW) have no such weights, so FedNova needs ``train.optimizer=sgd`` (with or without momentum).

With ``local_epochs`` set, the server asks every client for that many passes over its data
(the round-config key ``local-epochs``), so clients with more data take more steps: the
setting FedNova was made for. Without it every client takes ``train.local_steps`` and, at equal
learning rates, FedNova is FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from omegaconf import Container, DictConfig, OmegaConf

from anther.client.api import ExtraContext, Record, after_training, optimiser_class
from anther.core import protocol
from anther.strategies.array_utils import NDArray, metric_value
from anther.strategies.merging_fedavg import MergingFedAvg

FEDNOVA = "fednova"  # round-config key (asks for a_i) and the reply's ConfigRecord holding it
ACCUMULATED = "a"  # a_i, in that record


# ---------------------------------------------------------------- client half


def sgd_weight_sum(lrs: Sequence[float], momentum: float = 0.0, dampening: float = 0.0,
                   nesterov: bool = False) -> float:
    """``a = sum_s w_s``: the total weight PyTorch's SGD puts on the local gradients when it steps at
    the learning rates ``lrs``. Its momentum buffer is ``b_0 = g_0``, ``b_t = rho b_{t-1} + (1 -
    dampening) g_t``; a step moves ``lr_t * b_t`` (Nesterov: ``lr_t * (g_t + rho b_t)``). The sum of the
    gradients' weights in ``b_t`` follows the same recursion, which is all this needs."""
    if momentum == 0:
        return float(sum(lrs))
    total, buffer = 0.0, 0.0
    for t, lr in enumerate(lrs):
        buffer = 1.0 if t == 0 else momentum * buffer + (1.0 - dampening)
        total += lr * (1.0 + momentum * buffer if nesterov else buffer)
    return total


@after_training(FEDNOVA)
def accumulated(ctx: ExtraContext) -> Mapping[str, Record]:
    """a_i from this round's learning rates and the optimiser's momentum."""
    report = ctx.report
    if report is None or report.optimiser != "SGD":
        raise ValueError(f"FedNova needs train.optimizer=sgd; this client trained with "
                         f"{None if report is None else report.optimiser}")
    h = report.hyperparameters
    a = sgd_weight_sum(report.lrs, float(h.get("momentum", 0.0)), float(h.get("dampening", 0.0)),
                       bool(h.get("nesterov", False)))
    return {FEDNOVA: ConfigRecord({ACCUMULATED: a})}


# ---------------------------------------------------------------- server half


class FedNova(MergingFedAvg):
    """FedNova's server: normalised updates, rescaled by the clients' mean accumulation.

    Parameters
    ----------
    local_epochs:
        When set, every client trains that many passes over its own data this round
        (``ceil(local_epochs * samples / train.batch_size)`` steps) instead of ``train.local_steps``.
    **fedavg_kwargs:
        Passed to Flower's ``FedAvg`` (``weighted_by_key`` gives ``p_i``).
    """

    validate_replies = False  # replies carry the ConfigRecord ``fednova`` as well

    def __init__(self, local_epochs: float | None = None, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        if local_epochs is not None and local_epochs <= 0:
            raise ValueError(f"local_epochs must be > 0 (or null), got {local_epochs}")
        self.local_epochs = local_epochs

    def check_experiment(self, cfg: DictConfig) -> str | None:
        """Why ``cfg`` cannot run this FedNova, or None: its clients must train with SGD, and a number
        of local epochs cannot go with sample-level DP (calibrated for ``train.local_steps``)."""
        spec = OmegaConf.to_container(cfg.train.optimizer) if isinstance(cfg.train.optimizer, Container) \
            else cfg.train.optimizer
        if not issubclass(optimiser_class(spec)[0], torch.optim.SGD):
            return f"FedNova needs train.optimizer=sgd (with or without momentum), not {spec}"
        if self.local_epochs is not None and cfg.privacy.dp:
            return "FedNova's local_epochs cannot go with privacy.dp, which is calibrated for train.local_steps"
        return None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[FEDNOVA] = True
        if self.local_epochs is not None:
            config[protocol.LOCAL_EPOCHS] = float(self.local_epochs)
        return super().configure_train(server_round, arrays, config, grid)

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        weights = np.array([metric_value(m.content, self.weighted_by_key) for m in replies], dtype=np.float64)
        p = weights / weights.sum()
        a = np.array([_accumulated(m) for m in replies])
        x = self.current_arrays
        tau_eff = float(p @ a)
        return {name: x[name] - tau_eff * sum(p_i * (x[name] - c[name]) / a_i for p_i, a_i, c in zip(p, a, clients))
                for name in x}


def _accumulated(reply: Message) -> float:
    record = reply.content.config_records.get(FEDNOVA)
    a = None if record is None else record.get(ACCUMULATED)
    if not isinstance(a, (int, float)) or not np.isfinite(a) or a <= 0:
        raise InconsistentMessageReplies(reason=f"a reply carries no positive, finite FedNova a_i ({a!r})")
    return float(a)
