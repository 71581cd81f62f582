"""A Grid that delivers messages in process to real ClientApps, for the privacy tests.

Each node has its own Flower ``Context`` (its ``state`` persists across messages, as on a
SuperNode); an exception in a handler comes back as an error reply, as Flower's runtime
sends it. A node listed in ``fail_train`` raises when its train handler runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fakes import ReplyingGrid
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from anther.strategies.privacy.client_mods import privacy_mod


class LoopbackGrid(ReplyingGrid):
    def __init__(self, app: ClientApp, node_ids: list[int]) -> None:
        super().__init__(list(node_ids))
        self.app = app
        self.contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={},
                                    node_config={"partition-id": i}) for i, n in enumerate(node_ids)}
        self.seen_by_server: list[Message] = []

    def reply(self, message: Message) -> Message:
        try:
            reply = self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as err:  # noqa: BLE001 - what Flower's runtime does with it
            reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=message)
        self.seen_by_server.append(reply)
        return reply


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
