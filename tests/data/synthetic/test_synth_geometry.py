"""Ground truth of the synthetic world, checked independently of the library's cameras.

The projections below are written from design.md's conventions only (K, world_to_cam,
the equirectangular formula): a bug shared by the renderer and cvloc.geometry would
not cancel out here.
"""

import json

import numpy as np
import pytest

from cvloc.data.synthetic import PRESETS, generate_pair
from cvloc.data.synthetic.generate import correspondences, sample_prior
from cvloc.data.synthetic.kernels import BOX, GROUND
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.render import render_ground
from cvloc.data.synthetic.world import build_world

DESIGN_KEYS = {
    "camera_model",
    "world_to_cam",
    "m_per_px",
    "sat_center_uv",
    "camera_uv",
    "yaw_deg",
    "camera_height_m",
    "prior",
    "ground_size",
    "sat_size",
}
EXTRA_KEYS = {
    "name",
    "preset",
    "split",
    "area",
    "seed",
    "index",
    "epoch",
    "shift_range_m",
    "yaw_range_deg",
}
CASES = [
    ("kitti-small", "same", 0),
    ("kitti-small", "cross", 1),
    ("vigor-small", "same", 2),
    ("vigor-small", "cross", 3),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-{a}-{i}" for p, a, i in CASES])
def pair(request):
    preset, area, index = request.param
    return generate_pair(preset, "test", area, index, seed=3)


def sat_to_world(meta, sat_uv, height_m):
    cu, cv = meta["sat_center_uv"]
    m = meta["m_per_px"]
    x = (sat_uv[:, 0].astype(np.float64) - cu) * m
    y = -(sat_uv[:, 1].astype(np.float64) - cv) * m
    return np.stack([x, y, height_m.astype(np.float64)], axis=1)


def project(meta, xyz):
    """Ground pixel of world points, from the meta dict alone (design.md formulas)."""
    T = np.array(meta["world_to_cam"])
    pc = xyz @ T[:3, :3].T + T[:3, 3]
    x, y, z = pc.T
    if meta["camera_model"] == "pinhole":
        K = np.array(meta["K"])
        assert np.all(z > 0)
        u = K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2]
        v = K[1, 1] * y / z + K[1, 2]
        return np.stack([u, v], axis=1)
    w, h = meta["ground_size"]
    phi = np.degrees(np.arctan2(x, z))
    el = np.degrees(np.arctan2(-y, np.hypot(x, z)))
    return np.stack([(phi + 180.0) / 360.0 * w - 0.5, (90.0 - el) / 180.0 * h - 0.5], axis=1)


def test_meta_schema(pair):
    meta = pair.meta
    assert meta.keys() >= DESIGN_KEYS | EXTRA_KEYS
    assert ("K" in meta) == (meta["camera_model"] == "pinhole")
    json.loads(json.dumps(meta))  # plain JSON
    w, h = meta["sat_size"]
    assert meta["sat_center_uv"] == [(w - 1) / 2, (h - 1) / 2]
    assert meta["prior"]["camera_uv"] == meta["sat_center_uv"]
    assert pair.ground.shape == (meta["ground_size"][1], meta["ground_size"][0], 3)
    assert pair.satellite.shape == (h, w, 3) and pair.sat_height_m.shape == (h, w)
    assert pair.ground.dtype == pair.satellite.dtype == np.uint8
    for a in (pair.ground_uv, pair.sat_uv, pair.height_m, pair.sat_height_m):
        assert a.dtype == np.float32


def test_pose_consistent_with_extrinsics(pair):
    meta = pair.meta
    T = np.array(meta["world_to_cam"])
    centre = -T[:3, :3].T @ T[:3, 3]  # camera centre in the world frame
    m = meta["m_per_px"]
    cu, cv = meta["sat_center_uv"]
    u, v = meta["camera_uv"]
    np.testing.assert_allclose(
        centre, [(u - cu) * m, -(v - cv) * m, meta["camera_height_m"]], atol=1e-9
    )
    forward = T[2, :3]  # optical axis in the world frame
    yaw = np.radians(meta["yaw_deg"])
    np.testing.assert_allclose(forward, [np.sin(yaw), np.cos(yaw), 0.0], atol=1e-9)


def test_correspondences_reproject(pair):
    meta = pair.meta
    assert len(pair.ground_uv) > 5000
    uv = project(meta, sat_to_world(meta, pair.sat_uv, pair.height_m))
    err = uv - pair.ground_uv
    if meta["camera_model"] == "panorama":
        w = meta["ground_size"][0]
        err[:, 0] = (err[:, 0] + w / 2) % w - w / 2
    err = np.linalg.norm(err, axis=1)
    assert err.max() < 0.5
    assert np.median(err) < 5e-3


def top_surface(world, xy):
    """Height of the top-most surface above each point (x, y), by brute force.

    Independent of the renderer: boxes from their half-space planes, solids from their
    r(z)^2 profile, one primitive at a time.
    """
    top = np.zeros(len(xy))
    b = world.boxes
    for n, d in zip(b.normals, b.offsets, strict=True):
        side = np.abs(n[:, 2]) < 1e-12
        inside = np.all(xy @ n[side, :2].T <= d[side] + 1e-9, axis=1)
        up = n[:, 2] > 0
        z_hi = ((d[up] - xy @ n[up, :2].T) / n[up, 2]).min(axis=1)
        down = n[:, 2] < 0
        z_lo = ((d[down] - xy @ n[down, :2].T) / n[down, 2]).max(axis=1)
        ok = inside & (z_hi >= z_lo)
        top[ok] = np.maximum(top[ok], z_hi[ok])
    s = world.solids
    for c, z0, z1, (q0, q1, q2) in zip(s.center, s.z0, s.z1, s.q, strict=True):
        rho2 = ((xy - c) ** 2).sum(1)
        zs = np.linspace(z0, z1, 2001)  # dense profile scan, then refine the top root
        inside = (q0 + q1 * zs[None] + q2 * zs[None] ** 2) >= rho2[:, None]
        hit = inside.any(axis=1)
        if not hit.any():
            continue
        k = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
        z_top = zs[k]
        if abs(q2) > 1e-12:  # refine to the root of q(z) = rho^2 nearest the scan's top
            sq = np.sqrt(np.maximum(q1 * q1 - 4 * q2 * (q0 - rho2), 0))
            r1, r2 = (-q1 - sq) / (2 * q2), (-q1 + sq) / (2 * q2)
            root = np.where(np.abs(r1 - z_top) < np.abs(r2 - z_top), r1, r2)
            side = (k < len(zs) - 1) & hit
            z_top = np.where(side, np.clip(root, z0, z1), z_top)
        top[hit] = np.maximum(top[hit], z_top[hit])
    return top


def test_correspondences_are_top_most(pair):
    """Every correspondence is the top-most surface at its (x, y): visible from above."""
    meta = pair.meta
    world = build_world(
        stable_seed("scene", 3, "test", meta["area"], meta["index"]),
        meta["area"],
        PRESETS[meta["preset"]],
    )
    m = meta["m_per_px"]
    cu, cv = meta["sat_center_uv"]
    cam = np.array([(meta["camera_uv"][0] - cu) * m, -(meta["camera_uv"][1] - cv) * m])
    prior_xy = world.camera.xy - cam  # the pair's world frame is the scene shifted by this
    pick = np.random.default_rng(0).choice(len(pair.sat_uv), 2000, replace=False)
    xyz = sat_to_world(meta, pair.sat_uv[pick], pair.height_m[pick])
    top = top_surface(world, xyz[:, :2] + prior_xy)
    np.testing.assert_allclose(xyz[:, 2], top, atol=5e-3)


def test_height_map_matches_correspondences(pair):
    """The satellite height map agrees with the correspondences' heights."""
    hmap = pair.sat_height_m.astype(np.float64)
    h, w = hmap.shape
    u0 = np.clip(np.floor(pair.sat_uv[:, 0]).astype(int), 0, w - 2)
    v0 = np.clip(np.floor(pair.sat_uv[:, 1]).astype(int), 0, h - 2)
    corners = np.stack([hmap[v0, u0], hmap[v0, u0 + 1], hmap[v0 + 1, u0], hmap[v0 + 1, u0 + 1]])
    z = pair.height_m
    # Slopes between pixel centres stay within tol; objects smaller than a pixel (bollards,
    # bin lids) may fall between pixel centres, hence a fraction rather than all.
    tol = 0.35
    within = (z >= corners.min(0) - tol) & (z <= corners.max(0) + tol)
    assert within.mean() > 0.995
    nearest = hmap[
        np.clip(np.round(pair.sat_uv[:, 1]).astype(int), 0, h - 1),
        np.clip(np.round(pair.sat_uv[:, 0]).astype(int), 0, w - 1),
    ]
    assert np.median(np.abs(nearest - z)) < 0.01 and np.mean(np.abs(nearest - z) < 1.0) > 0.9
    ws, hs = pair.meta["sat_size"]
    assert np.all((pair.sat_uv >= -0.5) & (pair.sat_uv < np.array([ws, hs]) - 0.5))
    assert len(np.unique(pair.ground_uv, axis=0)) == len(pair.ground_uv)


def test_objects_stand_above_ground(pair):
    """The flat-ground assumption is visibly wrong: many correspondences are not at z = 0."""
    assert np.mean(pair.height_m > 0.5) > 0.02
    assert pair.sat_height_m.max() > 3.0


@pytest.mark.parametrize("preset", ["kitti-small", "vigor-small"])
def test_canopy_hides_ground_from_above_only(preset):
    """Ground under a canopy is seen from the street but has no correspondence."""
    p = PRESETS[preset]
    found = 0
    for index in range(6):
        world = build_world(stable_seed("scene", 0, "train", "cross", index), "cross", p)
        render = render_ground(world, p)
        rng = np.random.default_rng(stable_seed("prior", 0, "train", "cross", index, 0))
        prior_xy, _ = sample_prior(p.prior, world.camera.xy, world.camera.yaw_deg, rng)
        ground_uv, _, _ = correspondences(render, world, prior_xy, p)
        kept = set(map(tuple, ground_uv.astype(int).tolist()))
        sol = world.solids
        canopy = np.isin(sol.material, [Material.CANOPY, Material.CONIFER])
        canopy &= sol.z0 > p.camera_height_m + 0.5
        ground = np.flatnonzero(render.kind == GROUND)
        pts = render.points[:2, ground].T
        d2 = ((pts[:, None] - sol.center[canopy][None]) ** 2).sum(-1)
        # Under a canopy: inside its largest horizontal cross-section, shrunk a bit.
        under = np.any(d2 < (0.9 * sol.rmax[canopy][None] / 1.02) ** 2, axis=1)
        w = p.ground_size[0]
        pix = [(int(i % w), int(i // w)) for i in ground[under]]
        assert not any(q in kept for q in pix)
        found += len(pix)
        facade = np.flatnonzero((render.kind == BOX) & (np.abs(render.normals[2]) < 1e-6))
        assert not any((int(i % w), int(i // w)) in kept for i in facade)
    assert found > 50
