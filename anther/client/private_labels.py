"""Private labels: the client computes the LM head and the loss itself, so labels never leave it.

In the default split exchange a client sends its labels (the answer's token ids) with its
embeddings and the backbone returns the loss and d loss / d inputs_embeds. With
``backbone.private_labels=true`` the client holds a frozen copy of the model's LM head (it
moves from the server's half of the split to the client's) and a training step is two calls:

1. ``hidden_states``: the backbone runs its decoder on ``inputs_embeds`` and returns the final
   hidden states;
2. the client computes logits on its labelled positions, the loss, and d loss / d hidden states;
3. ``backward_from_hidden``: the backbone backpropagates that gradient through its decoder and
   returns d loss / d inputs_embeds, exactly what ``train_step`` would have returned.

Multiple-choice scoring is computed here from the hidden states too (its labels are the
options' token ids). Next-token logits carry no label, so they still come from the server.
The cost, in bytes and compute, is in docs/what-leaves-a-client.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anther.backbone.interface import IGNORE_INDEX, BackboneInfo, HiddenStateBackbone, Positions


def labelled_logits(head: nn.Module, hidden: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a label (causal shift), their targets and their rows.

    Only those positions go through the head: for an answer of a few tokens this is a few rows
    of (vocab, hidden) products per sample instead of one per position.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep].to(next(head.parameters()).dtype)).float()
    return logits, targets[keep], keep.nonzero()[:, 0]


class PrivateLabelBackbone:
    """The :class:`~anther.backbone.interface.Backbone` protocol over a :class:`HiddenStateBackbone`
    and a local LM head: the same losses, gradients and scores, with no label sent."""

    def __init__(self, inner: HiddenStateBackbone, head: nn.Module) -> None:
        self.inner = inner
        self.head = head.requires_grad_(False).eval()  # frozen, like the rest of the split
        self.info: BackboneInfo = inner.info

    @classmethod
    def of_model(cls, inner: HiddenStateBackbone, model: nn.Module) -> PrivateLabelBackbone:
        """With the LM head of an MLLM loaded on this client (its family says which module)."""
        from anther.model.families import family_for

        return cls(inner, family_for(model.config.model_type).backbone_parts(model)[1])

    @property
    def bytes_up(self) -> int:
        return self.inner.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.inner.bytes_down

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        """Mean loss over the labelled tokens and d loss / d inputs_embeds (HF's causal-LM loss)."""
        if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
            raise ValueError("labels has no labelled token after the causal shift")
        hidden = self.inner.hidden_states(inputs_embeds, attention_mask, position_ids)
        h = hidden.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, targets, _ = labelled_logits(self.head, h, labels)
            loss = F.cross_entropy(logits, targets)
            (grad_hidden,) = torch.autograd.grad(loss, h)
        return loss.item(), self.inner.backward_from_hidden(inputs_embeds, attention_mask, grad_hidden, position_ids)

    @torch.no_grad()
    def score(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        """Per-sequence sum of log-probabilities of the labelled tokens, shape (B,)."""
        hidden = self.inner.hidden_states(inputs_embeds, attention_mask, position_ids)
        logits, targets, rows = labelled_logits(self.head, hidden, labels)
        picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return torch.zeros(labels.shape[0]).index_add_(0, rows, picked)

    def next_token_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: Positions = None) -> torch.Tensor:
        """From the server: a generation step sends no label."""
        return self.inner.next_token_logits(inputs_embeds, attention_mask, position_ids)
