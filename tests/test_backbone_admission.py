"""The backbone service's admission bounds (anther/backbone/service/admission.py): calls one client
may have in flight, upload bytes all calls may hold, and a read timeout for calls that send nothing.
Each test has one client misbehave and shows a well-behaved client served meanwhile."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
import torch

from anther.backbone import wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.admission import Admission, Busy, Stalled
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.bench.service_bench import random_inputs

TOKENS = {"hog": "hog-token", "good": "good-token"}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> InProcessBackbone:
    from anther.model.tiny_model import init_tiny

    return InProcessBackbone.from_pretrained(init_tiny(tmp_path_factory.mktemp("m") / "tiny", pretrain_steps=0))


@contextlib.contextmanager
def _serving(local: InProcessBackbone, limits: Limits) -> Iterator[tuple[BackboneService, int]]:
    svc = BackboneService(local, BatchPolicy(window_ms=1.0), limits)
    server, port = start(svc, tokens=TOKENS)
    try:
        yield svc, port
    finally:
        server.stop(None)
        svc.close()


def _request(inputs: tuple[torch.Tensor, ...]) -> pb.ForwardRequest:
    embeds, mask, labels = inputs
    return pb.ForwardRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(mask),
                             labels=wire.encode(labels))


def _stalling(chunks: list[pb.ForwardRequest], until: threading.Event) -> Iterator[pb.ForwardRequest]:
    """Sends ``chunks``, then nothing more with the call left open."""
    yield from chunks
    until.wait()


def _hog_call(pool: ThreadPoolExecutor, port: int, chunks: list[pb.ForwardRequest],
              until: threading.Event) -> Future:
    """A TrainStep of client "hog" that stalls after ``chunks``; the future holds its RpcError."""

    def call() -> grpc.RpcError:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = pb_grpc.BackboneStub(channel).TrainStep(
                _stalling(chunks, until), metadata=(("authorization", "Bearer hog-token"),), timeout=30)
            try:
                wire.assemble(replies)
            except grpc.RpcError as e:
                return e
        raise AssertionError("a stalled call was answered")

    return pool.submit(call)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _good_client_is_served(local: InProcessBackbone, port: int) -> float:
    inputs = random_inputs(local, 2, 16, seed=9)
    with RemoteBackbone(f"127.0.0.1:{port}", token="good-token", attempts=1) as remote:
        loss = remote.train_step(*inputs)[0]
    assert loss == pytest.approx(local.train_step(*inputs)[0], rel=1e-5)
    return loss


def _reader_threads() -> int:
    return sum(t.name == "backbone-read" for t in threading.enumerate())


def test_info_reports_the_admission_bounds(local):
    limits = Limits(max_calls_per_client=3, max_inflight_bytes=5 << 20, read_timeout_s=7.5)
    with _serving(local, limits) as (_, port), RemoteBackbone(f"127.0.0.1:{port}", token="good-token") as remote:
        assert (remote.server.max_calls_per_client, remote.server.max_inflight_bytes,
                remote.server.read_timeout_s) == (3, 5 << 20, 7.5)


def test_idle_streams_of_one_client_cannot_lock_out_the_others(local):
    """The hog opens 4 calls that send nothing: 2 (its limit) are admitted and ended by the read
    timeout, 2 are refused at once; the good client trains and calls Info meanwhile."""
    limits = Limits(max_calls_per_client=2, read_timeout_s=2.0)
    stop = threading.Event()
    with _serving(local, limits) as (svc, port), ThreadPoolExecutor(4) as pool:
        hogs = [_hog_call(pool, port, [], stop) for _ in range(4)]
        _wait_for(lambda: svc.admission.refused["calls"] == 2 and svc.admission.calls["hog"] == 2)
        _good_client_is_served(local, port)
        assert svc.admission.calls["hog"] == 2  # still holding its two while the good client was served
        errors = [h.result(timeout=30) for h in hogs]
        stop.set()
        _wait_for(lambda: _reader_threads() == 0)
        assert not svc.admission.calls and svc.admission.inflight_bytes == 0
    codes = sorted(e.code().name for e in errors)
    assert codes == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "UNAVAILABLE"]
    assert all("Info.max_calls_per_client" in e.details() for e in errors if e.code().name == "UNAVAILABLE")
    assert all("no request data for 2 s" in e.details() for e in errors if e.code().name == "DEADLINE_EXCEEDED")


def test_a_stalled_upload_holds_its_bytes_only_until_the_read_timeout(local):
    """The hog uploads part of a request and stalls, holding bytes; the good client's request does not
    fit beside them, waits for room, and is served once the hog's call is ended."""
    big = _request(random_inputs(local, 8, 32, seed=0))
    chunks = list(wire.chunks(big, 16 * 1024))[:3]
    held = sum(c.ByteSize() for c in chunks)
    good = _request(random_inputs(local, 2, 16, seed=9)).ByteSize()
    limits = Limits(max_inflight_bytes=held + good - 1, read_timeout_s=2.0)
    stop = threading.Event()
    with _serving(local, limits) as (svc, port), ThreadPoolExecutor(1) as pool:
        hog = _hog_call(pool, port, chunks, stop)
        _wait_for(lambda: svc.admission.inflight_bytes == held)
        time.sleep(0.5)  # the good client arrives well after the hog's last chunk
        _good_client_is_served(local, port)
        assert hog.done() and hog.result().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stop.set()
        _wait_for(lambda: svc.admission.inflight_bytes == 0 and _reader_threads() == 0)
    assert svc.admission.refused["stalled"] == 1 and svc.admission.refused["bytes"] == 0


def test_a_client_over_its_call_limit_backs_off_and_gets_through(local):
    """Six TrainSteps at once from one client allowed one call in flight: the others are refused
    "busy" (UNAVAILABLE), retried with backoff, and every one gets its own right answer."""
    batches = [random_inputs(local, 2, 16, seed=s) for s in range(6)]
    with _serving(local, Limits(max_calls_per_client=1)) as (svc, port), \
            RemoteBackbone(f"127.0.0.1:{port}", token="good-token", attempts=50, backoff_s=0.02) as remote, \
            ThreadPoolExecutor(6) as pool:
        losses = list(pool.map(lambda x: remote.train_step(*x)[0], batches))
    assert losses == pytest.approx([local.train_step(*x)[0] for x in batches], rel=1e-5)
    assert svc.admission.refused["calls"] >= 1


def test_admission_counts_and_gives_back():
    """The bounds on their own: a caller at its limit is Busy, bytes over the budget wait and then
    are Busy, a stalled read is Stalled, and whatever ends a call gives its place and bytes back."""
    admission = Admission(max_calls_per_client=1, max_inflight_bytes=100, read_timeout_s=0.2)
    with admission.call("a") as ticket:
        with pytest.raises(Busy, match="client a already has 1 calls"), admission.call("a"):
            pass
        admission.reserve(ticket, 80)
        with admission.call("b") as other:
            started = time.monotonic()
            with pytest.raises(Busy, match="would take it over 100"):
                admission.reserve(other, 30)
            assert time.monotonic() - started >= 0.2
    assert admission.inflight_bytes == 0 and not admission.calls
    silent = threading.Event()
    with pytest.raises(Stalled), admission.call("a") as ticket:
        list(ticket.read(_stalling([], silent)))
    silent.set()
    assert admission.refused == {"calls": 1, "bytes": 1, "stalled": 1} and not admission.calls
