"""The model's own chat format: prompts built with the checkpoint's chat template, labels on the
assistant's answer only, generation stopping at the family's end of turn, and the override for
checkpoints without a template (anther/model/chat_format.py). The correctness anchor
(tests/test_correctness.py) holds templated batches, multi-turn ones included, to the Hugging
Face model's own output."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from anther.backbone.in_process import InProcessBackbone
from anther.client.inference import greedy_answers
from anther.core.sample import read_split, write_split
from anther.model.chat_format import ChatFormat, ChatTemplateError, conversation, user_text
from anther.model.chat_templates import BUILT_IN
from anther.model.families import load_processor
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder

# how each tiny checkpoint's template (in its real family's style) opens a prompt and ends an answer
STYLE = {"llava": ("USER: <image>\n", " ASSISTANT:", "</s>"),
         "llava_next": ("USER: <image>\n", " ASSISTANT:", "</s>"),
         "qwen2_vl": ("<|im_start|>system\n", "<|im_start|>assistant\n", "<|im_end|>\n"),
         "qwen2_5_vl": ("<|im_start|>system\n", "<|im_start|>assistant\n", "<|im_end|>\n"),
         "idefics3": ("User:<image>", "Assistant:", "<end_of_utterance>\n")}


def test_each_tiny_checkpoint_prompts_in_its_familys_style(family_model_dir, samples):
    processor = load_processor(family_model_dir)
    family = json.loads((family_model_dir / "config.json").read_text())["model_type"]
    opens, asks, closes = STYLE[family]
    turn = ChatFormat.for_processor(processor).render(processor, conversation(samples[0]))
    assert turn.prompt.startswith(opens) and turn.prompt.endswith(asks)
    assert turn.target("red").strip() == f"red{closes}".strip()


def test_labels_cover_the_assistants_answer_and_nothing_else(tiny_model_dir, samples):
    processor = load_processor(tiny_model_dir)
    encoder = SampleEncoder(NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=2)), processor)
    history = [("how many shapes are there?", "two")]
    chosen = [dataclasses.replace(s, history=history) for s in samples[:4]]
    batch = encoder(chosen, [s.answer for s in chosen])
    tokenizer = processor.tokenizer
    for row, s in zip(batch.labels, chosen):
        labelled = tokenizer.decode(row[row != -100])
        assert labelled == f" {s.answer}</s>"  # not the earlier turn's answer, not the prompt


def test_the_user_turn_lists_the_options_of_a_closed_question(samples):
    s = samples[0]
    assert user_text(s).endswith("Options: " + ", ".join(s.options) + ".")
    assert "Options" not in user_text(s, max_listed_options=0)
    spelled_out = dataclasses.replace(s, question=s.question + " (" + " or ".join(s.options) + ")")
    assert "Options" not in user_text(spelled_out)
    assert user_text(s, modality_agnostic=True).count("without considering the modality") == 1


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_generation_stops_at_the_familys_end_of_turn(family, request, samples):
    """Qwen2-VL closes a turn with <|im_end|>, Idefics3 with <end_of_utterance>: both stop generation,
    and neither is in the decoded answer."""
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    processor = load_processor(model_dir)
    encoder = SampleEncoder(NanoEdge.from_pretrained(model_dir, NanoAdapterConfig(rank=2)), processor)
    closing = {"qwen2_vl": "<|im_end|>", "idefics3": "<end_of_utterance>"}[family]
    assert processor.tokenizer.convert_tokens_to_ids(closing) in encoder.stop_token_ids
    backbone = InProcessBackbone.from_pretrained(model_dir)
    end = processor.tokenizer.convert_tokens_to_ids(closing)
    with torch.no_grad():  # make the end of turn the LLM's every next token
        backbone.head.bias = torch.nn.Parameter(torch.zeros(backbone.head.out_features))
        backbone.head.bias[end] = 1e4
    assert greedy_answers(encoder, backbone, samples[:2], max_new_tokens=4) == ["", ""]


def test_a_checkpoint_without_a_template_is_refused_naming_the_setting(tmp_path, tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    processor.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template: set model.chat_template"):
        ChatFormat.for_processor(processor, where=f"checkpoint {tmp_path}")
    with pytest.raises(ChatTemplateError, match="model.chat_template='nope.jinja' is neither a built-in"):
        ChatFormat.for_processor(processor, "nope.jinja")


def test_the_config_overrides_the_template_by_name_or_file(tmp_path, tiny_model_dir, samples):
    processor = load_processor(tiny_model_dir)
    plain = ChatFormat.for_processor(processor, "plain").render(processor, conversation(samples[0]))
    assert plain.prompt.startswith("<image>\n") and plain.prompt.endswith("\nanswer:")
    assert plain.target("red") == " red</s>"
    mine = tmp_path / "mine.jinja"
    mine.write_text("{% for m in messages %}[{{ m['role'] }}]{% for p in m['content'] %}"
                    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}"
                    "{% if add_generation_prompt %}[assistant]{% endif %}")
    chat = ChatFormat.for_processor(processor, str(mine))
    turn = chat.render(processor, conversation(samples[0], system="Be brief."))
    assert turn.prompt.startswith("[system]Be brief.[user]<image>") and turn.prompt.endswith("[assistant]")
    assert turn.target("red") == "red</s>"  # the template closes no turn: end of sequence is added
    assert set(BUILT_IN) == {"llava", "qwen2_vl", "idefics3", "plain"}


def test_a_template_mistake_is_refused_before_a_run_starts(tmp_path, tiny_model_dir):
    from anther.core.config import ConfigError
    from anther.simulations.experiment import load_config

    with pytest.raises(ConfigError, match=r"model.chat_template='nope.jinja' is invalid: is neither a built-in"):
        load_config("default", ["model.chat_template=nope.jinja"])
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ConfigError, match="has no chat template: name a Jinja file or one of"):
        load_config("default", [f"model.path={bare}"])
    assert load_config("default", [f"model.path={bare}", "model.chat_template=llava"]).model.chat_template == "llava"
    assert load_config("default", [f"model.path={tiny_model_dir}"]).model.chat_template is None


def test_a_template_that_does_not_continue_its_prompt_is_refused(tiny_model_dir, samples):
    processor = load_processor(tiny_model_dir)
    broken = ChatFormat("{% for m in messages %}{{ m['role'] }}{% endfor %}{% if add_generation_prompt %}!{% endif %}",
                        "</s>", frozenset())
    with pytest.raises(ChatTemplateError, match="does not write the assistant's answer after the prompt"):
        broken.render(processor, conversation(samples[0]))


def test_multi_turn_history_travels_in_the_data_format(tmp_path, samples):
    chosen = [dataclasses.replace(samples[0], history=[("how many shapes?", "two"), ("any circle?", "yes")])]
    write_split(chosen, tmp_path, "train")
    (read,), skipped = read_split(tmp_path, "train")
    assert read.history == [("how many shapes?", "two"), ("any circle?", "yes")] and not skipped
    bad = json.loads((tmp_path / "train.jsonl").read_text())
    bad["history"] = [["only a question"]]
    (tmp_path / "train.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="'history' must be a list of \\[question, answer\\] pairs"):
        read_split(tmp_path, "train")
