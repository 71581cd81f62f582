"""The backbone: the frozen LLM that serves forward and backward passes on ``inputs_embeds``.

Clients touch the LLM only through :class:`Backbone`. :class:`LocalBackbone` runs it
in-process; the gRPC service (``anther.backbone.service.servicer``) serves the same
interface to many clients at once and ``anther.backbone.remote`` is its stub.

All losses follow Hugging Face's causal-LM convention: logits at position t predict
token t+1, positions labelled -100 are ignored, and a request's loss is the mean over
its own labelled tokens. Gradients are taken with respect to ``inputs_embeds`` only;
the LLM's weights are frozen and never receive gradients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from anther.backbone.quantization import check_quantization, quantization_config
from anther.model.families import family_for
from anther.model.side_loading import load_side

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BackboneInfo:
    """What a client must know to talk to a backbone."""

    fingerprint: str
    hidden_size: int
    vocab_size: int
    dtype: str
    max_sequence_length: int
    position_dims: int = 1  # coordinates per token position: 3 for Qwen2-VL's M-RoPE


# Token positions, (B, T, P) int64: P = 1 for ordinary positions, 3 for Qwen2-VL's M-RoPE
# (temporal, height, width). None: each row's positions are 0, 1, 2, ... (right padding).
Positions = torch.Tensor | None


class Backbone(Protocol):
    """The frozen LLM as a client sees it. ``position_ids`` is only given for families whose
    positions are not 0, 1, 2, ... (:data:`Positions`).

    ``bytes_up`` and ``bytes_down`` count what this handle has sent to the LLM and received
    from it so far: the serialized messages for a remote backbone, the tensors themselves
    for an in-process one (what a wire in their dtypes would carry). A caller measures a
    stretch of work, such as one round of local training, by their difference.
    """

    info: BackboneInfo
    bytes_up: int
    bytes_down: int

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        """Loss on the labelled tokens and d loss / d inputs_embeds."""
        ...

    def score(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        """Per-sequence sum of log-probabilities of the labelled tokens, shape (B,)."""
        ...

    def next_token_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: Positions = None) -> torch.Tensor:
        """Logits for the token after each sequence's last attended position, shape (B, V)."""
        ...


class HiddenStateBackbone(Backbone, Protocol):
    """A backbone that can also stop before its LM head, for clients that keep their labels
    (``backbone.private_labels``, :mod:`anther.client.private_labels`): it never sees a label."""

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: Positions = None) -> torch.Tensor:
        """The decoder's final hidden states (after its last norm, before the head), (B, T, H)."""
        ...

    def backward_from_hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        """d <grad_hidden, hidden states> / d inputs_embeds: the decoder's backward pass for a
        gradient the client computed with respect to its output."""
        ...


def token_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (sum of log p(label), number of labelled tokens), with the causal shift."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1), mask.sum(dim=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens (Hugging Face's ``ForCausalLMLoss``)."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def checkpoint_fingerprint(model_dir: Path) -> str:
    """Hash of config and weight-file metadata: clients and server must agree on it."""
    model_dir = Path(model_dir)
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


class LocalBackbone(nn.Module):
    """The frozen decoder and LM head of an MLLM, run in this process."""

    def __init__(self, decoder: nn.Module, head: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.decoder = decoder
        self.head = head
        self.info = info
        self.bytes_up = 0
        self.bytes_down = 0
        # what would cross the wire were this backbone remote; off where nothing would (mode=local)
        self.counts_traffic = True
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: str = "cpu", quantization: str = "none") -> LocalBackbone:
        """The backbone of the checkpoint at ``model_dir`` on ``device``, read without the client's
        vision tower and connector (:mod:`anther.model.side_loading`); with ``quantization``
        (``8bit`` / ``4bit``, CUDA only) the LLM is held quantised by bitsandbytes, all but its head."""
        check_quantization(quantization, device)
        if quantization == "none":
            model = load_side(model_dir, "server", dtype=dtype).to(device)
        else:
            quantized = quantization_config(quantization, dtype)
            model = load_side(model_dir, "server", dtype=dtype, quantization_config=quantized,
                              device_map={"": device})
        return cls.from_model(model, model_dir)

    @classmethod
    def from_model(cls, model: nn.Module, model_dir: str | Path | None = None,
                   fingerprint: str | None = None) -> LocalBackbone:
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

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: Positions = None) -> torch.Tensor:
        """The decoder's output on the backbone's device, differentiable in ``inputs_embeds``
        (wherever that lives) under ``enable_grad``."""
        return self.decoder(inputs_embeds=inputs_embeds.to(self.device), attention_mask=attention_mask.to(self.device),
                            position_ids=hf_position_ids(position_ids, self.device)).last_hidden_state

    def logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: Positions = None) -> torch.Tensor:
        """On the caller's device, like every result of this class."""
        return self.logits_on_device(inputs_embeds, attention_mask, position_ids).to(inputs_embeds.device)

    def logits_on_device(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: Positions = None) -> torch.Tensor:
        """On the backbone's device: losses and scores are computed there, so only they, not
        the (batch, tokens, vocabulary) logits, go back to the caller."""
        return self.head(self.hidden(inputs_embeds, attention_mask, position_ids))

    def embeds_vjp(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        """d <grad_hidden, hidden states> / d inputs_embeds, counting nothing (the service's batches
        call it too)."""
        x = inputs_embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            hidden = self.hidden(x, attention_mask, position_ids)
            (grad,) = torch.autograd.grad(hidden, x, grad_outputs=grad_hidden.to(hidden.device, x.dtype))
        return grad

    def _count(self, sent: tuple[torch.Tensor | None, ...], received: torch.Tensor) -> None:
        if not self.counts_traffic:
            return
        self.bytes_up += sum(t.numel() * t.element_size() for t in sent if t is not None)
        self.bytes_down += received.numel() * received.element_size()

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        """Loss and d loss / d ``inputs_embeds``. Weights of this backbone that train (LoRA, in
        ``mode=local``) get their gradient added to ``.grad`` as well."""
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


@torch.no_grad()
def greedy_decode(next_token_logits: Callable[[torch.Tensor, torch.Tensor, Positions], torch.Tensor],
                  embed: Callable[[torch.Tensor], torch.Tensor], inputs_embeds: torch.Tensor,
                  attention_mask: torch.Tensor, max_new_tokens: int, stop_token_ids: list[int],
                  position_ids: Positions = None) -> torch.Tensor:
    """Greedy decoding on right-padded ``inputs_embeds``; ``embed`` turns new token ids into embeddings.

    Returns (B, steps) token ids: each row's tokens up to and including its stop token,
    then -1. Who embeds decides what generation sees: the client's NanoAdapter-T (so
    generated tokens are adapted as in training) or the server's own embedding table. With
    ``position_ids``, each new token takes the row's highest position + 1 in every coordinate,
    as Hugging Face's generation does for M-RoPE.
    """
    embeds, mask, positions = inputs_embeds, attention_mask, position_ids
    batch = embeds.shape[0]
    rows, lengths = torch.arange(batch), mask.sum(dim=1)
    # each row's highest position over its attended tokens, + 1
    next_position = None if positions is None else (positions * mask.unsqueeze(-1)).amax(dim=(1, 2)) + 1
    stop = torch.tensor(stop_token_ids, dtype=torch.long)
    out = torch.full((batch, max_new_tokens), -1, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        ids = next_token_logits(embeds, mask, positions).argmax(dim=-1)
        out[:, step] = torch.where(done, -1, ids)
        done |= torch.isin(ids, stop)
        if bool(done.all()):
            return out[:, :step + 1]
        # append each row's new token right after its last attended position
        embeds = torch.cat([embeds, embeds.new_zeros(batch, 1, embeds.shape[-1])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch, 1)], dim=1)
        embeds[rows, lengths] = embed(ids).to(embeds.dtype)
        mask[rows, lengths] = 1
        if positions is not None:
            positions = torch.cat([positions, positions.new_zeros(batch, 1, positions.shape[-1])], dim=1)
            positions[rows, lengths] = next_position.unsqueeze(-1)
            next_position = next_position + 1
        lengths = lengths + 1
    return out
