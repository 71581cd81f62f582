"""Where a run's data comes from and how it is split across clients.

The built-in ShapesVQA set is written once to disk in anther's own format
(``anther/simulations/datasets/sample.py``), so simulated clients read exactly
what a deployed client with its own folder would. Partitions come from
``flwr-datasets`` partitioners, applied to the answer as the label.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from datasets import Dataset
from filelock import FileLock
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from omegaconf import DictConfig

from anther.simulations.config import anther_home
from anther.simulations.datasets import shapes_vqa
from anther.simulations.datasets.sample import Sample, read_split, write_split


def builtin_dir(train_size: int, test_size: int, seed: int) -> Path:
    return anther_home() / "data" / f"shapes_vqa-seed{seed}-train{train_size}-test{test_size}"


def prepare_builtin(train_size: int, test_size: int, seed: int) -> Path:
    """Generate ShapesVQA train/test splits on disk unless they are already there."""
    folder = builtin_dir(train_size, test_size, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "test.jsonl").is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            write_split(shapes_vqa.generate(train_size, seed, prefix="train"), tmp, "train")
            write_split(shapes_vqa.generate(test_size, seed + 1_000_003, prefix="test"), tmp, "test")
            tmp.rename(folder)
    return folder


def dataset_dir(cfg: DictConfig) -> Path:
    """The data folder a run uses: ``data.path`` if given, else the built-in set."""
    if cfg.data.path:
        folder = Path(cfg.data.path).expanduser()
        if not (folder / "train.jsonl").is_file():
            raise FileNotFoundError(f"data.path={folder} has no train.jsonl (see the on-disk format in the README)")
        return folder
    return prepare_builtin(cfg.data.train_size, cfg.data.test_size, cfg.data.seed)


@lru_cache(maxsize=4)
def load_split(folder: str, split: str) -> tuple[Sample, ...]:
    """Read a split once per process (simulated clients in one worker share it)."""
    samples, _ = read_split(Path(folder), split)
    return tuple(samples)


def make_partitioner(scheme: str, num_partitions: int, alpha: float, seed: int) -> Partitioner:
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha,
                                    min_partition_size=2, self_balancing=False, shuffle=True, seed=seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; choose 'iid' or 'dirichlet'")


@lru_cache(maxsize=8)
def partition_indices(labels: tuple[str, ...], num_partitions: int, scheme: str, alpha: float,
                      seed: int) -> tuple[tuple[int, ...], ...]:
    """Indices of each partition; deterministic in ``seed``, computed once per process
    (a simulation worker serves many clients of the same split every round)."""
    partitioner = make_partitioner(scheme, num_partitions, alpha, seed)
    partitioner.dataset = Dataset.from_dict({"label": labels, "idx": list(range(len(labels)))})
    return tuple(tuple(partitioner.load_partition(i)["idx"]) for i in range(num_partitions))


def client_data(cfg: DictConfig, folder: Path, partition_id: int, num_partitions: int
                ) -> tuple[list[Sample], list[Sample]]:
    """A client's local (train, test) samples: its partition, split by ``client_test_fraction``."""
    train = load_split(str(folder), "train")
    parts = partition_indices(tuple(s.answer for s in train), num_partitions, cfg.partition.scheme,
                              cfg.partition.alpha, cfg.partition.seed)
    mine = [train[i] for i in parts[partition_id]]
    random.Random(cfg.seed * 1000 + partition_id).shuffle(mine)
    n_test = int(len(mine) * cfg.data.client_test_fraction)
    return mine[n_test:], mine[:n_test]
