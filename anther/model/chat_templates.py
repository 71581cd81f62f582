"""The chat templates anther ships: each tiny checkpoint's, in the style of its real family, and a
plain one for checkpoints that have none (``model.chat_template=NAME``).

Each is a Jinja template over a conversation as Hugging Face processors take it: messages with a
``role`` (system, user, assistant) and a ``content`` list of ``{"type": "image"}`` and
``{"type": "text", "text": ...}`` parts. Each ends an assistant turn with the family's end of
turn, so a fine-tuned model learns to stop, and with ``add_generation_prompt`` ends the
prompt where the assistant's answer begins (:mod:`anther.model.chat_format` relies on both).
The templates are written on one line: Jinja's whitespace control would eat their newlines.
"""

from __future__ import annotations

# LLaVA-1.5 (llava-hf): "USER: <image>\n{text} ASSISTANT: {answer}</s>"; a system text leads, bare.
LLAVA = (
    "{% for message in messages %}{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{% if message['role'] == 'system' %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)

# Qwen2-VL: ChatML turns, a default system turn, the image between vision markers.
QWEN2_VL = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<|vision_start|><image><|vision_end|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Idefics3 / SmolVLM: "User:<image>{text}<end_of_utterance>\nAssistant: {answer}<end_of_utterance>\n".
IDEFICS3 = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{{ '<end_of_utterance>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# No chat format: "<image>\n{text}\nanswer: {answer}</s>", turns one after another.
PLAIN = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ ' ' }}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{{ eos_token }}"
    "{% else %}{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}"
    "{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + '\n' }}"
    "{% endif %}{% endfor %}{% if message['role'] == 'user' %}{{ 'answer:' }}{% endif %}{% endif %}{% endfor %}"
)

BUILT_IN: dict[str, str] = {"llava": LLAVA, "qwen2_vl": QWEN2_VL, "idefics3": IDEFICS3, "plain": PLAIN}

# The words of these templates, which anther's tiny tokenizer learns as tokens of their own.
TEMPLATE_WORDS = ["USER:", "ASSISTANT:", "User:", "Assistant:", "system", "user", "assistant",
                  "You are a helpful assistant.", "answer:", "Options:"]
