"""Surface normals, albedo dispatch, sun/sky lighting and the sky dome.

Lighting is a sun (directional, with exact cast shadows from :mod:`.occlusion`), a sky
hemisphere term and a ground-bounce term, which is enough for facades facing away from
the sun, shadowed streets and bright roofs to read correctly in both views. Each view
has its own :class:`.world.Light` (different capture times), so shadows differ between
the ground and the satellite image, as in real data.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.ground_materials import ground_albedo
from cvloc.data.synthetic.kernels import BOX, GROUND, SOLID, Hits
from cvloc.data.synthetic.materials import box_albedo, solid_albedo
from cvloc.data.synthetic.noise import noise
from cvloc.data.synthetic.occlusion import occluded
from cvloc.data.synthetic.patterns import put, take
from cvloc.data.synthetic.world import Light, World

F32 = np.float32
SHADOW_OFFSET_M = 0.02


def surface_normals(world: World, hits: Hits, P: np.ndarray) -> np.ndarray:
    """Outward unit normals at hit points.

    Convention: scene frame (x east, y north, z up); the ground's normal is +z; rays
    that hit nothing get +z too.

    Args:
        world: the scene.
        hits: first hits of N rays.
        P: (3, N) hit points, metres.

    Returns:
        (3, N) float64.
    """
    n = np.zeros((3, P.shape[1]))
    n[2] = 1.0
    b = np.flatnonzero(hits.kind == BOX)
    put(n, b, take(world.boxes.normals_t, take(hits.prim, b) * 6 + take(hits.face, b)))
    s = np.flatnonzero(hits.kind == SOLID)
    idx, face = take(hits.prim, s), take(hits.face, s)
    sol = world.solids
    q1, q2 = take(sol.q[:, 1], idx), take(sol.q[:, 2], idx)
    z = take(P[2], s)
    grad = np.stack(
        [
            take(P[0], s) - take(sol.center[:, 0], idx),
            take(P[1], s) - take(sol.center[:, 1], idx),
            -0.5 * (q1 + 2 * q2 * z),
        ]
    )
    grad /= np.maximum(np.sqrt(np.sum(grad * grad, axis=0)), 1e-12)
    cap = face > 0
    grad[:, cap] = 0.0
    grad[2, cap] = np.where(face[cap] == 1, -1.0, 1.0)
    put(n, s, grad)
    return n


def surface_albedo(world: World, hits: Hits, P: np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Albedo at hit points, dispatched by primitive family.

    Args:
        world: the scene.
        hits: first hits of N rays.
        P: (3, N) hit points in the scene frame, metres.
        fw: (N,) pixel footprint at each point, metres (anti-aliasing width).

    Returns:
        (3, N) float32 linear albedo (zeros where nothing is hit).
    """
    out = np.zeros((3, P.shape[1]), F32)
    g = np.flatnonzero(hits.kind == GROUND)
    put(
        out,
        g,
        ground_albedo(
            world.fields, world.net, world.style, take(P[0], g), take(P[1], g), take(fw, g)
        ),
    )
    b = np.flatnonzero(hits.kind == BOX)
    put(
        out,
        b,
        box_albedo(world.boxes, take(hits.prim, b), take(hits.face, b), take(P, b), take(fw, b)),
    )
    s = np.flatnonzero(hits.kind == SOLID)
    put(out, s, solid_albedo(world.solids, take(hits.prim, s), take(P, s), take(fw, s)))
    return out


def shade(
    world: World, light: Light, P: np.ndarray, normals: np.ndarray, albedo: np.ndarray
) -> np.ndarray:
    """Sun (with exact cast shadows), sky and ground-bounce lighting.

    Convention: scene frame; ``light.sun_dir`` points towards the sun.

    Args:
        world: the scene (shadow casters).
        light: the view's lighting.
        P: (3, N) surface points.
        normals: (3, N) unit normals.
        albedo: (3, N) linear albedo.

    Returns:
        (3, N) float32 linear radiance.
    """
    ndl = np.clip(light.sun_dir @ normals, 0.0, None)
    # Beyond the scene square there is nothing to cast a shadow.
    test = (ndl > 0) & (np.abs(P[0]) <= world.extent) & (np.abs(P[1]) <= world.extent)
    if np.any(light.sun > 0) and test.any():
        i = np.flatnonzero(test)
        origin = take(P, i) + take(normals, i) * SHADOW_OFFSET_M
        ndl[i[occluded(origin, light.sun_dir, world.boxes, world.solids)]] = 0.0
    nz = normals[2].astype(F32)
    sun = light.sun.astype(F32)[:, None] * ndl.astype(F32)
    sky_light = light.sky.astype(F32)[:, None] * (0.6 + 0.4 * nz)
    bounce = light.bounce.astype(F32)[:, None] * (0.5 - 0.5 * nz)
    return albedo * (sun + sky_light + bounce)


def sky(
    directions: np.ndarray, light: Light, cloud_cover: float, cloud_shift: float
) -> np.ndarray:
    """Radiance of the sky seen along unit directions: gradient, sun glow, clouds.

    Convention: scene frame (x east, y north, z up).

    Args:
        directions: (3, N) unit viewing directions.
        light: the view's lighting.
        cloud_cover: share of the sky covered by clouds, in [0, 1].
        cloud_shift: offset of the cloud pattern, metres.

    Returns:
        (3, N) float32 linear radiance.
    """
    up = np.clip(directions[2], 0.0, 1.0)
    horizon = np.array([0.95, 1.0, 1.08])[:, None] * 1.1
    zenith = light.sky[:, None] * 1.4
    base = horizon + (zenith - horizon) * np.sqrt(up)
    cos_sun = light.sun_dir @ directions
    glow = np.exp((cos_sun - 1.0) * 8.0) * 0.6 + np.exp((cos_sun - 1.0) * 400.0) * 4.0
    base = base + glow * (np.clip(light.sun, 0.3, None) / 3.0)[:, None]
    if cloud_cover <= 0:
        return base.astype(F32)
    z = np.maximum(directions[2], 0.02)
    cx = directions[0] / z * 1000.0 + cloud_shift
    cy = directions[1] / z * 1000.0
    n = noise(cx, cy, 500.0, 0) + 0.5 * noise(cx, cy, 120.0, 1)
    threshold = 1.2 - 2.4 * cloud_cover
    cover = np.clip((n - threshold) * 1.5, 0.0, 1.0) * np.clip(directions[2] * 10.0, 0.0, 1.0)
    cloud = np.array([1.05, 1.05, 1.07])[:, None] * (0.9 + 0.15 * np.clip(n - threshold, 0, 1))
    return (base + (cloud - base) * cover).astype(F32)
