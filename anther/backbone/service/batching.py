"""Dynamic batching: one thread owns the model and runs the requests that arrive together as one pass.

Each TrainStep's loss is the mean over its own labelled tokens, and the batched backward runs on
the *sum* of those per-request losses; since a request's loss depends only on its own rows, each
request gets exactly the gradient it would have got alone.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import IGNORE_INDEX, greedy_decode, token_log_likelihoods
from anther.backbone.service.decode import ForwardInputs, GenerateInputs, Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """Dynamic batching: wait up to ``window_ms`` for up to ``max_batch`` sequences."""

    enabled: bool = True
    window_ms: float = 5.0
    max_batch: int = 32



# ---------------------------------------------------------------- batched computation


def _right_pad(tensors: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Concatenate along the batch dimension, right-padding dimension 1 to a common length."""
    length = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]), value=value)
                      for t in tensors])


def _stack(items: Sequence[ForwardInputs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[slice]]:
    """Padded embeddings, mask and positions of all requests, and the rows each request owns. A
    request without positions has 0, 1, 2, ... written out where others have theirs."""
    embeds = _right_pad([i.embeds for i in items], 0.0)
    mask = _right_pad([i.mask for i in items], 0)
    bounds = itertools.accumulate((i.size for i in items), initial=0)
    given = [i.positions for i in items if i.positions is not None]
    positions = None
    if given:
        dims = given[0].shape[-1]
        positions = _right_pad([i.positions if i.positions is not None else
                                torch.arange(i.mask.shape[1]).view(1, -1, 1).expand(i.size, -1, dims)
                                for i in items], 0)
    return embeds, mask, positions, [slice(a, b) for a, b in itertools.pairwise(bounds)]


def run_train_steps(backbone: InProcessBackbone,
                    items: Sequence[ForwardInputs]) -> list[tuple[float, torch.Tensor]]:
    """One forward and backward for all requests; each gets its own loss and gradient. All of it
    runs on the backbone's device: the logits (sequences x tokens x vocabulary) never leave it,
    only the losses and the input gradient do."""
    embeds, mask, positions, rows = _stack(items)
    labels = _right_pad([i.labels for i in items], IGNORE_INDEX).to(backbone.device)
    x = embeds.to(backbone.device).requires_grad_(True)
    with torch.enable_grad():
        log_likelihood, counted = token_log_likelihoods(backbone.logits_on_device(x, mask, positions), labels)
        losses = torch.stack([-log_likelihood[r].sum() / counted[r].sum() for r in rows])
        (grad,) = torch.autograd.grad(losses.sum(), x)
    grad = grad.to(embeds.device)
    return [(loss, grad[r, :i.embeds.shape[1]]) for loss, r, i in zip(losses.tolist(), rows, items)]


def run_hidden_states(backbone: InProcessBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    """The decoder's output for each request (its own rows and length)."""
    embeds, mask, positions, rows = _stack(items)
    with torch.no_grad():
        hidden = backbone.hidden(embeds, mask, positions)
    return [hidden[r, :i.embeds.shape[1]] for r, i in zip(rows, items)]


def run_backward_from_hidden(backbone: InProcessBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    """One backward pass for all requests. The padding's gradient is zero and a row depends only on
    itself, so each request gets exactly the gradient it would have got alone."""
    embeds, mask, positions, rows = _stack(items)
    grad_hidden = _right_pad([i.grad_hidden for i in items], 0.0)
    grad = backbone.embeds_vjp(embeds, mask, grad_hidden, positions)
    return [grad[r, :i.embeds.shape[1]] for r, i in zip(rows, items)]


def run_scores(backbone: InProcessBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    embeds, mask, positions, rows = _stack(items)
    labels = _right_pad([i.labels for i in items], IGNORE_INDEX)
    scores = backbone.score(embeds, mask, labels, positions)
    return [scores[r] for r in rows]


def run_next_token_logits(backbone: InProcessBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    embeds, mask, positions, rows = _stack(items)
    logits = backbone.next_token_logits(embeds, mask, positions)
    return [logits[r] for r in rows]


def _greedy(backbone: InProcessBackbone, item: GenerateInputs) -> torch.Tensor:
    """Greedy decoding; each new token is embedded with the server's own embedding table."""
    return greedy_decode(backbone.next_token_logits, backbone.decoder.get_input_embeddings(), item.embeds,
                         item.mask, item.max_new_tokens, item.stop_token_ids, item.positions)


def run_generate(backbone: InProcessBackbone, items: Sequence[GenerateInputs]) -> list[torch.Tensor]:
    return [_greedy(backbone, item) for item in items]


# ---------------------------------------------------------------- the batcher

Runner = Callable[[InProcessBackbone, Sequence[Any]], list[Any]]
RUNNERS: dict[Kind, Runner] = {
    "train": run_train_steps, "score": run_scores, "logits": run_next_token_logits,
    "hidden": run_hidden_states, "backward": run_backward_from_hidden, "generate": run_generate,
}
BATCHABLE = frozenset({"train", "score", "logits", "hidden", "backward"})


@dataclass
class _Job:
    kind: Kind
    item: ForwardInputs | GenerateInputs
    future: futures.Future = field(default_factory=futures.Future)


@dataclass
class _Call:
    """Any other torch work (decoding a request, encoding a reply) for the batcher's thread."""

    fn: Callable[[], Any]
    future: futures.Future = field(default_factory=futures.Future)

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as e:  # noqa: BLE001 - the caller's future carries it
            self.future.set_exception(e)


@dataclass
class BatchStats:
    """What the batcher has done; lets tests and operators see batching happen."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0  # requests in the largest batch run


class DynamicBatcher:
    """One thread that owns the model and runs queued requests, batched by kind.

    The first request to arrive opens a window of ``policy.window_ms``; requests
    queued or arriving before it closes, up to ``policy.max_batch`` sequences, run
    with it (``window_ms=0``: batch only what is already waiting, never wait). A pass also
    holds at most ``max_tokens`` padded tokens (sequences x the longest), so a batch never
    needs more memory than the largest request the service admits.
    A batch that fails is re-run one request at a time, so only the culprit fails.

    This thread does all of the service's torch work: it loads the model (given a loader)
    and decodes requests and encodes replies too (:meth:`call`). PyTorch's OpenMP pool
    belongs to the thread that starts a parallel region; with a second pool in the process
    on a busy CPU, libgomp stops spinning between regions and a backbone step of small
    kernels takes twice as long (docs/performance.md).
    """

    def __init__(self, backbone: InProcessBackbone | Callable[[], InProcessBackbone], policy: BatchPolicy,
                 max_tokens: int | None = None) -> None:
        self.policy, self.max_tokens = policy, max_tokens
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[_Job | _Call | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # no job may be queued behind the close sentinel
        loaded = _Call((lambda: backbone) if isinstance(backbone, InProcessBackbone) else backbone)
        self._queue.put(loaded)
        self._thread = threading.Thread(target=self._loop, name="backbone-batcher", daemon=True)
        self._thread.start()
        try:
            self.backbone: InProcessBackbone = loaded.future.result()
        except BaseException:
            self.close()
            raise

    def submit(self, kind: Kind, item: ForwardInputs | GenerateInputs) -> futures.Future:
        return self._put(_Job(kind, item))

    def call(self, fn: Callable[[], Any]) -> futures.Future:
        """Run ``fn`` on the batcher's thread, between batches."""
        return self._put(_Call(fn))

    def _put(self, job: _Job | _Call) -> futures.Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("the backbone batcher is closed")
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            if isinstance(first, _Call):
                first.run()
                continue
            jobs, closing = self._collect(first)
            for batch in self._pack(jobs):
                self._execute(batch)
            if closing:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """Jobs already queued or arriving within the window; True when the close sentinel came too.

        Queued jobs are always taken, even after the window: under load, requests that
        arrived while the previous batch ran form the next one without any wait.
        """
        jobs, size = [first], first.item.size
        if not self.policy.enabled:
            return jobs, False
        deadline = time.monotonic() + self.policy.window_ms / 1000
        while size < self.policy.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if isinstance(job, _Call):  # quick (a decode): run it now, its request may join this batch
                job.run()
                continue
            jobs.append(job)
            size += job.item.size
        return jobs, False

    def _pack(self, jobs: list[_Job]) -> Iterator[list[_Job]]:
        """Same-kind batches of at most max_batch sequences and max_tokens padded tokens (a bigger
        request runs alone)."""
        for kind in dict.fromkeys(j.kind for j in jobs):
            batch: list[_Job] = []
            size = longest = 0
            for job in (j for j in jobs if j.kind == kind):
                length = max(longest, job.item.embeds.shape[1])
                full = (kind not in BATCHABLE or size + job.item.size > self.policy.max_batch
                        or (self.max_tokens is not None and (size + job.item.size) * length > self.max_tokens))
                if batch and full:
                    yield batch
                    batch, size, length = [], 0, job.item.embeds.shape[1]
                batch.append(job)
                size, longest = size + job.item.size, length
            yield batch

    def _execute(self, batch: list[_Job]) -> None:
        try:
            results = RUNNERS[batch[0].kind](self.backbone, [j.item for j in batch])
        except Exception as e:  # isolate the failing request, keep serving
            if len(batch) > 1:
                for job in batch:
                    self._execute([job])
                return
            log.exception("backbone %s request failed", batch[0].kind)
            batch[0].future.set_exception(e)
            return
        self.stats.requests += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for job, result in zip(batch, results):
            job.future.set_result(result)
