"""How big each side of a real MLLM is, in split mode and in whole-model mode: ``anther model report``.

The model is built from its published configuration on PyTorch's ``meta`` device, so a
7B model costs no memory and no download; every count below comes from the module tree
itself, through the same family split the NanoEdge uses (:mod:`anther.model.families`).

- *split mode*: the client holds the family's edge parts (vision tower, connector, token
  embeddings) plus two NanoAdapters (image and text, on the LLM's input width); it sends the
  adapters each round, and for every training sample the input embeddings up and their
  gradient down.
- *whole-model mode*: the client holds the whole model plus LoRA on the LLM's attention
  projections (counted by ``peft`` itself); it sends the LoRA weights each round and no
  activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)

from anther.backbone.in_process import position_dims
from anther.core.config import FLOAT_DTYPES, SCALED_WIRE_DTYPES, WIRE_DTYPES
from anther.model.families import family_for
from anther.model.lora import LoraSettings, inject_lora
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import build_adapters


def _llava_1_5(text: LlamaConfig) -> LlavaConfig:
    """LLaVA-1.5 as published (llava-hf/llava-1.5-*-hf): CLIP ViT-L/14 at 336 px, the
    second-to-last layer's patch tokens, a 2-layer GELU projector, a Vicuna (Llama) decoder."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000,
                       projector_hidden_act="gelu", vision_feature_select_strategy="default",
                       vision_feature_layer=-2, image_seq_length=576)


def _vicuna(hidden: int, intermediate: int, layers: int, heads: int) -> LlamaConfig:
    return _llama(32064, hidden, intermediate, layers, heads, heads)


def _llava_next(text: LlamaConfig) -> LlavaNextConfig:
    """LLaVA-NeXT (llava-hf/llava-v1.6-vicuna-7b-hf): LLaVA-1.5's tower and projector, AnyRes
    grids of 336 px tiles up to 672 x 672 or 1008 x 336."""
    base = _llava_1_5(text)
    return LlavaNextConfig(vision_config=base.vision_config, text_config=text, image_token_id=32000,
                           projector_hidden_act="gelu", vision_feature_select_strategy="default",
                           vision_feature_layer=-2, image_seq_length=576,
                           image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])


def _idefics3(image_size: int, scale_factor: int, text: LlamaConfig) -> Idefics3Config:
    """An Idefics3 with the SigLIP so400m vision transformer (patch 14) and a pixel shuffle of
    ``scale_factor``: Idefics3-8B (364 px tiles, 169 tokens each, Llama 3.1 8B) and SmolVLM-Instruct
    (384 px tiles, 81 tokens each, SmolLM2-1.7B, as its model card says). Vocabulary sizes and an
    untied LM head are this reconstruction's (docs/model-sizes.md says what a tied head changes)."""
    vision = Idefics3VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                  num_attention_heads=16, image_size=image_size, patch_size=14)
    return Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=scale_factor,
                          image_token_id=text.vocab_size - 1, tie_word_embeddings=False)


def _qwen2_7b() -> dict:
    """The Qwen2-7B-shaped decoder of Qwen2-VL-7B and Qwen2.5-VL-7B (a fresh dict: configs edit theirs)."""
    return {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}


def _qwen2_vl_7b() -> Qwen2VLConfig:
    """Qwen2-VL-7B-Instruct as published: a 675M-parameter native-resolution ViT (patch 14, 2 x 2
    merger) and the Qwen2-7B decoder with M-RoPE (sections 16, 24, 24)."""
    vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLConfig(
        vision_config=vision, text_config=_qwen2_7b(), image_token_id=151655, tie_word_embeddings=False
    )


def _qwen2_5_vl_7b() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct as published: a windowed-attention ViT (SwiGLU, RMSNorm; full
    attention in blocks 7, 15, 23, 31) and the same Qwen2-7B-shaped decoder."""
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31]}
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen2_7b(), image_token_id=151655,
                            tie_word_embeddings=False)


def _llama(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False)


# name -> published configuration; a family registered in anther.model.families splits it
REAL_CONFIGS: dict[str, Callable[[], object]] = {
    "llava-1.5-7b": lambda: _llava_1_5(_vicuna(4096, 11008, 32, 32)),
    "llava-1.5-13b": lambda: _llava_1_5(_vicuna(5120, 13824, 40, 40)),
    "llava-next-7b": lambda: _llava_next(_vicuna(4096, 11008, 32, 32)),
    "idefics3-8b": lambda: _idefics3(364, 2, _llama(128259, 4096, 14336, 32, 32, 8)),
    "smolvlm-instruct": lambda: _idefics3(384, 3, _llama(49155, 2048, 8192, 24, 32, 32)),
    "qwen2-vl-7b": _qwen2_vl_7b,
    "qwen2.5-vl-7b": _qwen2_5_vl_7b,
}


@dataclass(frozen=True)
class SizeReport:
    model: str
    total_params: int
    # split mode
    client_params: int
    client_bytes: int
    adapter_params: int
    adapter_bytes_per_round: int  # each way, float32
    activation_bytes_up_per_sample: int  # input embeddings (+ mask and labels, int64)
    activation_bytes_down_per_sample: int  # their gradient
    # whole-model mode
    lora_params: int
    local_client_bytes: int
    lora_bytes_per_round: int  # each way, float32

    @property
    def client_share(self) -> float:
        return self.client_params / self.total_params

    @property
    def adapter_share(self) -> float:
        return self.adapter_params / self.total_params

    @property
    def lora_share(self) -> float:
        return self.lora_params / self.total_params


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_unique(modules: list[nn.Module]) -> int:
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def _lora_params(decoder: nn.Module, rank: int) -> int:
    """Parameters ``peft`` adds for LoRA of ``rank`` on the decoder's attention projections
    (``mode=whole_model``'s default targets)."""
    return sum(p.numel() for p in inject_lora(decoder, LoraSettings(rank=rank)).parameters())


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize


def size_report(name: str, adapter_rank: int = 16, lora_rank: int = 16, text_tokens: int = 64,
                dtype: str = "bfloat16", wire_dtype: str = "bfloat16") -> SizeReport:
    """Counts for ``name`` (a key of :data:`REAL_CONFIGS`) with weights held in ``dtype``,
    activations sent in ``wire_dtype`` and ``text_tokens`` text tokens per sample besides the
    image tokens."""
    if name not in REAL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(REAL_CONFIGS)}")
    return report_for_config(name, REAL_CONFIGS[name](), adapter_rank, lora_rank, text_tokens, dtype, wire_dtype)


def report_for_config(name: str, config, adapter_rank: int = 16, lora_rank: int = 16, text_tokens: int = 64,
                      dtype: str = "bfloat16", wire_dtype: str = "bfloat16") -> SizeReport:
    """:func:`size_report` for any configuration of a registered family."""
    for label, value, allowed in (("dtype", dtype, FLOAT_DTYPES), ("wire_dtype", wire_dtype, WIRE_DTYPES)):
        if value not in allowed:
            raise ValueError(f"{label} {value!r} is not one of {', '.join(allowed)}")
    family = family_for(config.model_type)
    with torch.device("meta"):
        model = family.model_class(config)
        hidden = config.text_config.hidden_size
        adapters = _count(build_adapters(hidden, NanoAdapterConfig(rank=adapter_rank)))  # -I and -T
    parts = family.edge_parts(model)
    total = _count(model)
    # Qwen2-VL's merger is in its tower
    client = _count_unique([parts.vision_tower, parts.connector, parts.embed_tokens])
    tokens = family.image_tokens(config) + text_tokens
    # a scaled wire dtype: a byte an element and a float32 scale a token (backbone.proto)
    embeds = tokens * (hidden + 4) if wire_dtype in SCALED_WIRE_DTYPES else tokens * hidden * _itemsize(wire_dtype)
    dims = position_dims(config.text_config)
    positions = tokens * dims * 8 if dims > 1 else 0  # M-RoPE positions travel too (int64)
    lora = _lora_params(family.backbone_parts(model)[0], lora_rank)  # counted last: it adds to the model
    weight_bytes = _itemsize(dtype)
    return SizeReport(
        model=name, total_params=total, client_params=client,
        client_bytes=client * weight_bytes + adapters * 4, adapter_params=adapters,
        adapter_bytes_per_round=adapters * 4, activation_bytes_up_per_sample=embeds + 2 * tokens * 8 + positions,
        activation_bytes_down_per_sample=embeds, lora_params=lora,
        local_client_bytes=total * weight_bytes + lora * 4, lora_bytes_per_round=lora * 4,
    )


def _scaled(n: float, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes[:-1]:
        if abs(n) < 999.5:  # what rounds to 1000 is shown as 1 of the next unit
            return f"{n:.3g}{prefix}"
        n /= 1000
    return f"{n:.3g}{prefixes[-1]}"


def _params(n: int) -> str:
    return _scaled(n, ("", "K", "M", "B"))


def _bytes(n: int) -> str:
    return _scaled(n, (" B", " KB", " MB", " GB", " TB"))


def markdown(reports: list[SizeReport]) -> str:
    """One table, split mode and whole-model mode side by side for each model."""
    lines = [("| model | total params | mode | client holds (params) | share | client bytes | trained "
              "and sent (params) | share | bytes per round, each way | activations per sample, up / down |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        lines.append(f"| {r.model} | {_params(r.total_params)} | split | {_params(r.client_params)} | "
                     f"{r.client_share:.2%} | {_bytes(r.client_bytes)} | {r.adapter_params:,} | "
                     f"{r.adapter_share:.4%} | {_bytes(r.adapter_bytes_per_round)} | "
                     f"{_bytes(r.activation_bytes_up_per_sample)} / {_bytes(r.activation_bytes_down_per_sample)} |")
        lines.append(f"| | | local (LoRA) | {_params(r.total_params + r.lora_params)} | 100% | "
                     f"{_bytes(r.local_client_bytes)} | {r.lora_params:,} | {r.lora_share:.4%} | "
                     f"{_bytes(r.lora_bytes_per_round)} | 0 / 0 |")
    return "\n".join(lines) + "\n"


def as_dicts(reports: list[SizeReport]) -> list[dict[str, object]]:
    return [{**asdict(r), "client_share": r.client_share, "adapter_share": r.adapter_share,
             "lora_share": r.lora_share} for r in reports]
