"""A site's own privacy policy: what its client will do, whatever the server asks.

The server sends the whole experiment config with every message, ``privacy`` included, so
without a policy a client would train with as little noise, clip as loosely and spend as much
epsilon as the server likes. A hospital sets its floor in its SuperNode's node config:

    flower-supernode ... --node-config 'dp-min-noise-multiplier=1.0 dp-max-grad-norm=1.0
                                        dp-max-epsilon=8.0 dp-policy-delta=1e-5'

- ``dp-min-noise-multiplier``, ``dp-max-grad-norm``: a round whose DP-SGD has less noise or a
  looser clip is refused; so is a round without ``privacy.dp`` once any DP key is set.
- ``dp-max-epsilon`` (at ``dp-policy-delta``, default 1e-5): before training, the client
  computes the epsilon it would have spent after this round (its accountant's history plus the
  round's steps); above the budget it does not train and answers "budget exhausted". The
  server records that and stops sampling it; the run goes on without it.
- ``dp-unnoised-metrics`` (default false): under DP, a client sends no value computed from its
  data without noise (train loss, its own-split evaluation, an extra's metrics); only sample
  counts, sizes and its spent epsilon. ``true`` lets them leave.

A refused or budget-exhausted round is answered with a ``declined`` record saying which and
why (:func:`declined_reply`), never with an error: the client is fine, it said no.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from omegaconf import DictConfig

from anther.client.dp import DPSGD, epsilon_after
from anther.core import protocol

# what a DP client may send unnoised: counts and sizes (public in the DP accounting, as the
# weights of a weighted mean are), its rank and partition, the traffic, and its spent epsilon
PUBLIC_METRICS = frozenset({protocol.NUM_EXAMPLES, protocol.NUM_IMAGE_EXAMPLES, protocol.NUM_TEXT_EXAMPLES,
                            protocol.ADAPTER_RANK, protocol.PARTITION_ID, protocol.ACTIVATION_BYTES_UP,
                            protocol.ACTIVATION_BYTES_DOWN, protocol.DP_EPSILON})
_KEYS = {protocol.DP_MIN_NOISE: float, protocol.DP_MAX_GRAD_NORM: float, protocol.DP_MAX_EPSILON: float,
         protocol.DP_POLICY_DELTA: float, protocol.DP_UNNOISED_METRICS: bool}


def _value(node_config: Mapping[str, Any], key: str) -> Any:
    raw = node_config[key]
    kind = _KEYS[key]
    if kind is bool:
        if isinstance(raw, bool) or str(raw).lower() in ("true", "false"):
            return raw if isinstance(raw, bool) else str(raw).lower() == "true"
        raise ValueError(f"node config {key}={raw!r} must be true or false")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"node config {key}={raw!r} must be a number") from None
    if not value > 0 or (key == protocol.DP_POLICY_DELTA and value >= 1):
        raise ValueError(f"node config {key}={raw!r} must be " + ("in (0, 1)" if key == protocol.DP_POLICY_DELTA
                                                                     else "> 0"))
    return value


@dataclass(frozen=True)
class SitePolicy:
    """The limits a site's node config sets; None where it sets none."""

    min_noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    max_epsilon: float | None = None
    delta: float = 1e-5
    unnoised_metrics: bool = False

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SitePolicy:
        """The policy a SuperNode's ``--node-config`` sets; a malformed value is a ValueError naming its key."""
        got = {key: _value(node_config, key) for key in _KEYS if key in node_config}
        return cls(got.get(protocol.DP_MIN_NOISE), got.get(protocol.DP_MAX_GRAD_NORM),
                   got.get(protocol.DP_MAX_EPSILON), got.get(protocol.DP_POLICY_DELTA, 1e-5),
                   got.get(protocol.DP_UNNOISED_METRICS, False))

    @property
    def requires_dp(self) -> bool:
        return any(v is not None for v in (self.min_noise_multiplier, self.max_grad_norm, self.max_epsilon))

    def refusal(self, dp: DPSGD | None) -> str | None:
        """Why this site will not train a round with ``dp`` (None: it will)."""
        if not self.requires_dp:
            return None
        if dp is None:
            return "this site trains only with sample-level DP (privacy.dp=true): its node config sets a DP policy"
        if self.min_noise_multiplier is not None and dp.noise_multiplier < self.min_noise_multiplier:
            return (f"noise multiplier {dp.noise_multiplier:.4g} is below this site's minimum "
                    f"{self.min_noise_multiplier:g} (dp-min-noise-multiplier)")
        if self.max_grad_norm is not None and dp.max_grad_norm > self.max_grad_norm:
            return (f"clipping norm {dp.max_grad_norm:g} is above this site's maximum {self.max_grad_norm:g} "
                    "(dp-max-grad-norm)")
        return None

    def exhausted(self, state: RecordDict, privacy: DictConfig, dp: DPSGD, steps: int) -> str | None:
        """Why training ``steps`` more steps would overspend this site's budget (None: it would not)."""
        if self.max_epsilon is None:
            return None
        eps = epsilon_after(state, privacy.accountant, dp, steps, self.delta)
        if eps <= self.max_epsilon:
            return None
        return (f"this round would bring its epsilon to {eps:.4g} at delta {self.delta:g}, above this site's "
                f"budget {self.max_epsilon:g} (dp-max-epsilon)")

    def outgoing(self, metrics: MetricRecord, under_dp: bool) -> MetricRecord:
        """``metrics`` as they may leave: all without DP or when the site allows it, else only the public ones."""
        if not under_dp or self.unnoised_metrics:
            return metrics
        return MetricRecord({k: v for k, v in metrics.items() if k in PUBLIC_METRICS})


def declined_reply(msg: Message, status: str, reason: str) -> Message:
    """The answer to a round this client will not train: its status and why, nothing else."""
    return Message(RecordDict({protocol.DECLINED: ConfigRecord({protocol.DECLINE_STATUS: status,
                                                                 protocol.DECLINE_REASON: reason})}), reply_to=msg)
