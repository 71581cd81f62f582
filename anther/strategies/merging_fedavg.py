"""The skeleton anther's aggregation strategies share: FedAvg with a NumPy merge of its own.

Each round it remembers the global adapters it sends (a parameter no client updated
keeps them), checks the replies, hands the clients' arrays to :meth:`merge`, casts the
result back to the clients' dtypes and aggregates metrics as FedAvg does. Subclasses
say only how to merge.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from anther.strategies.array_utils import NDArray, array_record, numpy_arrays, reply_arrays


class MergingFedAvg(FedAvg):
    """FedAvg whose aggregate of the clients' arrays is :meth:`merge`."""

    # FedAvg's reply check allows exactly one ArrayRecord per reply; strategies whose
    # clients send more (Fisher merging) switch it off and check for themselves.
    validate_replies = True

    def __init__(self, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.current_arrays: dict[str, NDArray] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = numpy_arrays(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=self.validate_replies)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        clients = [numpy_arrays(reply_arrays(c, self.arrayrecord_key)) for c in contents]
        merged = self.merge(valid, clients)
        dtypes = {name: value.dtype for name, value in clients[0].items()}
        return array_record(merged, dtypes), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    @abstractmethod
    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        """The new global arrays from the valid ``replies`` and their adapter arrays (same order)."""
