"""Each side reads only its own weights: the NanoEdge never the LLM's decoder layers or head, the
backbone never the vision tower or connector; the token embedding table is read by both (the
client embeds the prompt, the server embeds the tokens it generates). Checked on a sharded copy
of each family's tiny checkpoint by recording every tensor ``from_pretrained`` reads, against
the checkpoint's ``model.safetensors.index.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from transformers import AutoConfig, AutoModelForImageTextToText

from anther.model.families import family_for
from anther.model.side_loading import load_side, side_modules


class _Recorder:
    """Wraps ``safe_open``; every tensor read (materialised) is added to ``read``."""

    def __init__(self, read: set[str], real):
        self.read, self.real = read, real

    def __call__(self, *args, **kwargs):
        handle = self.real(*args, **kwargs)
        read = self.read

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def get_slice(self, key):
                lazy = handle.get_slice(key)

                class Slice:
                    def __getitem__(self, index):
                        read.add(key)
                        return lazy[index]

                    def __getattr__(self, name):
                        return getattr(lazy, name)

                return Slice()

            def get_tensor(self, key):
                read.add(key)
                return handle.get_tensor(key)

            def __getattr__(self, name):
                return getattr(handle, name)

        return Handle()


@pytest.fixture(scope="module")
def sharded(family_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint re-saved in small shards, with an index, as real checkpoints are."""
    out = tmp_path_factory.mktemp("sharded")
    AutoModelForImageTextToText.from_pretrained(family_model_dir).save_pretrained(out, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


def _reads(monkeypatch: pytest.MonkeyPatch, load) -> tuple[set[str], torch.nn.Module]:
    read: set[str] = set()
    monkeypatch.setattr(transformers.modeling_utils, "safe_open",
                        _Recorder(read, transformers.modeling_utils.safe_open))
    model = load()
    monkeypatch.undo()
    return read, model


def test_each_side_reads_its_own_tensors_and_the_embedding_table_only(sharded, monkeypatch):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    full_read, full = _reads(monkeypatch, lambda: AutoModelForImageTextToText.from_pretrained(sharded))
    client_read, client = _reads(monkeypatch, lambda: load_side(sharded, "client"))
    server_read, server = _reads(monkeypatch, lambda: load_side(sharded, "server"))

    assert full_read == set(index)  # the recorder sees every read
    assert client_read | server_read == set(index)
    assert client_read & server_read == {k for k in index if "embed_tokens" in k}
    # one checkpoint tensor per parameter: what each side reads is exactly what it holds
    assert len(client_read) == len(client.state_dict()) < len(index)
    assert len(server_read) == len(server.state_dict()) < len(index)
    shards_client_skips = {f for f in set(index.values()) if not any(index[k] == f for k in client_read)}
    assert shards_client_skips, "some shard (LLM layers only) is never read by the client"

    family = family_for(full.config.model_type)
    full_state = full.state_dict()
    for side, model in (("client", client), ("server", server)):
        held = model.state_dict()
        assert all(torch.equal(held[k], full_state[k]) for k in held), side
        wanted = {id(p) for m in side_modules(family, model, side) for p in m.parameters()}
        assert {id(p) for p in model.parameters()} == wanted, side  # nothing else is held


def test_a_client_with_private_labels_reads_the_head_too(sharded, monkeypatch):
    client_read, _ = _reads(monkeypatch, lambda: load_side(sharded, "client"))
    with_head, model = _reads(monkeypatch, lambda: load_side(sharded, "client", head=True))
    head = family_for(model.config.model_type).backbone_parts(model)[1]
    assert len(with_head - client_read) == len(list(head.parameters())) == 1


def test_an_unknown_side_is_named(sharded):
    with pytest.raises(ValueError, match="side 'edge'"):
        load_side(sharded, "edge")


def test_a_tied_head_loads_on_both_sides(tiny_model_dir, tmp_path):
    """A checkpoint whose head is the embedding table (SmolVLM's LLM ties them) stores it once;
    each side that holds the table holds the head with it, as the same tensor."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(tmp_path)
    full = AutoModelForImageTextToText.from_pretrained(tmp_path)
    for side in ("client", "server"):
        model = load_side(tmp_path, side)
        assert model.lm_head.weight is model.get_input_embeddings().weight, side
        assert torch.equal(model.lm_head.weight, full.lm_head.weight), side
