"""The run's privacy layers around its strategy: SecAgg+ inside, client-level DP outside.

Order matters: client-level DP adds its noise to the aggregate, so it wraps secure
aggregation (the server noises the sum it is allowed to see). Server-side clipping needs
each client's update, which SecAgg+ hides, so only the client-side DP modes combine with it
(``anther.core.config`` refuses the rest).
"""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from anther.strategies.privacy.client_dp import with_client_dp
from anther.strategies.privacy.secagg_protocol import SecAggParams
from anther.strategies.privacy.secure_aggregation import SecAggPlusStrategy


def secagg_params(cfg: DictConfig) -> SecAggParams:
    s = cfg.privacy.secagg
    if s.unsafe_allow_two_clients:
        log(WARNING, "anther: privacy.secagg.unsafe_allow_two_clients=true: a round of two clients gives each "
                     "the other's update, and secure aggregation then hides nothing")
    return SecAggParams(float(s.num_shares), float(s.reconstruction_threshold), float(s.clipping_range),
                        int(s.quantization_range), int(s.modulus_range), float(cfg.federation.round_timeout_s),
                        min_clients=2 if s.unsafe_allow_two_clients else 3)


def with_privacy(strategy: Strategy, cfg: DictConfig) -> Strategy:
    """``strategy`` wrapped as ``cfg.privacy.secagg`` and ``cfg.privacy.client_level`` ask."""
    wrapped = strategy
    if cfg.privacy.secagg.enabled:
        wrapped = SecAggPlusStrategy(wrapped, secagg_params(cfg), float(cfg.privacy.secagg.max_weight))
    if cfg.privacy.client_level.mode != "off":
        wrapped = with_client_dp(wrapped, strategy, cfg.privacy, cfg.federation)
    return wrapped
