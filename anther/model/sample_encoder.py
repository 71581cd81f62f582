"""From samples to a batch of model inputs, the same for training and evaluation."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from PIL import Image

from anther.core.sample import Sample
from anther.data.multi_image import tiled
from anther.model.chat_format import ChatFormat, RenderedTurn, conversation
from anther.model.nano_edge import NanoEdge


@dataclass
class SampleEncoder:
    """Turns samples into the model's inputs: each sample's conversation rendered by the chat
    format (:mod:`anther.model.chat_format`), tokenised and its image processed by the
    checkpoint's own processor, as one :class:`anther.model.families.base.EncodedBatch`, with the
    NanoEdge that embeds it. Training, evaluation and the Fisher all encode through it, so they
    see the same inputs. ``chat`` None is the processor's own template. A sample's pictures are
    decoded here, when its batch is made; several reach a family that takes one picture tiled
    into one (:mod:`anther.data.multi_image`), and any family so with ``tile_images``."""

    edge: NanoEdge
    processor: object
    modality_agnostic: bool = False
    chat: ChatFormat | None = None
    system_prompt: str | None = None
    max_listed_options: int = 8
    tile_images: bool = False

    def __post_init__(self) -> None:
        if self.chat is None:
            self.chat = ChatFormat.for_processor(self.processor)

    def _tiles(self, sample: Sample) -> bool:
        return len(sample.images) > 1 and (self.tile_images or not self.edge.family.multi_image)

    def pictures(self, sample: Sample) -> list[Image.Image]:
        """The pictures the model sees for ``sample``: its own, or them tiled into one."""
        return [tiled(sample.pictures())] if self._tiles(sample) else sample.pictures()

    def render(self, sample: Sample) -> RenderedTurn:
        pictures = 1 if self._tiles(sample) else len(sample.images)
        messages = conversation(sample, self.system_prompt, self.modality_agnostic, self.max_listed_options, pictures)
        return self.chat.render(self.processor, messages)

    def __call__(self, samples: list[Sample], answers: list[str] | None = None):
        return self.encode(samples, [self.render(s) for s in samples], answers)

    def encode(self, samples: list[Sample], turns: list[RenderedTurn], answers: list[str] | None = None):
        """The batch of ``samples`` already rendered as ``turns`` (a sample scored against each of its
        options is rendered once), with ``answers`` as targets when given."""
        targets = None if answers is None else [t.target(a) for t, a in zip(turns, answers)]
        family = self.edge.family
        with torch.device("cpu"):  # processors make CPU tensors; the whole batch then moves at once
            pictures = [self.pictures(s) for s in samples]
            batch = family.encode(self.processor, [t.prompt for t in turns], pictures, targets)
            batch.position_ids = family.position_ids(self.edge.model_config, batch)
        return batch.to(self.edge.device)

    @functools.cached_property
    def stop_token_ids(self) -> list[int]:
        """Where generation stops: end of sequence, and the special tokens that close an assistant
        turn in this chat format (Qwen2-VL's ``<|im_end|>``, Idefics3's ``<end_of_utterance>``)."""
        tokenizer = self.processor.tokenizer
        closing = self.chat.render(self.processor, [{"role": "user", "content": [{"type": "text", "text": "?"}]}])
        ids = tokenizer(closing.after, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        return [tokenizer.eos_token_id, *sorted({i for i in ids if i in special} - {tokenizer.eos_token_id})]
