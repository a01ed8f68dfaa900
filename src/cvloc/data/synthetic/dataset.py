"""The synthetic world as a torch Dataset, generated on the fly.

Item ``i`` is ``generate_pair(preset, split, area, start + i, seed, epoch)`` converted by
:func:`cvloc.data.pairs.pair_to_item`, so it equals item ``i`` of a ``cvloc synth``
directory written with the same arguments (PNG is lossless for uint8 images).

Worker safety: the dataset holds no RNG state. Every random choice of the generator is
derived from (seed, index, epoch), so items do not depend on which DataLoader worker
makes them, nor in which order. For transforms that draw from torch / NumPy global RNGs,
pass :func:`worker_init_fn` to the DataLoader.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from cvloc.data.pairs import pair_to_item
from cvloc.data.synthetic import PRESETS, SynthPreset, generate_pair


class SyntheticDataset(Dataset):
    """On-the-fly synthetic cross-view pairs of the :mod:`cvloc.data.batch` schema.

    Call :meth:`set_epoch` before each epoch so the generator's per-epoch noise (train
    split) changes. DataLoader workers receive a copy of the dataset when an iterator is
    created, so with ``persistent_workers=True`` a later ``set_epoch`` does not reach
    them; keep workers non-persistent when the epoch matters.

    Args:
        preset: a preset name (one of ``PRESETS``) or a :class:`SynthPreset`.
        split: the split (e.g. ``"train"``, ``"test"``).
        area: ``"same"`` (the training distribution of scenes) or ``"cross"`` (a shifted one).
        num: the number of items.
        seed: the world seed.
        start: the generator index of item 0 (item i is index start + i).

    Raises:
        ValueError: ``preset`` names no preset, ``num`` <= 0 or ``start`` < 0.
    """

    def __init__(
        self,
        preset: str | SynthPreset,
        split: str,
        area: str,
        num: int,
        seed: int = 0,
        start: int = 0,
    ) -> None:
        if isinstance(preset, str) and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
        if num <= 0 or start < 0:
            raise ValueError(f"need num > 0 and start >= 0, got num={num}, start={start}")
        self.preset = preset
        self.split = split
        self.area = area
        self.num = num
        self.seed = seed
        self.start = start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose noise the generator uses.

        Args:
            epoch: the epoch number (0 for the first).
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} items")
        index %= self.num
        pair = generate_pair(
            self.preset, self.split, self.area, self.start + index, self.seed, epoch=self.epoch
        )
        return pair_to_item(
            pair.ground,
            pair.satellite,
            pair.meta,
            pair.ground_uv,
            pair.sat_uv,
            pair.height_m,
            pair.sat_height_m,
        )


def worker_init_fn(worker_id: int) -> None:
    """Seed torch, NumPy and ``random`` in a DataLoader worker with ``seed + worker_id``.

    ``seed`` is the worker's dataset ``seed`` attribute (0 if it has none). The synthetic
    dataset itself needs no seeding; this makes extra random transforms reproducible.

    Args:
        worker_id: the worker's index, as passed by the DataLoader.
    """
    info = get_worker_info()
    seed = int(getattr(info.dataset, "seed", 0)) + worker_id if info else worker_id
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
