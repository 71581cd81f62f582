"""Send messages to nodes and wait for their replies, checking for them often.

Flower's ``Grid.send_and_receive`` polls for replies every 3 s when the ServerApp reaches the
SuperLink over the network (a deployment): a round, a join query or a SecAgg+ stage whose
clients answer in half a second then still takes 3. :func:`send_and_receive` pushes and pulls
through the same grid, polling soon after sending and less often the longer the replies take
(every :data:`MAX_INTERVAL_S` at most), so a fast exchange ends when its replies are in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_INTERVAL_S = 0.05
MAX_INTERVAL_S = 1.0
GROWTH = 1.5


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and return every reply that arrives within ``timeout`` seconds (error
    replies included), as ``grid.send_and_receive`` does, polling with a growing interval."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    interval = FIRST_INTERVAL_S
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting -= {m.metadata.reply_to_message_id for m in pulled}
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(interval, left))
        interval = min(MAX_INTERVAL_S, interval * GROWTH)
    return replies
