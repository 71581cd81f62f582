"""anther's own strategies, registered by name in :mod:`anther.strategies.registry`.

Imported by the registry (at its end, after ``register`` exists), so that
``strategy: {name: fisher}`` and friends work like Flower's built-ins.
"""

from __future__ import annotations

from anther.strategies.adaptive_regularisation import AdaptiveRegularisation
from anther.strategies.fisher_merging import FisherMerging
from anther.strategies.hetero_rank import HeteroRankFedAvg
from anther.strategies.modality_aware import ModalityAwareFedAvg
from anther.strategies.personalised import PersonalisedFedAvg
from anther.strategies.registry import register

register("fisher", FisherMerging)
register("modality_aware", ModalityAwareFedAvg)
register("hetero_rank", HeteroRankFedAvg)
register("adaptive_reg", AdaptiveRegularisation)
register("personalised", PersonalisedFedAvg)
