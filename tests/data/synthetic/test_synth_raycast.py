"""The culled, vectorised ray casting agrees with brute force over every primitive."""

import numpy as np
import pytest

from cvloc.data.synthetic import PRESETS
from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.camera_rays import ground_rays
from cvloc.data.synthetic.kernels import BOX, GROUND, SKY, SOLID, slab_hits, solid_hits
from cvloc.data.synthetic.occlusion import occluded
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.raycast import LevelRays, cast_level
from cvloc.data.synthetic.topdown import cast_down


@pytest.fixture(scope="module")
def scene():
    """Random overlapping boxes, frustums, cylinders, cones and spheroids."""
    rng = np.random.default_rng(0)
    b = PrimitiveBuilder()
    grey = np.full(3, 0.5)
    for _ in range(60):
        c = rng.uniform(-60, 60, 2)
        if np.hypot(*c) < 8:
            continue
        half = rng.uniform(1, 10, 2)
        top = half * rng.uniform(0, 1, 2) if rng.random() < 0.5 else None
        b.boxes(
            c[None],
            rng.uniform(0, 3),
            rng.uniform(0, 2),
            rng.uniform(3, 20),
            half[None],
            Material.WALL,
            grey,
            top=None if top is None else top[None],
        )
    for _ in range(60):
        c = rng.uniform(-60, 60, (1, 2))
        if np.hypot(*c[0]) < 6:
            continue
        kind = rng.integers(3)
        if kind == 0:
            b.cylinders(
                c,
                0.0,
                rng.uniform(2, 8),
                rng.uniform(0.1, 0.5),
                rng.uniform(0.05, 0.5),
                Material.TRUNK,
                grey,
            )
        elif kind == 1:
            b.spheroids(
                c, rng.uniform(1, 6), rng.uniform(1, 4), rng.uniform(0.5, 3), Material.CANOPY, grey
            )
        else:
            b.cylinders(
                c,
                rng.uniform(0, 3),
                rng.uniform(5, 12),
                rng.uniform(1, 3),
                0.0,
                Material.CONIFER,
                grey,
            )
    return b.build()


def brute_first_hits(boxes, solids, origins, dirs, t_min):
    """First hit of every ray against every primitive, one primitive at a time (float64)."""
    n = len(dirs)
    best = np.full(n, np.inf)
    kind = np.zeros(n, int)
    face = np.zeros(n, int)
    for i in range(len(boxes)):
        nrm, off = boxes.normals[i], boxes.offsets[i]
        den = nrm @ dirs.T
        num = off[:, None] - nrm @ origins.T
        t, f = slab_hits(den, num, t_min)
        better = t < best
        best[better], kind[better], face[better] = t[better], BOX, f[better]
    for i in range(len(solids)):
        p = origins[:, :2] - solids.center[i]
        zr = solids.zref[i]
        t, _ = solid_hits(
            np.sum(p * p, 1),
            np.sum(p * dirs[:, :2], 1),
            np.sum(dirs[:, :2] ** 2, 1),
            origins[:, 2] - zr,
            dirs[:, 2],
            np.repeat(solids.q_rel[i][:, None], n, 1),
            np.full(n, solids.z0[i] - zr),
            np.full(n, solids.z1[i] - zr),
            t_min,
        )
        better = t < best
        best[better], kind[better] = t[better], SOLID
    return best, kind, face


def panorama_rays(yaw_deg=17.0, w=160, h=80):
    phi = (np.arange(w) + 0.5) / w * 2 * np.pi - np.pi
    el = np.radians(90 - (np.arange(h) + 0.5) / h * 180)
    az = np.radians(yaw_deg) + phi
    return LevelRays(
        np.array([0.5, -0.3, 2.0]),
        np.radians(yaw_deg),
        np.stack([np.sin(az), np.cos(az)], 1),
        phi,
        np.tan(el),
        np.ones(w),
    )


@pytest.mark.parametrize("camera", ["panorama", "pinhole"])
def test_cast_level_matches_brute_force(scene, camera):
    boxes, solids = scene
    if camera == "panorama":
        rays = panorama_rays()
    else:
        rays = ground_rays(PRESETS["kitti-small"], np.array([0.3, 0.2]), 75.0)
    hits = cast_level(rays, boxes, solids)
    d = rays.directions().reshape(-1, 3)
    origins = np.broadcast_to(rays.origin, d.shape)
    t, kind, face = brute_first_hits(boxes, solids, origins, d, 1e-3)
    ground = (d[:, 2] < 0) & ~(t < rays.origin[2] / np.maximum(-d[:, 2], 1e-12))
    kind = np.where(ground, GROUND, np.where(np.isfinite(t), kind, SKY))
    assert np.mean(kind == hits.kind) > 0.999  # ties at exact edges may go either way
    same = (kind == hits.kind) & (kind > GROUND)
    np.testing.assert_allclose(hits.t[same], t[same], rtol=1e-4, atol=1e-3)
    b = same & (kind == BOX)
    assert np.mean(hits.face[b] == face[b]) > 0.999
    assert {GROUND, BOX, SOLID} <= set(np.unique(hits.kind).tolist())


def test_cast_down_matches_brute_force(scene):
    boxes, solids = scene
    xs, ys = np.linspace(-50, 50, 120), np.linspace(50, -50, 120)
    hits = cast_down(xs, ys, boxes, solids, 200.0)
    X, Y = np.meshgrid(xs, ys)
    origins = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 200.0)], 1)
    dirs = np.tile([0.0, 0.0, -1.0], (X.size, 1))
    t, kind, _ = brute_first_hits(boxes, solids, origins, dirs, 0.0)
    kind = np.where(np.isfinite(t) & (t < 200.0), kind, GROUND)
    assert np.mean(kind == hits.kind) > 0.999
    same = (kind == hits.kind) & (kind > GROUND)
    np.testing.assert_allclose(hits.t[same], t[same], atol=1e-3)


@pytest.mark.parametrize("direction", [[0.0, 0.0, 1.0], [0.88, -0.33, 0.33], [-0.2, 0.5, 0.84]])
def test_occluded_matches_brute_force(scene, direction):
    boxes, solids = scene
    rng = np.random.default_rng(1)
    pts = np.stack(
        [rng.uniform(-50, 50, 4000), rng.uniform(-50, 50, 4000), rng.uniform(0, 5, 4000)]
    )
    L = np.asarray(direction) / np.linalg.norm(direction)
    got = occluded(pts, L, boxes, solids)
    t, _, _ = brute_first_hits(boxes, solids, pts.T, np.tile(L, (pts.shape[1], 1)), 1e-4)
    inside = np.zeros(pts.shape[1], bool)  # rays from inside a solid are out of contract
    for n, d in zip(boxes.normals, boxes.offsets, strict=True):
        inside |= np.all(n @ pts <= d[:, None], axis=0)
    for c, z0, z1, q in zip(solids.center, solids.z0, solids.z1, solids.q, strict=True):
        rho2 = ((pts[:2].T - c) ** 2).sum(1)
        z = pts[2]
        inside |= (rho2 <= q[0] + q[1] * z + q[2] * z * z) & (z >= z0) & (z <= z1)
    outside = ~inside
    assert np.array_equal(got[outside], np.isfinite(t)[outside])
    assert 0.05 < got[outside].mean() < 0.95


def test_level_rays_are_the_library_cameras():
    """The factorised rays equal pinhole_unproject rotated by world_to_cam_from_pose."""
    import torch

    from cvloc.geometry.cameras import pinhole_unproject
    from cvloc.geometry.pose import world_to_cam_from_pose

    p = PRESETS["kitti-small"]
    rays = ground_rays(p, np.array([3.0, -2.0]), -120.0)
    w, h = p.ground_size
    v, u = np.mgrid[0:h, 0:w]
    uv = torch.tensor(np.stack([u.ravel(), v.ravel()], 1), dtype=torch.float64)
    cam = pinhole_unproject(
        uv, torch.ones(len(uv), dtype=torch.float64), torch.tensor(p.K, dtype=torch.float64)
    )
    T = world_to_cam_from_pose(
        torch.tensor([[3.0, -2.0]], dtype=torch.float64),
        torch.tensor([-120.0], dtype=torch.float64),
        p.camera_height_m,
    )[0]
    d = (cam @ T[:3, :3]).numpy()
    d /= np.linalg.norm(d[:, :2], axis=1, keepdims=True)
    np.testing.assert_allclose(rays.directions().reshape(-1, 3), d, atol=1e-9)
