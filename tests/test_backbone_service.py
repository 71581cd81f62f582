"""The backbone gRPC service: same answers as InProcessBackbone, exact per-client results under
dynamic batching, clean refusals of malformed requests, TLS and bearer tokens, retries."""

from __future__ import annotations

import dataclasses
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from anther.backbone import wire
from anther.backbone.certs import make_certs
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import BackboneInfo, greedy_decode
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.auth import ServerTls
from anther.backbone.service.batching import RUNNERS, BatchPolicy, DynamicBatcher
from anther.backbone.service.decode import ForwardInputs, Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService

# Small limits, so that ordinary test requests are chunked and the limits are reachable.
LIMITS = Limits(max_sequence_length=64, max_chunk_bytes=64 * 1024, max_request_bytes=1 << 20,
                max_new_tokens=8)
FAST = BatchPolicy(enabled=True, window_ms=1.0, max_batch=32)


@pytest.fixture(scope="session")
def backbone_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anther.model.tiny_model import init_tiny

    return init_tiny(tmp_path_factory.mktemp("m") / "tiny", pretrain_steps=0)


@pytest.fixture(scope="session")
def local(backbone_model_dir: Path) -> InProcessBackbone:
    return InProcessBackbone.from_pretrained(backbone_model_dir)


@contextmanager
def running(local: InProcessBackbone, policy: BatchPolicy = FAST, address: str = "127.0.0.1:0",
            tls: ServerTls | None = None,
            tokens: dict[str, str] | None = None) -> Iterator[tuple[BackboneService, int]]:
    service = BackboneService(local, policy, LIMITS)
    server, port = start(service, address, tls, tokens)
    try:
        yield service, port
    finally:
        server.stop(None)
        service.close()


@pytest.fixture(scope="module")
def port(local: InProcessBackbone) -> Iterator[int]:
    with running(local) as (_, p):
        yield p


@pytest.fixture
def remote(port: int) -> Iterator[RemoteBackbone]:
    with RemoteBackbone(f"127.0.0.1:{port}", attempts=1) as r:
        yield r


@pytest.fixture
def stub(port: int) -> Iterator[pb_grpc.BackboneStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.BackboneStub(channel)


def make_inputs(info: BackboneInfo, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random embeddings, a right-padded mask (last row shorter) and labels on the second half."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, info.hidden_size, generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length - length // 4:] = 0
    labels = torch.randint(0, info.vocab_size, (batch, length), generator=g)
    labels[:, : length // 2] = -100
    labels[mask == 0] = -100
    return embeds, mask, labels


def forward_request(embeds: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor | None) -> pb.ForwardRequest:
    req = pb.ForwardRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(mask))
    if labels is not None:
        req.labels.CopyFrom(wire.encode(labels))
    return req


# ---------------------------------------------------------------- (1) same answers as InProcessBackbone


def test_remote_matches_local(local: InProcessBackbone, remote: RemoteBackbone, port: int) -> None:
    assert remote.info == dataclasses.replace(local.info, max_sequence_length=LIMITS.max_sequence_length)
    with pytest.raises(ValueError, match="same model"):
        RemoteBackbone(f"127.0.0.1:{port}", fingerprint="0" * 16)
    embeds, mask, labels = make_inputs(local.info, batch=4, length=40, seed=0)  # 80 KB: chunked
    loss, grad = remote.train_step(embeds, mask, labels)
    ref_loss, ref_grad = local.train_step(embeds, mask, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(remote.score(embeds, mask, labels), local.score(embeds, mask, labels),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(remote.next_token_logits(embeds, mask), local.next_token_logits(embeds, mask),
                               rtol=1e-6, atol=1e-6)
    assert remote.bytes_up > 3 * embeds.numel() * 4  # three calls carried the embeddings
    assert remote.bytes_down > grad.numel() * 4


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_half_precision_wire(local: InProcessBackbone, port: int, wire_dtype: str) -> None:
    embeds, mask, labels = make_inputs(local.info, batch=2, length=24, seed=1)
    with RemoteBackbone(f"127.0.0.1:{port}", wire_dtype=wire_dtype, attempts=1) as remote:
        loss, grad = remote.train_step(embeds, mask, labels)
        sent = remote.bytes_up
    ref_loss, ref_grad = local.train_step(embeds, mask, labels)
    assert grad.dtype == torch.float32
    assert loss == pytest.approx(ref_loss, abs=2e-2)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    assert sent < embeds.numel() * 4 * 0.6  # two bytes an element, not four


def test_generate_is_greedy_with_server_embeddings(local: InProcessBackbone, remote: RemoteBackbone) -> None:
    embeds, _, _ = make_inputs(local.info, batch=1, length=10, seed=2)
    mask = torch.ones(1, 10, dtype=torch.long)
    ids = remote.generate(embeds, mask, max_new_tokens=5)
    embed_tokens = local.decoder.get_input_embeddings()
    expected = []
    with torch.no_grad():
        for _ in range(5):
            nxt = local.next_token_logits(embeds, mask).argmax(dim=-1)
            expected.append(int(nxt))
            embeds = torch.cat([embeds, embed_tokens(nxt)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
    assert ids.tolist() == [expected]
    stop = expected[1]
    stopped = remote.generate(embeds[:, :10], mask[:, :10], max_new_tokens=5, stop_token_ids=[stop])
    assert stopped.tolist() == [expected[:expected.index(stop) + 1]]


# ---------------------------------------------------------------- (2) dynamic batching is exact


def _concurrently(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads released together; exceptions are returned, not raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


SHAPES = [(1, 9), (2, 17), (3, 30), (2, 45)]  # (sequences, length) per client


@pytest.mark.parametrize("kind", ["train_step", "score", "next_token_logits"])
def test_concurrent_clients_get_their_solo_results(local: InProcessBackbone, kind: str) -> None:
    inputs = [make_inputs(local.info, b, t, seed=10 + i) for i, (b, t) in enumerate(SHAPES)]
    args = [x if kind != "next_token_logits" else x[:2] for x in inputs]
    with running(local, BatchPolicy(enabled=True, window_ms=500, max_batch=64)) as (service, port):
        clients = [RemoteBackbone(f"127.0.0.1:{port}", attempts=1) for _ in SHAPES]
        results = _concurrently([lambda c=c, a=a: getattr(c, kind)(*a) for c, a in zip(clients, args)])
        for c in clients:
            c.close()
        assert service.batcher.stats.largest_batch >= 2, service.batcher.stats
    for got, a in zip(results, args):
        want = getattr(local, kind)(*a)
        if kind == "train_step":
            assert got[0] == pytest.approx(want[0], abs=1e-5)
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_batch_failure_is_isolated_to_the_culprit(local: InProcessBackbone,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a validated request still fail in the model, only its own caller sees the error."""
    def flaky(backbone: InProcessBackbone, items: list[ForwardInputs]) -> list[int]:
        if any(i.size == 3 for i in items):
            raise RuntimeError("boom")
        return [i.size for i in items]

    monkeypatch.setitem(RUNNERS, "score", flaky)
    batcher = DynamicBatcher(local, BatchPolicy(enabled=True, window_ms=300, max_batch=64))
    item = lambda n: ForwardInputs(torch.zeros(n, 2, 4), torch.ones(n, 2, dtype=torch.long), None)
    jobs = [batcher.submit("score", item(n)) for n in (1, 3, 2)]
    assert jobs[0].result() == 1 and jobs[2].result() == 2
    with pytest.raises(RuntimeError, match="boom"):
        jobs[1].result()
    batcher.close()


# ---------------------------------------------------------------- (3) malformed requests


FIELDS = ("inputs_embeds", "attention_mask", "labels")
Mutation = Callable[[pb.ForwardRequest, tuple[torch.Tensor, ...]], object]


def _set(req: pb.ForwardRequest, field: str, t: torch.Tensor) -> None:
    getattr(req, field).CopyFrom(wire.encode(t))


def _tiled(batch: int, length: int, cut: int) -> Mutation:
    """All three tensors repeated ``batch`` x ``length`` times, then cut to ``cut`` positions."""
    def mutate(req: pb.ForwardRequest, x: tuple[torch.Tensor, ...]) -> None:
        for field, t in zip(FIELDS, x):
            _set(req, field, t.repeat(batch, length, *([1] * (t.dim() - 2)))[:, :cut])
    return mutate


def _poisoned(value: float) -> Mutation:
    return lambda r, x: _set(r, "inputs_embeds", x[0].index_fill(1, torch.tensor([3]), value))


def _float64(req: pb.ForwardRequest, x: tuple[torch.Tensor, ...]) -> None:
    data = x[0].double().numpy().tobytes()
    req.inputs_embeds.CopyFrom(pb.Tensor(data=data, dtype="float64", shape=x[0].shape))


MALFORMED: dict[str, tuple[Mutation, str]] = {
    "wrong hidden size": (lambda r, x: _set(r, "inputs_embeds", x[0][..., :-1]), "hidden size 127"),
    "unknown dtype": (lambda r, x: setattr(r.inputs_embeds, "dtype", "float8"), "dtype 'float8'"),
    "float64 embeddings": (_float64, "dtype 'float64'"),
    "float labels": (lambda r, x: setattr(r.labels, "dtype", "float32"), "labels has dtype 'float32'"),
    "NaN": (_poisoned(float("nan")), "NaN or Inf"),
    "Inf": (_poisoned(float("-inf")), "NaN or Inf"),
    "too long": (_tiled(1, 5, 80), "sequence length 80 is over the limit of 64"),
    "over size limit": (_tiled(20, 4, 60), "over the limit of 1048576 bytes"),
    "truncated bytes": (lambda r, x: setattr(r.inputs_embeds, "data", r.inputs_embeds.data[:-3]),
                        "truncated"),
    "negative dimension": (lambda r, x: r.inputs_embeds.shape.__setitem__(0, -2), "at least 1"),
    "two-dimensional embeddings": (lambda r, x: r.inputs_embeds.shape.__delitem__(0),
                                   "expected 3 dimensions"),
    "mask shape mismatch": (lambda r, x: _set(r, "attention_mask", x[1][:, :-1]), "attention_mask has shape"),
    "labels shape mismatch": (lambda r, x: _set(r, "labels", x[2][:1]), "labels has shape"),
    "mask value 2": (lambda r, x: _set(r, "attention_mask", x[1] * 2), "0 or 1"),
    "empty mask row": (lambda r, x: _set(r, "attention_mask", x[1] * torch.tensor([[1], [0]])),
                       "no attended"),
    "label out of range": (lambda r, x: _set(r, "labels", x[2].clamp(min=0) + 1000), "or a token id in [0, "),
    "no labelled token": (lambda r, x: _set(r, "labels", torch.full_like(x[2], -100)), "no labelled token"),
    "missing labels": (lambda r, x: r.ClearField("labels"), "labels is missing"),
    "missing embeddings": (lambda r, x: r.ClearField("inputs_embeds"), "inputs_embeds is missing"),
    "bad grad dtype": (lambda r, x: setattr(r, "grad_dtype", "int64"), "grad_dtype 'int64'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_invalid_argument(local: InProcessBackbone, stub: pb_grpc.BackboneStub,
                                               case: str) -> None:
    inputs = make_inputs(local.info, batch=2, length=16, seed=3)
    mutate, message = MALFORMED[case]
    req = forward_request(*inputs)
    mutate(req, inputs)
    with pytest.raises(grpc.RpcError) as err:
        wire.assemble(stub.TrainStep(wire.chunks(req, LIMITS.max_chunk_bytes)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    reply = wire.assemble(stub.TrainStep(wire.chunks(forward_request(*inputs), LIMITS.max_chunk_bytes)))
    assert reply.loss == pytest.approx(local.train_step(*inputs)[0], rel=1e-6)


def test_malformed_generate_is_invalid_argument(local: InProcessBackbone, stub: pb_grpc.BackboneStub) -> None:
    embeds, mask, _ = make_inputs(local.info, batch=1, length=8, seed=4)
    for n, message in [(0, "max_new_tokens is 0"), (9, "max_new_tokens is 9")]:
        req = pb.GenerateRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(mask),
                                 max_new_tokens=n)
        with pytest.raises(grpc.RpcError) as err:
            wire.assemble(stub.Generate(iter([req])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_oversized_single_message_is_refused_by_grpc(local: InProcessBackbone,
                                                     stub: pb_grpc.BackboneStub) -> None:
    """One message over max_chunk_bytes + slack never reaches the service (backbone.proto: Chunking)."""
    inputs = make_inputs(local.info, batch=4, length=64, seed=5)  # 128 KiB of embeddings in one message
    with pytest.raises(grpc.RpcError) as err:
        wire.assemble(stub.TrainStep(iter([forward_request(*inputs)])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_request_does_not_disturb_its_batch(local: InProcessBackbone) -> None:
    good = [make_inputs(local.info, 2, 12 + i, seed=20 + i) for i in range(3)]
    bad = make_inputs(local.info, 2, 12, seed=30)
    bad[0][0, 0, 0] = float("nan")
    with running(local, BatchPolicy(enabled=True, window_ms=300, max_batch=64)) as (_, port):
        clients = [RemoteBackbone(f"127.0.0.1:{port}", attempts=1) for _ in range(4)]
        results = _concurrently([lambda c=c, a=a: c.train_step(*a) for c, a in zip(clients, [*good, bad])])
        for c in clients:
            c.close()
    assert isinstance(results[3], grpc.RpcError) and results[3].code() == grpc.StatusCode.INVALID_ARGUMENT
    for (loss, grad), a in zip(results[:3], good):
        ref_loss, ref_grad = local.train_step(*a)
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- (4) TLS, mutual TLS, bearer tokens


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return make_certs(tmp_path_factory.mktemp("certs"), server_names=["backbone.test"], clients=["alice"])


def test_certs_name_the_server_and_protect_keys(certs) -> None:
    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "backbone.test"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    for key in (certs.ca_key, certs.server_key, certs.clients["alice"][1]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="client names"):
        make_certs(certs.ca_cert.parent / "other", clients=["../evil"])


def test_tls_with_client_certs_and_tokens(local: InProcessBackbone, certs) -> None:
    tls = ServerTls(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    alice_cert, alice_key = certs.clients["alice"]
    inputs = make_inputs(local.info, batch=2, length=16, seed=6)
    with running(local, tls=tls, tokens={"alice": "alice-token", "bob": "bob-token"}) as (_, port):
        address = f"127.0.0.1:{port}"
        tls_args = {"root_cert": certs.ca_cert, "client_cert": alice_cert, "client_key": alice_key,
                    "attempts": 1}
        with RemoteBackbone(address, token="alice-token", **tls_args) as alice:
            loss, _ = alice.train_step(*inputs)
        assert loss == pytest.approx(local.train_step(*inputs)[0], rel=1e-6)
        for token in (None, "wrong-token"):
            with pytest.raises(grpc.RpcError) as err:
                RemoteBackbone(address, token=token, **tls_args)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # streaming RPCs are guarded too, not only Info
        creds = grpc.ssl_channel_credentials(certs.ca_cert.read_bytes(), alice_key.read_bytes(),
                                             alice_cert.read_bytes())
        with grpc.secure_channel(address, creds) as channel, pytest.raises(grpc.RpcError) as err:
            wire.assemble(pb_grpc.BackboneStub(channel).TrainStep(iter([forward_request(*inputs)])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # without a client certificate, or without TLS at all, there is no connection
        for kwargs in ({"root_cert": certs.ca_cert}, {}):
            with pytest.raises(grpc.RpcError) as err:
                RemoteBackbone(address, token="alice-token", attempts=1, timeout_s=10, **kwargs)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- retries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_until_server_is_up(local: InProcessBackbone) -> None:
    port = _free_port()
    with pytest.raises(grpc.RpcError) as err:
        RemoteBackbone(f"127.0.0.1:{port}", attempts=1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    up = threading.Event()

    def start_later() -> None:
        with running(local, address=f"127.0.0.1:{port}"):
            up.wait()

    threading.Timer(0.5, start_later).start()
    try:
        with RemoteBackbone(f"127.0.0.1:{port}", attempts=10, backoff_s=0.1, max_backoff_s=0.5) as r:
            assert r.info.fingerprint == local.info.fingerprint
    finally:
        up.set()


# ---------------------------------------------------------------- (5) chunks (the decoders: test_fuzz_decoders.py)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=20_000), chunk=st.integers(2048, 8192))
def test_chunks_reassemble_within_limit(data: bytes, chunk: int) -> None:
    req = pb.ForwardRequest(inputs_embeds=pb.Tensor(data=data, dtype="float32", shape=[1, 2, 3]),
                            labels=pb.Tensor(data=data[::-1], dtype="int64", shape=[7]), grad_dtype="float16")
    parts = list(wire.chunks(req, chunk))
    assert all(p.ByteSize() <= chunk for p in parts)
    assert wire.assemble(iter(parts)) == req


# ---------------------------------------------------------------- (4) token positions travel with the embeddings


def _positions(mask: torch.Tensor, offset: int, stride: int = 1) -> torch.Tensor:
    """(B, T, 1) positions ``offset``, ``offset + stride``, ..., 0 on padding, as a family with its
    own positions sends them (RoPE is relative: only a stride other than 1 changes the output)."""
    return ((torch.arange(mask.shape[1]) * stride + offset) * mask).unsqueeze(-1)


def test_positions_reach_the_remote_decoder_and_batch_exactly(local: InProcessBackbone) -> None:
    inputs = [make_inputs(local.info, b, t, seed=20 + i) for i, (b, t) in enumerate(SHAPES)]
    positions = [_positions(x[1], offset=i, stride=2) if i % 2 else None for i, x in enumerate(inputs)]
    with running(local, BatchPolicy(enabled=True, window_ms=500, max_batch=64)) as (service, port):
        clients = [RemoteBackbone(f"127.0.0.1:{port}", attempts=1) for _ in SHAPES]
        assert clients[0].info.position_dims == 1
        results = _concurrently([lambda c=c, x=x, p=p: c.train_step(*x, p)
                                 for c, x, p in zip(clients, inputs, positions)])
        for c in clients:
            c.close()
        assert service.batcher.stats.largest_batch >= 2, service.batcher.stats
    for (loss, grad), x, p in zip(results, inputs, positions):
        want_loss, want_grad = local.train_step(*x, p)
        assert loss == pytest.approx(want_loss, abs=1e-5)
        torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-5)
    shifted, plain = local.train_step(*inputs[1], positions[1])[0], local.train_step(*inputs[1])[0]
    assert shifted != pytest.approx(plain, abs=1e-6)  # the positions did reach the decoder


def test_positions_default_to_0_1_2_and_decoding_continues_them(local: InProcessBackbone,
                                                                 remote: RemoteBackbone) -> None:
    embeds, mask, labels = make_inputs(local.info, batch=2, length=12, seed=5)
    arange = _positions(torch.ones_like(mask), offset=0)
    torch.testing.assert_close(remote.score(embeds, mask, labels, arange), local.score(embeds, mask, labels),
                               rtol=1e-6, atol=1e-6)
    embed = local.decoder.get_input_embeddings()
    torch.testing.assert_close(  # with 0, 1, 2, ... written out, decoding picks the same tokens
        greedy_decode(local.next_token_logits, embed, embeds, mask, 4, [], arange),
        greedy_decode(local.next_token_logits, embed, embeds, mask, 4, []))
    seen = []

    def spy(e: torch.Tensor, m: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        seen.append(p.clone())
        return local.next_token_logits(e, m, p)

    start = _positions(mask, offset=7)
    greedy_decode(spy, embed, embeds, mask, 3, [], start)
    lengths = mask.sum(dim=1)
    for step, p in enumerate(seen[1:], 1):  # each new token: the row's highest position + 1, + 1, ...
        for row in range(2):
            assert int(p[row, lengths[row] + step - 1, 0]) == int(start[row].max()) + step


MALFORMED_POSITIONS = {
    "three coordinates for a one-coordinate model": (lambda p: p.expand(-1, -1, 3), "position_ids has shape"),
    "negative position": (lambda p: p - 1, "position_ids must be in [0, "),
    "float positions": (lambda p: p.float(), "position_ids has dtype 'float32'"),
}


@pytest.mark.parametrize("case", list(MALFORMED_POSITIONS))
def test_malformed_positions_are_invalid_argument(local: InProcessBackbone, stub: pb_grpc.BackboneStub,
                                                  case: str) -> None:
    embeds, mask, labels = make_inputs(local.info, batch=2, length=16, seed=3)
    mutate, message = MALFORMED_POSITIONS[case]
    req = forward_request(embeds, mask, labels)
    req.position_ids.CopyFrom(wire.encode(mutate(_positions(torch.ones_like(mask), offset=0))))
    with pytest.raises(grpc.RpcError) as err:
        wire.assemble(stub.TrainStep(wire.chunks(req, LIMITS.max_chunk_bytes)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
