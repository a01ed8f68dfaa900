"""Any-hit queries along one direction from scattered points: shadows and top-visibility.

A point is in the sun's shadow iff the ray from it towards the sun hits a primitive; a
point is visible from above (it is the top-most surface at its (x, y), so the satellite
sees it) iff the vertical ray from it hits nothing. Both are the same query with a fixed
direction L (L_z > 0).

Culling: all rays are parallel, so points and primitives are projected along L onto the
plane z = 0 (k = L_xy / L_z, q = p_xy - p_z k). A ray becomes a point q; the part of a
primitive above height z becomes a convex region: for a box, its footprint swept along the
segment from -max(z0, z) k to -z1 k (a hexagon, tested exactly with three separating
axes: the box's two axes and the segment's normal); for a solid, a stadium around the
swept axis. Points are binned in a uniform grid (counting sort); a primitive's cells are
tested against its swept region grown by half a cell, then its points against the exact
region. For plain boxes this test *is* the ray test; frustums and solids pass their few
survivors to the exact kernels of :mod:`.kernels`.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.kernels import F32, expand, slab_hits, solid_hits
from cvloc.data.synthetic.patterns import take
from cvloc.data.synthetic.primitives import Boxes, Solids

MAX_CELLS_PER_AXIS = 170  # 170^2 cells keep ids in int16 range for numpy's radix sort


class _PointGrid:
    """Points projected along L onto z = 0, binned in square cells."""

    def __init__(self, qx: np.ndarray, qy: np.ndarray, cell_m: float) -> None:
        self.x0, self.y0 = float(qx.min()) - 1e-3, float(qy.min()) - 1e-3
        extent = max(float(qx.max()) - self.x0, float(qy.max()) - self.y0)
        self.cell = max(cell_m, extent / (MAX_CELLS_PER_AXIS - 1))
        inv = F32(1.0 / self.cell)
        ix = ((qx - F32(self.x0)) * inv).astype(np.int32)
        iy = ((qy - F32(self.y0)) * inv).astype(np.int32)
        self.nx = int(ix.max()) + 1
        self.ny = int(iy.max()) + 1
        cell_id = (iy * self.nx + ix).astype(np.int16)
        self.order = np.argsort(cell_id, kind="stable")
        self.counts = np.bincount(cell_id, minlength=self.nx * self.ny)
        self.starts = np.cumsum(self.counts) - self.counts

    def cells(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item, non-empty cell) pairs for bounding rectangles [lo, hi], (P, 2) each.

        Returns the item index, the cell id and the cell centres (2, M) float32.
        """
        origin = np.array([self.x0, self.y0])
        i0 = np.clip(np.floor((lo - origin) / self.cell), 0, None).astype(np.int64)
        i1 = np.floor((hi - origin) / self.cell).astype(np.int64)
        i1 = np.minimum(i1, np.array([self.nx - 1, self.ny - 1]))
        n = np.maximum(i1 - i0 + 1, 0)
        item, local = expand(n[:, 0] * n[:, 1])
        nxp = n[item, 0]
        iy = local // nxp
        ix = local - iy * nxp + i0[item, 0]
        iy += i0[item, 1]
        cell = iy * self.nx + ix
        full = np.flatnonzero(self.counts[cell] > 0)
        centre = np.stack([ix[full], iy[full]]).astype(F32) + F32(0.5)
        centre *= F32(self.cell)
        centre += np.array([[self.x0], [self.y0]], F32)
        return item[full], cell[full], centre

    def points(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expand cells into their points: the cell's rank of each point, the point index."""
        counts = self.counts[cell]
        pair, rank = expand(counts)
        return counts, self.order[self.starts[cell[pair]] + rank]


def _box_table(boxes: Boxes, keep: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per-box swept-region data, (14, N) float32 rows.

    Rows 0..8: for each separating axis j (box x, box y, normal of k): axis x, axis y,
    centre projection; rows 9..11: the footprint's half width on each axis;
    rows 12, 13: z0, z1. The sweep offset on axis j is -z (axis_j . k).
    """
    base = np.take(boxes.sweep_t, keep, axis=1)  # ex, ey, c.ex, c.ey, hx, hy
    norm = np.hypot(k[0], k[1])
    px, py = (-k[1] / norm, k[0] / norm) if norm > 1e-9 else (1.0, 0.0)
    ex, ey = base[0:2], np.stack([-base[1], base[0]])
    cx, cy = np.take(boxes.center[:, 0], keep), np.take(boxes.center[:, 1], keep)
    wp = np.abs(px * ex[0] + py * ex[1]) * base[4] + np.abs(px * ey[0] + py * ey[1]) * base[5]
    rows = [
        ex[0],
        ex[1],
        base[2],
        ey[0],
        ey[1],
        base[3],
        np.full_like(cx, px),
        np.full_like(cx, py),
        px * cx + py * cy,
        base[4],
        base[5],
        wp,
        np.take(boxes.z0, keep),
        np.take(boxes.z1, keep),
    ]
    return np.stack(rows).astype(F32)


def _in_swept(tab: np.ndarray, x, y, z_lo, k: np.ndarray, grow: float) -> np.ndarray:
    """Whether projected points (x, y) lie in the swept box footprints.

    The footprint of each candidate's box (``tab``: :func:`_box_table` gathered per
    candidate, (14, M)) is swept along -k from height ``z_lo`` to its z1 and grown by
    ``grow`` times each axis' L1 norm.
    """
    ok = np.ones(len(x), bool)
    kx, ky = F32(k[0]), F32(k[1])
    for j in range(3):
        ax, ay, c = tab[3 * j], tab[3 * j + 1], tab[3 * j + 2]
        nk = ax * kx + ay * ky
        a, b = -z_lo * nk, -tab[13] * nk
        w = tab[9 + j] + grow * (np.abs(ax) + np.abs(ay)) if grow else tab[9 + j]
        p = ax * x + ay * y - c
        ok &= (p >= np.minimum(a, b) - w) & (p <= np.maximum(a, b) + w)
    return ok


def _boxes_occlude(grid, qx, qy, pz, points, k, L, boxes, t_min) -> np.ndarray:
    """Point indices whose ray along L hits a box."""
    keep = np.flatnonzero(boxes.z1 > pz.min())
    table = _box_table(boxes, keep, k)
    z0, z1 = boxes.z0[keep], boxes.z1[keep]
    corners = np.take(boxes.corners, keep, axis=0)
    lo = np.minimum(corners.min(1) - z0[:, None] * k, corners.min(1) - z1[:, None] * k)
    hi = np.maximum(corners.max(1) - z0[:, None] * k, corners.max(1) - z1[:, None] * k)
    item, cell, cc = grid.cells(lo, hi)
    tab = np.take(table, item, axis=1)
    ok = np.flatnonzero(_in_swept(tab, cc[0], cc[1], tab[12], k, 0.5 * grid.cell))
    counts, pt = grid.points(cell[ok])
    tab = np.repeat(np.take(tab, ok, axis=1), counts, axis=1)
    item = np.repeat(item[ok], counts)
    zp = take(pz, pt)
    ok = _in_swept(tab, take(qx, pt), take(qy, pt), np.maximum(tab[12], zp), k, 0.0)
    ok = np.flatnonzero(ok & (zp < tab[13]))
    prim, pt = take(keep, take(item, ok)), take(pt, ok)
    plain = take(boxes.plain, prim)
    hit = pt[plain]
    prim, pt = prim[~plain], pt[~plain]
    n = np.take(boxes.normals, prim, axis=0).astype(F32)  # M,6,3
    p = take(points, pt).astype(F32)  # 3,M
    num = np.take(boxes.offsets, prim, axis=0).astype(F32) - np.einsum("mkc,cm->mk", n, p)
    t, _ = slab_hits((n @ L.astype(F32)).T, num.T, t_min)
    return np.concatenate([hit, pt[np.isfinite(t)]])


def _within_swept_disc(x, y, cx, cy, z_lo, z_hi, r, k: np.ndarray) -> np.ndarray:
    """Whether (x, y) lie within r of the axis segment from c - z_lo k to c - z_hi k."""
    kx, ky = F32(k[0]), F32(k[1])
    px, py = x - (cx - z_lo * kx), y - (cy - z_lo * ky)
    span = z_hi - z_lo
    dx, dy = -span * kx, -span * ky
    t = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, F32(1e-12)), 0.0, 1.0)
    ex, ey = px - t * dx, py - t * dy
    return ex * ex + ey * ey <= r * r


def _solids_occlude(grid, qx, qy, pz, k, L, solids, t_min) -> np.ndarray:
    """Point indices whose ray along L hits a solid."""
    keep = np.flatnonzero(solids.z1 > pz.min())
    # Rows: cx, cy, z0, z1, rmax, zref, q_rel (3).
    table = np.concatenate(
        [
            solids.center.T,
            solids.z0[None],
            solids.z1[None],
            solids.rmax[None],
            solids.zref[None],
            solids.q_rel.T,
        ]
    )
    table = np.take(table, keep, axis=1).astype(F32)
    c = table[:2].T.astype(np.float64)
    a, b = c - table[2, :, None] * k, c - table[3, :, None] * k
    r = table[4, :, None]
    item, cell, cc = grid.cells(np.minimum(a, b) - r, np.maximum(a, b) + r)
    tab = np.take(table, item, axis=1)
    grow = F32(grid.cell * 0.7072)
    ok = _within_swept_disc(cc[0], cc[1], tab[0], tab[1], tab[2], tab[3], tab[4] + grow, k)
    ok = np.flatnonzero(ok)
    counts, pt = grid.points(np.take(cell, ok))
    tab = np.repeat(np.take(tab, ok, axis=1), counts, axis=1)
    zp, x, y = take(pz, pt), take(qx, pt), take(qy, pt)
    ok = _within_swept_disc(x, y, tab[0], tab[1], np.maximum(tab[2], zp), tab[3], tab[4], k)
    ok = np.flatnonzero(ok & (zp < tab[3]))
    tab, pt, zp = np.take(tab, ok, axis=1), take(pt, ok), take(zp, ok)
    # Back from the projection to the ray origin: p_xy = q + z k.
    px = take(qx, pt) + zp * F32(k[0]) - tab[0]
    py = take(qy, pt) + zp * F32(k[1]) - tab[1]
    t, _ = solid_hits(
        px * px + py * py,
        px * F32(L[0]) + py * F32(L[1]),
        F32(L[0] ** 2 + L[1] ** 2),
        zp - tab[5],
        F32(L[2]),
        tab[6:9],
        tab[2] - tab[5],
        tab[3] - tab[5],
        t_min,
    )
    return pt[np.isfinite(t)]


def occluded(
    points: np.ndarray,
    direction: np.ndarray,
    boxes: Boxes,
    solids: Solids,
    t_min: float = 1e-4,
    cell_m: float = 1.0,
) -> np.ndarray:
    """Whether the ray from each point along ``direction`` hits any primitive.

    Convention: scene frame (x east, y north, z up). The ground plane never occludes
    (L_z > 0). Callers offset surface points slightly along their normals so that a
    surface does not occlude itself.

    Args:
        points: (3, N) ray origins, metres.
        direction: (3,) unit direction with a positive z component.
        boxes: frustum boxes.
        solids: solids of revolution.
        t_min: smallest accepted hit distance along the ray.
        cell_m: binning cell size, metres (enlarged for very spread points).

    Returns:
        (N,) bool.
    """
    out = np.zeros(points.shape[1], bool)
    if len(out) == 0:
        return out
    L = np.asarray(direction, np.float64)
    k = L[:2] / L[2]
    pz = points[2].astype(F32)
    qx = (points[0] - points[2] * k[0]).astype(F32)
    qy = (points[1] - points[2] * k[1]).astype(F32)
    grid = _PointGrid(qx, qy, cell_m)
    if len(boxes):
        out[_boxes_occlude(grid, qx, qy, pz, points, k, L, boxes, t_min)] = True
    if len(solids):
        out[_solids_occlude(grid, qx, qy, pz, k, L, solids, t_min)] = True
    return out
