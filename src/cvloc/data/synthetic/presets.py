"""Synthetic-world presets: camera, satellite tile and prior-noise protocol per benchmark.

Each preset mirrors one real protocol (``reference/protocols.md`` sections 3.1 and 3.2):

- ``kitti``: ground 1024 x 256 pinhole whose intrinsics are KITTI's ``P_rect_02``
  (fx = fy = 721.5377, cx = 609.5593, cy = 172.854 at 1242 x 375) rescaled non-uniformly
  to 1024 x 256 as the KITTI loaders do; camera 1.65 m above the road; satellite 512 x 512
  at 0.19583 m/px (zoom 18, scale 2 at latitude 49.015 deg, about 100 m across). Prior:
  the GT is offset from the prior by U(-20, 20) m longitudinally and laterally in the GT
  heading frame, the prior heading by U(-10, 10) deg.
- ``kitti-small``: the same metric coverage at half resolution (ground 512 x 128 with K
  rescaled, satellite 256 x 256 at 0.39166 m/px) for CPU training.
- ``vigor``: 640 x 320 equirectangular panorama, camera 2.0 m high; satellite 512 x 512
  covering VIGOR's Chicago tile (640 px at 0.111262 m/px, zoom 20) = 71.2 m, i.e.
  0.111262 * 640 / 512 = 0.13907750 m/px. Prior: the tile centre; the GT lies anywhere in
  the tile's central region (VIGOR positives: within +-W/4 of the centre along u and v,
  i.e. +-17.8 m); heading known (yaw range 0).
- ``vigor-small``: half resolution (320 x 160 panorama, 256 x 256 satellite).

Override the protocol with :meth:`SynthPreset.with_prior`, e.g.
``PRESETS["kitti"].with_prior(yaw_range_deg=180.0)`` (unknown orientation) or
``PRESETS["vigor"].with_prior(yaw_range_deg=180.0)`` (VIGOR "unknown orientation").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cvloc.geometry.cameras import scale_intrinsics

CAMERA_MODELS = ("pinhole", "panorama")
PRIOR_KINDS = ("kitti", "vigor")

# KITTI P_rect_02 at the raw 1242 x 375 resolution (HighlyAccurate loaders).
KITTI_K_RAW = ((721.5377, 0.0, 609.5593), (0.0, 721.5377, 172.854), (0.0, 0.0, 1.0))
KITTI_RAW_SIZE = (1242, 375)
KITTI_M_PER_PX = 0.19583  # 512 px tiles, zoom 18, scale 2, latitude 49.015 deg
VIGOR_M_PER_PX_640 = 0.111262  # Chicago, zoom 20, 640 px tiles


@dataclass(frozen=True)
class PriorProtocol:
    """How the noisy prior pose is drawn around the ground truth.

    Attributes:
        kind: ``"kitti"``: the GT is offset from the prior by U(-shift, shift) metres along
            the GT heading (longitudinal) and across it (lateral); ``"vigor"``: the prior
            is the tile centre and the GT is offset from it by U(-shift, shift) metres
            along east and along south (the tile's central region).
        shift_range_m: half-width of the position noise per axis, metres.
        yaw_range_deg: half-width of the heading noise, degrees (0 = known heading,
            180 = unknown).
    """

    kind: str
    shift_range_m: float
    yaw_range_deg: float

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise ValueError(f"kind must be one of {PRIOR_KINDS}, got {self.kind!r}")
        if self.shift_range_m < 0 or not 0 <= self.yaw_range_deg <= 180:
            raise ValueError("shift_range_m must be >= 0 and yaw_range_deg in [0, 180]")


@dataclass(frozen=True)
class SynthPreset:
    """Sensor and protocol settings of one synthetic benchmark.

    Attributes:
        name: preset name, recorded in every pair's meta.
        camera_model: ``"pinhole"`` or ``"panorama"``.
        ground_size: (W, H) of the ground image in pixels (W = 2 H for panoramas).
        K: pinhole intrinsics, 3 rows of 3 (pixel centres at integers); None for panoramas.
        camera_height_m: camera centre height above the ground plane.
        sat_size: (W, H) of the satellite tile in pixels.
        m_per_px: satellite resolution in metres per pixel.
        prior: the prior-noise protocol.
        on_sidewalk_prob: probability that the camera stands on a sidewalk rather than
            in a driving lane (0 for a car-mounted camera).
    """

    name: str
    camera_model: str
    ground_size: tuple[int, int]
    K: tuple[tuple[float, float, float], ...] | None
    camera_height_m: float
    sat_size: tuple[int, int]
    m_per_px: float
    prior: PriorProtocol
    on_sidewalk_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.camera_model not in CAMERA_MODELS:
            raise ValueError(
                f"camera_model must be one of {CAMERA_MODELS}, got {self.camera_model!r}"
            )
        w, h = self.ground_size
        if self.camera_model == "panorama" and w != 2 * h:
            raise ValueError(f"a panorama has W = 2 H, got ground_size {self.ground_size}")
        if (self.K is None) != (self.camera_model == "panorama"):
            raise ValueError("K is required for a pinhole camera and absent for a panorama")

    @property
    def sat_half_extent_m(self) -> float:
        """Half of the satellite tile's larger side in metres."""
        return max(self.sat_size) * self.m_per_px / 2.0

    def with_prior(self, **changes: float | str) -> SynthPreset:
        """A copy with some prior-protocol fields replaced.

        Args:
            changes: fields of :class:`PriorProtocol` (``kind``, ``shift_range_m``,
                ``yaw_range_deg``).

        Returns:
            The new preset (same name).
        """
        return dataclasses.replace(self, prior=dataclasses.replace(self.prior, **changes))


def kitti_intrinsics(width: int, height: int) -> tuple[tuple[float, float, float], ...]:
    """KITTI's ``P_rect_02`` intrinsics resized from 1242 x 375 to ``width`` x ``height``.

    Convention: pixel centres at integers (:func:`cvloc.geometry.cameras.scale_intrinsics`).

    Args:
        width: target image width in pixels.
        height: target image height in pixels.

    Returns:
        K as 3 rows of 3 floats.
    """
    K = torch.tensor(KITTI_K_RAW, dtype=torch.float64)
    K = scale_intrinsics(K, width / KITTI_RAW_SIZE[0], height / KITTI_RAW_SIZE[1])
    return tuple(tuple(float(x) for x in row) for row in K.tolist())


def _kitti(name: str, scale: int) -> SynthPreset:
    ground = (1024 // scale, 256 // scale)
    return SynthPreset(
        name=name,
        camera_model="pinhole",
        ground_size=ground,
        K=kitti_intrinsics(*ground),
        camera_height_m=1.65,
        sat_size=(512 // scale, 512 // scale),
        m_per_px=KITTI_M_PER_PX * scale,
        prior=PriorProtocol(kind="kitti", shift_range_m=20.0, yaw_range_deg=10.0),
    )


def _vigor(name: str, scale: int) -> SynthPreset:
    sat = 512 // scale
    m_per_px = VIGOR_M_PER_PX_640 * 640 / 512 * scale
    return SynthPreset(
        name=name,
        camera_model="panorama",
        ground_size=(640 // scale, 320 // scale),
        K=None,
        camera_height_m=2.0,
        sat_size=(sat, sat),
        m_per_px=m_per_px,
        prior=PriorProtocol(kind="vigor", shift_range_m=sat / 4 * m_per_px, yaw_range_deg=0.0),
        on_sidewalk_prob=0.4,
    )


PRESETS: dict[str, SynthPreset] = {
    "kitti": _kitti("kitti", 1),
    "kitti-small": _kitti("kitti-small", 2),
    "vigor": _vigor("vigor", 1),
    "vigor-small": _vigor("vigor-small", 2),
}


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    """Resolve a preset name (or pass a preset through).

    Args:
        preset: a key of :data:`PRESETS` or a :class:`SynthPreset`.

    Returns:
        The preset.

    Raises:
        ValueError: ``preset`` names no preset.
    """
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PRESETS[preset]
