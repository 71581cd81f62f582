"""The backbone run in the caller's process: the frozen decoder and LM head of an MLLM.

It implements :class:`anther.backbone.interface.Backbone` for a client that holds the LLM itself
(``backbone.mode=in_process``, and ``mode=whole_model``'s LoRA training) and is what the backbone service
computes with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from anther.backbone.interface import (
    BackboneInfo,
    Positions,
    causal_lm_loss,
    token_log_likelihoods,
)
from anther.backbone.quantization import check_quantization, quantization_config
from anther.model.families import family_for
from anther.model.placement import autocaster
from anther.model.side_loading import checkpoint_fingerprint, load_side


class InProcessBackbone(nn.Module):
    """The frozen decoder and LM head of an MLLM, run in this process."""

    def __init__(self, decoder: nn.Module, head: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.decoder = decoder
        self.head = head
        self.info = info
        self.bytes_up = 0
        self.bytes_down = 0
        # what would cross the wire were this backbone remote; off where nothing would (mode=whole_model)
        self.counts_traffic = True
        self.autocast = contextlib.nullcontext  # model.autocast, set by from_pretrained (anther.model.placement)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: str = "cpu", quantization: str = "none", autocast: str = "none") -> InProcessBackbone:
        """The backbone of the checkpoint at ``model_dir`` on ``device``, read without the client's
        vision tower and connector (:mod:`anther.model.side_loading`); with ``quantization``
        (``8bit`` / ``4bit``, CUDA only) the LLM is held quantised by bitsandbytes, all but its head;
        ``autocast`` (``bfloat16`` / ``float16``) computes under autocast where ``device`` can."""
        check_quantization(quantization, device)
        if quantization == "none":
            model = load_side(model_dir, "server", dtype=dtype).to(device)
        else:
            quantized = quantization_config(quantization, dtype)
            model = load_side(model_dir, "server", dtype=dtype, quantization_config=quantized,
                              device_map={"": device})
        backbone = cls.from_model(model, model_dir)
        backbone.autocast = autocaster(backbone.device, autocast)
        return backbone

    @classmethod
    def from_model(cls, model: nn.Module, model_dir: str | Path | None = None,
                   fingerprint: str | None = None) -> InProcessBackbone:
        """The backbone half of an already loaded MLLM: ``model_dir`` names its checkpoint, or,
        for a model with no checkpoint (random weights), ``fingerprint`` names the model."""
        if (model_dir is None) == (fingerprint is None):
            raise ValueError("give exactly one of model_dir (the backbone's checkpoint) and fingerprint")
        decoder, head = family_for(model.config.model_type).backbone_parts(model)
        text_cfg = model.config.get_text_config()
        info = BackboneInfo(
            fingerprint=fingerprint or checkpoint_fingerprint(Path(model_dir)), hidden_size=text_cfg.hidden_size,
            vocab_size=text_cfg.vocab_size, dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            max_sequence_length=text_cfg.max_position_embeddings, position_dims=position_dims(text_cfg),
        )
        return cls(decoder, head, info)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """What the LLM computes in (its head's dtype: a quantised LLM keeps its head as loaded)."""
        return self.head.weight.dtype

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: Positions = None) -> torch.Tensor:
        """The decoder's output on the backbone's device, differentiable in ``inputs_embeds``
        (wherever that lives, in whatever dtype: a client's adapters send fp32) under ``enable_grad``."""
        with self.autocast():
            return self.decoder(inputs_embeds=inputs_embeds.to(self.device, self.dtype),
                                attention_mask=attention_mask.to(self.device),
                                position_ids=hf_position_ids(position_ids, self.device)).last_hidden_state

    def logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: Positions = None) -> torch.Tensor:
        """On the caller's device, like every result of this class."""
        return self.logits_on_device(inputs_embeds, attention_mask, position_ids).to(inputs_embeds.device)

    def logits_on_device(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: Positions = None) -> torch.Tensor:
        """On the backbone's device: losses and scores are computed there, so only they, not
        the (batch, tokens, vocabulary) logits, go back to the caller."""
        hidden = self.hidden(inputs_embeds, attention_mask, position_ids)
        with self.autocast():
            return self.head(hidden.to(self.dtype))

    def embeds_vjp(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        """d <grad_hidden, hidden states> / d inputs_embeds, counting nothing (the service's batches
        call it too)."""
        x = inputs_embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            hidden = self.hidden(x, attention_mask, position_ids)
            (grad,) = torch.autograd.grad(hidden, x, grad_outputs=grad_hidden.to(hidden.device, hidden.dtype))
        return grad

    def _count(self, sent: tuple[torch.Tensor | None, ...], received: torch.Tensor) -> None:
        if not self.counts_traffic:
            return
        self.bytes_up += sum(t.numel() * t.element_size() for t in sent if t is not None)
        self.bytes_down += received.numel() * received.element_size()

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        """Loss and d loss / d ``inputs_embeds``. Weights of this backbone that train (LoRA, in
        ``mode=whole_model``) get their gradient added to ``.grad`` as well."""
        x = inputs_embeds.detach().requires_grad_(True)
        trainable = [p for p in self.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = causal_lm_loss(self.logits_on_device(x, attention_mask, position_ids), labels.to(self.device))
            torch.autograd.backward(loss, inputs=[x, *trainable])
        self._count((inputs_embeds, attention_mask, labels, position_ids), x.grad)
        return loss.item(), x.grad

    @torch.no_grad()
    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: Positions = None) -> torch.Tensor:
        hidden = self.hidden(inputs_embeds, attention_mask, position_ids).to(inputs_embeds.device)
        self._count((inputs_embeds, attention_mask, position_ids), hidden)
        return hidden

    def backward_from_hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        grad = self.embeds_vjp(inputs_embeds, attention_mask, grad_hidden, position_ids)
        self._count((inputs_embeds, attention_mask, grad_hidden, position_ids), grad)
        return grad

    @torch.no_grad()
    def score(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        logits = self.logits_on_device(inputs_embeds, attention_mask, position_ids)
        total = token_log_likelihoods(logits, labels.to(self.device))[0].to(inputs_embeds.device)
        self._count((inputs_embeds, attention_mask, labels, position_ids), total)
        return total

    @torch.no_grad()
    def next_token_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: Positions = None) -> torch.Tensor:
        logits = self.logits_on_device(inputs_embeds, attention_mask, position_ids)
        last = attention_mask.to(self.device).sum(dim=1) - 1
        picked = logits[torch.arange(logits.shape[0], device=self.device), last].float().to(inputs_embeds.device)
        self._count((inputs_embeds, attention_mask, position_ids), picked)
        return picked


def position_dims(text_config: object) -> int:
    """Coordinates per token position the decoder takes: one per M-RoPE section (Qwen2-VL's
    temporal, height, width), else 1."""
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    return len(rope.get("mrope_section", [])) or 1


def hf_position_ids(position_ids: Positions, device: torch.device) -> torch.Tensor | None:
    """anther's (B, T, P) positions as a Hugging Face decoder takes them: (B, T) for one
    coordinate, (P, B, T) for several (Qwen2-VL's M-RoPE: temporal, height, width)."""
    if position_ids is None:
        return None
    if position_ids.shape[-1] == 1:
        return position_ids[..., 0].to(device)
    return position_ids.permute(2, 0, 1).to(device)
