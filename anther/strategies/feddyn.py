"""FedDyn (Acar et al., 2021): a dynamic regulariser that aligns the clients' and the global optimum.

Client k minimises, in round t,

    L_k(theta) - <g_k, theta> + (alpha / 2) * ||theta - theta^{t-1}||^2

where ``g_k`` (zeros at first) is kept in its node state and, after training to
``theta_k^t``, updated as ``g_k <- g_k - alpha * (theta_k^t - theta^{t-1})``. The linear and
quadratic terms are a gradient hook: ``grad += -g_k + alpha * (theta - theta^{t-1})`` each step.
Only ``feddyn-alpha`` travels (in the round config); nothing beyond the adapters is sent.

The server keeps ``h`` (zeros at first) and, with ``P`` the clients that replied and ``N`` the
federation's nodes,

    h <- h - alpha * (1 / N) * sum_{k in P} (theta_k^t - theta^{t-1})
    theta^t = mean_{k in P} theta_k^t - h / alpha

(an unweighted mean, as in the paper).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from anther.client.api import ExtraContext, GradientHook, Record, after_training, gradient_hook
from anther.strategies.array_utils import NDArray
from anther.strategies.merging_fedavg import MergingFedAvg
from anther.strategies.node_info import NodeInfo

ALPHA = "feddyn-alpha"  # round-config key: asks clients for FedDyn's terms, with this alpha
CLIENT_GRADIENT = "feddyn-grad"  # g_k, in the client's node state


# ---------------------------------------------------------------- client half


@gradient_hook(ALPHA)
def dynamic_regulariser(ctx: ExtraContext) -> GradientHook:
    """Adds the gradient of ``-<g_k, theta> + (alpha/2)||theta - theta_global||^2``."""
    alpha, params, own = float(ctx.config[ALPHA]), ctx.parameters(), ctx.kept(CLIENT_GRADIENT)
    anchor = {name: ctx.received[name].to(p) for name, p in params.items()}
    linear = {name: own[name].to(p) for name, p in params.items()}

    def hook() -> None:
        for name, p in params.items():
            term = alpha * (p.detach() - anchor[name]) - linear[name]
            p.grad = term if p.grad is None else p.grad.add_(term)
    return hook


@after_training(ALPHA)
def gradient_update(ctx: ExtraContext) -> Mapping[str, Record]:
    """``g_k <- g_k - alpha * (theta_k - theta_global)``, kept on the node; nothing to send."""
    alpha, own = float(ctx.config[ALPHA]), ctx.kept(CLIENT_GRADIENT)
    ctx.state[CLIENT_GRADIENT] = ArrayRecord({
        name: own[name] - alpha * (p.detach().cpu() - ctx.received[name]) for name, p in ctx.parameters().items()})
    return {}


# ---------------------------------------------------------------- server half


class FedDyn(MergingFedAvg):
    """FedDyn's server: the mean of the replies corrected by the accumulated drift ``h``.

    Parameters
    ----------
    alpha:
        The regulariser's weight (the paper tries 0.1 to 0.001 and uses 0.01 most).
    **fedavg_kwargs:
        Passed to Flower's ``FedAvg`` (its weighting is not used: FedDyn's mean is unweighted).
    """

    def __init__(self, alpha: float = 0.01, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.drift: dict[str, NDArray] | None = None  # h
        self.num_nodes: int | None = None

    def set_node_info(self, info: NodeInfo) -> None:
        self.num_nodes = len(info)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[ALPHA] = self.alpha
        return super().configure_train(server_round, arrays, config, grid)

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        x = self.current_arrays
        if self.drift is None:
            self.drift = {name: np.zeros(value.shape, dtype=np.float64) for name, value in x.items()}
        nodes = max(self.num_nodes or len(clients), len(clients))
        merged = {}
        for name, previous in x.items():
            stacked = np.stack([np.asarray(c[name], dtype=np.float64) for c in clients])
            self.drift[name] = self.drift[name] - self.alpha * (stacked - previous).sum(axis=0) / nodes
            merged[name] = stacked.mean(axis=0) - self.drift[name] / self.alpha
        return merged
