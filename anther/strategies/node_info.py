"""What the round loop tells a strategy about the federation's nodes before round 1.

Flower's ``Strategy`` sees only node ids. anther's round loop first sends every node a
QUERY; each answers with its ``partition-id``, ``num-partitions`` and, when its node
config sets one, its ``adapter-rank`` (see ``anther.client_app.query``). A strategy
that needs to know its clients up front (heterogeneous ranks do) implements
:class:`NodeAware`, and :class:`anther.server.federated_run.FederatedRun` hands it those
answers once, before the first ``configure_train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from flwr.app import ConfigRecord

NodeInfo = Mapping[int, ConfigRecord]  # node id -> that node's QUERY answer


@runtime_checkable
class NodeAware(Protocol):
    """A strategy that wants every node's QUERY answer before round 1."""

    def set_node_info(self, info: NodeInfo) -> None:
        """Called once with ``{node_id: answer}`` for every node that answered."""
