"""anther: federated fine-tuning of multimodal LLMs with NanoEdge clients and a shared frozen backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anther.export.predictor import Predictor

__version__ = "0.1.0"


def load(path: Any, **kwargs: Any) -> Predictor:
    """A run folder's or an export's adapters, ready to answer: ``anther.load(PATH).generate(images,
    questions)`` and ``.score(images, questions, options)`` (:mod:`anther.export.predictor`)."""
    from anther.export.predictor import load as load_predictor

    return load_predictor(path, **kwargs)
