"""Where a run's data comes from and what each client holds of it.

The built-in ShapesVQA set is written once to disk in anther's own format
(``anther/core/sample.py``), so simulated clients read exactly
what a deployed client with its own folder would; other layouts (ScienceQA,
Hateful-Memes, ...) are read by the loader ``data.format`` names. What each client
holds is the run's heterogeneity scenario (``anther/data/scenarios.py``).
"""

from __future__ import annotations

import random
import sys
from functools import lru_cache
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig

from anther.core.config import ConfigError, anther_home
from anther.core.sample import Sample, write_split
from anther.data import shapes_vqa
from anther.data.formats.registry import DEFAULT_SPLITS, load_samples
from anther.data.scenarios import apply_modalities, modality_plans, partition_indices

BUILTIN_SIZES = (4000, 400)  # what the built-in set generates of train and test, unless data.*_size say


def builtin_dir(train_size: int, test_size: int, seed: int) -> Path:
    return anther_home() / "data" / f"shapes_vqa-v{shapes_vqa.VERSION}-seed{seed}-train{train_size}-test{test_size}"


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
        train = split_name(cfg, "train")
        if cfg.data.format == "anther" and not (folder / f"{train}.jsonl").is_file():
            raise FileNotFoundError(f"data.path={folder} has no {train}.jsonl (see the on-disk "
                                    "format in the README, or set data.format for another layout)")
        if not folder.is_dir():
            raise FileNotFoundError(f"data.path={folder} is not a folder (data.format={cfg.data.format})")
        return folder
    if cfg.data.format != "anther":
        raise ValueError(f"data.format={cfg.data.format} needs data.path (the folder the data set is in)")
    return prepare_builtin(cfg.data.train_size or BUILTIN_SIZES[0], cfg.data.test_size or BUILTIN_SIZES[1],
                           cfg.data.seed)


def split_name(cfg: DictConfig, which: str) -> str:
    """The data set's name of the run's ``train`` or ``test`` split: data.train_split /
    data.test_split, or the format's own labelled split."""
    configured = {"train": cfg.data.train_split, "test": cfg.data.test_split}[which]
    return configured or DEFAULT_SPLITS[cfg.data.format][which == "test"]


def sample_records(samples: tuple[Sample, ...] | list[Sample], n: int | None, seed: int) -> tuple[Sample, ...]:
    """A seeded random sample of ``n`` of ``samples`` (all of them when ``n`` is None or not
    smaller), stratified by task: each task keeps its share, rounded, and the rest go to the
    largest remainders. The chosen keep their order in the split."""
    if n is None or n >= len(samples):
        return tuple(samples)
    by_task: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_task.setdefault(s.task, []).append(i)
    quotas = {t: n * len(idx) / len(samples) for t, idx in by_task.items()}
    counts = {t: int(q) for t, q in quotas.items()}
    for t in sorted(quotas, key=lambda t: (counts[t] - quotas[t], t))[: n - sum(counts.values())]:
        counts[t] += 1
    rng = random.Random(seed)
    chosen = sorted(i for t, idx in sorted(by_task.items()) for i in rng.sample(idx, counts[t]))
    return tuple(samples[i] for i in chosen)


@lru_cache(maxsize=4)
def load_split(folder: str, split: str, data_format: str = "anther", skip_bad: bool = False,
               image_folder: str | None = None) -> tuple[Sample, ...]:
    """Read a split once per process (simulated clients in one worker share it); the records it
    left out are reported on stderr by reason, never dropped silently."""
    samples, left_out = load_samples(data_format, Path(folder), split, skip_bad,
                                     Path(image_folder).expanduser() if image_folder else None)
    if left_out:
        reasons = ", ".join(f"{n} {reason}" for reason, n in left_out.most_common())
        print(f"anther: left out {left_out.total()} record(s) of {data_format} split {split!r} in {folder}: "
              f"{reasons}", file=sys.stderr)
    return tuple(samples)


def split_samples(cfg: DictConfig, folder: Path, which: str) -> tuple[Sample, ...]:
    """The run's ``train`` or ``test`` samples: the split ``data.train_split`` / ``data.test_split``
    of ``folder`` read as ``data.format``, sampled down to ``data.train_size`` / ``data.test_size``
    (for a data.path; the built-in set is generated at that size)."""
    d = cfg.data
    samples = load_split(str(folder), split_name(cfg, which), d.format, d.skip_bad, d.image_folder)
    return sample_records(samples, {"train": d.train_size, "test": d.test_size}[which] if d.path else None, d.seed)


def _held(cfg: DictConfig, train: tuple[Sample, ...], partition_id: int, num_partitions: int) -> list[Sample]:
    """Partition ``partition_id`` of ``train`` under the run's scenario (the split, then the
    modalities it keeps), in a shuffled order of its own."""
    p, s = cfg.partition, cfg.scenario
    parts = partition_indices(tuple(x.answer for x in train), tuple(x.domain for x in train), num_partitions,
                              p.scheme, p.alpha, p.seed)
    plan = modality_plans(s.modality, num_partitions, s.missing_rate, s.image_share, s.presence,
                          p.seed)[partition_id]
    mine = apply_modalities([train[i] for i in parts[partition_id]], plan, p.seed)
    random.Random(cfg.seed * 1000 + partition_id).shuffle(mine)
    return mine


def client_data(cfg: DictConfig, folder: Path, partition_id: int, num_partitions: int
                ) -> tuple[list[Sample], list[Sample]]:
    """A client's local (train, test) samples: its partition under the run's scenario (the split,
    then the modalities it keeps), split by ``client_test_fraction``."""
    mine = _held(cfg, split_samples(cfg, folder, "train"), partition_id, num_partitions)
    n_test = int(len(mine) * cfg.data.client_test_fraction)
    return mine[n_test:], mine[:n_test]


def site_data(cfg: DictConfig, folder: Path) -> tuple[list[Sample], list[Sample]]:
    """A deployed site's own data folder (its ``data-path``): all of its train split to train on
    and its own test split to evaluate on; a folder without a test split keeps
    ``client_test_fraction`` of its train split for that instead."""
    try:
        test = list(split_samples(cfg, folder, "test"))
    except FileNotFoundError:
        return client_data(cfg, folder, 0, 1)
    return _held(cfg, split_samples(cfg, folder, "train"), 0, 1), test


def check_partitions(cfg: DictConfig, folder: Path) -> list[int]:
    """Every client's train split under the run's scenario, checked before a run starts: its sizes,
    or a ConfigError naming the partition that came out empty (or the partitioning that failed)
    and the settings that decide it. Reading the split also checks every record and image."""
    n, p = cfg.federation.num_clients, cfg.partition
    train = split_samples(cfg, folder, "train")  # a malformed record or a missing image fails here, named
    settings = (f"{len(train)} training samples over "
                f"federation.num_clients={n}, partition.scheme={p.scheme}"
                + (f", partition.alpha={p.alpha}" if p.scheme in ("dirichlet", "quantity") else ""))
    if len(train) < n:
        raise ConfigError(f"the {split_name(cfg, 'train')} split of {folder} has {len(train)} samples for "
                          f"federation.num_clients={n}: every client needs at least one")
    try:
        sizes = [len(client_data(cfg, folder, i, n)[0]) for i in range(n)]
    except (ValueError, IndexError) as e:
        raise ConfigError(f"the data cannot be split as asked ({settings}): {e}") from None
    empty = [i for i, size in enumerate(sizes) if size == 0]
    if empty:
        raise ConfigError(f"client partition {empty[0]} (of {n}) has no training samples"
                          + (f", nor do {len(empty) - 1} more" if len(empty) > 1 else "")
                          + f" ({settings}, data.client_test_fraction={cfg.data.client_test_fraction}, "
                          f"scenario={cfg.scenario.name}): give more data or fewer clients")
    return sizes
