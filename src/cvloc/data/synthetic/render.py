"""Render the ground image (pinhole or panorama) and the satellite tile of a world.

The ground image casts the pixel-centre rays of :mod:`.camera_rays`; the satellite is an
orthographic north-up view of the top-most surfaces (rays straight down through pixel
centres). Both shade the same albedo (:mod:`.materials`, :mod:`.ground_materials`) with
their own light (:mod:`.shading`).

The appearance gap between the views is deliberate: each view has its own sun (time of
capture), shadows, colour response and noise; the satellite is hazier, tinted, blurred
and slightly desaturated; the ground image has its own exposure, white balance,
vignetting (pinhole), sky with clouds and aerial perspective. Images are processed
channel first, (3, H, W) float32, and tone-mapped through a lookup table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cvloc.data.synthetic.camera_rays import ground_rays
from cvloc.data.synthetic.kernels import GROUND, SKY
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.patterns import F32, put, take
from cvloc.data.synthetic.presets import SynthPreset
from cvloc.data.synthetic.raycast import cast_level
from cvloc.data.synthetic.shading import shade, sky, surface_albedo, surface_normals
from cvloc.data.synthetic.topdown import cast_down
from cvloc.data.synthetic.world import World

Z_TOP_M = 200.0
_TONE_MAX = 8.0
_TONE_LUT_SIZE = 8192
_GRAIN_SIZE = 1 << 21  # more than the largest image (512 x 512 x 3)


@dataclass
class GroundRender:
    """The ground image and the first hit of every pixel-centre ray (row-major pixels).

    Attributes:
        image: (H, W, 3) uint8 RGB.
        points: (3, H * W) float64 hit points in the scene frame (NaN for sky).
        normals: (3, H * W) unit surface normals (+z for sky).
        kind: (H * W,) int8 primitive family of each hit (:mod:`.kernels` codes).
    """

    image: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    kind: np.ndarray


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (C, H, W) float32 image with edge padding."""
    r = max(1, int(np.ceil(2.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(F32)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        out = k[0] * (p[:, :n] if axis == 1 else p[:, :, :n])
        for i in range(1, 2 * r + 1):
            out += k[i] * (p[:, i : i + n] if axis == 1 else p[:, :, i : i + n])
        img = out
    return img


@functools.lru_cache(maxsize=1)
def _tone_lut() -> np.ndarray:
    """Filmic tone curve 1 - exp(-x) followed by a 1/2.2 gamma, tabulated on [0, 8]."""
    x = np.linspace(0.0, _TONE_MAX, _TONE_LUT_SIZE, dtype=np.float64)
    return ((1.0 - np.exp(-x)) ** (1 / 2.2) * 255.0).astype(F32)


@functools.lru_cache(maxsize=1)
def _grain() -> np.ndarray:
    """A fixed table of standard normal samples; images read it at a random offset."""
    return np.random.default_rng(7).standard_normal(_GRAIN_SIZE, dtype=F32)


def _to_uint8(linear: np.ndarray, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    """(3, H, W) linear radiance to (H, W, 3) uint8: tone curve, gamma, noise, rounding."""
    x = linear.reshape(-1) * F32((_TONE_LUT_SIZE - 1) / _TONE_MAX)
    np.clip(x, 0, _TONE_LUT_SIZE - 1, out=x)
    y = np.take(_tone_lut(), x.astype(np.intp))
    start = int(rng.integers(_GRAIN_SIZE - y.size))
    y += _grain()[start : start + y.size] * F32(noise_std * 255.0)
    y += F32(0.5)
    np.clip(y, 0, 255, out=y)
    return np.ascontiguousarray(y.astype(np.uint8).reshape(linear.shape).transpose(1, 2, 0))


def render_ground(world: World, preset: SynthPreset) -> GroundRender:
    """Ray-cast, shade and expose the ground image.

    Convention: the camera is ``world.camera`` in the scene frame; pixels row-major with
    integer pixel centres; ``points`` are the exact first hits of the pixel-centre rays.

    Args:
        world: the scene.
        preset: camera model, image size, intrinsics and height.

    Returns:
        The image and per-pixel hits.
    """
    cam = world.camera
    w, h = preset.ground_size
    rays = ground_rays(preset, cam.xy, cam.yaw_deg)
    hits = cast_level(rays, world.boxes, world.solids)
    col = np.tile(np.arange(w), h)
    D = np.stack([take(rays.hdir[:, 0], col), take(rays.hdir[:, 1], col), rays.slope.ravel()])
    norm = np.sqrt(1.0 + D[2] ** 2)
    hit = np.flatnonzero(hits.kind != SKY)
    sub = hits.subset(hit)
    t = sub.t.astype(np.float64)
    Dh = take(D, hit)
    P = rays.origin[:, None] + t * Dh
    P[2][sub.kind == GROUND] = 0.0
    normals = surface_normals(world, sub, P)
    dist = t * take(norm, hit)
    cos_inc = np.abs(np.sum(Dh * normals, axis=0)) / take(norm, hit)
    pix_rad = 1.0 / preset.K[0][0] if preset.K is not None else 2 * np.pi / w
    fw = (dist * pix_rad / np.sqrt(np.maximum(cos_inc, 0.05))).astype(F32)
    light = world.ground_light
    rng = np.random.default_rng(stable_seed("ground-sensor", world.seed))
    radiance = shade(world, light, P, normals, surface_albedo(world, sub, P, fw))
    haze = np.exp(-dist / rng.uniform(250.0, 1200.0)).astype(F32)
    horizon = sky(np.array([[1.0], [0.0], [0.0]]), light, 0.0, 0.0)
    image = np.empty((3, h * w), F32)
    put(image, hit, radiance * haze + horizon * (1 - haze))
    up = np.flatnonzero(hits.kind == SKY)
    put(
        image,
        up,
        sky(take(D, up) / take(norm, up), light, rng.uniform(0.0, 0.7), rng.uniform(0, 5000)),
    )
    points = np.full((3, h * w), np.nan)
    put(points, hit, P)
    all_normals = np.zeros((3, h * w))
    all_normals[2] = 1.0
    put(all_normals, hit, normals)
    image = _expose_ground(image.reshape(3, h, w), rng, preset)
    return GroundRender(image, points, all_normals, hits.kind)


def _expose_ground(
    radiance: np.ndarray, rng: np.random.Generator, preset: SynthPreset
) -> np.ndarray:
    """Exposure, white balance, vignetting (pinhole), slight blur, noise."""
    _, h, w = radiance.shape
    gain = (rng.uniform(0.45, 0.75) * rng.uniform(0.95, 1.05, 3)).astype(F32)
    img = radiance * gain[:, None, None]
    if preset.camera_model == "pinhole":
        u = ((np.arange(w) - (w - 1) / 2) / (w / 2)) ** 2
        v = ((np.arange(h) - (h - 1) / 2) / (w / 2)) ** 2
        img *= (1.0 - rng.uniform(0.1, 0.3) * (v[:, None] + u[None])).astype(F32)
    img = _blur(img, rng.uniform(0.3, 0.6))
    return _to_uint8(img, rng, rng.uniform(0.004, 0.015))


def render_satellite(
    world: World, center_xy: np.ndarray, preset: SynthPreset
) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic north-up satellite tile centred on a scene point.

    Convention: pixel (u, v) = (column east, row south), integer pixel centres; pixel
    ((W - 1) / 2, (H - 1) / 2) shows ``center_xy``; x = cx + (u - cu) m, y = cy - (v - cv) m.

    Args:
        world: the scene.
        center_xy: (2,) scene point at the tile centre, metres.
        preset: tile size and resolution.

    Returns:
        image (H, W, 3) uint8 RGB; height (H, W) float32 top-most surface height, metres.
    """
    w, h = preset.sat_size
    m = preset.m_per_px
    xs = center_xy[0] + (np.arange(w) - (w - 1) / 2) * m
    ys = center_xy[1] - (np.arange(h) - (h - 1) / 2) * m
    hits = cast_down(xs, ys, world.boxes, world.solids, Z_TOP_M)
    z = Z_TOP_M - hits.t.astype(np.float64)
    z[hits.kind == GROUND] = 0.0
    P = np.stack([np.tile(xs, h), np.repeat(ys, w), z])
    normals = surface_normals(world, hits, P)
    albedo = surface_albedo(world, hits, P, np.full(h * w, m, F32))
    radiance = shade(world, world.sat_light, P, normals, albedo).reshape(3, h, w)
    rng = np.random.default_rng(stable_seed("sat-sensor", world.seed))
    gain = (rng.uniform(0.42, 0.6) * rng.uniform(0.92, 1.08, 3)).astype(F32)
    img = radiance * gain[:, None, None]
    lum = img.mean(axis=0)
    img = lum + F32(rng.uniform(0.75, 1.0)) * (img - lum)
    veil = F32(rng.uniform(0.02, 0.06))
    img = img * (1 - veil) + veil * np.array([0.55, 0.62, 0.75], F32)[:, None, None]
    img = _blur(img, rng.uniform(0.5, 1.0) / (preset.m_per_px / 0.2) ** 0.5)
    return _to_uint8(img, rng, rng.uniform(0.008, 0.02)), z.reshape(h, w).astype(F32)
