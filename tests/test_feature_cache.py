"""The feature cache: same features as the encoder, reused, keyed by model and content, bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from anther.model.feature_cache import FeatureCache
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder


@pytest.fixture(scope="module")
def edge_and_batch(tiny_model_dir: Path, samples):
    from transformers import AutoProcessor

    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4))
    encoder = SampleEncoder(edge, AutoProcessor.from_pretrained(tiny_model_dir))
    batch = encoder([s for s in samples if s.image is not None][:6], None)
    return edge, batch


def test_cached_features_equal_the_encoders_and_are_reused(edge_and_batch, tmp_path: Path) -> None:
    edge, batch = edge_and_batch
    calls: list[int] = []

    def encode(pixels: torch.Tensor, extras: dict) -> list[torch.Tensor]:
        calls.append(len(pixels))
        return edge._encode_images(pixels, extras)

    cache = FeatureCache(tmp_path, "model-a", max_bytes=2**30)
    want = edge._encode_images(batch.pixel_values, {})
    first = cache.features(batch.pixel_values, {}, encode)
    second = cache.features(batch.pixel_values, {}, encode)
    torch.testing.assert_close(first, want)
    assert all(torch.equal(a, b) for a, b in zip(second, first, strict=True))
    assert calls == [6]  # the second call read every image back
    assert (cache.hits, cache.misses) == (6, 6)

    # only the new image of a partly cached batch is encoded, and the order is kept
    other = batch.pixel_values[:2].flip(-1)
    mixed = torch.cat([batch.pixel_values[:3], other[:1]])
    out = cache.features(mixed, {}, encode)
    assert calls == [6, 1]
    torch.testing.assert_close(out, edge._encode_images(mixed, {}))


def test_another_model_or_dtype_does_not_read_these_features(edge_and_batch, tmp_path: Path) -> None:
    edge, batch = edge_and_batch
    FeatureCache(tmp_path, "model-a-float32", 2**30).features(batch.pixel_values, {}, edge._encode_images)
    other = FeatureCache(tmp_path, "model-b-float32", 2**30)
    other.features(batch.pixel_values, {}, edge._encode_images)
    assert other.hits == 0 and other.misses == 6


def test_the_edge_uses_its_cache_and_gives_the_same_embeddings(edge_and_batch, tmp_path: Path) -> None:
    edge, batch = edge_and_batch
    plain = edge(batch)
    edge.feature_cache = FeatureCache(tmp_path, "m", 2**30)
    try:
        torch.testing.assert_close(edge(batch), plain)
        torch.testing.assert_close(edge(batch), plain)
        assert edge.feature_cache.hits == 6
    finally:
        edge.feature_cache = None


def test_cache_stays_within_its_bound_and_keeps_recent_entries(tmp_path: Path) -> None:
    feats = torch.randn(9, 16)  # one image of 9 tokens, ~600 bytes on disk
    cache = FeatureCache(tmp_path, "m", max_bytes=6_000)
    pixels = [torch.full((3, 4, 4), float(i)) for i in range(40)]
    for p in pixels:
        cache.features(p[None], {}, lambda *_: [feats])
        cache.features(pixels[0][None], {}, lambda *_: [feats])  # keep image 0 in use
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert on_disk <= 6_000 and cache.size_bytes() == on_disk
    assert (tmp_path / "m" / f"{FeatureCache.key(pixels[0])}.safetensors").exists()
    assert not (tmp_path / "m" / f"{FeatureCache.key(pixels[1])}.safetensors").exists()


def test_a_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "m", 2**20)
    pixels = torch.ones(1, 3, 4, 4)
    cache.features(pixels, {}, lambda *_: [torch.ones(9, 8)])
    (tmp_path / "m" / f"{FeatureCache.key(pixels[0])}.safetensors").write_bytes(b"not a tensor file")
    (out,) = cache.features(pixels, {}, lambda *_: [torch.full((9, 8), 2.0)])
    assert torch.equal(out, torch.full((9, 8), 2.0)) and cache.misses == 2


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "m", 2**20)
    pixels = torch.arange(8 * 12, dtype=torch.float32).reshape(8, 3, 2, 2)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                out = cache.features(pixels, {}, lambda p, _: list(p.reshape(len(p), 1, 12).repeat(1, 2, 1)))
                assert torch.equal(torch.cat(out), pixels.reshape(8, 1, 12).repeat(1, 2, 1).reshape(-1, 12))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_bad_bound_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(tmp_path, "m", 0)


def test_padded_tiles_are_keyed_by_their_pixel_mask_too(tiny_idefics3_dir: Path, samples, tmp_path: Path) -> None:
    """Idefics3 pads tiles and masks the padding: the same pixels under another mask are
    another image to its encoder, so another entry; an Idefics3 edge gives the same
    embeddings with its cache."""
    from transformers import AutoProcessor

    edge = NanoEdge.from_pretrained(tiny_idefics3_dir, NanoAdapterConfig(rank=4))
    batch = SampleEncoder(edge, AutoProcessor.from_pretrained(tiny_idefics3_dir))(samples[:3], None)
    assert batch.pixel_values.shape[0] == 15  # 2 x 2 tiles + global each
    plain = edge(batch)
    edge.feature_cache = FeatureCache(tmp_path, "m", 2**30)
    torch.testing.assert_close(edge(batch), plain)
    torch.testing.assert_close(edge(batch), plain)
    assert (edge.feature_cache.hits, edge.feature_cache.misses) == (15, 15)

    cropped = batch.image_extras["pixel_attention_mask"].clone()
    cropped[:, :, -8:] = False
    edge.feature_cache.features(batch.pixel_values, {"pixel_attention_mask": cropped}, edge._encode_images)
    assert edge.feature_cache.misses == 30
