"""Ford multi-AV seasonal (the HighlyAccurate protocol) in the cvloc batch schema.

Layout (``ROOT``; ``<log>`` such as ``2017-10-26/V2/Log1``, see :data:`TRAIN_LOGS`)::

    <log>/<log with '/' -> '-'>-FL/<frame>.png           front-left camera, 1656 x 860
    <log>/SatelliteMaps_18/<s_lat>_<s_lon>.png           north-up tile, 0.22 m/px at 512 px
    <log>/grd_sat_quaternion_latlon.txt                  frame.txt q0-q3 lat lon s_lat s_lon
    <log>/grd_sat_quaternion_latlon_test.txt             the same + fixed noise su sv theta
    Calibration-V2/V2/cameraFrontLeft_body.yaml          camera -> body transform
    Calibration-V2/V2/cameraFrontLeftIntrinsics.yaml     K

Protocol -> design.md (``docs/datasets.md``): body = tile centre + local metres / 0.22;
body heading = quaternion yaw (compass); body frame forward-right-down, ground 1 m below it;
camera = body composed with the calibration. Noise moves the body: GT = prior + 20 sv m
ahead + 20 su m left (GT heading frame), heading 10 theta deg anticlockwise of the prior's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from typing_extensions import override

from cvloc.data.images import CorruptFileError, load_rgb, require_file
from cvloc.data.protocols import (
    SplitFormatError,
    heading_noise_from_pose,
    parse_floats,
    prior_from_heading_noise,
    read_split_lines,
    sample_rng,
    wrap_deg,
    xy_to_uv,
)
from cvloc.data.registry import BenchmarkDataset, make_item
from cvloc.geometry.cameras import scale_intrinsics
from cvloc.geometry.geo import latlon_to_mercator_px, meters_per_pixel

FORD_M_PER_PX = 0.22  # the protocol's constant (zoom 18 scale 2 at 42.3 deg N is 0.2209)
BODY_HEIGHT_M = 1.0
SHIFT_RANGE_M = 20.0
YAW_RANGE_DEG = 10.0
TRAIN_LOGS = ("2017-10-26/V2/Log1", "2017-10-26/V2/Log2", "2017-08-04/V2/Log3",
              "2017-10-26/V2/Log4", "2017-08-04/V2/Log5", "2017-08-04/V2/Log6")  # fmt: skip
TEST_LOGS = ("2017-08-04/V2/Log1", "2017-08-04/V2/Log2", "2017-08-04/V2/Log3",
             "2017-08-04/V2/Log4", "2017-10-26/V2/Log5", "2017-10-26/V2/Log6")  # fmt: skip
# Lines of grd_sat_quaternion_latlon.txt used for training, per log (HighlyAccurate).
TRAIN_RANGES = (((4500, 8500),), ((0, 3150), (6000, 9200), (11000, 15000)), ((0, 1500),),
                ((0, 7466),), ((0, 3200), (5300, 9900), (10500, 11130)),
                ((1000, 3500), (4500, 5000), (7000, 7857)))  # fmt: skip
CALIB_DIR = Path("Calibration-V2/V2")


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a quaternion (w, x, y, z) (normalised first).

    Args:
        q: (4,) quaternion.
    """
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    v = np.array([x, y, z])
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return (w * w - v @ v) * np.eye(3) + 2.0 * np.outer(v, v) + 2.0 * w * cross


def quaternion_yaw_deg(q: np.ndarray) -> float:
    """Compass heading of a Ford body quaternion (w, x, y, z).

    Convention: world north-east-down, so the z-yaw atan2(R10, R00) (HighlyAccurate's
    ``qvec2angle``) is degrees clockwise from north.

    Args:
        q: (4,) quaternion (q0 = w).
    """
    R = quaternion_matrix(q)
    return float(wrap_deg(math.degrees(math.atan2(R[1, 0], R[0, 0]))))


def camera_pose(
    body_xy: np.ndarray, body_yaw_deg: float, R_body_cam: np.ndarray, t_body_cam: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray]:
    """The camera of a body pose: position, optical-axis heading and world_to_cam.

    Convention: body frame forward-right-down, origin :data:`BODY_HEIGHT_M` above the
    ground; ``X_body = R_body_cam X_cam + t_body_cam`` (OpenCV camera frame).

    Args:
        body_xy: (2,) body position in metres (world x east, y north).
        body_yaw_deg: body compass heading.
        R_body_cam: (3, 3) camera-to-body rotation.
        t_body_cam: (3,) camera centre in the body frame.

    Returns:
        camera_xyz (3,), camera yaw_deg (optical axis), world_to_cam (4, 4).
    """
    sin, cos = math.sin(math.radians(body_yaw_deg)), math.cos(math.radians(body_yaw_deg))
    # Columns: the body's forward, right and down axes in the world (east-north-up).
    R_wb = np.array([[sin, cos, 0.0], [cos, -sin, 0.0], [0.0, 0.0, -1.0]])
    center = np.array([*body_xy, BODY_HEIGHT_M]) + R_wb @ t_body_cam
    R_wc = R_wb @ R_body_cam
    yaw = float(wrap_deg(math.degrees(math.atan2(R_wc[0, 2], R_wc[1, 2]))))
    world_to_cam = np.block([[R_wc.T, -R_wc.T @ center[:, None]], [np.zeros((1, 3)), 1.0]])
    return center, yaw, world_to_cam


# Ford's (su, sv, theta) is the heading-frame (lat, lon, theta) of the body pose.
def from_protocol(
    body_xy_gt: np.ndarray,
    body_yaw_deg_gt: np.ndarray,
    su_sv_theta: np.ndarray,
    yaw_range_deg: float = YAW_RANGE_DEG,
) -> tuple[np.ndarray, np.ndarray]:
    """Prior body pose (xy (..., 2), yaw (...,)) of Ford noise (su, sv, theta).

    Convention: :func:`cvloc.data.protocols.prior_from_heading_noise` with lon = sv,
    lat = su.

    Args:
        body_xy_gt: (..., 2) GT body position in metres.
        body_yaw_deg_gt: (...,) GT body heading.
        su_sv_theta: (..., 3) the test file's noise.
        yaw_range_deg: degrees per unit of theta (10; 180 = unknown orientation).
    """
    noise = np.asarray(su_sv_theta, dtype=np.float64)[..., [1, 0, 2]]
    return prior_from_heading_noise(body_xy_gt, body_yaw_deg_gt, noise, 20.0, yaw_range_deg)


def to_protocol(
    body_xy: np.ndarray,
    body_yaw_deg: np.ndarray,
    prior_xy: np.ndarray,
    prior_yaw_deg: np.ndarray,
    body_yaw_deg_gt: np.ndarray,
) -> np.ndarray:
    """Ford (su, sv, theta) (..., 3) of a body pose relative to the prior body pose.

    Convention: inverse of :func:`from_protocol`, in the GT heading axes.

    Args:
        body_xy: (..., 2) body position in metres.
        body_yaw_deg: (...,) body heading.
        prior_xy: (..., 2) prior body position.
        prior_yaw_deg: (...,) prior body heading.
        body_yaw_deg_gt: (...,) GT body heading.
    """
    noise = heading_noise_from_pose(
        body_xy, body_yaw_deg, prior_xy, prior_yaw_deg, body_yaw_deg_gt
    )
    return noise[..., [1, 0, 2]]


class FordDataset(BenchmarkDataset):
    """One Ford multi-AV log of the HighlyAccurate protocol as batch items.

    Args:
        root: the ``Ford`` directory.
        split: ``"train"`` (the protocol's lines of the training log minus ``val``),
            ``"val"`` (the last ``val_fraction`` of every training range) or ``"test"``
            (every line of the test log's ``_test`` file, with its fixed noise).
        log: the log number, 1 to 6.
        ground_size: (W, H) of the ground image fed to the model.
        yaw_range_deg: degrees per unit of theta (10; 180 = unknown orientation).
        val_fraction: share held out of every training range.
        seed: seed of the training / validation noise.
        skip_bad_samples: see :class:`~cvloc.data.registry.BenchmarkDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        log: int = 1,
        ground_size: tuple[int, int] = (1024, 256),
        yaw_range_deg: float = YAW_RANGE_DEG,
        val_fraction: float = 0.05,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__(seed, skip_bad_samples)
        if split not in ("train", "val", "test") or not 1 <= log <= len(TRAIN_LOGS):
            raise ValueError(f"Ford needs split train/val/test and log 1-6, got {split!r}, {log}")
        self.root, self.split = Path(root), split
        self.ground_size = tuple(ground_size)
        self.yaw_range_deg = yaw_range_deg
        self.log = (TEST_LOGS if split == "test" else TRAIN_LOGS)[log - 1]
        name = "grd_sat_quaternion_latlon" + ("_test" if split == "test" else "")
        path = self.root / self.log / f"{name}.txt"
        lines = read_split_lines(path, "a Ford pose file")
        width = 12 if split == "test" else 9
        expected = f"{width} fields: frame.txt q0 q1 q2 q3 lat lon s_lat s_lon [su sv theta]"
        for n, fields in lines:
            if len(fields) != width:
                raise SplitFormatError(f"{path}:{n}: expected {expected}, got {len(fields)}")
            parse_floats(fields[1:], path, n, expected)
        if split != "test":
            if not 0.0 <= val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
            picked: list[int] = []
            for a, z in TRAIN_RANGES[log - 1]:
                block = list(range(a, min(z, len(lines))))
                cut = len(block) - math.ceil(val_fraction * len(block))
                picked += block[cut:] if split == "val" else block[:cut]
            lines = [lines[i] for i in picked]
        self.lines = [fields for _, fields in lines]
        self._calib: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @override
    def sample_files(self, index: int) -> list[tuple[str, Path]]:
        fields = self.lines[index]
        log_dir = self.root / self.log
        frame = fields[0].replace(".txt", ".png")
        return [
            ("Ford front-left image", log_dir / f"{self.log.replace('/', '-')}-FL" / frame),
            ("Ford satellite tile", log_dir / "SatelliteMaps_18" / f"{fields[7]}_{fields[8]}.png"),
            ("Ford camera extrinsics (yaml)", self.root / CALIB_DIR / "cameraFrontLeft_body.yaml"),
            ("Ford intrinsics (yaml)", self.root / CALIB_DIR / "cameraFrontLeftIntrinsics.yaml"),
        ]

    @override
    def load(self, index: int) -> dict[str, Any]:
        fields = self.lines[index]
        (what_g, ground_path), (what_s, sat_path), ex_path, in_path = self.sample_files(index)
        if self._calib is None:
            self._calib = _read_calibration(ex_path, in_path)
        R_bc, t_bc, K_raw = self._calib
        values = [float(f) for f in fields[1:]]
        ground, (w0, h0) = load_rgb(ground_path, what_g, self.ground_size)
        sat, _ = load_rgb(sat_path, what_s)
        hs, ws = sat.shape[:2]
        m_per_px = FORD_M_PER_PX * 512 / ws
        center = np.array([(ws - 1) / 2.0, (hs - 1) / 2.0])
        body_xy = _local_metres(values[4:6], values[6:8])
        body_yaw = quaternion_yaw_deg(np.array(values[:4]))
        epoch = self.epoch if self.split == "train" else 0
        rng = sample_rng(self.seed, f"ford-{self.split}", index, epoch)
        noise = values[8:11] if self.split == "test" else rng.uniform(-1, 1, 3)
        prior_xy, prior_yaw = from_protocol(body_xy, body_yaw, np.array(noise), self.yaw_range_deg)
        cam, yaw, world_to_cam = camera_pose(body_xy, body_yaw, R_bc, t_bc)
        cam_prior, yaw_prior, _ = camera_pose(prior_xy, float(prior_yaw), R_bc, t_bc)
        sx, sy = self.ground_size[0] / w0, self.ground_size[1] / h0
        return make_item(  # the camera poses, not the body's: design.md's 3-DoF pose
            f"{self.log}/{fields[0]}",
            ground,
            sat,
            {
                "camera_model": "pinhole",
                "K": scale_intrinsics(torch.as_tensor(K_raw), sx, sy),
                "m_per_px": m_per_px,
                "sat_center_uv": center,
                "camera_uv_gt": xy_to_uv(cam[:2], center, m_per_px),
                "yaw_deg_gt": yaw,
                "camera_uv_prior": xy_to_uv(cam_prior[:2], center, m_per_px),
                "yaw_deg_prior": yaw_prior,
                "camera_height_m": cam[2],
                "shift_range_m": SHIFT_RANGE_M,
                "yaw_range_deg": self.yaw_range_deg,
                "world_to_cam": world_to_cam,
            },
        )


def _local_metres(latlon: list[float], tile_latlon: list[float]) -> np.ndarray:
    """(2,) east / north metres of a GPS fix from the tile centre.

    HighlyAccurate's ``gps2utm(lat, lon, lat0=tile lat)``: Web Mercator scaled by
    cos(tile latitude), i.e. Mercator pixels times the tile latitude's m/px.
    """
    ll = torch.tensor([latlon, tile_latlon], dtype=torch.float64)
    d_px = latlon_to_mercator_px(ll[:, 0], ll[:, 1], zoom=0)
    east, south = ((d_px[0] - d_px[1]) * meters_per_pixel(tile_latlon[0], zoom=0)).tolist()
    return np.array([east, -south])


def _read_calibration(
    extrinsics: tuple[str, Path], intrinsics: tuple[str, Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R_body_cam (3, 3), t_body_cam (3,), K (3, 3)) from the two calibration yaml files."""
    (what_e, path_e), (what_i, path_i) = extrinsics, intrinsics
    try:
        tf = yaml.safe_load(require_file(path_e, what_e).read_text())["transform"]
        t = np.array([float(tf["translation"][k]) for k in "xyz"])
        q = np.array([float(tf["rotation"][k]) for k in "wxyz"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        expected = "transform: {translation: {x, y, z}, rotation: {x, y, z, w}}"
        raise CorruptFileError(path_e, expected, f"malformed ({exc})") from exc
    try:
        K = yaml.safe_load(require_file(path_i, what_i).read_text())["K"]
        K = np.array(K, dtype=np.float64).reshape(3, 3)
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(path_i, "K: [9 numbers]", f"malformed ({exc})") from exc
    return quaternion_matrix(q), t, K
