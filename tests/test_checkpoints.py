"""Checkpoints carry checksums: a damaged one is caught when read, and resuming falls back to the
newest checkpoint that is whole, saying which it skipped and why."""

from __future__ import annotations

import json

import pytest
import torch

from anther.server import checkpoint

ADAPTERS = {"image.down.weight": torch.arange(6.0).reshape(2, 3), "text.up.weight": torch.ones(3, 2)}


def _flip_a_bit(path, offset: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [checkpoint.ADAPTERS, checkpoint.TENSORS, checkpoint.STATE])
def test_one_flipped_bit_in_any_file_is_caught(tmp_path, name):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"note": "x" * 40}, {"m": torch.zeros(4)})
    _flip_a_bit(tmp_path / "checkpoints" / "round-0001" / name)
    with pytest.raises(ValueError, match=rf"round-0001 is unreadable: {name} does not match its checksum"):
        checkpoint.load_checkpoint(tmp_path, 1)


def test_resume_falls_back_to_the_newest_good_checkpoint_and_says_why(tmp_path):
    for r in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, r, {k: v + r for k, v in ADAPTERS.items()}, {"r": r})
    _flip_a_bit(tmp_path / "checkpoints" / "round-0003" / checkpoint.ADAPTERS)
    (tmp_path / "checkpoints" / "round-0002" / checkpoint.STATE).write_text("{")  # torn: fails its checksum too
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    assert ckpt.server_round == 1 and ckpt.state["r"] == 1
    torch.testing.assert_close(ckpt.adapters["text.up.weight"], ADAPTERS["text.up.weight"] + 1, rtol=0, atol=0)
    assert [why.split(" is unreadable")[0].rsplit("/", 1)[-1] for why in ckpt.skipped] == ["round-0003", "round-0002"]
    assert all("does not match its checksum" in why for why in ckpt.skipped)


def test_no_readable_checkpoint_is_an_error_naming_each(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {})
    _flip_a_bit(tmp_path / "checkpoints" / "round-0001" / checkpoint.TENSORS, offset=0)
    with pytest.raises(ValueError, match=r"no checkpoint of .* can be read: .*round-0001 is unreadable"):
        checkpoint.latest_checkpoint(tmp_path)


def test_a_checkpoint_from_before_checksums_still_reads(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {"v": 1})
    (tmp_path / "checkpoints" / "round-0001" / checkpoint.CHECKSUMS).unlink()
    assert checkpoint.latest_checkpoint(tmp_path).state["v"] == 1


def test_the_checksums_are_of_the_files_as_written(tmp_path):
    folder = checkpoint.save_checkpoint(tmp_path, 1, ADAPTERS, {})
    sums = json.loads((folder / checkpoint.CHECKSUMS).read_text())
    assert set(sums) == {checkpoint.ADAPTERS, checkpoint.TENSORS, checkpoint.STATE}
    assert all(len(v) == 64 for v in sums.values())
