"""The client side of anther's strategies, registered as extras by the round-config keys they
answer (see :mod:`anther.client.extras`):

=================  ==============  ============================================================
key                sent by         the client
=================  ==============  ============================================================
proximal-mu        fedprox,        adds (mu/2)||w - w_global||^2 over the trainable parameters
                   adaptive_reg    between ``proximal-start`` and ``proximal-end`` (default 0, 1)
fisher-batches     fisher          sends its diagonal Fisher as the ArrayRecord ``fisher``
personal-steps     personalised    trains its local adapter (global frozen), keeps it on the node
personal-mix       personalised    evaluates global + mix * local
=================  ==============  ============================================================

Imported by :mod:`anther.client.extras` itself, so a ClientApp always has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from anther.client.extras import ExtraContext, Record, after_training, evaluation, regulariser
from anther.client.fisher import diagonal_fisher
from anther.client.trainer import Regulariser, train_adapters
from anther.strategies.adaptive_regularisation import (
    PROXIMAL_END,
    PROXIMAL_MU,
    PROXIMAL_START,
    MiddleProximal,
)
from anther.strategies.fisher_merging import FISHER, FISHER_BATCHES
from anther.strategies.personalised import PERSONAL_MIX, PERSONAL_STEPS, PersonalisedAdapters

# Context.state keys: the FedDPA local part, and how many rounds have trained it
LOCAL_ADAPTERS, LOCAL_ROUNDS = "personal-local-adapters", "personal-rounds"


@regulariser(PROXIMAL_MU)
def proximal(ctx: ExtraContext) -> Regulariser:
    """FedProx's term; with a range (adaptive_reg) FedMLLM's, on the middle of the stack only."""
    return MiddleProximal(dict(ctx.runtime.edge.adapters.named_parameters()), float(ctx.config[PROXIMAL_MU]),
                          float(ctx.config.get(PROXIMAL_START, 0.0)), float(ctx.config.get(PROXIMAL_END, 1.0)))


@after_training(FISHER_BATCHES)
def fisher(ctx: ExtraContext) -> Mapping[str, Record]:
    """The diagonal Fisher of the adapters as trained, on the client's own data."""
    values = diagonal_fisher(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples,
                             int(ctx.config[FISHER_BATCHES]), ctx.experiment.train.batch_size, ctx.seed)
    return {FISHER: ArrayRecord(values)}


def _personal(ctx: ExtraContext) -> PersonalisedAdapters:
    """This node's local adapters as it left them (fresh in its first round)."""
    stored = ctx.state.array_records.get(LOCAL_ADAPTERS)
    return PersonalisedAdapters(ctx.runtime.edge.adapters, float(ctx.config[PERSONAL_MIX]),
                                None if stored is None else stored.to_torch_state_dict(), ctx.seed)


@after_training(PERSONAL_STEPS)
def personal_training(ctx: ExtraContext) -> Mapping[str, Record]:
    """FedDPA-F: train the local adapter on top of the frozen, freshly trained global one."""
    personal = _personal(ctx)
    t = ctx.experiment.train
    with personal.combined(freeze_global=True):
        report = train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples,
                                int(ctx.config[PERSONAL_STEPS]), t.batch_size, t.lr, ctx.seed + 1,
                                t.weight_decay, t.max_grad_norm)
    rounds = int(ctx.state.config_records.get(LOCAL_ROUNDS, ConfigRecord({"n": 0}))["n"]) + 1
    ctx.state[LOCAL_ADAPTERS] = ArrayRecord(personal.local_state())
    ctx.state[LOCAL_ROUNDS] = ConfigRecord({"n": rounds})
    return {"metrics": MetricRecord({"personal_loss": report.loss, "personal_rounds": rounds})}


@evaluation(PERSONAL_MIX)
def personal_view(ctx: ExtraContext) -> AbstractContextManager[object]:
    """Evaluate with global + mix * local."""
    return _personal(ctx).combined()
