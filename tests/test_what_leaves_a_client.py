"""What leaves a client (issue 7 item 4): record every byte a client sends in a real small run
and look for its private data in it.

The ClientApp's real ``query``, ``train`` and ``evaluate`` handlers run one node against a real
backbone service on 127.0.0.1 (``backbone.mode=remote``). Recorded are:

- every backbone request, as serialized on the gRPC channel (an interceptor on the channel
  RemoteBackbone opens), chunk by chunk, with its method;
- every Flower reply, as a SuperNode pushes it: ``message_to_proto`` and the deflated bytes of
  every object in the message's tree (``get_all_nested_objects``), plus a key-by-key inventory.

Then the recorded bytes are searched for the client's data: distinctive windows of each
image's pixels (the processor's float tensor in every wire dtype, and the raw RGB bytes), every
run of four prompt token ids (int64 and int32), and the UTF-8 of questions, contexts, prompts and
long answers. Positive controls show each search finds its pattern where it is present. Labels
(the answer's token ids) may leave only as docs/what-leaves-a-client.md says: in the plain
exchange, only in the ``labels`` field and only at answer positions; with
``backbone.private_labels`` never. Every record key of every reply must be listed in that doc.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch
from fakes import play_serverapp_runtime
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from transformers import AutoConfig, AutoProcessor

from anther import client_app
from anther.backbone import remote, wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import IGNORE_INDEX
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.client.runtime import load_runtime
from anther.core.config import to_yaml
from anther.core.sample import Sample, write_split
from anther.data import shapes_vqa
from anther.model.chat_format import ChatFormat, conversation
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.simulations.experiment import load_config

DOC = Path(__file__).parents[1] / "docs" / "what-leaves-a-client.md"
ADAPTER_PARAM = re.compile(r"(image|text)\.(down|up)\.(weight|bias)")
WINDOW = 32  # bytes of a pixel window; 4 token ids for an id window
REQUESTS = {"TrainStep": pb.ForwardRequest, "Score": pb.ForwardRequest, "NextTokenLogits": pb.ForwardRequest,
            "HiddenStates": pb.ForwardRequest, "BackwardFromHidden": pb.HiddenBackwardRequest,
            "Generate": pb.GenerateRequest, "Info": pb.InfoRequest}


# ---------------------------------------------------------------- recording


@dataclass
class Call:
    method: str
    chunks: list[bytes] = field(default_factory=list)

    def request(self):
        kind = REQUESTS[self.method]
        return wire.assemble(kind.FromString(c) for c in self.chunks)


class Recorder(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Keeps the serialized bytes of every request message a channel sends."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def _call(self, details: grpc.ClientCallDetails) -> Call:
        self.calls.append(Call(details.method.rsplit("/", 1)[-1]))
        return self.calls[-1]

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self._call(client_call_details).chunks.append(request.SerializeToString())
        return continuation(client_call_details, request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        call = self._call(client_call_details)

        def recorded(it: Iterator) -> Iterator:
            for msg in it:
                call.chunks.append(msg.SerializeToString())
                yield msg

        return continuation(client_call_details, recorded(request_iterator))


def flower_bytes(reply: Message) -> bytes:
    """What a SuperNode pushes for ``reply``: the message proto and every object of its tree."""
    objects = get_all_nested_objects(reply)
    return message_to_proto(reply).SerializeToString() + b"".join(o.deflate() for o in objects.values())


def inventory(reply: Message) -> dict[str, object]:
    """``record/key`` -> value for every ConfigRecord and MetricRecord entry, ``record/key`` ->
    shape for every array."""
    out: dict[str, object] = {}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            out |= {f"{name}/{k}": tuple(a.shape) for k, a in record.items()}
        else:
            out |= {f"{name}/{k}": v for k, v in record.items()}
    return out


# ---------------------------------------------------------------- what to look for


def _windows(data: bytes, width: int = WINDOW, step: int = 8, min_distinct: int = 3) -> set[bytes]:
    """Windows of ``data`` with at least ``min_distinct`` byte values: a run of zeros or of one
    repeated byte could match any constant tensor (zero-initialised adapter weights, masks);
    anything more varied does not occur by chance in 32 bytes. (A striped image in bfloat16 has
    windows of only three or four distinct bytes, so the bar cannot be higher.)"""
    return {data[i:i + width] for i in range(0, len(data) - width + 1, step)
            if len(set(data[i:i + width])) >= min_distinct}


@dataclass
class Secrets:
    pixels: set[bytes]  # windows of every image, as the processor's tensor and as raw RGB
    prompt_ids: set[bytes]  # every run of 4 prompt token ids, int64 and int32
    answer_ids: set[bytes]  # every answer target's token ids (>= 2 of them), int64 and int32
    texts: set[bytes]  # UTF-8 of questions, contexts, prompts, long answers

    def found_in(self, data: bytes) -> dict[str, list[bytes]]:
        """The patterns of each group that occur in ``data``, at any byte offset."""
        slices: dict[int, set[bytes]] = {}  # every window of data, by width: one pass per width

        def occurs(pattern: bytes) -> bool:
            if len(pattern) > WINDOW:  # long texts: few, searched directly
                return pattern in data
            if len(pattern) not in slices:
                w = len(pattern)
                slices[w] = {data[i:i + w] for i in range(len(data) - w + 1)}
            return pattern in slices[len(pattern)]

        groups = {"pixels": self.pixels, "prompt_ids": self.prompt_ids, "texts": self.texts}
        return {k: hits for k, v in groups.items() if (hits := [p for p in v if occurs(p)])}

    def answers_in(self, data: bytes) -> bool:
        return any(p in data for p in self.answer_ids)


def _id_bytes(ids: list[int]) -> set[bytes]:
    t = torch.tensor(ids)
    return {t.to(torch.int64).numpy().tobytes(), t.to(torch.int32).numpy().tobytes()}


def secrets_of(samples: list[Sample], processor) -> Secrets:
    pixels: set[bytes] = set()
    for s in samples:
        if s.image is None:
            continue
        pv = processor.image_processor(s.image, return_tensors="pt")["pixel_values"]
        for dtype in wire.WIRE_DTYPES:
            pixels |= _windows(wire.encode(pv, dtype).data)
        pixels |= _windows(s.image.tobytes())
    tokenizer = processor.tokenizer
    prompt_ids, answer_ids, texts = set(), set(), set()
    chat = ChatFormat.for_processor(processor)
    for s in samples:
        turn = chat.render(processor, conversation(s))
        prompt = turn.prompt
        ids = [i for i in tokenizer(prompt)["input_ids"] if i != tokenizer.convert_tokens_to_ids("<image>")]
        for i in range(len(ids) - 3):
            prompt_ids |= _id_bytes(ids[i:i + 4])
        target = tokenizer(turn.target(s.answer), add_special_tokens=False)["input_ids"]
        assert len(target) >= 2, "an answer target is its tokens and the end-of-sequence token"
        answer_ids |= _id_bytes(target)
        texts |= {t.encode() for t in (s.question, s.context, prompt) if t} | (
            {s.answer.encode()} if len(s.answer) >= 6 else set())
    assert pixels and prompt_ids and answer_ids and texts
    return Secrets(pixels, prompt_ids, answer_ids, texts)


# ---------------------------------------------------------------- the run


@pytest.fixture(autouse=True)
def serverapp_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    play_serverapp_runtime(monkeypatch)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_split(shapes_vqa.generate(12, seed=1, prefix="train"), folder, "train")
    write_split(shapes_vqa.generate(4, seed=2, prefix="test"), folder, "test")
    return folder


@pytest.fixture(scope="module")
def port(tiny_model_dir: Path) -> Iterator[int]:
    service = BackboneService(InProcessBackbone.from_pretrained(tiny_model_dir), BatchPolicy(window_ms=1.0))
    server, port = start(service)
    yield port
    server.stop(None)
    service.close()


@dataclass
class Run:
    calls: list[Call]
    replies: list[Message]
    samples: list[Sample]  # everything this client holds: its train and test splits


def run_client(tiny_model_dir: Path, data: Path, port: int, private_labels: bool,
               monkeypatch: pytest.MonkeyPatch) -> Run:
    """One node's query, train (2 steps) and evaluate, against the service, recorded."""
    cfg = load_config("default", [
        f"model.path={tiny_model_dir}", f"data.path={data}", "federation.num_clients=1",
        "federation.min_train_clients=1", "data.train_size=12",
        "train.local_steps=2", "train.batch_size=4", "adapter.rank=4", "data.client_test_fraction=0.25",
        "backbone.mode=remote", f"backbone.address=127.0.0.1:{port}", "backbone.insecure=true",
        f"backbone.private_labels={str(private_labels).lower()}"])
    recorder = Recorder()
    real_channel = grpc.insecure_channel
    monkeypatch.setattr(remote.grpc, "insecure_channel",
                        lambda *a, **k: grpc.intercept_channel(real_channel(*a, **k), recorder))
    load_runtime.cache_clear()
    dim = AutoConfig.from_pretrained(tiny_model_dir).text_config.hidden_size
    arrays = ArrayRecord(initial_adapter_state(dim, NanoAdapterConfig(4, float(cfg.adapter.alpha)), cfg.seed))
    config = ConfigRecord({"experiment": to_yaml(cfg), "server-round": 1})
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 1})
    replies = []
    for kind, handler in ((MessageType.QUERY, client_app.query), (MessageType.TRAIN, client_app.train),
                          (MessageType.EVALUATE, client_app.evaluate)):
        content = RecordDict({"arrays": arrays, "config": config})
        replies.append(handler(Message(content, dst_node_id=7, message_type=kind), context))
    load_runtime.cache_clear()
    samples = []
    for split in ("train", "test"):
        samples += [s for s in _read(data, split)]
    return Run(recorder.calls, replies, samples)


def _read(folder: Path, split: str) -> list[Sample]:
    from anther.core.sample import read_split

    return read_split(folder, split)[0]


# ---------------------------------------------------------------- the checks


def _documented_keys() -> set[str]:
    return set(re.findall(r"`([a-z][\w./<>-]*)`", DOC.read_text()))


def _check_flower_replies(run: Run, secrets: Secrets) -> None:
    documented, undocumented = _documented_keys(), {}
    for reply in run.replies:
        assert not reply.has_error(), reply.error
        leaks = secrets.found_in(flower_bytes(reply))
        assert not leaks, f"{reply.metadata.message_type} reply carries private data: {leaks}"
        for key, value in inventory(reply).items():
            record, name = key.split("/", 1)
            if record == "arrays":  # the NanoAdapters' weights, nothing else
                assert ADAPTER_PARAM.fullmatch(name), key
                name = "arrays"
            generic = re.sub(r"^(acc_mc|f1_macro|auc)/.*", r"\1/<task>", name)
            if generic not in documented:
                undocumented[key] = value
            assert not isinstance(value, str) or value.encode() not in secrets.texts
    assert not undocumented, f"these leave the client but {DOC.name} does not list them: {undocumented}"


def _label_rows(labels: torch.Tensor) -> list[list[int]]:
    return [row[row != IGNORE_INDEX].tolist() for row in labels]


def _check_backbone_requests(run: Run, secrets: Secrets, processor, private_labels: bool) -> None:
    methods = {c.method for c in run.calls}
    allowed = {"Info", "HiddenStates", "BackwardFromHidden"} if private_labels else {"Info", "TrainStep", "Score"}
    assert methods <= allowed and methods - {"Info"}, f"methods used: {methods}"
    tokenizer = processor.tokenizer
    chat = ChatFormat.for_processor(processor)
    turns = [chat.render(processor, conversation(s)) for s in run.samples]
    targets = {tuple(tokenizer(t.target(o), add_special_tokens=False)["input_ids"])
               for t, s in zip(turns, run.samples) for o in s.options}
    for call in run.calls:
        raw = b"".join(call.chunks)
        leaks = secrets.found_in(raw)
        assert not leaks, f"{call.method} request carries private data: {leaks}"
        if call.method == "Info":
            continue
        req = call.request()
        sent = {f.name for f, _ in req.ListFields()}
        assert sent <= {"inputs_embeds", "attention_mask", "labels", "grad_hidden", "grad_dtype"}, sent
        if private_labels:
            assert "labels" not in sent, f"{call.method} sent labels with private labels on"
            assert not secrets.answers_in(raw), f"{call.method} carries answer token ids"
        else:  # labels: the target's token ids at its own positions, -100 everywhere else
            labels = wire.decode(req.labels, "labels", wire.ID_DTYPES, ndim=2)
            for row in _label_rows(labels):
                assert tuple(row) in targets, f"{call.method} labels {row} are not one answer/option target"


@pytest.mark.parametrize("private_labels", [False, True], ids=["plain", "private-labels"])
def test_nothing_private_leaves_a_client_but_what_the_docs_say(tiny_model_dir, data, port, private_labels,
                                                               monkeypatch):
    run = run_client(tiny_model_dir, data, port, private_labels, monkeypatch)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    secrets = secrets_of(run.samples, processor)
    assert run.calls, "the client never reached the backbone"
    _check_flower_replies(run, secrets)
    _check_backbone_requests(run, secrets, processor, private_labels)
    answer_ids_sent = any(secrets.answers_in(b"".join(c.chunks)) for c in run.calls)
    assert answer_ids_sent is not private_labels  # plain: in the labels field, as documented


def test_the_searches_find_what_they_look_for(tiny_model_dir, data):
    """Positive controls: each pattern set finds the data it was made from, as a client would
    send it if it leaked (pixels or ids as a wire Tensor, text as a string field)."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    samples = _read(data, "train")[:3]
    secrets = secrets_of(samples, processor)
    image = next(s for s in samples if s.image is not None)
    pv = processor.image_processor(image.image, return_tensors="pt")["pixel_values"]
    for dtype in wire.WIRE_DTYPES:
        assert secrets.found_in(wire.encode(pv, dtype).SerializeToString()).get("pixels"), dtype
    assert secrets.found_in(image.image.tobytes()).get("pixels")
    ids = processor.tokenizer(ChatFormat.for_processor(processor).render(processor, conversation(samples[0])).prompt)[
        "input_ids"]
    for dtype in wire.ID_DTYPES:
        assert secrets.found_in(wire.encode(torch.tensor([ids]), dtype).SerializeToString()).get("prompt_ids")
    assert secrets.found_in(samples[0].question.encode()).get("texts")
