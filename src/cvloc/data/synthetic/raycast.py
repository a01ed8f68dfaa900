"""Exact, vectorised ray casting against the analytic primitives of the synthetic world.

Why analytic ray casting (and not rasterisation, a voxel grid or height-field marching):
correspondences must be exact (each ground pixel-centre ray's first hit, reprojecting to
~1e-3 px) and occlusion must be exact in both views, including the non-2.5-D case of a
canopy above visible ground. Every object is a convex analytic solid (frustum boxes,
solids of revolution, :mod:`.primitives`) over the plane z = 0, so a ray's first hit is a
closed-form slab test or quadratic root, with no discretisation error.

What makes it fast in numpy is culling to (ray, primitive) *candidate pairs* that are
almost all true hits, then running one vectorised kernel per primitive family over all
candidates at once (no python loop over primitives or rays):

- **Level ground cameras** (pinhole with zero skew, equirectangular panorama): every
  image column is one vertical half-plane through the camera centre, and along a column
  the ray slope dz/d(horizontal distance) is monotone. Rays are parametrised by
  horizontal distance t, i.e. direction (h_x, h_y, slope) with |h| = 1. A primitive's
  bounding circle gives its azimuth interval, hence a column range (wrap-around handled);
  an exact 2-D footprint test per (primitive, column) gives the distance interval
  [t_in, t_out]; the primitive's height range then gives, in closed form, the slope
  interval and hence the row range of the rays that can hit it. The candidates are the
  rays through the primitive's bounding prism, i.e. only occluded surfaces are wasted.
- **Parallel rays on a grid** (the orthographic satellite view, rays straight down):
  candidates are the pixels of each primitive's footprint rectangle.
- **Any-hit queries from scattered points** (sun shadows, "is this point visible from
  above?"): points and primitives are projected along the ray direction onto z = 0 and
  binned in a uniform grid; candidates are the points in the cells a primitive's
  projection covers.

The depth test is a scatter-min (``np.minimum.at``) over candidates, then the winners
write their primitive ids. Kernels run in float32 (hit points are recomputed in float64
from t by the callers, so they lie exactly on the pixel-centre rays).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvloc.data.synthetic.kernels import (
    BOX,
    F32,
    SOLID,
    Hits,
    expand,
    merge_hits,
    slab_hits,
    solid_hits,
)
from cvloc.data.synthetic.primitives import Boxes, Solids


@dataclass
class LevelRays:
    """Pixel-centre rays of a level ground camera, parametrised by horizontal distance.

    Ray (row v, column u) is ``origin + t * (hdir[u, 0], hdir[u, 1], g[v] * hfac[u])``.

    Attributes:
        origin: (3,) camera centre in the scene frame, metres.
        yaw_rad: heading of the optical axis, radians clockwise from north.
        hdir: (W, 2) unit horizontal direction of each column (x east, y north).
        rel_az: (W,) column azimuth relative to ``yaw_rad``, radians, strictly increasing.
        g: (H,) row factor of the slope, strictly decreasing (top rows look up).
        hfac: (W,) positive column factor of the slope.
        slope: (H, W) dz per metre of horizontal distance of every ray, g x hfac.
    """

    origin: np.ndarray
    yaw_rad: float
    hdir: np.ndarray
    rel_az: np.ndarray
    g: np.ndarray
    hfac: np.ndarray
    slope: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.slope = self.g[:, None] * self.hfac[None, :]

    def directions(self) -> np.ndarray:
        """Ray directions of all pixels.

        Convention: scene frame; the horizontal part is a unit vector, so the ray
        parameter is the horizontal distance.

        Returns:
            (H, W, 3) float64.
        """
        h, w = len(self.g), len(self.hfac)
        d = np.empty((h, w, 3))
        d[..., :2] = self.hdir[None]
        d[..., 2] = self.slope
        return d


def _column_pairs(
    rays: LevelRays, center: np.ndarray, radius: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, column) pairs whose azimuths meet the primitive's bounding circle."""
    n, w = len(radius), len(rays.rel_az)
    d = center - rays.origin[:2]
    dist = np.hypot(d[:, 0], d[:, 1])
    rel = np.arctan2(d[:, 0], d[:, 1]) - rays.yaw_rad
    rel = (rel + np.pi) % (2 * np.pi) - np.pi
    half = np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0))
    full = dist <= radius
    lo = np.concatenate([rel - half, rel - half + 2 * np.pi, rel - half - 2 * np.pi])
    hi = np.concatenate([rel + half, rel + half + 2 * np.pi, rel + half - 2 * np.pi])
    c0 = np.searchsorted(rays.rel_az, lo, "left")
    c1 = np.searchsorted(rays.rel_az, hi, "right")
    c0[:n][full], c1[:n][full] = 0, w
    c1[n:][np.tile(full, 2)] = 0
    prim = np.tile(np.arange(n), 3)
    owner, local = expand(np.maximum(c1 - c0, 0))
    return prim[owner], c0[owner] + local


def _row_candidates(
    rays: LevelRays, col: np.ndarray, t_in: np.ndarray, t_out: np.ndarray, zr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rays of (primitive, column) pairs from the height range ``zr`` (2, P).

    Returns the pair index and the flat pixel index of every candidate.
    """
    h = rays.origin[2]
    t_near = np.maximum(t_in, 1e-6)
    with np.errstate(divide="ignore"):
        s_lo = (zr[0] - h) / np.where(zr[0] <= h, t_near, t_out)
        s_hi = (zr[1] - h) / np.where(zr[1] >= h, t_near, t_out)
    hfac = np.take(rays.hfac, col)
    g_lo, g_hi = s_lo / hfac, s_hi / hfac
    g_lo, g_hi = g_lo - 1e-6 * (1 + np.abs(g_lo)), g_hi + 1e-6 * (1 + np.abs(g_hi))
    neg_g = -rays.g  # increasing
    r0 = np.searchsorted(neg_g, -g_hi, "left")
    r1 = np.searchsorted(neg_g, -g_lo, "right")
    pair, local = expand(np.maximum(r1 - r0, 0))
    return pair, (np.take(r0, pair) + local) * len(rays.hfac) + np.take(col, pair)


def _footprint_intervals(rays: LevelRays, boxes: Boxes, prim: np.ndarray, col: np.ndarray):
    """2-D slab test of column rays against box footprints.

    Returns t_in, t_out (horizontal distances) and the side face (0..3) entered at t_in.
    """
    o = rays.origin
    half = np.take(np.maximum(boxes.bottom, boxes.top), prim, axis=0).T  # 2,P
    ang = np.take(boxes.angle, prim)
    ca, sa = np.cos(ang), np.sin(ang)
    ox = o[0] - np.take(boxes.center[:, 0], prim)
    oy = o[1] - np.take(boxes.center[:, 1], prim)
    hx, hy = np.take(rays.hdir[:, 0], col), np.take(rays.hdir[:, 1], col)
    t_near, t_far = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, ld, h in (
            (ca * ox + sa * oy, ca * hx + sa * hy, half[0]),
            (ca * oy - sa * ox, ca * hy - sa * hx, half[1]),
        ):
            ta, tb = (-h - lo) / ld, (h - lo) / ld
            t_near.append(np.fmin(ta, tb))
            t_far.append(np.fmax(ta, tb))
            # Entering through the -axis face (index odd) when moving towards +axis.
            t_near.append(np.where(ld > 0, 1, 0))
    y_first = t_near[2] > t_near[0]
    t_in = np.where(y_first, t_near[2], t_near[0])
    face = np.where(y_first, 2 + t_near[3], t_near[1])
    return t_in, np.fmin(t_far[0], t_far[1]), face


def _level_boxes(rays: LevelRays, boxes: Boxes, t_min: float) -> tuple:
    """Candidate hits of the boxes for a level camera.

    Right prisms (``boxes.plain``) need only their footprint interval and height slab;
    frustums run the six-plane slab kernel.
    """
    prim, col = _column_pairs(rays, boxes.center, boxes.radius)
    t_in, t_out, side = _footprint_intervals(rays, boxes, prim, col)
    keep = np.flatnonzero((t_out > 0) & (t_in <= t_out))
    prim, col, t_in, t_out, side = (np.take(a, keep) for a in (prim, col, t_in, t_out, side))
    zr = np.stack([np.take(boxes.z0, prim), np.take(boxes.z1, prim)])
    pair, pix = _row_candidates(rays, col, t_in, t_out, zr)
    slope = np.take(rays.slope.ravel(), pix).astype(F32)
    h = rays.origin[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tz0 = (np.take(zr[0], pair) - h).astype(F32) / slope
        tz1 = (np.take(zr[1], pair) - h).astype(F32) / slope
    tz_in, tz_out = np.minimum(tz0, tz1), np.maximum(tz0, tz1)
    t_a = np.take(t_in.astype(F32), pair)
    t = np.maximum(t_a, tz_in)
    face = np.where(tz_in > t_a, np.where(slope < 0, 4, 5), np.take(side, pair)).astype(np.int8)
    hit = (t <= np.minimum(np.take(t_out.astype(F32), pair), tz_out)) & (t > t_min)
    t = np.where(hit, t, F32(np.inf))
    frustum = np.flatnonzero(~np.take(boxes.plain, np.take(prim, pair)))
    fp, fpair = np.take(prim, pair[frustum]), pair[frustum]
    n = np.take(boxes.normals, fp, axis=0).transpose(1, 2, 0)  # 6,3,F
    dx, dy = np.take(rays.hdir[:, 0], col[fpair]), np.take(rays.hdir[:, 1], col[fpair])
    den = (n[:, 0] * dx + n[:, 1] * dy).astype(F32) + n[:, 2].astype(F32) * slope[frustum]
    num = np.take(boxes.offsets, fp, axis=0).T - np.einsum("kcf,c->kf", n, rays.origin)
    t[frustum], face[frustum] = slab_hits(den, num.astype(F32), t_min)
    return BOX, pix, t, np.take(prim, pair).astype(np.int32), face


def _level_solids(rays: LevelRays, solids: Solids, t_min: float) -> tuple:
    """Candidate hits of the solids for a level camera."""
    prim, col = _column_pairs(rays, solids.center, solids.rmax)
    px = rays.origin[0] - np.take(solids.center[:, 0], prim)
    py = rays.origin[1] - np.take(solids.center[:, 1], prim)
    pd = px * np.take(rays.hdir[:, 0], col) + py * np.take(rays.hdir[:, 1], col)
    pp = px * px + py * py
    disc = pd * pd - (pp - np.take(solids.rmax, prim) ** 2)
    sq = np.sqrt(np.maximum(disc, 0))
    keep = np.flatnonzero((disc >= 0) & (sq - pd > 0))
    prim, col, pd, pp, sq = (np.take(a, keep) for a in (prim, col, pd, pp, sq))
    zr = np.stack([np.take(solids.z0, prim), np.take(solids.z1, prim)])
    pair, pix = _row_candidates(rays, col, -pd - sq, -pd + sq, zr)
    pr = np.take(prim, pair)
    zref = np.take(solids.zref, pr)
    t, face = solid_hits(
        np.take(pp, pair).astype(F32),
        np.take(pd, pair).astype(F32),
        F32(1.0),
        (rays.origin[2] - zref).astype(F32),
        np.take(rays.slope.ravel(), pix).astype(F32),
        np.take(solids.q_rel.T.astype(F32), pr, axis=1),
        (np.take(zr[0], pair) - zref).astype(F32),
        (np.take(zr[1], pair) - zref).astype(F32),
        t_min,
    )
    return SOLID, pix, t, pr.astype(np.int32), face


def refine_solid_hits(rays: LevelRays, solids: Solids, hits: Hits) -> None:
    """Recompute the solid hits of a level camera in float64, in place.

    Convention: as :func:`cast_level` (t is the horizontal distance).

    Near a solid's silhouette the float32 root is ill-conditioned (millimetres off the
    surface); the winners are few, so they are re-solved exactly.

    Args:
        rays: the camera's rays.
        solids: the solids.
        hits: first hits of all rays (modified in place).
    """
    i = np.flatnonzero(hits.kind == SOLID)
    prim = np.take(hits.prim, i)
    col = i % len(rays.hfac)
    hx, hy = np.take(rays.hdir[:, 0], col), np.take(rays.hdir[:, 1], col)
    px = rays.origin[0] - np.take(solids.center[:, 0], prim)
    py = rays.origin[1] - np.take(solids.center[:, 1], prim)
    zref = np.take(solids.zref, prim)
    t, _ = solid_hits(
        px * px + py * py,
        px * hx + py * hy,
        1.0,
        rays.origin[2] - zref,
        np.take(rays.slope.ravel(), i),
        np.take(solids.q_rel, prim, axis=0).T,
        np.take(solids.z0, prim) - zref,
        np.take(solids.z1, prim) - zref,
        0.0,
    )
    ok = np.isfinite(t)
    hits.t[i[ok]] = t[ok]


def cast_level(rays: LevelRays, boxes: Boxes, solids: Solids, t_min: float = 1e-3) -> Hits:
    """First hits of all pixel-centre rays of a level ground camera.

    Convention: scene frame (x east, y north, z up, ground z = 0); ``t`` is the
    horizontal distance from the camera centre to the hit.

    Args:
        rays: the camera's rays.
        boxes: frustum boxes of the scene.
        solids: solids of revolution of the scene.
        t_min: smallest accepted hit distance, metres.

    Returns:
        Hits of the H * W rays in row-major order (``t`` in float64).
    """
    slope = rays.slope.ravel()
    with np.errstate(divide="ignore"):
        depth = np.where(slope < 0, rays.origin[2] / -slope, np.inf).astype(F32)
    results = []
    if len(boxes):
        results.append(_level_boxes(rays, boxes, t_min))
    if len(solids):
        results.append(_level_solids(rays, solids, t_min))
    hits = merge_hits(depth, results)
    hits.t = hits.t.astype(np.float64)
    if len(solids):
        refine_solid_hits(rays, solids, hits)
    return hits
