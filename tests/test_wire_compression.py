"""Compressed activations on the wire (backbone.proto, "Scaled wire dtypes"): float8 e4m3 / e5m2
and int8 with a float32 scale per row, for embeddings up and gradients down.

Each format's round trip is held to the error its number format allows; every malformed payload
(a missing or short scale, a negative or NaN scale, a scale on an unscaled dtype, a float8 byte
that is NaN or Inf) is refused naming the tensor; the service answers a compressed TrainStep over
loopback; the in-process backbone's emulation of the wire gives the remote client's own answers
and bytes; and float32 stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

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
from anther.backbone.wire_emulation import WireEmulation
from anther.core.config import ConfigError
from anther.simulations.experiment import load_config

SCALED = ["float8_e4m3fn", "float8_e5m2", "int8"]
# The largest error of one element, as a fraction of its row's largest magnitude: int8 rounds to
# 1/254 of it; float8 keeps 3 (e4m3) or 2 (e5m2) mantissa bits, half an ulp = 2^-4 or 2^-3 of the value.
BOUND = {"int8": 0.5 / 127 + 1e-6, "float8_e4m3fn": 2 ** -4, "float8_e5m2": 2 ** -3}


def _rows(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 32, generator=g) * torch.logspace(-3, 3, 7).reshape(1, 7, 1)  # rows of every scale
    x[0, 0] = 0.0  # an all-zero row
    return x


@pytest.mark.parametrize("dtype", SCALED)
def test_round_trip_within_the_formats_error(dtype: str):
    x = _rows()
    msg = wire.encode(x, dtype)
    assert len(msg.data) == x.numel() and len(msg.scale) == 4 * 3 * 7  # a byte an element, a float32 a row
    y = wire.decode(msg, "inputs_embeds", wire.WIRE_DTYPES, ndim=3)
    assert y.dtype == torch.float32
    amax = x.abs().amax(dim=-1, keepdim=True)
    assert bool(((y - x).abs() <= BOUND[dtype] * amax + 1e-30).all())
    assert bool((y[0, 0] == 0).all())
    assert bool((y.abs().amax(dim=-1, keepdim=True) <= amax * (1 + BOUND[dtype])).all())


def test_unscaled_dtypes_are_unchanged_by_the_new_field():
    x = _rows(1)
    msg = wire.encode(x, "float32")
    assert msg.scale == b""
    assert torch.equal(wire.decode(msg, "x", wire.WIRE_DTYPES, ndim=3), x)


def _bad(dtype: str, change) -> pb.Tensor:
    msg = wire.encode(_rows(2), dtype)
    change(msg)
    return msg


def _set(field: str, value: bytes):
    return lambda m: setattr(m, field, value)


@pytest.mark.parametrize("dtype,change,message", [
    ("int8", _set("scale", b""), "holds 0 bytes of scale; shape \\[3, 7, 32\\] has 21 rows, which need 84"),
    ("float8_e4m3fn", _set("scale", b"\0" * 80), "holds 80 bytes of scale"),
    ("int8", _set("scale", torch.full((21,), -1.0).numpy().tobytes()), "scale that is negative, NaN or Inf"),
    ("float8_e5m2", _set("scale", torch.full((21,), math.nan).numpy().tobytes()), "negative, NaN or Inf"),
    ("float32", _set("scale", b"\0" * 84), "has a scale, but float32 is not a scaled dtype"),
    ("int8", _set("data", b"\0" * 10), "holds 10 bytes of data, but shape \\[3, 7, 32\\] of int8 needs 672"),
])
def test_a_malformed_compressed_tensor_is_refused_naming_it(dtype, change, message):
    with pytest.raises(wire.WireError, match="inputs_embeds.*" + message):
        wire.decode(_bad(dtype, change), "inputs_embeds", wire.WIRE_DTYPES, ndim=3)


@pytest.mark.parametrize("dtype,byte", [("float8_e4m3fn", 0x7F), ("float8_e5m2", 0x7C), ("float8_e5m2", 0x7E)])
def test_a_float8_nan_or_inf_byte_is_refused_by_the_service(local: InProcessBackbone, port: int, dtype: str,
                                                            byte: int):
    """0x7F is e4m3fn's NaN, 0x7C e5m2's +Inf, 0x7E one of its NaNs: they decode, and the service's
    finiteness check refuses the request with INVALID_ARGUMENT."""
    embeds, mask, labels = _inputs(local)
    msg = wire.encode(embeds, dtype)
    msg.data = bytes([byte]) + msg.data[1:]
    request = pb.ForwardRequest(inputs_embeds=msg, attention_mask=wire.encode(mask), labels=wire.encode(labels))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as error:
        list(pb_grpc.BackboneStub(channel).TrainStep(iter([request])))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs_embeds contains NaN or Inf" in error.value.details()


# -- through the service and in process -------------------------------------------------------
@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> InProcessBackbone:
    from anther.model.tiny_model import init_tiny

    return InProcessBackbone.from_pretrained(init_tiny(tmp_path_factory.mktemp("m") / "tiny", pretrain_steps=0))


@pytest.fixture(scope="module")
def port(local: InProcessBackbone) -> Iterator[int]:
    """The backbone service over ``local`` on a free loopback port, for this module's tests."""
    service = BackboneService(local, BatchPolicy(window_ms=0.0, max_batch=1), Limits())
    server, bound = start(service, "127.0.0.1:0", None, None)
    try:
        yield bound
    finally:
        server.stop(None)
        service.close()


def _inputs(local: InProcessBackbone) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(2, 16, local.info.hidden_size, generator=g)
    mask = torch.ones(2, 16, dtype=torch.long)
    labels = torch.randint(0, local.info.vocab_size, (2, 16), generator=g)
    labels[:, :8] = -100
    return embeds, mask, labels


@pytest.mark.parametrize("dtype", SCALED)
def test_a_compressed_train_step_over_loopback_equals_the_emulated_one(local: InProcessBackbone, port: int, dtype: str):
    """The remote client and the in-process emulation send and receive the same bytes and get the
    same loss and gradient; the gradient stays close to float32's, at about a quarter of its bytes."""
    embeds, mask, labels = _inputs(local)
    with RemoteBackbone(f"127.0.0.1:{port}", wire_dtype=dtype, attempts=1) as remote:
        assert dtype in remote.server.wire_dtypes  # Info lists the scaled dtypes
        loss, grad = remote.train_step(embeds, mask, labels)
        remote_down = remote.bytes_down
    emulated = WireEmulation(local, dtype)
    e_loss, e_grad = emulated.train_step(embeds, mask, labels)
    assert e_loss == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(e_grad, grad, rtol=1e-5, atol=1e-8)
    ref_loss, ref_grad = local.train_step(embeds, mask, labels)
    assert loss == pytest.approx(ref_loss, rel=0.05)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.95
    hidden = local.info.hidden_size
    assert emulated.bytes_down == 2 * 16 * (hidden + 4)  # a byte an element and a float32 a token
    assert emulated.bytes_up == 2 * 16 * (hidden + 4) + 2 * mask.numel() * 8
    assert remote_down < 0.3 * ref_grad.numel() * 4 + 1024  # the reply on the wire, proto overhead included


def test_float32_emulation_is_exact_and_counts_what_it_did_before(local: InProcessBackbone):
    embeds, mask, labels = _inputs(local)
    emulated = WireEmulation(local, "float32")
    loss, grad = emulated.train_step(embeds, mask, labels)
    ref_loss, ref_grad = local.train_step(embeds, mask, labels)
    assert loss == ref_loss and torch.equal(grad, ref_grad)
    assert emulated.bytes_up == embeds.numel() * 4 + mask.numel() * 8 + labels.numel() * 8
    assert emulated.bytes_down == grad.numel() * 4


def test_the_wire_dtype_is_checked_before_a_run():
    assert load_config("default", ["backbone.wire_dtype=int8"]).backbone.wire_dtype == "int8"
    with pytest.raises(ConfigError, match="backbone.wire_dtype='int4'"):
        load_config("default", ["backbone.wire_dtype=int4"])


def test_the_proto_documents_every_scaled_dtype():
    proto = (Path(wire.__file__).parent / "proto" / "backbone.proto").read_text()
    for dtype, largest in wire.SCALED_DTYPES.items():
        assert dtype in proto and f"{largest:g}" in proto
