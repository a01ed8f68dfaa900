"""Orthographic top-down ray casting: the satellite view of the top-most surfaces.

Rays go straight down through the pixel centres of a regular grid, so a primitive's
candidates are simply the pixels of its footprint rectangle. A frustum box's top surface
over its footprint is the lowest of its top plane and its inward-tilted sides, in closed
form in the box's frame; solids use the quadratic kernel with the ray started just above
each solid (well conditioned in float32).
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.kernels import BOX, F32, SOLID, Hits, expand, merge_hits, solid_hits
from cvloc.data.synthetic.primitives import Boxes, Solids


def _grid_range(lo: np.ndarray, hi: np.ndarray, start: float, step: float, n: int) -> tuple:
    """Indices i in [0, n) with start + i * step in [lo, hi] (step may be negative)."""
    a, b = (lo - start) / step, (hi - start) / step
    i0 = np.clip(np.ceil(np.minimum(a, b) - 1e-9), 0, n).astype(np.int64)
    i1 = np.clip(np.floor(np.maximum(a, b) + 1e-9) + 1, 0, n).astype(np.int64)
    return i0, np.maximum(i1, i0)


def _rect_candidates(x0, x1, y0, y1, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, flat pixel) pairs of pixel centres inside axis-aligned rectangles."""
    w, h = len(xs), len(ys)
    c0, c1 = _grid_range(x0, x1, xs[0], xs[1] - xs[0], w)
    r0, r1 = _grid_range(y0, y1, ys[0], ys[1] - ys[0], h)
    nc = c1 - c0
    prim, local = expand(nc * (r1 - r0))
    ncp = np.take(nc, prim)
    row = local // ncp
    return prim, (np.take(r0, prim) + row) * w + np.take(c0, prim) + local - row * ncp


def _down_boxes(xs: np.ndarray, ys: np.ndarray, boxes: Boxes, z_top: float) -> tuple:
    """Candidate hits of vertical rays with boxes: the top surface in closed form.

    A frustum box's top surface over its footprint is the lowest of its top plane and its
    two pairs of inward-tilted sides, evaluated in the box's local frame.
    """
    cx = boxes.corners
    prim, pix = _rect_candidates(
        cx[..., 0].min(1), cx[..., 0].max(1), cx[..., 1].min(1), cx[..., 1].max(1), xs, ys
    )
    dx = (np.take(xs, pix % len(xs)) - np.take(boxes.center[:, 0], prim)).astype(F32)
    dy = (np.take(ys, pix // len(xs)) - np.take(boxes.center[:, 1], prim)).astype(F32)
    ca, sa = np.cos(boxes.angle).astype(F32), np.sin(boxes.angle).astype(F32)
    ca, sa = np.take(ca, prim), np.take(sa, prim)
    z0, z1 = np.take(boxes.z0.astype(F32), prim), np.take(boxes.z1.astype(F32), prim)
    heights = [z1]
    inside = np.ones(len(prim), bool)
    for axis, local in ((0, ca * dx + sa * dy), (1, ca * dy - sa * dx)):
        b = np.take(boxes.bottom[:, axis].astype(F32), prim)
        t = np.take(boxes.top[:, axis].astype(F32), prim)
        dist = np.abs(local)
        inside &= dist <= b
        with np.errstate(divide="ignore", invalid="ignore"):
            heights.append(np.where(b > t, z0 + (b - dist) / (b - t) * (z1 - z0), np.inf))
    h = np.stack(heights)
    k = h.argmin(axis=0)
    z = np.take_along_axis(h, k[None], axis=0)[0]
    # Face: 0 top plane; 1 a local-x side; 2 a local-y side (sign from the local coordinate).
    face = np.select([k == 0, k == 1, k == 2], [4, 0, 2]).astype(np.int8)
    lx = ca * dx + sa * dy
    ly = ca * dy - sa * dx
    face = np.where((k == 1) & (lx < 0), 1, np.where((k == 2) & (ly < 0), 3, face))
    t_hit = np.where(inside, F32(z_top) - z, np.inf).astype(F32)
    return BOX, pix, t_hit, prim.astype(np.int32), face.astype(np.int8)


def cast_down(
    xs: np.ndarray, ys: np.ndarray, boxes: Boxes, solids: Solids, z_top: float = 500.0
) -> Hits:
    """First hits of vertical rays looking straight down onto a regular grid.

    Convention: ray (row i, column j) starts at (xs[j], ys[i], z_top) with direction
    (0, 0, -1), so ``z_top - t`` is the height of the top-most surface there.

    Args:
        xs: (W,) evenly spaced x of the columns, metres.
        ys: (H,) evenly spaced y of the rows, metres (decreasing for a north-up image).
        boxes: frustum boxes.
        solids: solids of revolution.
        z_top: start height, above every primitive.

    Returns:
        Hits of the H * W rays in row-major order.
    """
    depth = np.full(len(xs) * len(ys), z_top, F32)
    results = []
    if len(boxes):
        results.append(_down_boxes(xs, ys, boxes, z_top))
    if len(solids):
        c, r = solids.center, solids.rmax
        prim, pix = _rect_candidates(c[:, 0] - r, c[:, 0] + r, c[:, 1] - r, c[:, 1] + r, xs, ys)
        px = np.take(xs, pix % len(xs)) - np.take(c[:, 0], prim)
        py = np.take(ys, pix // len(xs)) - np.take(c[:, 1], prim)
        # Start each ray 1 m above its solid: small, well-conditioned heights.
        half = np.take(solids.z1 - solids.z0, prim) / 2
        t, face = solid_hits(
            (px * px + py * py).astype(F32),
            F32(0.0),
            F32(0.0),
            (half + 1.0).astype(F32),
            F32(-1.0),
            np.take(solids.q_rel.T.astype(F32), prim, axis=1),
            (-half).astype(F32),
            half.astype(F32),
            0.0,
        )
        t = t + (z_top - np.take(solids.z1, prim) - 1.0).astype(F32)
        results.append((SOLID, pix, t, prim.astype(np.int32), face))
    return merge_hits(depth, results)
