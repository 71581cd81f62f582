"""A plug-in that turns one site into a saboteur, as an attack study would: through the
documented plug-in API only (a strategy selected by ``_target_``, a client extra registered
under a round-config key), imported from outside the anther package.

Server half, :class:`SabotagingFedAvg` (FedDPA-style personalisation, so that clients keep
local adapters): in round ``outlier_round`` it asks partition 0's node, and only that node,
to send weights pushed far from the global ones, and in round ``nan_round`` NaN weights (last:
NaN weights poison the client's own local adapters for good). It also keeps a tally of the
rounds it aggregated, in an object the checkpoint's attribute scan cannot represent, so that
only its own ``state_dict()`` / ``load_state_dict()`` can carry the tally across a resume;
each round reports it as the ``tally`` metric.

Client half, the ``sabotage`` regulariser: ``nan`` adds a term whose gradient is NaN (the
update the client sends is NaN everywhere); ``outlier`` moves every adapter weight by +1 once
(the update's norm is hundreds of times an honest one, and the model still computes finite
losses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from anther.client.extras import ExtraContext, regulariser
from anther.strategies.personalised import PersonalisedFedAvg

SABOTAGE = "sabotage"  # round-config key: "nan" or "outlier"


class Tally:
    """How many rounds the strategy aggregated (a plain object: no checkpoint format knows it)."""

    def __init__(self) -> None:
        self.rounds = 0


class SabotagingFedAvg(PersonalisedFedAvg):
    """PersonalisedFedAvg that makes partition 0 send an outlier in ``outlier_round`` and a NaN
    update in ``nan_round``."""

    def __init__(self, *, outlier_round: int = 2, nan_round: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outlier_round, self.nan_round = outlier_round, nan_round
        self.victim: int | None = None  # partition 0's node id, from the round loop's QUERY answers
        self.tally = Tally()

    def set_node_info(self, info: Mapping[int, ConfigRecord]) -> None:
        self.victim = next((node for node, answer in info.items() if int(answer["partition-id"]) == 0), None)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        how = {self.nan_round: "nan", self.outlier_round: "outlier"}.get(server_round)
        if how is None:
            return messages
        return [self._sabotaged(m, how) if m.metadata.dst_node_id == self.victim else m for m in messages]

    def _sabotaged(self, message: Message, how: str) -> Message:
        content = RecordDict({name: record for name, record in message.content.items()})
        content[self.configrecord_key] = ConfigRecord({**message.content[self.configrecord_key], SABOTAGE: how})
        return Message(content, message_type=MessageType.TRAIN, dst_node_id=message.metadata.dst_node_id)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.tally.rounds += 1
        metrics = MetricRecord() if metrics is None else metrics
        metrics["tally"] = self.tally.rounds
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"tally": self.tally.rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tally.rounds = int(state["tally"])


@regulariser(SABOTAGE)
def sabotage(ctx: ExtraContext) -> Callable[[], torch.Tensor]:
    params = [p for p in ctx.runtime.edge.adapters.parameters() if p.requires_grad]
    how = str(ctx.config[SABOTAGE])
    pushed = []

    def term() -> torch.Tensor:
        if how == "nan":
            return torch.stack([p.sum() for p in params]).sum() * float("nan")
        if not pushed:
            with torch.no_grad():
                for p in params:
                    p.add_(1.0)
            pushed.append(True)
        return params[0].sum() * 0.0

    return term
