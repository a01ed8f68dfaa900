"""KITTI cross-view localisation (the HighlyAccurate protocol) in the cvloc batch schema.

Layout (``ROOT``; split files in ``split_dir``, default ``ROOT``)::

    raw_data/<date>/calib_cam_to_cam.txt                  P_rect_02
    raw_data/<date>/<drive>/image_02/data/<frame>.png     left colour camera
    raw_data/<date>/<drive>/oxts/data/<frame>.txt         field 5 = yaw (rad, 0 east, CCW)
    satmap/<date>/<drive>/<frame>.png                     512 x 512 north-up tile on the GPS
    train_files.txt  test1_files.txt  test2_files.txt      split files (HighlyAccurate)

Protocol -> design.md (derivations in ``docs/datasets.md``): the tile stays north-up (the
peers rotate it heading-east; our metrics do not need that), 0.19583 m/px at 512 px, GPS
at its centre = world origin; yaw = 90 - deg(oxts[5]); ``image_02`` 1.08 m ahead of and
0.26 m right of the GPS, 1.65 m high; K = ``P_rect_02`` scaled from the decoded size with
the pixel-centre rule; noise (u, v, theta): GT u * 20 m ahead, v * 20 m left of the prior
(GT heading frame), heading theta * 10 deg anticlockwise of the prior's.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from cvloc.data.images import CorruptFileError, load_rgb, require_file
from cvloc.data.protocols import (
    SplitFormatError,
    heading_noise_from_pose,
    parse_floats,
    prior_from_heading_noise,
    read_split_lines,
    sample_rng,
    tail_fraction,
    wrap_deg,
    xy_to_uv,
)
from cvloc.data.registry import BenchmarkDataset, make_item
from cvloc.geometry.cameras import scale_intrinsics
from cvloc.geometry.geo import meters_per_pixel

KITTI_M_PER_PX = meters_per_pixel(49.015, 18, scale=2)  # at 512 px: 0.195829 m/px
SAT_SIZE_PX = 512
CAMERA_HEIGHT_M = 1.65
GPS_TO_CAMERA_M = (1.08, 0.26)  # image_02 relative to the GPS/IMU: (forward, right)
SHIFT_RANGE_M = 20.0
YAW_RANGE_DEG = 10.0
SPLIT_FILES = {
    "train": "train_files.txt",
    "val": "train_files.txt",
    "test1": "test1_files.txt",
    "test2": "test2_files.txt",
}
_NAME = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+\.png$")


@dataclass(frozen=True)
class KittiFrame:
    """One split line: ``name`` = ``<date>/<drive>/<frame>.png``, ``noise`` = (u, v, theta)."""

    name: str
    noise: tuple[float, float, float] | None = None

    @property
    def parts(self) -> tuple[str, str, str]:
        """(date, drive, frame stem)."""
        date, drive, frame = self.name.split("/")
        return date, drive, frame[: -len(".png")]


def parse_split_file(path: str | os.PathLike) -> list[KittiFrame]:
    """The frames of a HighlyAccurate split file (``name`` or ``name u v theta`` lines).

    Args:
        path: the split file.

    Raises:
        FileNotFoundError: missing file; SplitFormatError: a malformed line (named).
    """
    path = Path(path)
    expected = "'<date>/<drive>/<frame>.png' optionally followed by 'u v theta' in [-1, 1]"
    frames = []
    for n, fields in read_split_lines(path, "a KITTI split file"):
        if len(fields) not in (1, 4) or not _NAME.match(fields[0]):
            raise SplitFormatError(f"{path}:{n}: expected {expected}, got {' '.join(fields)!r}")
        noise = None
        if len(fields) == 4:
            u, v, t = parse_floats(fields[1:], path, n, expected)
            if max(abs(u), abs(v), abs(t)) > 1.0 + 1e-6:
                raise SplitFormatError(f"{path}:{n}: noise {u} {v} {t} outside [-1, 1]")
            noise = (u, v, t)
        frames.append(KittiFrame(fields[0], noise))
    return frames


def read_p_rect_02(path: str | os.PathLike) -> np.ndarray:
    """(3, 3) float64 K: the first three columns of ``P_rect_02`` in a calib file.

    Args:
        path: the ``calib_cam_to_cam.txt``.

    Raises:
        MissingFileError: the file is missing; CorruptFileError: no valid P_rect_02 line.
    """
    path = require_file(path, "KITTI calib_cam_to_cam.txt with a P_rect_02 line")
    for line in path.read_text(errors="replace").splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "P_rect_02":
            try:
                P = np.array([float(x) for x in rest.split()], dtype=np.float64)
            except ValueError:
                break
            if P.size == 12 and np.isfinite(P).all():
                return P.reshape(3, 4)[:, :3]
            break
    raise CorruptFileError(path, "a 'P_rect_02: <12 numbers>' line", "no valid P_rect_02")


def read_oxts(path: str | os.PathLike) -> tuple[float, float, float]:
    """(lat, lon, yaw_rad) of an oxts record: fields 0, 1, 5 (yaw 0 = east, anticlockwise).

    Args:
        path: the ``oxts/data/<frame>.txt`` file.

    Raises:
        MissingFileError: the file is missing; CorruptFileError: < 6 numeric fields.
    """
    path = require_file(path, "KITTI oxts record")
    fields = path.read_text(errors="replace").split()
    try:
        lat, lon, yaw = float(fields[0]), float(fields[1]), float(fields[5])
    except (IndexError, ValueError):
        lat = lon = yaw = math.nan
    if not all(map(math.isfinite, (lat, lon, yaw))):
        raise CorruptFileError(
            path,
            "an oxts line of >= 6 numbers (lat lon alt roll pitch yaw)",
            "malformed oxts record",
        )
    return lat, lon, yaw


def oxts_yaw_to_deg(yaw_rad: float) -> float:
    """Compass heading (degrees clockwise from north) of an oxts yaw.

    Convention: oxts yaw is radians, 0 = east, counter-clockwise positive; the result is
    wrap(90 - degrees(yaw)) in (-180, 180].

    Args:
        yaw_rad: the oxts yaw.
    """
    return float(wrap_deg(90.0 - math.degrees(yaw_rad)))


def camera_offset_xy(yaw_deg: float) -> np.ndarray:
    """(2,) world offset in metres of ``image_02`` from the GPS/IMU for a heading.

    Convention: world x east, y north; 1.08 m along the heading plus 0.26 m to its right
    (HighlyAccurate ``get_camera_gps_shift_left``).

    Args:
        yaw_deg: compass heading.
    """
    yaw = math.radians(yaw_deg)
    forward = np.array([math.sin(yaw), math.cos(yaw)])
    right = np.array([math.cos(yaw), -math.sin(yaw)])
    return GPS_TO_CAMERA_M[0] * forward + GPS_TO_CAMERA_M[1] * right


# KITTI's (u, v, theta) is exactly the (lon, lat, theta) of the HighlyAccurate heading-frame
# parametrisation, 20 m and 10 deg per unit by default (yaw_range_deg=180: unknown heading).
from_protocol = prior_from_heading_noise
to_protocol = heading_noise_from_pose


def _drive_of(name: str) -> str:
    return name.rsplit("/", 1)[0]


class KittiDataset(BenchmarkDataset):
    """The KITTI cross-view benchmark as :mod:`cvloc.data.batch` items.

    Args:
        root: the dataset root (``raw_data/`` and ``satmap/``).
        split: ``"train"``, ``"val"`` (held out of ``train_files.txt``), ``"test1"``
            (same area) or ``"test2"`` (cross area).
        split_dir: directory of the split files (default ``root``).
        split_file: a split file to read instead of the default for ``split``.
        ground_size: (W, H) of the ground image fed to the model.
        shift_range_m: metres per unit of the noise u, v (20).
        yaw_range_deg: degrees per unit of theta (10; 180 = unknown orientation).
        val_fraction: share of each drive's last training frames held out as ``val``.
        seed: seed of the training / validation noise.
        skip_bad_samples: see :class:`~cvloc.data.registry.BenchmarkDataset`.

    Raises:
        ValueError: unknown split; FileNotFoundError, SplitFormatError: split file missing
            or malformed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        split_dir: str | os.PathLike | None = None,
        split_file: str | os.PathLike | None = None,
        ground_size: tuple[int, int] = (1024, 256),
        shift_range_m: float = SHIFT_RANGE_M,
        yaw_range_deg: float = YAW_RANGE_DEG,
        val_fraction: float = 0.05,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__(seed, skip_bad_samples)
        if split not in SPLIT_FILES:
            raise ValueError(f"KITTI split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.ground_size = tuple(ground_size)
        self.shift_range_m = shift_range_m
        self.yaw_range_deg = yaw_range_deg
        path = Path(split_file or Path(split_dir or root) / SPLIT_FILES[split])
        frames = parse_split_file(path)
        if split in ("train", "val"):
            held_out = tail_fraction([f.name for f in frames], val_fraction, _drive_of)
            frames = [f for f in frames if (f.name in held_out) == (split == "val")]
        self.frames = frames
        self._K_raw: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frames)

    @override
    def sample_files(self, index: int) -> list[tuple[str, Path]]:
        date, drive, frame = self.frames[index].parts
        raw = self.root / "raw_data" / date
        return [
            ("KITTI image_02 frame", raw / drive / "image_02" / "data" / f"{frame}.png"),
            ("KITTI oxts record", raw / drive / "oxts" / "data" / f"{frame}.txt"),
            ("KITTI calib_cam_to_cam.txt", raw / "calib_cam_to_cam.txt"),
            ("KITTI satellite tile", self.root / "satmap" / self.frames[index].name),
        ]

    @override
    def load(self, index: int) -> dict[str, Any]:
        frame = self.frames[index]
        (what_g, ground_path), (_, oxts_path), (_, calib_path), (what_s, sat_path) = (
            self.sample_files(index)
        )
        date = frame.parts[0]
        if date not in self._K_raw:
            self._K_raw[date] = read_p_rect_02(calib_path)
        _, _, oxts_yaw = read_oxts(oxts_path)
        ground, (w0, h0) = load_rgb(ground_path, what_g, self.ground_size)
        sat, _ = load_rgb(sat_path, what_s)
        hs, ws = sat.shape[:2]
        if hs != ws:
            raise CorruptFileError(sat_path, what_s, f"tile is {ws}x{hs}, expected a square")
        m_per_px = KITTI_M_PER_PX * SAT_SIZE_PX / ws  # the tile always spans ~100 m
        center = np.array([(ws - 1) / 2.0, (hs - 1) / 2.0])
        yaw_gt = oxts_yaw_to_deg(oxts_yaw)
        cam_xy = camera_offset_xy(yaw_gt)  # the GPS is the world origin
        noise = self._noise(index, frame)
        prior_xy, prior_yaw = from_protocol(
            cam_xy, yaw_gt, noise, self.shift_range_m, self.yaw_range_deg
        )
        K = scale_intrinsics(
            torch.as_tensor(self._K_raw[date]), self.ground_size[0] / w0, self.ground_size[1] / h0
        )
        return make_item(
            frame.name,
            ground,
            sat,
            {
                "camera_model": "pinhole",
                "K": K,
                "m_per_px": m_per_px,
                "sat_center_uv": center,
                "camera_uv_gt": xy_to_uv(cam_xy, center, m_per_px),
                "yaw_deg_gt": yaw_gt,
                "camera_uv_prior": xy_to_uv(prior_xy, center, m_per_px),
                "yaw_deg_prior": prior_yaw,
                "camera_height_m": CAMERA_HEIGHT_M,
                "shift_range_m": self.shift_range_m,
                "yaw_range_deg": self.yaw_range_deg,
            },
        )

    def _noise(self, index: int, frame: KittiFrame) -> np.ndarray:
        """The sample's (u, v, theta): the file's, else drawn (per epoch for training)."""
        if frame.noise is not None:
            return np.array(frame.noise)
        epoch = self.epoch if self.split == "train" else 0
        return sample_rng(self.seed, f"kitti-{self.split}", index, epoch).uniform(-1, 1, 3)
