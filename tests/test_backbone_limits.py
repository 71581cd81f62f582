"""The backbone service's limits: a request asking for more tokens than a pass may hold is refused
with RESOURCE_EXHAUSTED (before it is decoded), bytes that are not a backbone.proto message are
INVALID_ARGUMENT without a traceback, an output that is not finite is refused for that request
only, and a client splits a batch over the limit into parts with the answer the whole batch gets.
Each time, a well-behaved client is served meanwhile."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
import torch

from anther.backbone import wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.bench.service_bench import random_inputs

TOKENS = 256  # sequences x tokens a request (and a pass) may hold here
LIMITS = Limits(max_sequence_length=64, max_request_tokens=TOKENS)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> InProcessBackbone:
    from anther.model.tiny_model import init_tiny

    return InProcessBackbone.from_pretrained(init_tiny(tmp_path_factory.mktemp("m") / "tiny", pretrain_steps=0))


@pytest.fixture(scope="module")
def service(local: InProcessBackbone) -> Iterator[tuple[BackboneService, int]]:
    svc = BackboneService(local, BatchPolicy(window_ms=1.0, max_batch=64), LIMITS)
    server, port = start(svc)
    yield svc, port
    server.stop(None)
    svc.close()


def _well_behaved_client_is_served(local: InProcessBackbone, port: int) -> None:
    inputs = random_inputs(local, 2, 16, seed=9)
    with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as remote:
        assert remote.train_step(*inputs)[0] == pytest.approx(local.train_step(*inputs)[0], rel=1e-5)


def test_info_reports_the_token_limit(service):
    with RemoteBackbone(f"127.0.0.1:{service[1]}", attempts=1) as remote:
        assert remote.server.max_request_tokens == TOKENS


def test_a_request_over_the_token_limit_is_resource_exhausted(local, service):
    embeds, mask, labels = random_inputs(local, 9, 32, seed=0)  # 288 tokens > 256
    request = pb.ForwardRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(mask),
                                labels=wire.encode(labels))
    with grpc.insecure_channel(f"127.0.0.1:{service[1]}") as channel, pytest.raises(grpc.RpcError) as err:
        wire.assemble(pb_grpc.BackboneStub(channel).TrainStep(wire.chunks(request, LIMITS.max_chunk_bytes)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "9 sequences x 32 tokens = 288" in err.value.details() and "at most 256" in err.value.details()
    _well_behaved_client_is_served(local, service[1])


def test_bytes_that_are_no_message_are_invalid_argument_without_a_traceback(local, service, caplog):
    with caplog.at_level(logging.ERROR), grpc.insecure_channel(f"127.0.0.1:{service[1]}") as channel:
        raw = channel.stream_stream("/anther.backbone.v1.Backbone/TrainStep")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([b"\xff\xff\xff\xff not protobuf"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ForwardRequest" in err.value.details()
    assert "Traceback" not in caplog.text and "deserializ" not in caplog.text
    _well_behaved_client_is_served(local, service[1])


def test_an_output_that_is_not_finite_is_refused_for_that_request_only(local, service):
    embeds, mask, labels = random_inputs(local, 2, 16, seed=0)
    with RemoteBackbone(f"127.0.0.1:{service[1]}", attempts=1) as remote, pytest.raises(grpc.RpcError) as err:
        remote.train_step(torch.full_like(embeds, 3e38), mask, labels)  # finite; its squares overflow
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in err.value.details()
    _well_behaved_client_is_served(local, service[1])


@pytest.mark.parametrize("method", ["train_step", "score", "next_token_logits", "hidden_states"])
def test_a_batch_over_the_limit_goes_in_parts_with_the_whole_batchs_answer(local, service, method):
    embeds, mask, labels = random_inputs(local, 20, 32, seed=4)  # 640 tokens: three parts of at most 8 rows
    mask[-1, 20:] = 0
    labels[mask == 0] = -100
    args = (embeds, mask, labels) if method in ("train_step", "score") else (embeds, mask)
    with RemoteBackbone(f"127.0.0.1:{service[1]}", attempts=1) as remote:
        assert len(remote._parts(embeds)) == 3
        got = getattr(remote, method)(*args)
    want = getattr(local, method)(*args)
    if method == "train_step":
        assert got[0] == pytest.approx(want[0], rel=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-7)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_backward_from_hidden_goes_in_parts_too(local, service):
    embeds, mask, _ = random_inputs(local, 20, 32, seed=5)
    grad_hidden = torch.randn(20, 32, local.info.hidden_size, generator=torch.Generator().manual_seed(6))
    with RemoteBackbone(f"127.0.0.1:{service[1]}", attempts=1) as remote:
        got = remote.backward_from_hidden(embeds, mask, grad_hidden)
    torch.testing.assert_close(got, local.backward_from_hidden(embeds, mask, grad_hidden), rtol=1e-4, atol=1e-6)


def test_no_pass_holds_more_tokens_than_the_limit(local, service):
    """Many small requests at once are packed into passes of at most the limit's tokens."""
    from concurrent.futures import ThreadPoolExecutor

    _, port = service
    seen: list[int] = []
    real = local.logits_on_device

    def counting(x, mask, positions=None):
        seen.append(x.shape[0] * x.shape[1])
        return real(x, mask, positions)

    inputs = [random_inputs(local, 4, 32, seed=i) for i in range(8)]  # 128 tokens each: two fit a pass
    local.logits_on_device = counting
    try:
        with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as remote, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda x: remote.train_step(*x), inputs))
    finally:
        del local.logits_on_device
    assert seen and max(seen) <= TOKENS
