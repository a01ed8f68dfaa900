"""VIGOR (SliceMatch-corrected labels, positives by default) in the cvloc batch schema.

Layout (``ROOT``; labels in ``label_dir``, default ``ROOT/splits__corrected``)::

    <City>/panorama/<pano_id>,<lat>,<lon>,.jpg      2048 x 1024 north-aligned panorama
    <City>/satellite/satellite_<lat>_<lon>.png      640 x 640 north-up tile (zoom 20)
    splits__corrected/<City>/same_area_balanced_{train,test}__corrected.txt
    splits__corrected/<City>/pano_label_balanced__corrected.txt   (cross-area)

A label line is ``pano sat1 d0 d1 sat2 d0 d1 sat3 d0 d1 sat4 d0 d1``; the first tile is the
positive. Protocol -> design.md (``docs/datasets.md``): the GT pixel of the 640 tile is
(u, v) = (320 - d1, 320 + d0) (d0 south, d1 west), the world origin and prior are the
labelled centre pixel (320, 320), all mapped through the resize to ``sat_size``
(u -> (u + 0.5) s - 0.5); m/px = the city's zoom-20 resolution x 640 / ``sat_size``. The
panorama's centre column looks north (GT yaw 0); rolling it right by k columns turns the
heading anticlockwise: yaw = -360 k / W (CCVPE's orientation angle is -yaw).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import override

from cvloc.data.images import load_rgb
from cvloc.data.protocols import (
    SplitFormatError,
    parse_floats,
    read_split_lines,
    sample_rng,
    wrap_deg,
)
from cvloc.data.registry import BenchmarkDataset, make_item

TILE_PX = 640
CITY_M_PER_PX = {  # zoom 20 at 640 px (SliceMatch-corrected; the original VIGOR used 0.114)
    "NewYork": 0.113248,
    "Seattle": 0.100817,
    "SanFrancisco": 0.118141,
    "Chicago": 0.111262,
}
CITIES = {
    ("same", "train"): ("NewYork", "Seattle", "SanFrancisco", "Chicago"),
    ("same", "test"): ("NewYork", "Seattle", "SanFrancisco", "Chicago"),
    ("cross", "train"): ("NewYork", "Seattle"),
    ("cross", "test"): ("SanFrancisco", "Chicago"),
}
CAMERA_HEIGHT_M = 2.0  # DenseFlow's VIGOR BEV (grd_height = -2); VIGOR publishes no height


@dataclass(frozen=True)
class VigorSample:
    """One label line: ``city``, ``pano`` file name and four (tile, d0, d1) ``tiles``."""

    city: str
    pano: str
    tiles: tuple[tuple[str, float, float], ...]


def label_file(label_dir: Path, city: str, area: str, split: str) -> Path:
    """The label file of a city for an area ("same" / "cross") and split ("train" / "test").

    Args:
        label_dir: the ``splits__corrected`` directory.
        city: the city folder name.
        area: "same" or "cross".
        split: "train" or "test".
    """
    stem = f"same_area_balanced_{split}" if area == "same" else "pano_label_balanced"
    return label_dir / city / f"{stem}__corrected.txt"


def parse_label_file(path: str | os.PathLike, city: str) -> list[VigorSample]:
    """The samples of a corrected VIGOR label file.

    Args:
        path: the label file.
        city: its city.

    Raises:
        FileNotFoundError: missing file; SplitFormatError: a malformed line (named).
    """
    path = Path(path)
    expected = "'pano.jpg' then 4 x 'satellite_<lat>_<lon>.png d0 d1'"
    samples = []
    for n, f in read_split_lines(path, "a VIGOR label file"):
        if len(f) != 13 or not all(t.endswith(".png") for t in f[1::3]):
            raise SplitFormatError(f"{path}:{n}: expected {expected}, got {' '.join(f)!r}")
        d = parse_floats(f[2:4] + f[5:7] + f[8:10] + f[11:13], path, n, expected)
        tiles = tuple((f[1 + 3 * i], d[2 * i], d[2 * i + 1]) for i in range(4))
        samples.append(VigorSample(city, f[0], tiles))
    return samples


def from_protocol(d0: np.ndarray, d1: np.ndarray, sat_size: int = 512) -> np.ndarray:
    """(..., 2) pixel (u, v) on a ``sat_size`` tile of VIGOR label offsets.

    Convention: (u, v) = (320 - d1, 320 + d0) on the 640 px tile (d0 south, d1 west,
    pixels), then the pixel-centre resize u -> (u + 0.5) sat_size / 640 - 0.5.

    Args:
        d0: (...,) label row offsets.
        d1: (...,) label column offsets.
        sat_size: side of the resized tile.
    """
    uv640 = np.stack([TILE_PX / 2 - np.asarray(d1), TILE_PX / 2 + np.asarray(d0)], axis=-1)
    return (uv640 + 0.5) * (sat_size / TILE_PX) - 0.5


def to_protocol(camera_uv: np.ndarray, sat_size: int = 512) -> np.ndarray:
    """(..., 2) VIGOR label offsets (d0, d1) of a pixel on a ``sat_size`` tile.

    Convention: inverse of :func:`from_protocol`.

    Args:
        camera_uv: (..., 2) pixel (u, v).
        sat_size: side of the resized tile.
    """
    uv640 = (np.asarray(camera_uv, dtype=np.float64) + 0.5) * (TILE_PX / sat_size) - 0.5
    return np.stack([uv640[..., 1] - TILE_PX / 2, TILE_PX / 2 - uv640[..., 0]], axis=-1)


def roll_columns(angle_ccw_deg: float, width: int) -> int:
    """Columns to roll a panorama right by to turn its heading anticlockwise by an angle.

    Convention: CCVPE's ``torch.roll(pano, round(angle / 360 * W))``; the resulting heading
    is ``yaw_deg = wrap(-360 k / W)`` (compass, clockwise).

    Args:
        angle_ccw_deg: anticlockwise angle in degrees (CCVPE's orientation files).
        width: the panorama width W.
    """
    return int(np.round(angle_ccw_deg / 360.0 * width))


class VigorDataset(BenchmarkDataset):
    """VIGOR (same- or cross-area) as :mod:`cvloc.data.batch` items.

    Args:
        root: the VIGOR root (city folders).
        split: ``"train"``, ``"val"`` (a seeded ``val_fraction`` of the training list,
            never test) or ``"test"``.
        area: ``"same"`` (four cities, train / test lists) or ``"cross"`` (train New York +
            Seattle, test San Francisco + Chicago).
        label_dir: the corrected labels (default ``root/splits__corrected``).
        ground_size: (W, H) of the panorama fed to the model (W = 2 H).
        sat_size: side of the satellite tile fed to the model.
        yaw_range_deg: 0 = known orientation (north-aligned), 180 = unknown; otherwise the
            heading is drawn in U(-range, range). The prior heading is always 0.
        orientation_file: CCVPE's fixed test angles (``samearea_orientation_test.npy`` /
            ``crossarea_orientation_test.npy``, anticlockwise degrees, one per test line in
            city order) instead of the seeded ones; test split only.
        positives_only: use the positive tile; otherwise a random tile containing the GT.
        val_fraction: share of the training list held out for ``val``.
        seed: seed of the orientation / tile draws and of the validation split.
        skip_bad_samples: see :class:`~cvloc.data.registry.BenchmarkDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        area: str = "same",
        label_dir: str | os.PathLike | None = None,
        ground_size: tuple[int, int] = (640, 320),
        sat_size: int = 512,
        yaw_range_deg: float = 0.0,
        orientation_file: str | os.PathLike | None = None,
        positives_only: bool = True,
        val_fraction: float = 0.2,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__(seed, skip_bad_samples)
        if split not in ("train", "val", "test") or area not in ("same", "cross"):
            raise ValueError(f"VIGOR needs split train/val/test, area same/cross: {split}, {area}")
        if orientation_file is not None and split != "test":
            raise ValueError("orientation_file holds fixed test angles: use it with split='test'")
        self.root, self.split, self.area = Path(root), split, area
        self.ground_size, self.sat_size = tuple(ground_size), sat_size
        self.yaw_range_deg, self.positives_only = yaw_range_deg, positives_only
        label_dir = Path(label_dir or self.root / "splits__corrected")
        list_split = "test" if split == "test" else "train"
        self.samples = [
            s
            for city in CITIES[area, list_split]
            for s in parse_label_file(label_file(label_dir, city, area, list_split), city)
        ]
        if split != "test":
            order = sample_rng(seed, "vigor-val-split", 0).permutation(len(self.samples))
            n_val = round(val_fraction * len(self.samples))
            keep = order[:n_val] if split == "val" else order[n_val:]
            self.samples = [self.samples[i] for i in sorted(keep)]
        self.angles: np.ndarray | None = None
        if orientation_file is not None:
            self.angles = np.load(orientation_file).astype(np.float64).reshape(-1)
            if len(self.angles) != len(self.samples):
                raise ValueError(
                    f"{orientation_file}: {len(self.angles)} angles for {len(self.samples)} "
                    f"{area}-area test samples (expected one per test line, city order)"
                )

    def __len__(self) -> int:
        return len(self.samples)

    @override
    def sample_files(self, index: int) -> list[tuple[str, Path]]:
        s = self.samples[index]
        tiles = s.tiles[:1] if self.positives_only else s.tiles
        return [("VIGOR panorama", self.root / s.city / "panorama" / s.pano)] + [
            ("VIGOR satellite tile", self.root / s.city / "satellite" / t[0]) for t in tiles
        ]

    @override
    def load(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        epoch = self.epoch if self.split == "train" else 0
        rng = sample_rng(self.seed, f"vigor-{self.split}", index, epoch)
        tile, d0, d1 = s.tiles[0]
        if not self.positives_only:  # CCVPE: a random tile whose area contains the GT
            inside = [t for t in s.tiles if max(abs(t[1]), abs(t[2])) < TILE_PX / 2]
            tile, d0, d1 = inside[rng.integers(len(inside))]
        (what_g, pano_path), (what_s, _) = self.sample_files(index)[:2]
        pano, _ = load_rgb(pano_path, what_g, self.ground_size)
        sat, _ = load_rgb(self.root / s.city / "satellite" / tile, what_s, (self.sat_size,) * 2)
        if self.angles is not None:
            angle = float(self.angles[index])
        else:
            angle = rng.uniform(-self.yaw_range_deg, self.yaw_range_deg)
        k = roll_columns(angle, pano.shape[1])
        m_per_px = CITY_M_PER_PX[s.city] * TILE_PX / self.sat_size
        center = from_protocol(0.0, 0.0, self.sat_size)
        fraction = 0.25 if self.positives_only else 0.5  # positives: the central region
        return make_item(
            f"{s.city}/{s.pano}",
            np.roll(pano, k, axis=1),
            sat,
            {
                "camera_model": "panorama",
                "K": None,
                "m_per_px": m_per_px,
                "sat_center_uv": center,
                "camera_uv_gt": from_protocol(d0, d1, self.sat_size),
                "yaw_deg_gt": wrap_deg(-360.0 * k / pano.shape[1]) + 0.0,  # no -0.0
                "camera_uv_prior": center,
                "yaw_deg_prior": 0.0,
                "camera_height_m": CAMERA_HEIGHT_M,
                "shift_range_m": fraction * self.sat_size * m_per_px,
                "yaw_range_deg": 180.0 if self.angles is not None else self.yaw_range_deg,
            },
        )
