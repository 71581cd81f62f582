"""Sample-level differential privacy: DP-SGD on the NanoAdapters through the split exchange.

The backbone returns d L / d inputs_embeds for the batch loss L, the mean over *all* the
batch's labelled tokens. Row i of that gradient is (n_i / N) d L_i / d e_i, where L_i is
sample i's own loss (the mean over its n_i labelled tokens) and N = sum n_i, because each
sequence only attends to itself. Rescaling row i by N / n_i gives the cotangent of L_i alone,
and one batched backward through the NanoEdge (one cotangent per sample, zero elsewhere) gives
every sample's adapter gradient d L_i / d theta. Those are clipped to ``max_grad_norm``,
summed, noised with N(0, (noise_multiplier * max_grad_norm)^2) and divided by the expected
batch size: opacus's DP-SGD on the mean of per-sample losses, with Poisson-sampled batches
(what opacus's accountants assume). The LLM itself needs nothing: it sees the same requests.

Spent privacy is tracked with an opacus accountant whose history lives in the node's
Flower ``Context.state``, so each client reports its cumulative epsilon after every round.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from anther.backbone.interface import IGNORE_INDEX

ACCOUNTANT_STATE = "dp-accountant"  # Context.state key of the accountant's history


@dataclass
class DPSGD:
    """How one client privatises its local steps."""

    noise_multiplier: float  # noise std as a multiple of max_grad_norm
    max_grad_norm: float  # per-sample clipping bound C
    sample_rate: float  # Poisson inclusion probability of each local sample per step
    expected_batch_size: float  # sample_rate * local samples: the divisor of the noisy sum
    generator: torch.Generator  # where the noise comes from


def per_sample_cotangents(grad: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Turn d(batch token-mean loss)/d embeds into d L_i / d e_i for each sample's own mean loss.

    Labels follow the causal shift (position t predicts label t+1), as the backbone's loss does.
    """
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).to(grad.dtype)
    scale = counts.sum() / counts.clamp(min=1.0)
    return grad * scale.view(-1, 1, 1)


def per_sample_grads(embeds: torch.Tensor, cotangents: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d L_i / d theta for every sample i, shape (B, *param.shape) per parameter.

    One vectorised backward with cotangent i zero outside sample i (``is_grads_batched``):
    memory B x B x T x hidden, time of B backwards through the adapters only.
    """
    b = embeds.shape[0]
    eye = torch.eye(b, dtype=cotangents.dtype, device=cotangents.device)
    batched = eye.view(b, b, 1, 1) * cotangents.unsqueeze(0)
    grads = torch.autograd.grad(embeds, list(params), batched, is_grads_batched=True, allow_unused=True)
    return [g if g is not None else p.new_zeros((b, *p.shape)) for g, p in zip(grads, params)]


def clipped_sum(per_sample: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Sum over samples of each sample's gradient scaled to norm <= ``max_grad_norm`` (all
    parameters together, as opacus's flat clipping)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_sample]).norm(dim=0)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("b,b...->...", factor, g) for g in per_sample]


def privatise(summed: Sequence[torch.Tensor], params: Sequence[torch.Tensor], dp: DPSGD) -> None:
    """Leave (clipped sum + Gaussian noise) / expected batch size in each parameter's ``.grad``."""
    std = dp.noise_multiplier * dp.max_grad_norm
    for total, p in zip(summed, params):
        noise = torch.normal(0.0, std, p.shape, generator=dp.generator) if std > 0 else 0.0
        p.grad = ((total + noise) / dp.expected_batch_size).to(p.dtype)


def poisson_batch(rng: random.Random, n: int, sample_rate: float) -> list[int]:
    """Each sample independently with probability ``sample_rate``; may be empty (a noise-only step)."""
    return [i for i in range(n) if rng.random() < sample_rate]


def noise_multiplier_for(privacy: DictConfig, sample_rate: float, steps: int) -> float:
    """The configured noise multiplier, or the smallest one that keeps ``steps`` steps at this
    sample rate within ``privacy.target_epsilon`` (opacus's accountant search)."""
    if privacy.target_epsilon is None:
        return float(privacy.noise_multiplier)
    return float(get_noise_multiplier(target_epsilon=privacy.target_epsilon, target_delta=privacy.delta,
                                      sample_rate=sample_rate, steps=steps, accountant=privacy.accountant))


def dpsgd_for(privacy: DictConfig, num_samples: int, batch_size: int, total_steps: int,
              generator: torch.Generator | None = None) -> DPSGD:
    """This client's DP-SGD: sample rate batch_size / its samples, noise for the run's
    ``total_steps`` local steps. Noise comes from a fresh OS-seeded generator unless one is
    given: a seed the server could derive would let it subtract the noise."""
    rate = min(1.0, batch_size / num_samples)
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    return DPSGD(noise_multiplier_for(privacy, rate, total_steps), float(privacy.max_grad_norm), rate,
                 rate * num_samples, generator)


def load_accountant(state: RecordDict, mechanism: str) -> IAccountant:
    """The node's accountant with every step it has taken in earlier rounds of this run."""
    accountant = create_accountant(mechanism)
    stored = state.config_records.get(ACCOUNTANT_STATE)
    if stored is not None:
        accountant.history = [(float(s), float(q), int(k)) for s, q, k in
                              zip(stored["noise"], stored["rate"], stored["steps"])]
    return accountant


def save_accountant(state: RecordDict, accountant: IAccountant) -> None:
    noise, rate, steps = zip(*accountant.history)
    state[ACCOUNTANT_STATE] = ConfigRecord({"noise": list(noise), "rate": list(rate), "steps": list(steps)})


def spend(state: RecordDict, privacy: DictConfig, dp: DPSGD, steps: int) -> float:
    """Add this round's ``steps`` DP-SGD steps to the node's accountant; the epsilon spent so far."""
    accountant = load_accountant(state, privacy.accountant)
    for _ in range(steps):
        accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate)
    save_accountant(state, accountant)
    return float(accountant.get_epsilon(delta=privacy.delta))
