"""How a Sample becomes prompt text and target text, the same for training and evaluation."""

from __future__ import annotations

from anther.core.sample import Sample

IMAGE_PLACEHOLDER = "<image>"
MODALITY_AGNOSTIC_SUFFIX = ", without considering the modality"


def build_prompt(sample: Sample, modality_agnostic: bool = False) -> str:
    """``<image>`` (only if there is an image), the context (only if any), then the question.

    ``modality_agnostic`` appends FedMLLM's prompt-augmentation suffix to the instruction.
    """
    question = sample.question
    if modality_agnostic:
        question = question.rstrip("?.") + MODALITY_AGNOSTIC_SUFFIX + "?"
    parts = []
    if sample.has_image:
        parts.append(IMAGE_PLACEHOLDER)
    if sample.has_text:
        parts.append(f"context: {sample.context}")
    parts.append(f"question: {question}")
    return "\n".join(parts) + "\nanswer:"


def build_target(answer: str, eos_token: str) -> str:
    """The answer as the model should emit it after the prompt."""
    return f" {answer}{eos_token}"
