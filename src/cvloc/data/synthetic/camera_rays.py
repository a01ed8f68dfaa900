"""Pixel-centre rays of the ground camera, from the library's own camera models.

Ground rays come from :func:`cvloc.geometry.cameras.pinhole_unproject` (KITTI-like
pinhole) or :func:`cvloc.geometry.cameras.panorama_unproject` (equirectangular), rotated
into the world by :func:`cvloc.geometry.pose.world_to_cam_from_pose`, so the renderer and
the ground truth share one definition of the cameras. For a level camera every column's
rays lie in one vertical half-plane and the ray slope factorises as g(row) * hfac(column);
these per-preset factors are computed (and checked) once and cached, and each pair only
rotates the column directions by its heading.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from cvloc.data.synthetic.presets import SynthPreset
from cvloc.data.synthetic.raycast import LevelRays
from cvloc.geometry.cameras import panorama_unproject, pinhole_unproject
from cvloc.geometry.pose import world_to_cam_from_pose


def pixel_grid(width: int, height: int) -> torch.Tensor:
    """Pixel centres of an image, row-major.

    Convention: (u, v) = (column, row), integers at pixel centres.

    Args:
        width: W.
        height: H.

    Returns:
        (H * W, 2) float64.
    """
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def _world_to_cam(xy: np.ndarray, yaw_deg: float, height_m: float) -> torch.Tensor:
    return world_to_cam_from_pose(
        torch.as_tensor(np.asarray(xy, np.float64)[None]),
        torch.tensor([yaw_deg], dtype=torch.float64),
        height_m,
    )[0]


@functools.lru_cache(maxsize=16)
def _fan(preset: SynthPreset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame rays of the first row, and the level-camera factors (heading north).

    Returns the (W, 3) first-row camera-frame rays, rel_az (W,), g (H,) and hfac (W,).
    """
    w, h = preset.ground_size
    uv = pixel_grid(w, h)
    if preset.camera_model == "pinhole":
        K = torch.tensor(preset.K, dtype=torch.float64)
        rays_cam = pinhole_unproject(uv, torch.ones(len(uv), dtype=torch.float64), K)
    else:
        rays_cam = panorama_unproject(uv, w, h)
    T = _world_to_cam(np.zeros(2), 0.0, preset.camera_height_m)
    d = (rays_cam @ T[:3, :3]).numpy().reshape(h, w, 3)  # R^T d for each ray
    horiz = np.hypot(d[..., 0], d[..., 1])
    slope = d[..., 2] / horiz
    hdir = d[0, :, :2] / horiz[0, :, None]
    ref = int(np.argmax(np.abs(slope[:, 0])))
    g, hfac = slope[:, 0], slope[ref] / slope[ref, 0]
    rel = np.arctan2(hdir[:, 0], hdir[:, 1])
    planar = np.abs(d[..., :2] / horiz[..., None] - hdir[None]).max() < 1e-9
    separable = np.abs(slope - g[:, None] * hfac[None]).max() < 1e-9 * (1 + np.abs(slope).max())
    if not (planar and separable and np.all(np.diff(rel) > 0) and np.all(np.diff(g) < 0)):
        raise ValueError("the ground camera must be level with column-planar rays")
    return rays_cam.numpy().reshape(h, w, 3)[0].copy(), rel, g, hfac


def ground_rays(preset: SynthPreset, camera_xy: np.ndarray, yaw_deg: float) -> LevelRays:
    """Pixel-centre rays of the ground camera in the scene frame.

    Convention: scene frame x east, y north, z up; camera frame and models of
    :mod:`cvloc.geometry.cameras`; the camera is level (pitch = roll = 0).

    Args:
        preset: camera model, image size, intrinsics and height.
        camera_xy: (2,) camera position, metres.
        yaw_deg: heading, degrees clockwise from north.

    Returns:
        The rays.

    Raises:
        ValueError: the camera model does not give level, column-planar rays.
    """
    first_row, rel, g, hfac = _fan(preset)
    R = _world_to_cam(camera_xy, yaw_deg, preset.camera_height_m)[:3, :3].numpy()
    d = first_row @ R  # R^T d: the first row's world directions
    hdir = d[:, :2] / np.hypot(d[:, 0], d[:, 1])[:, None]
    origin = np.array([camera_xy[0], camera_xy[1], preset.camera_height_m], np.float64)
    return LevelRays(origin, float(np.radians(yaw_deg)), hdir, rel, g, hfac)
