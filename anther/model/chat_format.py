"""How a Sample becomes the model's conversation, rendered by the checkpoint's own chat template.

Real checkpoints were instruction-tuned on their processor's chat template (LLaVA-1.5's
``USER: <image>\\n... ASSISTANT:``, Qwen2-VL's ``<|im_start|>`` turns, Idefics3's
``User:...<end_of_utterance>``), so training, scoring and generation all address the model
that way: a conversation (an optional system text, the sample's earlier turns, a user turn with
the image, the context, the question and its options) rendered with ``add_generation_prompt``
is the prompt; the assistant's answer, as the template closes the turn, is the target, and
only its tokens are labelled (:func:`anther.model.families.base.target_labels`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from anther.core.sample import Sample
from anther.model.chat_templates import BUILT_IN

MODALITY_AGNOSTIC_SUFFIX = ", without considering the modality"
_ANSWER = "\x00ANSWER\x00"  # stands for the answer while the template renders the assistant's turn


class ChatTemplateError(ValueError):
    """No usable chat template: the checkpoint has none and the config names none, or the
    template does not render an answer after its prompt."""


def user_text(sample: Sample, modality_agnostic: bool = False, max_listed_options: int = 8) -> str:
    """The user turn's text: the context (if any), the question and, for a closed question of at
    most ``max_listed_options`` choices not already spelled out in it, the options.

    ``modality_agnostic`` appends FedMLLM's prompt-augmentation suffix to the question.
    """
    question = sample.question
    if modality_agnostic:
        question = question.rstrip("?.") + MODALITY_AGNOSTIC_SUFFIX + "?"
    lines = [sample.context] if sample.has_text else []
    lines.append(question)
    listed = 2 <= len(sample.options) <= max_listed_options and not all(o in question for o in sample.options)
    if listed:
        lines.append("Options: " + ", ".join(sample.options) + ".")
    return "\n".join(lines)


def conversation(sample: Sample, system: str | None = None, modality_agnostic: bool = False,
                 max_listed_options: int = 8, pictures: int | None = None) -> list[dict]:
    """The messages of ``sample`` up to its final question: its pictures (``pictures`` of them,
    default all; one where they are tiled) go with the first user turn."""
    messages: list[dict] = []
    if system:
        messages.append(_message("system", system))
    image = [{"type": "image"}] * (len(sample.images) if pictures is None else pictures)
    for question, answer in sample.history:
        messages += [_message("user", question, image), _message("assistant", answer)]
        image = []
    messages.append(_message("user", user_text(sample, modality_agnostic, max_listed_options), image))
    return messages


def _message(role: str, text: str, parts: list[dict] | None = None) -> dict:
    return {"role": role, "content": [*(parts or []), {"type": "text", "text": text}]}


@dataclass(frozen=True)
class RenderedTurn:
    """A conversation rendered up to the assistant's answer, and what the template writes around
    any answer: ``prompt + before + answer + after`` is the whole conversation."""

    prompt: str
    before: str
    after: str

    def target(self, answer: str) -> str:
        return f"{self.before}{answer}{self.after}"


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and how a conversation's last turn is cut into prompt and target."""

    template: str
    eos_token: str
    special_tokens: frozenset[str]  # a target holding none of these gets eos_token: the model must learn to stop

    @classmethod
    def for_processor(cls, processor, setting: str | None = None, where: str = "the checkpoint") -> ChatFormat:
        """The format of ``setting`` (a built-in's name or a Jinja file, see :func:`resolve_template`), or
        of the processor's own template."""
        tokenizer = processor.tokenizer
        template = resolve_template(setting, getattr(processor, "chat_template", None), where)
        return cls(template, tokenizer.eos_token, frozenset(tokenizer.all_special_tokens))

    def render(self, processor, messages: list[dict]) -> RenderedTurn:
        prompt = _render(processor, self.template, messages, True)
        whole = _render(processor, self.template, [*messages, _message("assistant", _ANSWER)], False)
        if not whole.startswith(prompt) or whole.count(_ANSWER) != 1:
            raise ChatTemplateError("the chat template does not write the assistant's answer after the prompt "
                                    "it renders with add_generation_prompt=True; anther cannot label the answer")
        before, after = whole[len(prompt):].split(_ANSWER)
        if not any(token in after for token in self.special_tokens):
            after = after.rstrip() + self.eos_token  # the template closes no turn: end it, so the model learns to stop
        return RenderedTurn(prompt, before, after)


def _render(processor, template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def resolve_template(setting: str | None, own: str | None, where: str) -> str:
    """The template ``model.chat_template`` names: None is the checkpoint's own (``own``), a
    built-in's name (:data:`anther.model.chat_templates.BUILT_IN`) that one, anything else a
    Jinja file's path."""
    if setting is None:
        if not own:
            raise ChatTemplateError(
                f"{where} has no chat template: set model.chat_template to a Jinja file or one of "
                f"{', '.join(sorted(BUILT_IN))} (plain: the image, the text and 'answer:')")
        return own
    if setting in BUILT_IN:
        return BUILT_IN[setting]
    return _template_file(setting)


def template_problem(setting: str | None, model_dir: str | Path | None) -> str | None:
    """Why ``model.chat_template=setting`` cannot give ``model_dir`` (None: anther's tiny model, which
    has one) a template, or None: the config check before a run starts."""
    if setting is not None:
        ok = setting in BUILT_IN or Path(setting).expanduser().is_file()
        return None if ok else f"is neither a built-in template ({', '.join(sorted(BUILT_IN))}) nor a file"
    if model_dir is None or not (Path(model_dir) / "config.json").is_file() or has_own_template(Path(model_dir)):
        return None  # the tiny model has one; a folder that is no checkpoint is refused where it is loaded
    return (f"is unset but checkpoint {model_dir} has no chat template: name a Jinja file or one of "
            f"{', '.join(sorted(BUILT_IN))}")


def has_own_template(model_dir: Path) -> bool:
    """Whether a checkpoint folder carries a chat template, where transformers saves one."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        try:
            if json.loads((model_dir / name).read_text()).get("chat_template"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


@functools.cache
def _template_file(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ChatTemplateError(f"model.chat_template={path!r} is neither a built-in template "
                                f"({', '.join(sorted(BUILT_IN))}) nor a file")
    return file.read_text(encoding="utf-8")
