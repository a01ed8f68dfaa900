"""The ground material map: distance fields rasterised once per scene, sampled anywhere.

Road markings, curbs and paving edges are thin and straight, and the ground camera sees
them magnified (a 0.12 m line 6 m away spans several pixels) while the satellite sees
them minified. Instead of a colour raster (blurry up close, costly at 0.05 m over a
260 m scene), the map stores *distance fields* on a 1 m grid (about 70k nodes): the
signed distance to the nearest road edge, the signed lateral offset from and the arc
length along the nearest centre line, the distance to the nearest junction and to the
nearest paved area. These are piecewise linear, so bilinear interpolation reproduces them
almost exactly, and thresholding the interpolated values at the query points gives crisp
edges at any magnification (the distance-field texture trick). Both views sample the
same fields at the same 3-D points, so markings agree exactly between the views.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from cvloc.data.synthetic.kernels import expand
from cvloc.data.synthetic.roads import RoadNetwork

REACH_M = 9.0  # distance fields are exact up to this far beyond a feature, clamped beyond


@dataclass
class GroundFields:
    """Distance fields on a square grid of nodes at (-extent + i step, -extent + j step).

    Arrays are (n, n), indexed [j (y), i (x)].

    Attributes:
        extent: half size of the grid, metres.
        step: node spacing, metres.
        edge: signed distance to the nearest road edge (negative on the asphalt).
        lat: signed lateral offset from the nearest centre line (positive to its right).
        s: arc length along the nearest road.
        road: int16 index of the nearest road.
        junc: distance to the nearest junction disc (negative inside).
        pave: signed distance to the nearest paved rectangle (negative inside; exact
            within two grid steps of one, where its sign matters).
    """

    extent: float
    step: float
    edge: np.ndarray
    lat: np.ndarray
    s: np.ndarray
    road: np.ndarray
    junc: np.ndarray
    pave: np.ndarray

    def sample(self, x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        """Sample fields at points: bilinearly for floats, nearest node for ints.

        Convention: scene frame metres; points outside the grid take the border values.

        Float fields are gathered in pairs packed as complex64 (edge with pave, lat
        with s, junc alone), halving the gathers.

        Args:
            x: (N,) metres.
            y: (N,) metres.
            names: field names to sample.

        Returns:
            One (N,) array per name.
        """
        n = self.edge.shape[0]
        scale = np.float32(1.0 / self.step)
        fx = (np.asarray(x, np.float32) + np.float32(self.extent)) * scale
        fy = (np.asarray(y, np.float32) + np.float32(self.extent)) * scale
        ix = np.clip(fx.astype(np.intp), 0, n - 2)
        iy = np.clip(fy.astype(np.intp), 0, n - 2)
        tx = np.clip(fx - ix, 0.0, 1.0)
        ty = np.clip(fy - iy, 0.0, 1.0)
        i00 = iy * n + ix
        out, cache = [], {}
        for name in names:
            if name not in _PACKS:  # integer field: nearest node
                near = i00 + (ty >= 0.5) * n + (tx >= 0.5)
                out.append(np.take(getattr(self, name).reshape(-1), near))
                continue
            pack, part = _PACKS[name]
            if pack not in cache:
                f = self._packed[pack]
                top = np.take(f, i00)
                top += (np.take(f, i00 + 1) - top) * tx
                bottom = np.take(f, i00 + n)
                bottom += (np.take(f, i00 + n + 1) - bottom) * tx
                top += (bottom - top) * ty
                cache[pack] = top
            v = cache[pack]
            out.append(
                v if v.dtype.kind == "f" else np.ascontiguousarray(v.imag if part else v.real)
            )
        return out

    @functools.cached_property
    def _packed(self) -> dict[str, np.ndarray]:
        """Float fields packed pairwise as complex64, flattened, for joint gathers."""
        return {
            "ep": (self.edge + 1j * self.pave).astype(np.complex64).reshape(-1),
            "ls": (self.lat + 1j * self.s).astype(np.complex64).reshape(-1),
            "junc": self.junc.reshape(-1),
        }


_PACKS = {
    "edge": ("ep", 0),
    "pave": ("ep", 1),
    "lat": ("ls", 0),
    "s": ("ls", 1),
    "junc": ("junc", 0),
}


def _grid_pairs(lo: np.ndarray, hi: np.ndarray, extent: float, step: float, n: int) -> tuple:
    """(item, node) pairs of grid nodes inside per-item rectangles [lo, hi] (P, 2).

    Returns the item index, the flat node index and the node's x and y (float32).
    """
    i0 = np.clip(np.ceil((lo + extent) / step), 0, n).astype(np.int32)
    i1 = np.clip(np.floor((hi + extent) / step) + 1, 0, n).astype(np.int32)
    size = np.maximum(i1 - i0, 0)
    item, local = expand(size[:, 0] * size[:, 1])
    local = local.astype(np.int32)
    nx = size[item, 0]
    iy = local // nx
    ix = local - iy * nx + i0[item, 0]
    iy += i0[item, 1]
    x = ix.astype(np.float32) * np.float32(step) - np.float32(extent)
    y = iy.astype(np.float32) * np.float32(step) - np.float32(extent)
    return item, iy * n + ix, x, y


def _capsule_nodes(
    a: np.ndarray, b: np.ndarray, reach: np.ndarray, extent: float, step: float, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(segment, node) pairs of grid nodes within the oriented rectangles around segments.

    The rectangle of segment [a, b] extends ``reach`` on both sides and beyond both ends;
    it is scanned row by row (an interval of x per grid row), so diagonal segments cost
    their area, not their bounding box's.

    Returns the segment index, flat node index and node x, y (float32).
    """
    d = b - a
    length = np.linalg.norm(d, axis=1)
    d = d / length[:, None]
    lo, hi = np.minimum(a, b) - reach[:, None], np.maximum(a, b) + reach[:, None]
    j0 = np.clip(np.ceil((lo[:, 1] + extent) / step), 0, n).astype(np.int64)
    j1 = np.clip(np.floor((hi[:, 1] + extent) / step) + 1, 0, n).astype(np.int64)
    seg, r = expand(np.maximum(j1 - j0, 0))
    row = j0[seg] + r
    yr = row * step - extent
    dx, dy, ax, ay = d[seg, 0], d[seg, 1], a[seg, 0], a[seg, 1]
    rr, ln = reach[seg], length[seg]
    x_lo, x_hi = lo[seg, 0], hi[seg, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        # |perp| <= reach with perp = (x - ax) dy - (yr - ay) dx.
        c = (yr - ay) * dx
        p1, p2 = ax + (c - rr) / dy, ax + (c + rr) / dy
        ok = np.abs(dy) > 1e-9
        x_lo = np.where(ok, np.maximum(x_lo, np.minimum(p1, p2)), x_lo)
        x_hi = np.where(ok, np.minimum(x_hi, np.maximum(p1, p2)), x_hi)
        # -reach <= along <= length + reach with along = (x - ax) dx + (yr - ay) dy.
        e = (yr - ay) * dy
        q1, q2 = ax + (-rr - e) / dx, ax + (ln + rr - e) / dx
        ok = np.abs(dx) > 1e-9
        x_lo = np.where(ok, np.maximum(x_lo, np.minimum(q1, q2)), x_lo)
        x_hi = np.where(ok, np.minimum(x_hi, np.maximum(q1, q2)), x_hi)
    i0 = np.clip(np.ceil((x_lo + extent) / step), 0, n).astype(np.int64)
    i1 = np.clip(np.floor((x_hi + extent) / step) + 1, 0, n).astype(np.int64)
    pair, k = expand(np.maximum(i1 - i0, 0))
    col = (i0[pair] + k).astype(np.int32)
    row = row[pair].astype(np.int32)
    x = col.astype(np.float32) * np.float32(step) - np.float32(extent)
    y = row.astype(np.float32) * np.float32(step) - np.float32(extent)
    return seg[pair], row * n + col, x, y


def build_fields(net: RoadNetwork, extent: float, step: float = 1.0) -> GroundFields:
    """Rasterise the distance fields of a road network (no paved areas yet).

    Convention: scene frame (x east, y north), metres.

    Args:
        net: the road network.
        extent: half size of the square scene, metres.
        step: grid spacing, metres.

    Returns:
        The fields.
    """
    n = round(2 * extent / step) + 1
    edge = np.full(n * n, REACH_M, np.float32)
    lat, s = np.zeros(n * n, np.float32), np.zeros(n * n, np.float32)
    road = np.zeros(n * n, np.int16)
    a = np.concatenate([p[:-1] for p in net.polylines])
    b = np.concatenate([p[1:] for p in net.polylines])
    rid = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(net.polylines)])
    s0 = np.concatenate([net.arc_lengths(i)[:-1] for i in range(len(net.polylines))])
    hw = net.half_width[rid]
    seg, node, x, y = _capsule_nodes(a, b, hw + REACH_M, extent, step, n)
    seg_len = np.linalg.norm(b - a, axis=1)
    d = ((b - a) / seg_len[:, None]).astype(np.float32)
    dx, dy = d[seg, 0], d[seg, 1]
    wx, wy = x - a[seg, 0].astype(np.float32), y - a[seg, 1].astype(np.float32)
    along = np.clip(wx * dx + wy * dy, 0.0, seg_len.astype(np.float32)[seg])
    dist = np.hypot(wx - along * dx, wy - along * dy) - hw.astype(np.float32)[seg]
    np.minimum.at(edge, node, dist)
    win = np.flatnonzero(dist == edge[node])
    node, seg = node[win], seg[win]
    lat[node] = wx[win] * dy[win] - wy[win] * dx[win]  # positive to the right
    s[node] = s0[seg] + along[win]
    road[node] = rid[seg]
    junc = np.full(n * n, REACH_M, np.float32)
    if len(net.junctions):
        r = (net.junction_radius + REACH_M)[:, None]
        j, node, x, y = _grid_pairs(net.junctions - r, net.junctions + r, extent, step, n)
        jx, jy = net.junctions.T.astype(np.float32)
        dj = np.hypot(x - jx[j], y - jy[j]) - net.junction_radius[j]
        np.minimum.at(junc, node, dj.astype(np.float32))
    shape = (n, n)
    return GroundFields(
        extent=extent,
        step=step,
        edge=edge.reshape(shape),
        lat=lat.reshape(shape),
        s=s.reshape(shape),
        road=road.reshape(shape),
        junc=junc.reshape(shape),
        pave=np.full(shape, REACH_M, np.float32),
    )


def with_paved(fields: GroundFields, rects: np.ndarray) -> GroundFields:
    """The fields with the paved-area distance rasterised.

    Convention: scene frame, metres.

    Args:
        fields: fields from :func:`build_fields`.
        rects: (P, 5) paved rectangles (centre x, y, angle rad, half length, half width).

    Returns:
        New fields (the road fields are shared).
    """
    n = fields.edge.shape[0]
    pave = _rect_field(np.asarray(rects).reshape(-1, 5), fields.extent, fields.step, n)
    return dataclasses.replace(fields, pave=pave.reshape(n, n))


def _rect_field(rects: np.ndarray, extent: float, step: float, n: int) -> np.ndarray:
    """Signed distance (flat, n * n) to the union of rotated rectangles (P, 5)."""
    sdf = np.full(n * n, REACH_M, np.float32)
    if len(rects) == 0:
        return sdf
    c, ang, half = rects[:, :2], rects[:, 2], rects[:, 3:5]
    reach = (np.linalg.norm(half, axis=1) + 2.0 * step)[:, None]  # only the sign matters
    k, node, x, y = _grid_pairs(c - reach, c + reach, extent, step, n)
    wx, wy = x - c[k, 0], y - c[k, 1]
    ca, sa = np.cos(ang[k]), np.sin(ang[k])
    qx = np.abs(ca * wx + sa * wy) - half[k, 0]
    qy = np.abs(ca * wy - sa * wx) - half[k, 1]
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    np.minimum.at(sdf, node, (outside + np.minimum(np.maximum(qx, qy), 0.0)).astype(np.float32))
    return sdf
