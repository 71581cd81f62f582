"""Sample-level differential privacy: DP-SGD on the NanoAdapters through the split exchange.

The backbone returns d L / d inputs_embeds for the batch loss L, the mean over *all* the
batch's labelled tokens. Row i of that gradient is (n_i / N) d L_i / d e_i, where L_i is
sample i's own loss (the mean over its n_i labelled tokens) and N = sum n_i, because each
sequence only attends to itself. Rescaling row i by N / n_i gives the cotangent of L_i alone,
and one batched backward through the NanoEdge (one cotangent per sample, zero elsewhere) gives
every sample's adapter gradient d L_i / d theta. That split-specific step is anther's own
(:func:`per_sample_cotangents`, :func:`per_sample_grads`); opacus's module hooks cannot do it,
because the image NanoAdapter sees every image's tokens of a batch concatenated, with no batch
dimension to attribute them by (tests/test_dp.py shows the result equals opacus's per-sample
gradients wherever opacus can compute them). The rest is opacus's: its ``DPOptimizer`` clips
each sample's gradient to ``max_grad_norm``, sums, adds N(0, (noise_multiplier *
max_grad_norm)^2) noise (``secure_mode`` draws it robustly to floating-point attacks) and
divides by the expected batch size; its accountants (RDP, PRV) track the spent epsilon.

What must stay secret from the server is secret by construction. Batches are Poisson samples
(what the accountants assume) drawn from the operating system's randomness
(:class:`secrets.SystemRandom`), and the noise from a generator seeded by it: nothing the
server sends (its seed included) lets it tell which samples were in a step, which
amplification by subsampling needs, or subtract the noise. A site that wants its DP runs
reproducible sets a seed of its own in its node config (``dp-sampling-seed``), which the
server never sees.

Spent privacy is tracked with an opacus accountant whose history lives in the node's
Flower ``Context.state``, so each client reports its cumulative epsilon after every round.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig

from anther.backbone.interface import IGNORE_INDEX

if TYPE_CHECKING:  # opacus is imported where DP runs: it costs every ClientApp seconds to start otherwise
    from opacus.accountants import IAccountant
    from opacus.optimizers import DPOptimizer

ACCOUNTANT_STATE = "dp-accountant"  # Context.state key of the accountant's history
SECRET, SITE_SEEDED = "secret", "site-seeded"  # how a client chose its batches and noise


@dataclass
class DPSGD:
    """How one client privatises its local steps."""

    noise_multiplier: float  # noise std as a multiple of max_grad_norm
    max_grad_norm: float  # per-sample clipping bound C
    sample_rate: float  # Poisson inclusion probability of each local sample per step
    expected_batch_size: float  # sample_rate * local samples: the divisor of the noisy sum
    generator: torch.Generator  # where the noise comes from
    sampler: random.Random = field(default_factory=secrets.SystemRandom)  # which samples each step takes
    secure_mode: bool = False  # opacus's noise robust to floating-point representation attacks

    @property
    def randomness(self) -> str:
        """``secret`` (the OS's, nobody can replay it) or ``site-seeded`` (the site's own seed)."""
        return SECRET if isinstance(self.sampler, secrets.SystemRandom) else SITE_SEEDED


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


def dp_optimizer(optimizer: torch.optim.Optimizer, dp: DPSGD) -> DPOptimizer:
    """``optimizer`` behind opacus's DP-SGD: each ``step()`` clips the per-sample gradients left
    in ``p.grad_sample``, sums them, adds the noise and divides by the expected batch size."""
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                       expected_batch_size=dp.expected_batch_size, generator=dp.generator,
                       secure_mode=dp.secure_mode)


def poisson_batch(sampler: random.Random, n: int, sample_rate: float) -> list[int]:
    """Each sample independently with probability ``sample_rate``; may be empty (a noise-only step)."""
    return [i for i in range(n) if sampler.random() < sample_rate]


def noise_multiplier_for(privacy: DictConfig, sample_rate: float, steps: int) -> float:
    """The configured noise multiplier, or the smallest one that keeps ``steps`` steps at this
    sample rate within ``privacy.target_epsilon`` (opacus's accountant search)."""
    if privacy.target_epsilon is None:
        return float(privacy.noise_multiplier)
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=privacy.target_epsilon, target_delta=privacy.delta,
                                      sample_rate=sample_rate, steps=steps, accountant=privacy.accountant))


def dpsgd_for(privacy: DictConfig, num_samples: int, batch_size: int, total_steps: int,
              site_seed: str | None = None) -> DPSGD:
    """This client's DP-SGD: sample rate batch_size / its samples, noise for the run's
    ``total_steps`` local steps. Batches and noise come from the OS, unless the site gives a
    seed of its own (``site_seed``, never the server's: a seed the server could derive would
    let it replay the batches and subtract the noise)."""
    rate = min(1.0, batch_size / num_samples)
    if site_seed is None:
        sampler: random.Random = secrets.SystemRandom()
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    else:
        sampler = random.Random(f"batches:{site_seed}")
        generator = torch.Generator().manual_seed(random.Random(f"noise:{site_seed}").getrandbits(63))
    return DPSGD(noise_multiplier_for(privacy, rate, total_steps), float(privacy.max_grad_norm), rate,
                 rate * num_samples, generator, sampler, bool(privacy.secure_mode))


def load_accountant(state: RecordDict, mechanism: str) -> IAccountant:
    """The node's accountant with every step it has taken in earlier rounds of this run."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism)
    stored = state.config_records.get(ACCOUNTANT_STATE)
    if stored is not None:
        accountant.history = [(float(s), float(q), int(k)) for s, q, k in
                              zip(stored["noise"], stored["rate"], stored["steps"])]
    return accountant


def save_accountant(state: RecordDict, accountant: IAccountant) -> None:
    noise, rate, steps = zip(*accountant.history)
    state[ACCOUNTANT_STATE] = ConfigRecord({"noise": list(noise), "rate": list(rate), "steps": list(steps)})


def _stepped(state: RecordDict, mechanism: str, dp: DPSGD, steps: int) -> IAccountant:
    """The node's accountant with ``steps`` more steps of ``dp`` taken (not saved)."""
    accountant = load_accountant(state, mechanism)
    for _ in range(steps):
        accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate)
    return accountant


def epsilon_after(state: RecordDict, mechanism: str, dp: DPSGD, steps: int, delta: float) -> float:
    """The epsilon at ``delta`` the node would have spent after ``steps`` more steps of ``dp``
    (nothing is recorded)."""
    return float(_stepped(state, mechanism, dp, steps).get_epsilon(delta=delta))


def spend(state: RecordDict, privacy: DictConfig, dp: DPSGD, steps: int) -> float:
    """Add this round's ``steps`` DP-SGD steps to the node's accountant; the epsilon spent so far."""
    accountant = _stepped(state, privacy.accountant, dp, steps)
    save_accountant(state, accountant)
    return float(accountant.get_epsilon(delta=privacy.delta))
