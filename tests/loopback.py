"""A Grid that delivers messages in process to real ClientApps, for the privacy tests.

Each node has its own Flower ``Context`` (its ``state`` persists across messages, as on a
SuperNode); an exception in a handler comes back as an error reply, as Flower's runtime
sends it. A node listed in ``fail_train`` raises when its train handler runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from anther.strategies.privacy.client_mods import privacy_mod


class LoopbackGrid:
    def __init__(self, app: ClientApp, node_ids: list[int]) -> None:
        self.app, self.node_ids = app, list(node_ids)
        self.contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={},
                                    node_config={"partition-id": i}) for i, n in enumerate(node_ids)}
        self.seen_by_server: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as Flower's grids do when they push it
            try:
                reply = self.app(m, self.contexts[m.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 - what Flower's runtime does with it
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=m)
            replies.append(reply)
        self.seen_by_server += replies
        return replies


def training_app(updates: Callable[[int, dict[str, np.ndarray]], dict[str, np.ndarray]],
                 metrics: Callable[[int], dict[str, float]], fail_train: set[int] = frozenset()) -> ClientApp:
    """A ClientApp whose train handler replies ``updates(node, received)`` and ``metrics(node)``,
    behind anther's privacy mod."""
    app = ClientApp()

    @app.train(mods=[privacy_mod])
    def train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        if node in fail_train:
            raise RuntimeError(f"node {node} died while training")
        received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        arrays = ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in updates(node, received).items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics(node))}), reply_to=msg)

    return app
