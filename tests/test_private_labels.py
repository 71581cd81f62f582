"""Private labels (``backbone.private_labels``): the client computes head, loss and d loss / d
hidden states, the backbone only its decoder's forward and backward. The result must be exactly
the plain exchange's: the same loss, scores and adapter gradients (fp32), in process and through
the gRPC service with dynamic batching."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from anther.backbone import wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import IGNORE_INDEX, Backbone
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.batching import BatchPolicy, run_backward_from_hidden
from anther.backbone.service.decode import ForwardInputs, decode_hidden_backward
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.backbone.wire import WireError
from anther.client.inference import option_scores
from anther.client.private_labels import PrivateLabelBackbone
from anther.client.trainer import split_step
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder

TIGHT = {"rtol": 1e-5, "atol": 1e-7}


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def local(model, tiny_model_dir: Path) -> InProcessBackbone:
    return InProcessBackbone.from_model(model, tiny_model_dir)


@pytest.fixture(scope="module")
def encoder(model, tiny_model_dir: Path) -> SampleEncoder:
    """A NanoEdge with non-zero up projections, so gradients reach every adapter weight."""
    edge = NanoEdge.from_model(model, NanoAdapterConfig(rank=4, alpha=4))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in edge.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return SampleEncoder(edge, AutoProcessor.from_pretrained(tiny_model_dir))


@pytest.fixture(scope="module")
def port(local: InProcessBackbone) -> Iterator[int]:
    service = BackboneService(local, BatchPolicy(enabled=True, window_ms=20.0, max_batch=32))
    server, port = start(service)
    yield port
    server.stop(None)
    service.close()


def _step(encoder: SampleEncoder, backbone: Backbone, samples) -> tuple[float, dict[str, torch.Tensor]]:
    """One split step's loss and the adapter gradients it leaves."""
    encoder.edge.adapters.zero_grad(set_to_none=True)
    result = split_step(encoder, backbone, samples)
    return result.loss, {n: p.grad.clone() for n, p in encoder.edge.adapters.named_parameters()}


def _assert_same_step(encoder: SampleEncoder, plain: Backbone, private: Backbone, samples) -> None:
    loss, grads = _step(encoder, plain, samples)
    private_loss, private_grads = _step(encoder, private, samples)
    assert private_loss == pytest.approx(loss, rel=1e-6)
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(private_grads[name], g, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def test_in_process_private_labels_give_the_plain_loss_and_adapter_gradients(model, local, encoder, samples):
    mixed = [s if i % 3 else s.without_image() for i, s in enumerate(samples)]  # padded rows too
    _assert_same_step(encoder, local, PrivateLabelBackbone.of_model(local, model), mixed)


def test_service_private_labels_give_the_plain_loss_and_adapter_gradients(model, local, encoder, samples, port):
    with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as plain, \
            RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as inner:
        private = PrivateLabelBackbone.of_model(inner, model)
        _assert_same_step(encoder, plain, private, samples)
        _assert_same_step(encoder, local, private, samples)  # and the same as in process
        assert private.bytes_up == inner.bytes_up > 0 and private.bytes_down == inner.bytes_down > 0


def test_private_scores_equal_the_servers(model, local, encoder, samples, port):
    """Multiple-choice scoring labels the options' tokens: computed on the client, same numbers."""
    expected = option_scores(encoder, local, samples[:4])
    with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as inner:
        got = option_scores(encoder, PrivateLabelBackbone.of_model(inner, model), samples[:4])
    flat = [x for row in got for x in row]
    assert [len(r) for r in got] == [len(r) for r in expected]
    torch.testing.assert_close(torch.tensor(flat), torch.tensor([x for row in expected for x in row]),
                               rtol=1e-5, atol=1e-5)


def _request(local: InProcessBackbone, batch: int, length: int, seed: int) -> ForwardInputs:
    g = torch.Generator().manual_seed(seed)
    h = local.info.hidden_size
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - 1:] = 0  # a row with its own padding
    return ForwardInputs(torch.randn(batch, length, h, generator=g), mask, None, "float32",
                         torch.randn(batch, length, h, generator=g))


def test_batched_backward_gives_each_request_its_own_gradient(local):
    items = [_request(local, 2, 7, seed=0), _request(local, 1, 3, seed=1), _request(local, 3, 5, seed=2)]
    batched = run_backward_from_hidden(local, items)
    for item, got in zip(items, batched):
        alone = local.embeds_vjp(item.embeds, item.mask, item.grad_hidden)
        assert got.shape == item.embeds.shape
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-6)


def test_concurrent_private_label_clients_are_batched_and_exact(model, local, port):
    """Clients stepping at once (their requests may share batched passes) each get their own result."""
    inputs = [_request(local, 2, 4 + i, seed=10 + i) for i in range(4)]
    labels = [torch.full(x.mask.shape, IGNORE_INDEX).index_fill_(1, torch.tensor([2, 3]), 5) for x in inputs]
    results: list = [None] * len(inputs)

    def client(i: int) -> None:
        with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as inner:
            results[i] = PrivateLabelBackbone.of_model(inner, model).train_step(
                inputs[i].embeds, inputs[i].mask, labels[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y, (loss, grad) in zip(inputs, labels, results):
        expected_loss, expected_grad = local.train_step(x.embeds, x.mask, y)
        assert loss == pytest.approx(expected_loss, rel=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("grad_hidden", "message"), [
    (lambda h: None, "grad_hidden is missing"),
    (lambda h: torch.zeros(1, 2, h), r"grad_hidden has shape \[1, 2, \d+\]; inputs_embeds needs \[1, 3, \d+\]"),
    (lambda h: torch.full((1, 3, h), float("nan")), "grad_hidden contains NaN"),
    (lambda h: torch.ones(1, 3, h, dtype=torch.int64), "grad_hidden has dtype 'int64'"),
])
def test_backward_requests_with_a_bad_grad_hidden_are_refused_by_name(local, grad_hidden, message):
    x = _request(local, 1, 3, seed=0)
    bad = grad_hidden(local.info.hidden_size)
    msg = pb.HiddenBackwardRequest(inputs_embeds=wire.encode(x.embeds), attention_mask=wire.encode(x.mask))
    if bad is not None:
        msg.grad_hidden.CopyFrom(wire.encode(bad))
    with pytest.raises(WireError, match=message):
        decode_hidden_backward(msg, local.info, 64, torch.float32)


def test_the_server_can_still_solve_grad_hidden_for_the_labels(model, local):
    """What docs/what-leaves-a-client.md warns about: at a labelled position grad_hidden is
    W^T (softmax(W h) - onehot(y)) / n, and the server holds W and h, so it recovers y. Private
    labels keep label bytes off the wire; they do not hide labels from the backbone's operator."""
    x = _request(local, 2, 6, seed=3)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[:, 3:] = torch.randint(0, local.info.vocab_size, (2, 3), generator=torch.Generator().manual_seed(4))
    seen: dict[str, torch.Tensor] = {}

    class Spy:  # what the server receives, on the way to the real backbone
        info = local.info
        bytes_up = bytes_down = 0

        def hidden_states(self, embeds, mask, positions=None):
            return local.hidden_states(embeds, mask, positions)

        def backward_from_hidden(self, embeds, mask, grad_hidden, positions=None):
            seen.update(embeds=embeds, mask=mask, grad=grad_hidden)
            return local.backward_from_hidden(embeds, mask, grad_hidden, positions)

    PrivateLabelBackbone.of_model(Spy(), model).train_step(x.embeds, x.mask, labels)
    # the server's side: which rows carry a gradient, its own hidden states and head
    grad = seen["grad"]
    rows = grad.abs().sum(-1) != 0
    n = int(rows.sum())
    w = local.head.weight
    with torch.no_grad():
        probs = torch.softmax(local.hidden(seen["embeds"], seen["mask"]) @ w.T, dim=-1)
        target_rows = (probs @ w - n * grad)[rows]  # = W[y] at each labelled position
        recovered = torch.cdist(target_rows, w).argmin(dim=-1)
    assert torch.equal(recovered, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX])
