"""Benchmark datasets: their base class, item assembly, and the name -> builder registry.

:func:`build_dataset` is how training and evaluation get a dataset by name::

    build_dataset("kitti", "/data/KITTI", "test1")
    build_dataset("vigor", "/data/VIGOR", "test", area="cross", yaw_range_deg=180)
    build_dataset("synthetic", None, "test", preset="kitti-small", num=100)

Every dataset returns items of the :mod:`cvloc.data.batch` schema. The loaders are
imported on demand, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cvloc.data.batch import check_item
from cvloc.data.images import SampleError, to_tensor
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import world_to_cam_from_pose

log = logging.getLogger(__name__)


def make_item(
    name: str, ground_rgb: np.ndarray, satellite_rgb: np.ndarray, values: dict[str, Any]
) -> dict[str, Any]:
    """Assemble a :mod:`cvloc.data.batch` item (float32 tensors) and validate it.

    Convention: design.md. Without a ``world_to_cam`` value the extrinsics are those of a
    level camera at the GT pose (:func:`cvloc.geometry.pose.world_to_cam_from_pose`).

    Args:
        name: the sample id.
        ground_rgb: (Hg, Wg, 3) uint8 ground image.
        satellite_rgb: (Hs, Ws, 3) uint8 north-up satellite image.
        values: the other batch keys (``camera_model``, ``K`` or None for a panorama,
            ``m_per_px``, ``sat_center_uv``, ``camera_uv_gt``, ``yaw_deg_gt``,
            ``camera_uv_prior``, ``yaw_deg_prior``, ``camera_height_m``, ``shift_range_m``,
            ``yaw_range_deg``, optional ``world_to_cam``) as numbers or arrays.

    Returns:
        The item.
    """
    values = dict(values)
    if values.get("world_to_cam") is None:
        center = torch.as_tensor(np.asarray(values["sat_center_uv"], dtype=np.float64))
        uv = torch.as_tensor(np.asarray(values["camera_uv_gt"], dtype=np.float64))
        xy = pixel_to_world_xy(uv, center, float(values["m_per_px"]))[None]
        yaw = torch.tensor([float(values["yaw_deg_gt"])], dtype=torch.float64)
        T = world_to_cam_from_pose(xy, yaw, float(values["camera_height_m"]))[0]
        values["world_to_cam"] = T.numpy()
    if values.get("K") is None:
        values["K"] = np.zeros((3, 3))
    item: dict[str, Any] = {
        "name": name,
        "ground": to_tensor(ground_rgb),
        "satellite": to_tensor(satellite_rgb),
        "camera_model": values.pop("camera_model"),
    }
    item.update({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in values.items()})
    check_item(item, name)
    return item


class BenchmarkDataset(Dataset):
    """Base of the real-benchmark datasets: the epoch and bad-sample skipping.

    Subclasses parse their split at construction (no decoding: cheap to send to DataLoader
    workers) and implement ``__len__``, :meth:`load` and :meth:`sample_files`. With
    ``skip_bad_samples`` a sample with a missing or corrupt file
    (:class:`~cvloc.data.images.SampleError`) is replaced by the next index, counted in
    ``bad_samples`` (its file in ``bad_sample_files``) and logged as a warning (in
    DataLoader workers the counters live in each worker's copy: rely on the log lines).

    Args:
        seed: seed of the per-sample noise (>= 0).
        skip_bad_samples: skip instead of raising.
    """

    max_consecutive_skips = 32

    def __init__(self, seed: int, skip_bad_samples: bool) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.epoch = 0
        self.bad_samples = 0
        self.bad_sample_files: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose training noise is drawn (validation / test are fixed).

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = epoch

    def load(self, index: int) -> dict[str, Any]:
        """Decode sample ``index`` (0 <= index < len) into an item.

        Args:
            index: the sample index.
        """
        raise NotImplementedError

    def sample_files(self, index: int) -> list[tuple[str, Path]]:
        """The (what, path) of every file sample ``index`` needs (``cvloc datasets check``).

        Args:
            index: the sample index.
        """
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        attempts = min(n, self.max_consecutive_skips) if self.skip_bad_samples else 1
        for k in range(attempts):
            i = (index + k) % n
            try:
                return self.load(i)
            except SampleError as exc:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples += 1
                self.bad_sample_files.append(str(exc.path))
                log.warning("skipping bad sample %d (%d so far): %s", i, self.bad_samples, exc)
        raise RuntimeError(
            f"{attempts} consecutive bad samples from index {index}; see the warnings above"
        )


def build_dataset(
    name: str, root: str | os.PathLike | None, split: str, **options: Any
) -> Dataset:
    """A dataset by name.

    Args:
        name: one of :data:`DATASET_NAMES`: ``kitti``, ``ford``, ``vigor``, ``oxford``
            (:class:`BenchmarkDataset` loaders of a dataset root), ``synthetic``
            (:class:`~cvloc.data.synthetic.dataset.SyntheticDataset`; no root; options
            ``preset`` and ``num`` required, ``area`` (default "same"), ``seed``, ``start``)
            or ``pairs`` (:class:`~cvloc.data.pairs.PairsDataset` of a ``cvloc-pairs/1``
            directory, which is one split: ``split`` is not used).
        root: the dataset root (None for ``synthetic``).
        split: the split name, as the dataset defines it (e.g. ``test1`` for KITTI).
        **options: keyword arguments of the dataset class.

    Returns:
        The dataset.

    Raises:
        ValueError: unknown name, or a root given / missing where it must not / must be.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if (root is None) != (name == "synthetic"):
        need = "takes no root" if name == "synthetic" else "needs a root directory"
        raise ValueError(f"dataset {name!r} {need}, got root={root!r}")
    return _BUILDERS[name](root, split, options)


def _kitti(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.kitti import KittiDataset

    return KittiDataset(root, split, **options)


def _ford(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.ford import FordDataset

    return FordDataset(root, split, **options)


def _vigor(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.vigor import VigorDataset

    return VigorDataset(root, split, **options)


def _oxford(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.oxford import OxfordDataset

    return OxfordDataset(root, split, **options)


def _synthetic(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.synthetic.dataset import SyntheticDataset

    missing = [k for k in ("preset", "num") if k not in options]
    if missing:
        raise ValueError(f"dataset 'synthetic' needs the options {missing}")
    options = dict(options)
    preset, num = options.pop("preset"), options.pop("num")
    area = options.pop("area", "same")
    return SyntheticDataset(preset, split, area, num, **options)


def _pairs(root: Any, split: str, options: dict[str, Any]) -> Dataset:
    from cvloc.data.pairs import PairsDataset

    return PairsDataset(root, **options)


_BUILDERS: dict[str, Callable[[Any, str, dict[str, Any]], Dataset]] = {
    "kitti": _kitti,
    "ford": _ford,
    "vigor": _vigor,
    "oxford": _oxford,
    "synthetic": _synthetic,
    "pairs": _pairs,
}
DATASET_NAMES: tuple[str, ...] = tuple(_BUILDERS)
