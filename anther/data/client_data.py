"""Where a run's data comes from and what each client holds of it.

The built-in ShapesVQA set is written once to disk in anther's own format
(``anther/core/sample.py``), so simulated clients read exactly
what a deployed client with its own folder would; other layouts (ScienceQA,
Hateful-Memes, ...) are read by the loader ``data.format`` names. What each client
holds is the run's heterogeneity scenario (``anther/data/scenarios.py``).
"""

from __future__ import annotations

import random
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig

from anther.core.config import ConfigError, anther_home
from anther.core.sample import Sample, write_split
from anther.data import shapes_vqa
from anther.data.formats.registry import DEFAULT_SPLITS, layout_name
from anther.data.scenarios import apply_modalities, modality_plans, partition_indices
from anther.data.split_index import SplitIndex, SplitSource, split_index

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


def sample_indices(tasks: tuple[str, ...] | list[str], n: int | None, seed: int) -> list[int]:
    """A seeded random sample of ``n`` of the records whose tasks are ``tasks`` (all of them when
    ``n`` is None or not smaller), stratified by task: each task keeps its share, rounded, and the
    rest go to the largest remainders. The chosen keep their order in the split."""
    if n is None or n >= len(tasks):
        return list(range(len(tasks)))
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    quotas = {t: n * len(idx) / len(tasks) for t, idx in by_task.items()}
    counts = {t: int(q) for t, q in quotas.items()}
    for t in sorted(quotas, key=lambda t: (counts[t] - quotas[t], t))[: n - sum(counts.values())]:
        counts[t] += 1
    rng = random.Random(seed)
    return sorted(i for t, idx in sorted(by_task.items()) for i in rng.sample(idx, counts[t]))


def split_source(cfg: DictConfig, folder: Path, which: str) -> SplitSource:
    d = cfg.data
    image_folder = str(Path(d.image_folder).expanduser()) if d.image_folder else None
    return SplitSource(str(folder), d.format, split_name(cfg, which), d.skip_bad, image_folder)


def split_view(cfg: DictConfig, folder: Path, which: str, limit: int | None = None) -> tuple[SplitIndex, list[int]]:
    """The index of the run's ``train`` or ``test`` split and the records the run uses of it:
    ``data.train_size`` / ``data.test_size`` of them for a data.path (the built-in set is
    generated at that size), then ``limit`` of those, each a stratified seeded sample."""
    index = split_index(split_source(cfg, folder, which))
    tasks = index.column("task")
    size = {"train": cfg.data.train_size, "test": cfg.data.test_size}[which] if cfg.data.path else None
    chosen = sample_indices(tasks, size, cfg.data.seed)
    if limit is not None:
        chosen = [chosen[i] for i in sample_indices([tasks[c] for c in chosen], limit, cfg.data.seed)]
    return index, chosen


def split_samples(cfg: DictConfig, folder: Path, which: str, limit: int | None = None) -> list[Sample]:
    """The run's ``train`` or ``test`` samples (:func:`split_view`), read from the index."""
    index, chosen = split_view(cfg, folder, which, limit)
    return index.samples(chosen)


def dataset_summary(cfg: DictConfig, folder: Path) -> dict[str, object]:
    """What a run reads of its data: the format and layout, and for each split its name, the
    records read, those the run uses and those left out, by reason (into result.json and
    ``anther data report``)."""
    summary: dict[str, object] = {"format": cfg.data.format, "folder": str(folder),
                                  "layout": layout_name(cfg.data.format, folder)}
    for which in ("train", "test"):
        try:
            index, chosen = split_view(cfg, folder, which)
        except FileNotFoundError as e:  # a site without a test split keeps part of its train split
            summary[which] = {"split": split_name(cfg, which), "missing": str(e)}
            continue
        summary[which] = {"split": split_name(cfg, which), "records": index.size, "used": len(chosen),
                          "left_out": dict(index.left_out.most_common())}
    return summary


def _held(cfg: DictConfig, folder: Path, partition_id: int, num_partitions: int) -> list[Sample]:
    """Partition ``partition_id`` of the train split under the run's scenario (the split, then the
    modalities it keeps), in a shuffled order of its own. Only that partition's records are read."""
    p, s = cfg.partition, cfg.scenario
    index, chosen = split_view(cfg, folder, "train")
    answers, domains = index.column("answer"), index.column("domain")
    parts = partition_indices(tuple(answers[i] for i in chosen), tuple(domains[i] for i in chosen), num_partitions,
                              p.scheme, p.alpha, p.seed)
    plan = modality_plans(s.modality, num_partitions, s.missing_rate, s.image_share, s.presence,
                          p.seed)[partition_id]
    mine = apply_modalities(index.samples([chosen[i] for i in parts[partition_id]]), plan, p.seed)
    random.Random(cfg.seed * 1000 + partition_id).shuffle(mine)
    return mine


def client_data(cfg: DictConfig, folder: Path, partition_id: int, num_partitions: int
                ) -> tuple[list[Sample], list[Sample]]:
    """A client's local (train, test) samples: its partition under the run's scenario (the split,
    then the modalities it keeps), split by ``client_test_fraction``."""
    mine = _held(cfg, folder, partition_id, num_partitions)
    n_test = int(len(mine) * cfg.data.client_test_fraction)
    return mine[n_test:], mine[:n_test]


def site_data(cfg: DictConfig, folder: Path) -> tuple[list[Sample], list[Sample]]:
    """A deployed site's own data folder (its ``data-path``): all of its train split to train on
    and its own test split to evaluate on; a folder without a test split keeps
    ``client_test_fraction`` of its train split for that instead."""
    try:
        test = split_samples(cfg, folder, "test")
    except FileNotFoundError:
        return client_data(cfg, folder, 0, 1)
    return _held(cfg, folder, 0, 1), test


def check_partitions(cfg: DictConfig, folder: Path) -> list[int]:
    """Every client's train split under the run's scenario, checked before a run starts: its sizes,
    or a ConfigError naming the partition that came out empty (or the partitioning that failed)
    and the settings that decide it. Reading the split also checks every record and image."""
    n, p = cfg.federation.num_clients, cfg.partition
    _, train = split_view(cfg, folder, "train")  # a malformed record or a missing image fails here, named
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
