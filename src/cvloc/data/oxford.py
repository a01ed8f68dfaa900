"""Oxford RobotCar cross-view (Xia et al.'s split, as CCVPE and Boosting) in the batch schema.

Layout (``ROOT``; split and yaw files in ``split_dir``, default ``ROOT``)::

    <traversal>/ground/<easting>_<northing>.png    1200 x 800: rows 0:800, columns 40:1240 of
                                                    the 1280 x 960 Bumblebee XB3 centre image
    satellite_map_new.png                          the stitched north-up satellite map
    training.txt validation.txt test{1,2,3}_j.txt  'ground_path satellite_path easting northing'
    train_yaw.npy val_yaw.npy test_yaw.npy         one yaw (rad) per line (test: test1..3
    test{1,2,3}_yaw.txt                            concatenated); the .txt files win if present

Protocol -> design.md (``docs/datasets.md``): UTM (easting, northing) -> map pixel through
the protocol's least-squares affine of five control points (verified: 0.09246 m/px,
singular values 0.09234 / 0.09258, map rotated 1.37 deg from UTM grid north, i.e. the grid
convergence: the map is true-north-up); crops of 800 map px resized to ``sat_size``:
training crops are centred at the GT plus CCVPE's random offset (radius U(0, 200 sqrt 2)
px, uniform angle) per (seed, epoch, index), validation / test crops are CCVPE's 400-px
grid windows holding the GT within +-200 px of their centre. The prior is the crop centre.
Yaw: compass = degrees(yaw) - 90 (checked on test1 against the direction of travel).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from typing_extensions import override

from cvloc.data.images import load_rgb
from cvloc.data.protocols import SplitFormatError, parse_floats, read_split_lines, sample_rng
from cvloc.data.protocols import wrap_deg as _wrap
from cvloc.data.registry import BenchmarkDataset, make_item
from cvloc.geometry.cameras import scale_intrinsics

# The protocol's control points: UTM (easting, northing) -> stitched-map pixel (col, row).
CONTROL_UTM = ((619400.0, 5736195.0), (619400.0, 5734600.0), (620795.0, 5736195.0),
               (620795.0, 5734600.0), (620100.0, 5735400.0))  # fmt: skip
CONTROL_PX = ((900.0, 900.0), (492.0, 18168.0), (15966.0, 1260.0), (15553.0, 18528.0),
              (8255.0, 9688.0))  # fmt: skip
CROP_PX = 800
GRID_PX = 400  # validation / test windows start on multiples of this
# Bumblebee XB3 centre intrinsics at 1280 x 960, shifted by the 40-column crop.
K_GROUND = ((964.828979, 0.0, 643.788025 - 40.0), (0.0, 964.828979, 484.407990), (0, 0, 1.0))
CAMERA_HEIGHT_M = 1.65  # Boosting's model_oxford (its KITTI constant); RobotCar gives none
SPLIT_FILES = {"train": "training.txt", "val": "validation.txt"} | {
    f"test{i}": f"test{i}_j.txt" for i in (1, 2, 3)
}
BROKEN_TRAIN = (937, 9050, 11811, 12388, 16584)  # yaw rows without a training.txt line
MAP_MAX_PIXELS = 1_000_000_000


@functools.lru_cache(maxsize=1)
def map_affine() -> np.ndarray:
    """(3, 2) least-squares affine A with [easting, northing, 1] @ A = [col, row]."""
    X = np.hstack([np.array(CONTROL_UTM), np.ones((5, 1))])
    return np.linalg.lstsq(X, np.array(CONTROL_PX), rcond=None)[0]


def utm_to_map_px(utm: np.ndarray) -> np.ndarray:
    """(..., 2) stitched-map pixels (col, row) of UTM (easting, northing) in metres.

    Convention: the protocol's affine; pixel coordinates as its control points give them.

    Args:
        utm: (..., 2) easting, northing.
    """
    utm = np.asarray(utm, dtype=np.float64)
    return utm @ map_affine()[:2] + map_affine()[2]


def map_px_to_utm(px: np.ndarray) -> np.ndarray:
    """(..., 2) UTM (easting, northing) in metres of stitched-map pixels.

    Convention: inverse of :func:`utm_to_map_px`.

    Args:
        px: (..., 2) map pixels (col, row).
    """
    px = np.asarray(px, dtype=np.float64) - map_affine()[2]
    return px @ np.linalg.inv(map_affine()[:2])


def map_m_per_px() -> float:
    """Metres per stitched-map pixel: the affine's geometric-mean scale (0.092461)."""
    return float(1.0 / math.sqrt(abs(np.linalg.det(map_affine()[:2]))))


def yaw_rad_to_deg(yaw_rad: np.ndarray | float) -> np.ndarray:
    """Compass heading (degrees clockwise from north) of the protocol's yaw.

    Convention: the yaw files hold radians with 0 = west, clockwise (CCVPE's comment;
    checked against the direction of travel of test1): compass = degrees(yaw) - 90.

    Args:
        yaw_rad: (...,) protocol yaw.
    """
    return _wrap(np.degrees(yaw_rad) - 90.0)


def yaw_deg_to_rad(yaw_deg: np.ndarray | float) -> np.ndarray:
    """Protocol yaw (radians, 0 = west, clockwise, in (-pi, pi]) of a compass heading.

    Convention: inverse of :func:`yaw_rad_to_deg`: radians(wrap(yaw_deg + 90)).

    Args:
        yaw_deg: (...,) compass heading.
    """
    return np.radians(_wrap(np.asarray(yaw_deg) + 90.0))


class OxfordDataset(BenchmarkDataset):
    """Oxford RobotCar cross-view localisation as :mod:`cvloc.data.batch` items.

    The stitched map (about 1 GB decoded) is loaded once per process on first use and is
    not pickled into DataLoader workers (each worker loads its own copy).

    Args:
        root: the dataset root (traversal folders and the map).
        split: ``"train"``, ``"val"`` (the protocol's validation traversal), ``"test1"``,
            ``"test2"`` or ``"test3"``.
        split_dir: directory of split and yaw files (default ``root``).
        map_path: the stitched map (default ``root/satellite_map_new.png``).
        ground_size: (W, H) of the ground image fed to the model (3:2 like the stored one).
        sat_size: side of the satellite crop fed to the model.
        yaw_range_deg: prior heading noise: 0 = known heading (Boosting / DenseFlow),
            180 = unknown (CCVPE); drawn per (seed, epoch, index), fixed for val / test.
        seed: seed of the crop offsets and heading noise.
        skip_bad_samples: see :class:`~cvloc.data.registry.BenchmarkDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        split_dir: str | os.PathLike | None = None,
        map_path: str | os.PathLike | None = None,
        ground_size: tuple[int, int] = (384, 256),
        sat_size: int = 512,
        yaw_range_deg: float = 0.0,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__(seed, skip_bad_samples)
        if split not in SPLIT_FILES:
            raise ValueError(f"Oxford split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        self.root, self.split = Path(root), split
        self.map_path = Path(map_path or self.root / "satellite_map_new.png")
        self.ground_size, self.sat_size = tuple(ground_size), sat_size
        self.yaw_range_deg = yaw_range_deg
        split_dir = Path(split_dir or root)
        self.lines = parse_split_file(split_dir / SPLIT_FILES[split])
        self.yaws = _read_yaws(split_dir, split, len(self.lines))
        self._map: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}  # workers load their own map

    def __len__(self) -> int:
        return len(self.lines)

    @override
    def sample_files(self, index: int) -> list[tuple[str, Path]]:
        return [
            ("Oxford ground image (1200 x 800)", self.root / self.lines[index][0]),
            ("Oxford stitched satellite map", self.map_path),
        ]

    @override
    def load(self, index: int) -> dict[str, Any]:
        ground_path, easting, northing = self.lines[index]
        what, path = self.sample_files(index)[0]
        ground, (w0, h0) = load_rgb(path, what, self.ground_size)
        col, row = utm_to_map_px(np.array([easting, northing]))
        epoch = self.epoch if self.split == "train" else 0
        rng = sample_rng(self.seed, f"oxford-{self.split}", index, epoch)
        if self.split == "train":  # CCVPE: crop centred at the GT + a random offset
            alpha, r = 2 * math.pi * rng.random(), GRID_PX / 2 * math.sqrt(2) * rng.random()
            x0 = int(col + int(r * math.sin(alpha))) - CROP_PX // 2
            y0 = int(row + int(r * math.cos(alpha))) - CROP_PX // 2
            half_range_px = GRID_PX / 2 * math.sqrt(2)
        else:  # CCVPE: the grid window holding the GT in its central 400 x 400 px
            x0, y0 = _grid_origin(col), _grid_origin(row)
            half_range_px = GRID_PX / 2
        sat = self._crop(x0, y0)
        s = self.sat_size / CROP_PX
        center = np.full(2, (self.sat_size - 1) / 2.0)
        m_per_px = map_m_per_px() / s
        yaw_gt = float(yaw_rad_to_deg(self.yaws[index]))
        sx, sy = self.ground_size[0] / w0, self.ground_size[1] / h0
        K = scale_intrinsics(torch.tensor(K_GROUND, dtype=torch.float64), sx, sy)
        return make_item(
            ground_path,
            ground,
            sat,
            {
                "camera_model": "pinhole",
                "K": K,
                "m_per_px": m_per_px,
                "sat_center_uv": center,
                "camera_uv_gt": (np.array([col - x0, row - y0]) + 0.5) * s - 0.5,
                "yaw_deg_gt": yaw_gt,
                "camera_uv_prior": center,
                "yaw_deg_prior": _wrap(yaw_gt + rng.uniform(-1, 1) * self.yaw_range_deg),
                "camera_height_m": CAMERA_HEIGHT_M,
                "shift_range_m": half_range_px * map_m_per_px(),
                "yaw_range_deg": self.yaw_range_deg,
            },
        )

    def _crop(self, x0: int, y0: int) -> np.ndarray:
        """The map's [x0, x0 + 800) x [y0, y0 + 800) window (black outside), resized."""
        if self._map is None:
            what = "Oxford stitched satellite map"
            self._map, _ = load_rgb(self.map_path, what, max_pixels=MAP_MAX_PIXELS)
        h, w = self._map.shape[:2]
        out = np.zeros((CROP_PX, CROP_PX, 3), np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + CROP_PX, w), min(y0 + CROP_PX, h)
        if xa < xb and ya < yb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self._map[ya:yb, xa:xb]
        size = (self.sat_size, self.sat_size)
        return np.asarray(Image.fromarray(out).resize(size, Image.Resampling.BILINEAR))


def parse_split_file(path: str | os.PathLike) -> list[tuple[str, float, float]]:
    """(ground path, easting, northing) of every line of an Oxford split file.

    Args:
        path: the split file (``ground_path satellite_path easting northing`` lines).

    Raises:
        FileNotFoundError: missing file; SplitFormatError: a malformed line (named).
    """
    path, expected = Path(path), "'ground_path satellite_path easting northing'"
    out = []
    for n, fields in read_split_lines(path, "an Oxford RobotCar split file"):
        if len(fields) != 4:
            raise SplitFormatError(f"{path}:{n}: expected {expected}, got {' '.join(fields)!r}")
        easting, northing = parse_floats(fields[2:], path, n, expected)
        out.append((fields[0], easting, northing))
    return out


def _grid_origin(coord: float) -> int:
    """CCVPE's test window start: a multiple of 400 px with the GT in [200, 600) inside."""
    k = int(coord // GRID_PX)
    if np.round(coord - GRID_PX * k) < GRID_PX // 2:
        k -= 1
    return GRID_PX * k


def _read_yaws(split_dir: Path, split: str, count: int) -> np.ndarray:
    """The yaw (rad) of every line of ``split``: ``<split>_yaw.txt`` or the protocol's npy."""
    txt = split_dir / f"{split}_yaw.txt"
    if txt.is_file():
        rows = read_split_lines(txt, "one yaw (rad) per line")
        yaws = np.array(
            [parse_floats(f[:1], txt, n, "one yaw (rad) per line")[0] for n, f in rows]
        )
    else:
        stem = {"train": "train", "val": "val"}.get(split, "test")
        npy = split_dir / f"{stem}_yaw.npy"
        if not npy.is_file():
            raise FileNotFoundError(f"{txt} or {npy}: missing (expected the yaw per line)")
        yaws = np.load(npy).astype(np.float64).reshape(-1)
        if split.startswith("test"):  # test_yaw.npy concatenates test1, test2, test3
            earlier = [split_dir / f"test{i}_j.txt" for i in range(1, int(split[-1]))]
            start = sum(len(read_split_lines(p, "an Oxford test split")) for p in earlier)
            yaws = yaws[start : start + count]
        elif split == "train" and len(yaws) == count + len(BROKEN_TRAIN):
            yaws = np.delete(yaws, BROKEN_TRAIN)  # as Boosting: 5 broken images were dropped
    if len(yaws) != count:
        raise SplitFormatError(f"{split_dir}: {len(yaws)} yaws for {count} {split} lines")
    return yaws
