"""One synthetic ground/satellite pair with its pose, prior and pixel-level ground truth.

Seeds: the scene (streets, buildings, camera, lighting) depends on
``stable_seed("scene", seed, split, area, index)``, a hash, so the train, val and test
splits (and both areas) can never share a scene (and on the camera model, which decides
where the camera stands: a lane or a sidewalk). The prior noise depends on
``stable_seed("prior", seed, split, area, index, epoch)`` for the train split, so each
epoch moves the prior (and hence the satellite crop, which is centred on it) while the
scene and the ground image stay; val and test priors ignore the epoch (fixed benchmark).

Frames: the scene is generated in a scene frame (x east, y north, metres); the pair's
world frame (design.md) is the scene frame shifted so that its origin is the prior
position, which is shown at the satellite tile centre ``sat_center_uv``.

Correspondences: a ground pixel's pixel-centre ray has an exact first hit P; it is kept
when P is visible from above (its surface is not near-vertical, i.e. not a facade, pole
or silhouette: normal z > 0.1; and nothing is above it: the vertical ray from P hits
nothing) and lies inside the satellite tile. Its satellite pixel is P's (x, y)
mapped by :func:`cvloc.geometry.geo.world_xy_to_pixel`, its height P's z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cvloc.data.synthetic.kernels import SKY
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.occlusion import occluded
from cvloc.data.synthetic.presets import PriorProtocol, SynthPreset, get_preset
from cvloc.data.synthetic.render import GroundRender, render_ground, render_satellite
from cvloc.data.synthetic.style import AREAS
from cvloc.data.synthetic.world import World, build_world
from cvloc.geometry.geo import world_xy_to_pixel
from cvloc.geometry.pose import world_to_cam_from_pose

SPLITS = ("train", "val", "test")
UP = np.array([0.0, 0.0, 1.0])
TOP_OFFSET_M = 0.01  # surface points are lifted this much before the top-visibility test
# Surfaces steeper than acos(0.1) = 84 deg (facades, poles, trunks, canopy silhouettes)
# have almost no footprint from above: they are not satellite-visible.
MIN_NORMAL_Z = 0.1


@dataclass
class SynthPair:
    """A generated pair.

    Attributes:
        ground: (Hg, Wg, 3) uint8 RGB ground image.
        satellite: (Hs, Ws, 3) uint8 RGB north-up satellite tile.
        meta: JSON-ready dict: every ``meta.json`` key of design.md plus ``name``,
            ``preset``, ``split``, ``area``, ``seed``, ``index``, ``epoch`` (the effective
            epoch: 0 for val and test), ``shift_range_m``, ``yaw_range_deg``, ``style``.
        ground_uv: (N, 2) float32 ground pixels with a correspondence.
        sat_uv: (N, 2) float32 their satellite pixels.
        height_m: (N,) float32 height of the 3-D point above the ground.
        sat_height_m: (Hs, Ws) float32 top-most surface height at each satellite pixel centre.
    """

    ground: np.ndarray
    satellite: np.ndarray
    meta: dict
    ground_uv: np.ndarray
    sat_uv: np.ndarray
    height_m: np.ndarray
    sat_height_m: np.ndarray


def wrap_deg(angle_deg: float) -> float:
    """Wrap an angle to (-180, 180].

    Convention: degrees; -180 maps to +180 (as :func:`cvloc.geometry.pose.wrap_deg`).

    Args:
        angle_deg: any angle in degrees.

    Returns:
        The wrapped angle.
    """
    return 180.0 - (180.0 - angle_deg) % 360.0


def sample_prior(
    protocol: PriorProtocol, camera_xy: np.ndarray, yaw_deg: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Draw the noisy prior pose around the ground truth.

    Convention: metric frame x east, y north; yaw compass degrees clockwise from north.
    ``kitti``: GT - prior = lon * forward + lat * right with lon, lat ~ U(-s, s) (GT
    heading frame); ``vigor``: GT - prior = (e, -s_) with east e and south s_ ~ U(-s, s).
    Prior yaw = wrap(GT yaw + U(-r, r)).

    Args:
        protocol: the prior protocol.
        camera_xy: (2,) GT camera position.
        yaw_deg: GT heading.
        rng: random generator.

    Returns:
        prior position (2,), prior yaw in degrees.
    """
    a, b = rng.uniform(-protocol.shift_range_m, protocol.shift_range_m, 2)
    yaw = np.radians(yaw_deg)
    if protocol.kind == "kitti":
        forward, right = (
            np.array([np.sin(yaw), np.cos(yaw)]),
            np.array([np.cos(yaw), -np.sin(yaw)]),
        )
        offset = a * forward + b * right
    else:
        offset = np.array([a, -b])
    noise = rng.uniform(-protocol.yaw_range_deg, protocol.yaw_range_deg)
    return camera_xy - offset, wrap_deg(yaw_deg + noise)


def correspondences(
    render: GroundRender, world: World, prior_xy: np.ndarray, preset: SynthPreset
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground pixels whose surface point the satellite also sees, and where.

    Convention: a pixel's point P (scene frame) maps to the satellite pixel
    ``world_xy_to_pixel(P_xy - prior_xy)`` of the tile centred on the prior.

    Args:
        render: the ground render (per-pixel hits in the scene frame).
        world: the scene (occluders).
        prior_xy: (2,) the tile centre in the scene frame.
        preset: image sizes and resolution.

    Returns:
        ground_uv (N, 2), sat_uv (N, 2), height_m (N,), all float32.
    """
    wg, _ = preset.ground_size
    ws, hs = preset.sat_size
    idx = np.flatnonzero((render.kind != SKY) & (render.normals[2] > MIN_NORMAL_Z))
    P = np.take(render.points, idx, axis=1)
    center = torch.tensor([(ws - 1) / 2, (hs - 1) / 2], dtype=torch.float64)
    sat_uv = world_xy_to_pixel(torch.from_numpy(P[:2].T - prior_xy), center, preset.m_per_px)
    sat_uv = sat_uv.numpy()
    inside = np.flatnonzero(np.all((sat_uv >= -0.5) & (sat_uv < np.array([ws, hs]) - 0.5), axis=1))
    idx, P, sat_uv = idx[inside], np.take(P, inside, axis=1), sat_uv[inside]
    lifted = P + np.array([[0.0], [0.0], [TOP_OFFSET_M]])
    top = np.flatnonzero(~occluded(lifted, UP, world.boxes, world.solids))
    idx, P, sat_uv = idx[top], np.take(P, top, axis=1), sat_uv[top]
    ground_uv = np.stack([idx % wg, idx // wg], axis=1)
    return ground_uv.astype(np.float32), sat_uv.astype(np.float32), P[2].astype(np.float32)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def generate_pair(
    preset: str | SynthPreset, split: str, area: str, index: int, seed: int = 0, epoch: int = 0
) -> SynthPair:
    """Generate one synthetic pair, deterministically.

    Convention: design.md. The pair's world frame (x east, y north, z up, metres) has its
    origin at the prior position, shown at ``sat_center_uv`` = ((W - 1) / 2, (H - 1) / 2)
    of the north-up tile; ``camera_uv`` / ``yaw_deg`` are the GT pose (yaw clockwise from
    north); ``world_to_cam`` maps world to the OpenCV camera frame.

    Args:
        preset: a key of :data:`cvloc.data.synthetic.PRESETS` or a :class:`SynthPreset`.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint scenes).
        area: ``"same"`` or ``"cross"`` (different scene distributions).
        index: sample index within the split (any non-negative int).
        seed: dataset seed.
        epoch: training epoch; changes the prior (and the satellite crop) for ``train``
            only.

    Returns:
        The pair.

    Raises:
        ValueError: an argument is not one of its allowed values.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("area", area, AREAS)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    p = get_preset(preset)
    index, seed = int(index), int(seed)
    epoch = int(epoch) if split == "train" else 0
    scene_seed = stable_seed("scene", seed, split, area, index)
    world = build_world(scene_seed, area, p)
    ground = render_ground(world, p)
    prior_rng = np.random.default_rng(stable_seed("prior", seed, split, area, index, epoch))
    cam = world.camera
    prior_xy, prior_yaw = sample_prior(p.prior, cam.xy, cam.yaw_deg, prior_rng)
    satellite, height = render_satellite(world, prior_xy, p)
    ground_uv, sat_uv, height_m = correspondences(ground, world, prior_xy, p)
    meta = _meta(p, world, prior_xy, prior_yaw)
    meta.update(
        name=f"synth/{p.name}/{split}/{area}/s{seed}/{index:06d}"
        + (f"/e{epoch}" if split == "train" else ""),
        preset=p.name,
        split=split,
        area=area,
        seed=seed,
        index=index,
        epoch=epoch,
        style=world.style.layout,
    )
    return SynthPair(
        satellite=satellite,
        ground=ground.image,
        meta=meta,
        ground_uv=ground_uv,
        sat_uv=sat_uv,
        height_m=height_m,
        sat_height_m=height,
    )


def _meta(p: SynthPreset, world: World, prior_xy: np.ndarray, prior_yaw: float) -> dict:
    """The design.md meta.json keys in the pair's world frame (origin at the prior)."""
    cam = world.camera
    ws, hs = p.sat_size
    center = [(ws - 1) / 2, (hs - 1) / 2]
    xy = cam.xy - prior_xy
    T = world_to_cam_from_pose(
        torch.as_tensor(xy[None], dtype=torch.float64),
        torch.tensor([cam.yaw_deg], dtype=torch.float64),
        cam.height_m,
    )[0]
    uv = world_xy_to_pixel(torch.tensor(xy), torch.tensor(center, dtype=torch.float64), p.m_per_px)
    meta = {
        "camera_model": p.camera_model,
        "world_to_cam": T.tolist(),
        "m_per_px": p.m_per_px,
        "sat_center_uv": list(center),
        "camera_uv": uv.tolist(),
        "yaw_deg": cam.yaw_deg,
        "camera_height_m": cam.height_m,
        "prior": {"camera_uv": list(center), "yaw_deg": float(prior_yaw)},
        "ground_size": list(p.ground_size),
        "sat_size": list(p.sat_size),
        "shift_range_m": p.prior.shift_range_m,
        "yaw_range_deg": p.prior.yaw_range_deg,
    }
    if p.K is not None:
        meta["K"] = [list(row) for row in p.K]
    return meta
