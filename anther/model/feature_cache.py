"""The client's cache of image features: frozen vision encoder + connector output per image.

SampleEncoder and connector are frozen, so an image's features never change while the model does
not: computing them once and reading them back in every later step and round saves the
encoder's forward pass (most of a real client's compute). Entries live on the client's disk,
one safetensors file per image, keyed by

- the model's fingerprint (config and weight files) and dtype: another checkpoint or dtype
  looks in another folder, so a changed model never reads stale features;
- the image's content as the model sees it: a hash of its preprocessed pixels (and of what
  else the family's encoder reads of it: Idefics3's pixel mask, LLaVA-NeXT's original
  size), so a changed image, or a changed image processor, is a new key.

The cache is bounded: when it holds more than ``max_bytes``, the least recently used entries
(any model's) are deleted. Writes are atomic (temporary file, then rename), so several client
processes can share one folder; an entry another process evicts is simply a miss.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anther.model.side_loading import checkpoint_fingerprint

SUFFIX = ".safetensors"


class FeatureCache:
    """Image features on disk, keyed by model and pixels, bounded to ``max_bytes`` in all."""

    def __init__(self, root: Path, model_key: str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"feature cache max_bytes must be > 0, got {max_bytes}")
        self.root, self.max_bytes = Path(root), max_bytes
        self.folder = self.root / model_key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # simulated clients in threads share one cache
        self._bytes = sum(f.stat().st_size for f in self._entries())

    @classmethod
    def for_model(cls, root: Path, model_path: Path, dtype: str, max_bytes: int) -> FeatureCache:
        """The cache of the checkpoint at ``model_path`` computing in ``dtype``."""
        return cls(root, f"{checkpoint_fingerprint(model_path)}-{dtype}", max_bytes)

    def _entries(self) -> list[Path]:
        return [f for f in self.root.glob(f"*/*{SUFFIX}") if f.is_file()]

    @staticmethod
    def key(*tensors: torch.Tensor) -> str:
        """The content key of one preprocessed image and its extras, if any (shapes and dtypes
        included)."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:32]

    def features(self, pixel_values: torch.Tensor, extras: dict[str, torch.Tensor],
                 compute: Callable[[torch.Tensor, dict[str, torch.Tensor]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Features of every image in ``pixel_values`` (one per row, with its row of each of
        ``extras``), as ``compute`` would give them: one (tokens, hidden) tensor per image.
        Only the images not cached are computed, in one call."""
        names = sorted(extras)
        keys = [self.key(pixels, *(extras[n][i] for n in names)) for i, pixels in enumerate(pixel_values)]
        found = {i: t.to(pixel_values.device) for i, k in enumerate(keys) if (t := self._read(k)) is not None}
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits, self.misses = self.hits + len(found), self.misses + len(missing)
        if missing:
            fresh = compute(pixel_values[missing], {n: extras[n][missing] for n in names})
            for i, feats in zip(missing, fresh, strict=True):
                found[i] = feats
                self._write(keys[i], feats)
        return [found[i] for i in range(len(keys))]

    def _read(self, key: str) -> torch.Tensor | None:
        path = self.folder / f"{key}{SUFFIX}"
        try:
            tensor = load_file(path)["features"]
            os.utime(path)  # recently used: evicted last
            return tensor
        except FileNotFoundError:
            return None
        except (SafetensorError, KeyError):  # damaged (a full disk, say): recompute and rewrite it
            path.unlink(missing_ok=True)
            return None

    def _write(self, key: str, feats: torch.Tensor) -> None:
        path = self.folder / f"{key}{SUFFIX}"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        save_file({"features": feats.detach().cpu().contiguous()}, tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
        with self._lock:
            self._bytes += size
            if self._bytes > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Delete least recently used entries until the cache is at most 3/4 full (so eviction
        does not run again on the next write)."""
        entries = []
        for f in self._entries():
            try:
                stat = f.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, f))
        entries.sort(key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        for _, size, f in entries:
            if total <= self.max_bytes * 3 // 4:
                break
            f.unlink(missing_ok=True)
            total -= size
        self._bytes = total

    def size_bytes(self) -> int:
        return self._bytes
