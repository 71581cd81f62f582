"""From samples to a batch of model inputs, the same for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from anther.core.sample import Sample
from anther.model.nano_edge import NanoEdge
from anther.model.prompt import build_prompt, build_target


@dataclass
class SampleEncoder:
    """Turns samples into the model's inputs: each sample's prompt and target text
    (:mod:`anther.model.prompt`), tokenised and its image processed by the checkpoint's own
    processor, as one :class:`anther.model.families.EncodedBatch`, with the NanoEdge that embeds it.
    Training, evaluation and the Fisher all encode through it, so they see the same inputs."""

    edge: NanoEdge
    processor: object
    modality_agnostic: bool = False

    def __call__(self, samples: list[Sample], answers: list[str] | None = None):
        prompts = [build_prompt(s, self.modality_agnostic) for s in samples]
        eos = self.processor.tokenizer.eos_token
        targets = None if answers is None else [build_target(a, eos) for a in answers]
        family = self.edge.family
        batch = family.encode(self.processor, prompts, [s.image for s in samples], targets)
        batch.position_ids = family.position_ids(self.edge.model_config, batch)
        return batch
