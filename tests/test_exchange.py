"""anther.core.exchange: replies are collected as soon as they are in, slow ones are waited for up to
the timeout, a silent node costs the timeout and no more, and error replies come back like others."""

from __future__ import annotations

import time

import pytest
from fakes import ReplyingGrid, play_serverapp_runtime
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from anther.core.exchange import send_and_receive

FLOWER_POLL_S = 3.0  # Flower's HTTP grid's step between pulls


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


class SlowGrid(ReplyingGrid):
    """Node n answers ``delays[n]`` seconds after the push (None: never); node 3 answers with an error."""

    def __init__(self, delays: dict[int, float | None]) -> None:
        super().__init__(list(delays))
        self.delays, self.ready_at, self.pulls = delays, {}, 0

    def reply(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if self.delays[node] is None:
            return None
        self.ready_at[message.metadata.message_id] = time.monotonic() + self.delays[node]
        if node == 3:
            return Message(Error(code=0, reason="ClientApp raised"), reply_to=message)
        return Message(RecordDict({"c": ConfigRecord({"node": node})}), reply_to=message)

    def pull_messages(self, message_ids):
        self.pulls += 1
        due = [i for i in message_ids if self.ready_at.get(i, float("inf")) <= time.monotonic()]
        return super().pull_messages(due)


def _query(nodes) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]


def test_replies_are_in_as_soon_as_the_slowest_answers():
    grid = SlowGrid({1: 0.0, 2: 0.3, 3: 0.1})
    started = time.monotonic()
    replies = send_and_receive(grid, _query([1, 2, 3]), timeout=30)
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id in grid.ready_at for r in replies) == [True] * 3
    assert sum(r.has_error() for r in replies) == 1  # the error reply comes back like the others
    assert 0.3 <= took < FLOWER_POLL_S  # the slowest reply is picked up well before a 3 s step
    assert grid.pulls < 15  # the interval grows: no busy loop


def test_a_silent_node_costs_the_timeout_and_the_others_still_count():
    grid = SlowGrid({1: 0.0, 2: None})
    started = time.monotonic()
    replies = send_and_receive(grid, _query([1, 2]), timeout=0.5)
    took = time.monotonic() - started
    assert [r.content["c"]["node"] for r in replies] == [1]
    assert 0.5 <= took < FLOWER_POLL_S  # the timeout, not a polling step past it
