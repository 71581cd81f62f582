"""Small helpers the anther strategies share: ArrayRecords <-> NumPy, reply metrics, weighted means.

Aggregation is done in float64 and cast back to the dtype the clients sent, so a
float32 adapter stays float32 on the wire while the arithmetic loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies

NDArray = np.ndarray


def numpy_arrays(record: ArrayRecord) -> dict[str, NDArray]:
    """The record's arrays by name, as NumPy arrays."""
    return {name: array.numpy() for name, array in record.items()}


def array_record(arrays: Mapping[str, NDArray], dtypes: Mapping[str, np.dtype] | None = None) -> ArrayRecord:
    """An ArrayRecord of ``arrays``, each cast to ``dtypes[name]`` when given."""
    out = {}
    for name, value in arrays.items():
        dtype = dtypes[name] if dtypes is not None and name in dtypes else value.dtype
        out[name] = Array(np.ascontiguousarray(value, dtype=dtype))
    return ArrayRecord(out)


def reply_metrics(content: RecordDict) -> MetricRecord:
    """The (single) MetricRecord of a reply, as Flower's own strategies read it."""
    if not content.metric_records:
        raise InconsistentMessageReplies(reason="a reply carries no MetricRecord")
    return next(iter(content.metric_records.values()))


def metric_value(content: RecordDict, key: str) -> float:
    """A scalar metric of a reply; a clear error names the key when a client did not send it."""
    metrics = reply_metrics(content)
    if key not in metrics:
        raise InconsistentMessageReplies(reason=f"a reply's metrics lack {key!r} (has {sorted(metrics)})")
    return float(cast(float, metrics[key]))


def reply_arrays(content: RecordDict, key: str) -> ArrayRecord:
    """The ArrayRecord stored under ``key`` in a reply."""
    if key not in content.array_records:
        raise InconsistentMessageReplies(
            reason=f"a reply has no ArrayRecord {key!r} (has {sorted(content.array_records)})")
    return content.array_records[key]


def weighted_mean(values: Sequence[NDArray], weights: Sequence[float]) -> NDArray:
    """sum_k w_k v_k / sum_k w_k, in float64; the weights must not sum to zero."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights sum to zero")
    acc = np.zeros(np.shape(values[0]), dtype=np.float64)
    for value, weight in zip(values, weights, strict=True):
        acc += np.asarray(value, dtype=np.float64) * weight
    return acc / total


def source_node(message: Message) -> int:
    """The node a reply came from."""
    return int(message.metadata.src_node_id)
