"""Client-level DP: Flower's DP strategy wrappers around a weighted-mean anther strategy, accounted.

``privacy.client_level.mode`` picks one of Flower's Message-API wrappers
(``flwr.serverapp.strategy``): ``server_fixed`` / ``server_adaptive`` clip each client's update
(reply minus the global adapters sent) on the server, ``client_fixed`` / ``client_adaptive``
have the clients clip with Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``
(installed by :mod:`anther.strategies.privacy.client_mods`). All four add Gaussian noise of std
``z * C / m`` to the aggregate (``z`` the noise multiplier, ``C`` the clipping norm, ``m`` the
clients sampled per round), which is DP-FedAvg (McMahan et al. 2018; adaptive clipping:
Andrew et al. 2021).

:class:`AccountedClientDP` sits outside Flower's wrapper and keeps an opacus RDP accountant:
one Gaussian release per round at sample rate ``m / num_clients``. The noise multiplier it
accounts is the configured ``z`` scaled by how much the most influential client can move the
mean: Flower's std assumes a client moves it by ``C / m``, which holds for equal weights; with
FedAvg's sample-count weights client k moves it by ``(w_k / sum w) C``, so the round's
effective multiplier is ``z / (m * max_k w_k / sum w)`` (the minimum over the weight groups of
a per-modality mean). Under adaptive clipping the configured ``z`` is already the multiplier of
the whole mechanism: Flower splits it between the update noise and the clipped-count noise
(Andrew et al., Theorem 1). Each round's spent epsilon is ``dp_client_epsilon`` in the
aggregated train metrics (the round loop copies it into result.json and the round table).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore import log
from omegaconf import DictConfig

from anther.core.config import CLIENT_LEVEL_MODES, sampled_per_round
from anther.strategies.array_utils import metric_value
from anther.strategies.weighted_mean import describe, is_weighted_mean, weight_keys

CLIENT_EPSILON_METRIC = "dp_client_epsilon"


def flower_dp_wrapper(strategy: Strategy, cl: DictConfig, num_sampled: int) -> Strategy:
    """Flower's DP wrapper for ``privacy.client_level.mode`` around ``strategy``."""
    z = float(cl.noise_multiplier)
    if cl.mode == "server_fixed":
        return DifferentialPrivacyServerSideFixedClipping(strategy, z, float(cl.clipping_norm), num_sampled)
    if cl.mode == "client_fixed":
        return DifferentialPrivacyClientSideFixedClipping(strategy, z, float(cl.clipping_norm), num_sampled)
    adaptive = {"initial_clipping_norm": float(cl.clipping_norm),
                "target_clipped_quantile": float(cl.target_clipped_quantile),
                "clip_norm_lr": float(cl.clip_norm_lr), "clipped_count_stddev": cl.clipped_count_stddev}
    if cl.mode == "server_adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(strategy, z, num_sampled, **adaptive)
    if cl.mode == "client_adaptive":
        return DifferentialPrivacyClientSideAdaptiveClipping(strategy, z, num_sampled, **adaptive)
    raise ValueError(f"privacy.client_level.mode={cl.mode!r} is not one of {', '.join(CLIENT_LEVEL_MODES)}")


def largest_share(replies: list[Message], keys: Iterable[str]) -> float:
    """The largest weight share ``w_k / sum w`` any replying client has in any of the means."""
    share = 0.0
    for key in set(keys):
        weights = [metric_value(r.content, key) for r in replies]
        if sum(weights) > 0:
            share = max(share, max(weights) / sum(weights))
    return share


def effective_noise_multiplier(noise_multiplier: float, num_sampled: int, share: float) -> float:
    """The multiplier relative to the most influential client's sensitivity ``share * C``,
    for noise of std ``noise_multiplier * C / num_sampled``."""
    return noise_multiplier / (num_sampled * share) if share > 0 else noise_multiplier


class AccountedClientDP(Strategy):
    """A Flower DP wrapper plus an RDP accountant; ``weights_of`` is the weighted-mean strategy
    inside it (which says which metric weighs each parameter)."""

    def __init__(self, dp: Strategy, weights_of: Strategy, noise_multiplier: float, num_sampled: int,
                 num_clients: int, delta: float) -> None:
        super().__init__()
        self.dp, self.weights_of = dp, weights_of
        self.noise_multiplier, self.num_sampled, self.delta = noise_multiplier, num_sampled, delta
        self.sample_rate = min(1.0, num_sampled / num_clients)
        from opacus.accountants import RDPAccountant  # here: opacus costs every ServerApp seconds to import

        self.accountant = RDPAccountant()
        self._sent_names: list[str] = []

    @property
    def strategy(self) -> Strategy:
        """The wrapped strategy (Flower's DP wrapper), as wrappers name it (``.strategy``)."""
        return self.dp

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent_names = list(arrays.keys())
        return self.dp.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [r for r in replies if not r.has_error()]
        for reply in valid:
            self._check_only_adapters(reply)
        share = largest_share(valid, weight_keys(self.weights_of, self._sent_names).values()) if valid else 0.0
        try:
            arrays, metrics = self.dp.aggregate_train(server_round, replies)
        except ZeroDivisionError as err:  # flwr 1.41 clips by C / ||update|| with no zero guard
            raise AggregationError(reason=f"client-level DP: a client's update is exactly zero and "
                                          f"Flower's clipping divides by its norm ({err})") from err
        if arrays is None:
            return None, metrics
        z = effective_noise_multiplier(self.noise_multiplier, self.num_sampled, share)
        self.accountant.step(noise_multiplier=z, sample_rate=self.sample_rate)
        epsilon = float(self.accountant.get_epsilon(delta=self.delta))
        log(INFO, "client-level DP: round %s noise multiplier %.3f, epsilon %.3f (delta %g)",
            server_round, z, epsilon, self.delta)
        metrics = MetricRecord(dict(metrics or {}))
        metrics[CLIENT_EPSILON_METRIC] = epsilon
        return arrays, metrics

    def _check_only_adapters(self, reply: Message) -> None:
        """The wrappers clip and noise one ArrayRecord: anything else a client sent would reach
        the server without noise. (Under SecAgg+ a reply carries no ArrayRecord at all.)"""
        records = reply.content.array_records
        if len(records) > 1 or any(list(r.keys()) != self._sent_names for r in records.values()):
            raise ValueError(
                f"client-level DP: node {reply.metadata.src_node_id} replied with array records "
                f"{ {k: list(v.keys())[:4] for k, v in records.items()} }, not just the adapters "
                f"{self._sent_names[:4]}...: those would reach the server without DP noise; "
                "use a strategy whose clients send only their adapters")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.dp.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.dp.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.dp.summary()


def with_client_dp(strategy: Strategy, weights_of: Strategy, privacy: DictConfig,
                   federation: DictConfig) -> Strategy:
    """``strategy`` (``weights_of``, possibly under secure aggregation) inside the configured
    Flower DP wrapper and the accountant."""
    if not is_weighted_mean(weights_of):
        raise ValueError(
            f"privacy.client_level.mode={privacy.client_level.mode} needs a strategy that aggregates "
            f"by a weighted mean (fedavg, fedprox, fedavgm, fedadam, fedadagrad, fedyogi, modality_aware, "
            f"adaptive_reg, personalised); {describe(weights_of)} does not (its noise would not be "
            "calibrated, or its clients send data-dependent extras such as a Fisher without noise)")
    m = sampled_per_round(federation)
    dp = flower_dp_wrapper(strategy, privacy.client_level, m)
    return AccountedClientDP(dp, weights_of, float(privacy.client_level.noise_multiplier), m,
                             int(federation.num_clients), float(privacy.delta))
