"""Heterogeneity scenarios: how a data set is split across clients and which modalities each keeps.

A scenario is two independent choices, both deterministic in ``partition.seed``:

- the **split** (``partition.scheme``), by ``flwr-datasets`` partitioners: ``iid``; ``dirichlet``
  (label skew: the answer is the label, concentration ``partition.alpha``); ``domain`` (each
  client holds one visual domain, the samples' ``domain``: client i the i-th in sorted order,
  round robin, so with fewer clients than domains the last domains go unused);
  ``quantity`` (client sizes drawn from a Dirichlet with concentration ``partition.alpha``,
  labels IID within a client);
- the **modalities** (``scenario.modality``), as FedMLLM builds them on its alpha 0.5 split:
  ``full``; ``missing`` (each modality of each sample dropped with probability
  ``missing_rate``, so a sample may keep only its question); ``cross`` (a ``image_share`` of
  the clients, chosen at random, hold only images, the rest only text); ``hybrid`` (each
  client holds each modality with probability ``presence``; one that draws neither gets one
  of the two at random, as FedMLLM's generator does).

The "text" modality is a sample's context; the question (the instruction) always stays. A
dropped image means no image tokens at all (``Sample.without_image``), not a blank image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np

from anther.core.config import MODALITY_SCENARIOS, PARTITION_SCHEMES, anther_home
from anther.core.files import write_atomic
from anther.core.sample import Sample

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

MIN_PARTITION_SIZE = 2  # a client needs a train and a test sample


@dataclass(frozen=True)
class ClientModalities:
    """What one client keeps of each of its samples."""

    image: bool = True
    text: bool = True
    drop_rate: float = 0.0  # each kept modality of each sample is further dropped with this probability

    @property
    def kind(self) -> str:
        """``multimodal``, ``image-only``, ``text-only`` or ``missing`` (per-sample drops)."""
        if self.drop_rate > 0:
            return "missing"
        return {(True, True): "multimodal", (True, False): "image-only",
                (False, True): "text-only"}.get((self.image, self.text), "question-only")


def quantity_sizes(total: int, num_partitions: int, alpha: float, seed: int) -> list[int]:
    """Client sizes for quantity skew: shares ~ Dirichlet(alpha), at least MIN_PARTITION_SIZE each."""
    spare = total - MIN_PARTITION_SIZE * num_partitions
    if spare < 0:
        raise ValueError(f"quantity skew over {num_partitions} clients needs at least "
                         f"{MIN_PARTITION_SIZE * num_partitions} samples, the data has {total}")
    exact = np.random.default_rng(seed).dirichlet([alpha] * num_partitions) * spare
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(sizes - exact)[: spare - int(sizes.sum())]:  # largest remainders: every sample used
        sizes[i] += 1
    return [MIN_PARTITION_SIZE + int(s) for s in sizes]


def make_partitioner(scheme: str, num_partitions: int, alpha: float, seed: int,
                     total: int) -> Partitioner:
    """The flwr-datasets partitioner of ``scheme`` (labels in column ``label``, domains in ``domain``)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        SizePartitioner,
    )

    if scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha,
                                    min_partition_size=MIN_PARTITION_SIZE, self_balancing=False,
                                    shuffle=True, seed=seed)
    if scheme == "domain":
        return PathologicalPartitioner(num_partitions=num_partitions, partition_by="domain",
                                       num_classes_per_partition=1,
                                       class_assignment_mode="first-deterministic", shuffle=True, seed=seed)
    if scheme == "quantity":
        return SizePartitioner(quantity_sizes(total, num_partitions, alpha, seed))
    raise ValueError(f"unknown partition scheme {scheme!r}; choose from {', '.join(PARTITION_SCHEMES)}")


def _check_domains(domains: tuple[str, ...]) -> None:
    found = sorted(set(domains))
    if len(found) < 2:
        raise ValueError(f"partition.scheme=domain needs samples from at least 2 visual domains (the "
                         f"records' 'domain' field); this data has only {found}")


@lru_cache(maxsize=8)
def partition_indices(labels: tuple[str, ...], domains: tuple[str, ...], num_partitions: int, scheme: str,
                      alpha: float, seed: int) -> tuple[tuple[int, ...], ...]:
    """Indices of each partition; deterministic in ``seed``, computed once per machine: the process
    that prepares a run computes them, and the simulation's server and client processes read them
    from ``$ANTHER_HOME/partitions`` (flwr-datasets, with the ``datasets`` library under it, costs
    each process seconds to import) and keep them for the rounds to come."""
    key = _partition_key(labels, domains, num_partitions, scheme, alpha, seed)
    cached = _read_partitions(key, len(labels), num_partitions)
    if cached is not None:
        return cached
    if scheme == "domain":
        _check_domains(domains)
    from datasets import Dataset

    data = Dataset.from_dict({"label": list(labels), "domain": list(domains), "idx": list(range(len(labels)))})
    if scheme == "quantity":  # SizePartitioner takes contiguous ranges: shuffle so sizes, not order, differ
        data = data.shuffle(seed=seed)
    partitioner = make_partitioner(scheme, num_partitions, alpha, seed, len(labels))
    partitioner.dataset = data
    parts = tuple(tuple(partitioner.load_partition(i)["idx"]) for i in range(num_partitions))
    _write_partitions(key, parts)
    return parts


def _partition_key(labels: tuple[str, ...], domains: tuple[str, ...], num_partitions: int, scheme: str,
                   alpha: float, seed: int) -> str:
    """A digest of everything the partition depends on, the partitioners' own version included
    (hashed record by record: a client of a large set must not hold a copy of every label)."""
    digest = hashlib.sha256(json.dumps([num_partitions, scheme, alpha, seed, version("flwr-datasets")]).encode())
    for label, domain in zip(labels, domains, strict=True):
        digest.update(f"{len(label)}:{label}{len(domain)}:{domain}".encode())
    return digest.hexdigest()


def _read_partitions(key: str, total: int, num_partitions: int) -> tuple[tuple[int, ...], ...] | None:
    """The stored partition of ``key`` (a line of indices per partition); None if there is none or it
    is not a partition of ``total`` samples into ``num_partitions`` (a damaged file is computed again)."""
    with contextlib.suppress(OSError, ValueError):
        lines = (anther_home() / "partitions" / f"{key}.txt").read_text().split("\n")
        parts = tuple(tuple(int(i) for i in line.split()) for line in lines)
        flat = [i for part in parts for i in part]
        if len(parts) == num_partitions and len(set(flat)) == len(flat) and all(0 <= i < total for i in flat):
            return parts
    return None


def _write_partitions(key: str, parts: tuple[tuple[int, ...], ...]) -> None:
    """Store a partition for the other processes of this machine; where the folder cannot be
    written they compute it themselves."""
    with contextlib.suppress(OSError):
        write_atomic(anther_home() / "partitions" / f"{key}.txt", "\n".join(" ".join(map(str, p)) for p in parts))


@lru_cache(maxsize=8)
def modality_plans(modality: str, num_partitions: int, missing_rate: float, image_share: float,
                   presence: float, seed: int) -> tuple[ClientModalities, ...]:
    """What every client keeps, decided for the whole federation at once (so that, for example,
    exactly ``round(image_share * num_partitions)`` clients are image-only)."""
    rng = random.Random(f"modality-plan:{seed}")
    if modality == "full":
        return (ClientModalities(),) * num_partitions
    if modality == "missing":
        return (ClientModalities(drop_rate=missing_rate),) * num_partitions
    if modality == "cross":
        image_only = set(rng.sample(range(num_partitions), round(image_share * num_partitions)))
        return tuple(ClientModalities(image=i in image_only, text=i not in image_only)
                     for i in range(num_partitions))
    if modality == "hybrid":
        return tuple(_hybrid_client(rng, presence) for _ in range(num_partitions))
    raise ValueError(f"unknown scenario.modality {modality!r}; choose from {', '.join(MODALITY_SCENARIOS)}")


def _hybrid_client(rng: random.Random, presence: float) -> ClientModalities:
    image, text = rng.random() < presence, rng.random() < presence
    if not (image or text):
        image = rng.random() < 0.5
        text = not image
    return ClientModalities(image=image, text=text)


def apply_modalities(samples: list[Sample], plan: ClientModalities, seed: int) -> list[Sample]:
    """``samples`` with the modalities ``plan`` removes removed. Per-sample drops are seeded by
    the sample's id, so a sample loses the same modalities whichever client holds it."""
    out = []
    for s in samples:
        keep_image, keep_text = plan.image, plan.text
        if plan.drop_rate > 0:
            rng = random.Random(f"missing:{seed}:{s.id}")
            keep_image &= rng.random() >= plan.drop_rate
            keep_text &= rng.random() >= plan.drop_rate
        if not keep_image:
            s = s.without_image()
        if not keep_text:
            s = s.without_text()
        out.append(s)
    return out
