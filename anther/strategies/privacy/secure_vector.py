"""What a client feeds SecAgg+ and how the server turns the secure sum back into adapters.

SecAgg+ sums vectors; a weighted mean needs two sums. Each client k sends, for every adapter
parameter j weighed by metric ``key(j)`` (``num-examples`` for FedAvg, the modality's sample
count for modality-aware FedAvg),

    v_kj = (w_k,key(j) / max_weight) * (theta_kj - theta_global_j)        and
    u_k  = [w_k,key / max_weight for each distinct key]

and the server, from ``S_j = sum_k v_kj`` and ``U = sum_k u_k``, computes

    theta_j = theta_global_j + S_j / U_key(j)
            = sum_k w_k theta_kj / sum_k w_k                                (FedAvg's mean)

or keeps ``theta_global_j`` when no client carried weight for it (``U_key`` below half a
sample: weights are sample counts). Scaling by ``max_weight`` keeps every entry inside
SecAgg+'s ``[-clipping_range, clipping_range]``; sending the update rather than the weights
keeps the entries small, so the quantisation step is small relative to them. A value outside
the range would be clipped silently by the quantiser, so :func:`encode` refuses it instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from anther.strategies.array_utils import NDArray

NAMES, KEYS, MAX_WEIGHT = "anther-names", "anther-weight-keys", "anther-max-weight"


@dataclass(frozen=True)
class VectorLayout:
    """The order of the summed vector: the adapter parameters, then one weight per key."""

    names: tuple[str, ...]
    keys: tuple[str, ...]  # per parameter, the reply metric that weighs it
    max_weight: float

    @property
    def groups(self) -> tuple[str, ...]:
        """The distinct weight keys, in first-use order: the last entry of the vector."""
        return tuple(dict.fromkeys(self.keys))

    def to_config(self) -> dict[str, list[str] | float]:
        return {NAMES: list(self.names), KEYS: list(self.keys), MAX_WEIGHT: float(self.max_weight)}

    @classmethod
    def from_config(cls, record: ConfigRecord) -> VectorLayout:
        return cls(tuple(record[NAMES]), tuple(record[KEYS]), float(record[MAX_WEIGHT]))


def encode(layout: VectorLayout, received: Mapping[str, NDArray], trained: Mapping[str, NDArray],
           metrics: Mapping[str, float], clipping_range: float) -> list[NDArray]:
    """This client's vector: weighted updates, then its weights (see the module docstring)."""
    if list(trained) != list(layout.names):
        raise ValueError(f"secure aggregation: the client's adapters {list(trained)[:4]}... do not match "
                         f"the parameters the server sent {list(layout.names)[:4]}...")
    missing = [k for k in layout.groups if k not in metrics]
    if missing:
        raise ValueError(f"secure aggregation: the train reply's metrics lack {missing}")
    scale = {k: float(metrics[k]) / layout.max_weight for k in layout.groups}
    vector = [scale[key] * (np.asarray(trained[n], np.float64) - np.asarray(received[n], np.float64))
              for n, key in zip(layout.names, layout.keys, strict=True)]
    vector.append(np.array([scale[k] for k in layout.groups], dtype=np.float64))
    largest = max(float(np.abs(v).max(initial=0.0)) for v in vector)
    if largest > clipping_range:
        raise ValueError(
            f"secure aggregation: a weighted update entry of {largest:.4g} is outside "
            f"privacy.secagg.clipping_range={clipping_range} (the quantiser would clip it); raise "
            f"privacy.secagg.clipping_range, or privacy.secagg.max_weight={layout.max_weight} if a "
            "weight exceeds it")
    return vector


def decode(layout: VectorLayout, summed: list[NDArray], current: Mapping[str, NDArray]) -> dict[str, NDArray]:
    """The new global parameters from the secure sum of every client's :func:`encode`."""
    totals = dict(zip(layout.groups, np.asarray(summed[-1], np.float64).reshape(-1), strict=True))
    out = {}
    for name, key, update_sum in zip(layout.names, layout.keys, summed[:-1], strict=True):
        base = np.asarray(current[name], np.float64)
        trained = totals[key] * layout.max_weight >= 0.5  # at least one sample carried this weight
        out[name] = base + np.asarray(update_sum, np.float64).reshape(base.shape) / totals[key] if trained else base
    return out
