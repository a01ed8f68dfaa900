"""Training and validation data: datasets from the config, resumable sharded loaders.

Exact resumption needs the data order to be a function of (seed, epoch) only: the
training order comes from a :class:`~torch.utils.data.DistributedSampler` (seeded, reset
by ``set_epoch``, sharded over ranks) and a resumed epoch skips the batches it already
consumed without loading them. Datasets must draw their randomness from (seed, epoch,
index), as the synthetic world does, not from a worker's RNG: after a mid-epoch resume
another worker may produce a given batch.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from cvloc.config import REAL_DATASETS, DataConfig
from cvloc.data.batch import collate
from cvloc.engine.distributed import DistInfo

# Dense per-pixel annotations that training never reads; a cache drops them to save memory.
# (``sat_height_m`` stays: the fine-grained matcher's height loss reads it.)
UNUSED_IN_TRAINING = ("gt_sat_uv_grd",)


class CachedDataset(Dataset):
    """Keeps each item in memory after its first load (without `gt_sat_uv_grd`).

    Args:
        dataset: the dataset to cache; its items must not change between epochs.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.items:
            item = self.dataset[index]
            self.items[index] = {k: v for k, v in item.items() if k not in UNUSED_IN_TRAINING}
        return self.items[index]


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """The training and validation datasets of a data config (never a test split).

    Args:
        cfg: the data section.

    Returns:
        (train, val) datasets of :mod:`cvloc.data.batch` items, wrapped in
        :class:`CachedDataset` as ``cache_train`` / ``cache_val`` ask.

    Raises:
        ValueError: a ``pairs`` directory has too few pairs for the held-out validation.
    """
    train, val = _raw_datasets(cfg)
    return (
        CachedDataset(train) if cfg.cache_train else train,
        CachedDataset(val) if cfg.cache_val else val,
    )


def _raw_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    if cfg.dataset == "synthetic":
        from cvloc.data.synthetic.dataset import SyntheticDataset
        from cvloc.data.synthetic.presets import get_preset

        preset = get_preset(cfg.preset)
        if cfg.yaw_range_deg is not None:
            preset = preset.with_prior(yaw_range_deg=cfg.yaw_range_deg)
        train = SyntheticDataset(preset, "train", cfg.area, cfg.num_train, cfg.seed)
        val = SyntheticDataset(preset, "val", cfg.area, cfg.num_val, cfg.seed)
        return train, val
    if cfg.dataset in REAL_DATASETS:
        from cvloc.data.registry import build_dataset

        # A corrupt image or a missing tile must not end a day-long epoch: skip, count, log.
        options = {"seed": cfg.seed, "skip_bad_samples": True, **cfg.options}
        train = build_dataset(cfg.dataset, cfg.root, "train", **options)
        return train, build_dataset(cfg.dataset, cfg.root, "val", **options)
    from cvloc.data.pairs import PairsDataset

    # Correspondences are read for their ``sat_height_m`` (height supervision).
    pairs = PairsDataset(cfg.root)  # type: ignore[arg-type]
    if cfg.val_root is not None:
        return pairs, PairsDataset(cfg.val_root)
    if len(pairs) <= cfg.num_val:
        raise ValueError(
            f"data.root={cfg.root} holds {len(pairs)} pairs: too few to hold out "
            f"data.num_val={cfg.num_val} for validation (or set data.val_root)"
        )
    split = len(pairs) - cfg.num_val
    return Subset(pairs, range(split)), Subset(pairs, range(split, len(pairs)))


def set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    """Forward the epoch to a dataset that varies by epoch (``set_epoch``), if it does.

    Args:
        dataset: a dataset, possibly a :class:`~torch.utils.data.Subset`.
        epoch: 0-based epoch.
    """
    inner = dataset
    while isinstance(inner, (Subset, CachedDataset)):
        inner = inner.dataset
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


def worker_init_fn(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a DataLoader worker from its torch seed.

    The torch seed is the loader's per-epoch base seed + ``worker_id`` (see
    :func:`make_train_loader`), so any random transform is reproducible per epoch.

    Args:
        worker_id: the worker's index (unused: it is already part of the torch seed).
    """
    del worker_id
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ResumableSampler(Sampler[int]):
    """A :class:`DistributedSampler` that can start an epoch at a given batch.

    Args:
        base: the sharded, seeded sampler (``drop_last=True``).
        batch_size: samples per batch, to convert skipped batches to samples.
    """

    def __init__(self, base: DistributedSampler, batch_size: int) -> None:
        self.base = base
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and the first batch to yield.

        Args:
            epoch: 0-based epoch (reseeds the shuffle).
            start_batch: batches of this epoch already consumed.
        """
        self.base.set_epoch(epoch)
        self.skip = start_batch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def batches_per_pass(loader: DataLoader) -> int:
    """Full batches one process gets from one pass over the training set.

    Args:
        loader: a loader from :func:`make_train_loader`.

    Returns:
        The count (before any mid-epoch skip).
    """
    sampler = loader.sampler
    assert isinstance(sampler, ResumableSampler)
    return len(sampler.base) // sampler.batch_size


def make_train_loader(dataset: Dataset, cfg: DataConfig, seed: int, info: DistInfo) -> DataLoader:
    """A shuffled, sharded, resumable training loader.

    Call ``loader.sampler.set_epoch(epoch, start_batch)`` and ``loader.generator.manual_seed``
    through :func:`start_epoch` before iterating.

    Args:
        dataset: the training dataset.
        cfg: the data section (batch size, workers).
        seed: shuffle seed.
        info: this process's place in the job.

    Returns:
        The loader (``drop_last``: every step sees a full batch).
    """
    base = DistributedSampler(
        dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=ResumableSampler(base, cfg.batch_size),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        # Worker seeds come from this generator, reseeded per epoch, so that they do not
        # consume (and depend on) the global RNG whose state the checkpoint restores.
        generator=torch.Generator(),
        drop_last=True,
        pin_memory=info.device.type == "cuda",
    )


def start_epoch(
    loader: DataLoader, seed: int, epoch: int, start_batch: int = 0, resample: bool = True
) -> None:
    """Prepare the training loader (and its dataset) for an epoch.

    Args:
        loader: a loader from :func:`make_train_loader`.
        seed: the training seed.
        epoch: 0-based epoch.
        start_batch: batches of this epoch already consumed (mid-epoch resume).
        resample: let the dataset vary with the epoch (``data.resample_each_epoch``);
            the order of the pairs is reshuffled either way.
    """
    set_dataset_epoch(loader.dataset, epoch if resample else 0)
    loader.sampler.set_epoch(epoch, start_batch)  # type: ignore[union-attr]
    loader.generator.manual_seed(seed * 100_003 + epoch)  # type: ignore[union-attr]


def make_val_loader(dataset: Dataset, cfg: DataConfig, info: DistInfo) -> DataLoader:
    """A sequential validation loader over this process's shard (every pair exactly once).

    Args:
        dataset: the validation dataset.
        cfg: the data section.
        info: this process's place in the job.

    Returns:
        The loader (loading in the main process when the items are cached, so that the
        cache persists).
    """
    shard = Subset(dataset, range(info.rank, len(dataset), info.world_size))
    return DataLoader(
        shard,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=0 if cfg.cache_val else cfg.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a batch's tensors to a device (strings and lists stay).

    Args:
        batch: a collated batch.
        device: target device.

    Returns:
        A new dict.
    """
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
