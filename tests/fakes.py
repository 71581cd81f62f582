"""Stand-ins the strategy and client tests share: a Grid, the ServerApp runtime's task
identity, and a split exchange small enough to differentiate by hand."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
import torch
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import build_adapters


class FakeGrid:
    """All a strategy's configure_* asks of a Grid."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


class ReplyingGrid(FakeGrid, ABC):
    """A Grid whose nodes answer as soon as a message is pushed: :meth:`reply` gives a message's
    reply (None: the node stays silent, and the sender waits out its timeout), and
    ``pull_messages`` hands the replies over, as Flower's grids do."""

    def __init__(self, node_ids: list[int]) -> None:
        super().__init__(node_ids)
        self._replies: dict[str, Message] = {}

    @abstractmethod
    def reply(self, message: Message) -> Message | None:
        """The node's reply to ``message``, or None for a node that stays silent."""

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as Flower's grids do when they push it
            ids.append(m.metadata.message_id)
            answer = self.reply(m)
            if answer is not None:
                self._replies[m.metadata.message_id] = answer
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


def play_serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.41 stamps new instruction Messages with the running task's identity, which the
    ServerApp runtime sets; a test plays that runtime."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


# -- a split exchange on scalar "token embeddings" h --------------------------------------
@dataclass
class ScalarBatch:
    x: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: None = None


class ScalarEdge(nn.Module):
    """A NanoEdge reduced to its adapters; the text adapter's branch is 2 relu(h)."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = build_adapters(1, NanoAdapterConfig(rank=1, alpha=1.0, activation="relu"), seed=0)
        text = self.adapters["text"]
        with torch.no_grad():  # branch(h) = 1 * (2 * relu(1 * h + 0) + 0)
            text.down.weight.fill_(1.0), text.down.bias.fill_(0.0)
            text.up.weight.fill_(2.0), text.up.bias.fill_(0.0)

    def forward(self, batch: ScalarBatch) -> torch.Tensor:
        return self.adapters["text"](batch.x)

    def adapter_state(self) -> dict[str, torch.Tensor]:  # as NanoEdge's
        return {k: v.detach().clone() for k, v in self.adapters.state_dict().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self.adapters.load_state_dict(state, strict=True)


class ScalarEncoder:
    """Samples with a float ``h`` become a (B, 1, 1) batch of it."""

    def __init__(self) -> None:
        self.edge = ScalarEdge()

    def __call__(self, samples, answers) -> ScalarBatch:
        x = torch.tensor([[[s.h]] for s in samples])
        return ScalarBatch(x, torch.ones(len(samples), 1), torch.ones(len(samples), 1, 1))


class MeanBackbone:
    """loss = mean(embeds * labels): d loss / d embeds = labels / numel."""

    bytes_up = 0
    bytes_down = 0

    def train_step(self, embeds, attention_mask, labels, position_ids=None):
        x = embeds.detach().requires_grad_(True)
        loss = (x * labels).mean()
        (grad,) = torch.autograd.grad(loss, x)
        self.bytes_up += embeds.numel() * embeds.element_size()
        self.bytes_down += grad.numel() * grad.element_size()
        return loss.item(), grad
