"""Modality-aware FedAvg: each modality's adapter is averaged only over the clients that trained it.

Under modality heterogeneity (FedMLLM's missing-, cross- and hybrid-modality scenarios) an
image-less client never trains NanoAdapter-I, yet plain FedAvg would average its stale (or
weight-decayed) copy in with weight ``num-examples``, dragging the image adapter back
towards the round's starting point in proportion to how many clients lack images.
Here every parameter named ``<modality>.*`` (``image.down.weight``, ``text.up.bias``...)
is averaged over the clients that reported a positive ``num-<modality>-examples``,
weighted by that count -- the number of their samples that carried the modality, i.e. the
number of samples that produced a gradient for that adapter. A modality no client trained
this round keeps its current global value, which is why ``configure_train`` remembers the
arrays it sends out. Parameters of no listed modality are averaged as FedAvg does.

Clients report, in their train reply's metrics, ``num-image-examples`` and
``num-text-examples`` (configurable through ``modality_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp.exception import AggregationError

from anther.core import protocol
from anther.strategies.array_utils import NDArray, metric_value, weighted_mean
from anther.strategies.merging_fedavg import MergingFedAvg

DEFAULT_MODALITY_METRICS = {"image": protocol.NUM_IMAGE_EXAMPLES, "text": protocol.NUM_TEXT_EXAMPLES}


def modality_of(name: str, modalities: Iterable[str]) -> str | None:
    """The modality an adapter parameter belongs to: its name's first component, if listed."""
    head = name.split(".", 1)[0]
    return head if head in set(modalities) else None


class ModalityAwareFedAvg(MergingFedAvg):
    """FedAvg per modality adapter, over the clients (and weighted by the samples) that carried it.

    Parameters
    ----------
    modality_metrics:
        ``{parameter-name prefix: metric key holding that modality's sample count}``.
    **fedavg_kwargs:
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, modality_metrics: Mapping[str, str] | None = None, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.modality_metrics = dict(modality_metrics or DEFAULT_MODALITY_METRICS)

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        contents = [m.content for m in replies]
        return {name: self._aggregate_one(name, [a[name] for a in clients], contents) for name in clients[0]}

    def weight_key(self, name: str) -> str:
        """The reply metric that weighs parameter ``name``: its modality's sample count, or
        ``weighted_by_key`` for a parameter of no listed modality (secure aggregation sums
        weight * update and the weights per key, then divides, as :meth:`merge` does)."""
        modality = modality_of(name, self.modality_metrics)
        return self.weighted_by_key if modality is None else self.modality_metrics[modality]

    def _aggregate_one(self, name: str, values: list[NDArray], contents: list[RecordDict]) -> NDArray:
        weights = [metric_value(c, self.weight_key(name)) for c in contents]
        if sum(weights) > 0:
            return weighted_mean(values, weights)  # zero-weight clients drop out of the mean
        return self._current(name)

    def _current(self, name: str) -> NDArray:
        if self.current_arrays is None or name not in self.current_arrays:
            raise AggregationError(
                reason=f"no client trained {name!r} and there is no global value to keep: "
                       "call configure_train before aggregate_train")
        return self.current_arrays[name]
