"""The backbone as a client sees it: the frozen LLM's forward and backward passes on ``inputs_embeds``.

Clients touch the LLM only through :class:`Backbone`. :class:`anther.backbone.in_process.InProcessBackbone`
runs it in the caller's process; the gRPC service (:mod:`anther.backbone.service`) serves the same
interface to many clients at once and :class:`anther.backbone.remote.RemoteBackbone` is its stub.

All losses follow Hugging Face's causal-LM convention: logits at position t predict
token t+1, positions labelled -100 are ignored, and a request's loss is the mean over
its own labelled tokens. Gradients are taken with respect to ``inputs_embeds`` only;
the LLM's weights are frozen and never receive gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

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
    batch, device = embeds.shape[0], embeds.device
    rows, lengths = torch.arange(batch, device=device), mask.sum(dim=1)
    # each row's highest position over its attended tokens, + 1
    next_position = None if positions is None else (positions * mask.unsqueeze(-1)).amax(dim=(1, 2)) + 1
    stop = torch.tensor(stop_token_ids, dtype=torch.long, device=device)
    out = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
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
