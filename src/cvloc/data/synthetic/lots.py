"""Footprint candidates along streets and their conflict resolution.

Buildings are placed by walking along both sides of every street and proposing
rectangular lots facing it (frontage width, setback and depth drawn per lot). Lots that
reach into a road or sidewalk (checked against the road distance field), come too close
to the camera, or overlap an already accepted lot (exact separating-axis test, after a
bounding-circle prefilter) are dropped; acceptance is greedy in random order, so street
corners get buildings from either street and the result is a plausible block pattern on
any road network (grids, curved avenues, T junctions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.roads import RoadNetwork

CURB_M = 0.2


@dataclass
class Rects:
    """Rotated rectangles (footprints).

    Attributes:
        center: (C, 2) metres. angle: (C,) local x axis, radians counter-clockwise from east.
        half: (C, 2) half extents along local x and y.
        road: (C,) index of the street the lot faces (-1 if none).
        side: (C,) +1 right or -1 left of that street's direction.
    """

    center: np.ndarray
    angle: np.ndarray
    half: np.ndarray
    road: np.ndarray
    side: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)

    def subset(self, mask: np.ndarray) -> Rects:
        """The rectangles selected by a boolean mask or index array.

        Args:
            mask: (C,) bool or (K,) int.

        Returns:
            The selected rectangles.
        """
        return Rects(
            self.center[mask], self.angle[mask], self.half[mask], self.road[mask], self.side[mask]
        )

    @staticmethod
    def concat(parts: list[Rects]) -> Rects:
        """Concatenate rectangle sets.

        Args:
            parts: the sets.

        Returns:
            One set.
        """
        return Rects(
            *(
                np.concatenate([getattr(p, k) for p in parts])
                for k in ("center", "angle", "half", "road", "side")
            )
        )

    def local_points(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Points at local coordinates (u, v) * half of every rectangle.

        Convention: local x along ``angle`` (counter-clockwise from east), local y to its
        left; scene frame metres.

        Args:
            u: (K,) or (C, K) local x in units of the half extent.
            v: (K,) or (C, K) local y in units of the half extent.

        Returns:
            (C, K, 2) metres.
        """
        ca, sa = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None]
        u, v = np.atleast_2d(u), np.atleast_2d(v)
        lx, ly = u * self.half[:, :1], v * self.half[:, 1:]
        return np.stack(
            [self.center[:, :1] + ca * lx - sa * ly, self.center[:, 1:] + sa * lx + ca * ly],
            axis=-1,
        )

    def corners(self) -> np.ndarray:
        """Corners of every rectangle.

        Convention: scene frame metres, counter-clockwise from local (+x, +y).

        Returns:
            (C, 4, 2).
        """
        return self.local_points(
            np.array([1.0, -1.0, -1.0, 1.0]), np.array([1.0, 1.0, -1.0, -1.0])
        )

    def contains(self, xy: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which points lie inside which rectangles (grown by ``margin``).

        Convention: scene frame metres; boundaries count as inside.

        Args:
            xy: (N, 2) points.
            margin: growth of every half extent, metres.

        Returns:
            (N, C) bool.
        """
        d = xy[:, None, :] - self.center[None]
        ca, sa = np.cos(self.angle)[None], np.sin(self.angle)[None]
        lx = np.abs(ca * d[..., 0] + sa * d[..., 1])
        ly = np.abs(ca * d[..., 1] - sa * d[..., 0])
        return (lx <= self.half[None, :, 0] + margin) & (ly <= self.half[None, :, 1] + margin)


def frontage_lots(
    rng: np.random.Generator,
    net: RoadNetwork,
    setback_m: float,
    width_m: tuple[float, float],
    depth_m: tuple[float, float],
    gap_m: tuple[float, float],
    setback_jitter_m: float,
) -> Rects:
    """Propose lots along both sides of every street.

    Convention: scene frame metres; a lot's local x runs along the street, its local +y
    points from the lot towards the street; ``side`` +1 is right of the polyline.

    Args:
        rng: random generator.
        net: the streets.
        setback_m: distance from the road edge to the lot front, metres.
        width_m: range of frontage widths.
        depth_m: range of lot depths.
        gap_m: range of gaps between consecutive lots.
        setback_jitter_m: extra random setback, U(0, this).

    Returns:
        The candidate lots (local x along the street, local y towards it).
    """
    out = []
    for road in range(len(net.polylines)):
        length = net.length(road)
        for side in (1, -1):
            n = int(length / width_m[0]) + 2
            w = rng.uniform(*width_m, n)
            gap = rng.uniform(*gap_m, n)
            start = rng.uniform(0, width_m[1]) + np.cumsum(w + gap) - w - gap
            s = start + w / 2
            keep = s + w / 2 < length
            w, s = w[keep], s[keep]
            if len(s) == 0:
                continue
            p, t = net.frames(road, s)
            depth = rng.uniform(*depth_m, len(s))
            off = net.half_width[road] + setback_m + rng.uniform(0, setback_jitter_m, len(s))
            normal = np.stack([t[:, 1], -t[:, 0]], axis=1) * side  # towards the lot
            center = p + normal * (off + depth / 2)[:, None]
            # Local y points from the lot towards the street.
            angle = np.arctan2(t[:, 1], t[:, 0]) + (0.0 if side > 0 else np.pi)
            out.append((center, angle, np.stack([w / 2, depth / 2], 1), road, side))
    if not out:
        return Rects(
            np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, int)
        )
    return Rects(
        np.concatenate([o[0] for o in out]),
        np.concatenate([o[1] for o in out]),
        np.concatenate([o[2] for o in out]),
        np.concatenate([np.full(len(o[1]), o[3]) for o in out]),
        np.concatenate([np.full(len(o[1]), o[4]) for o in out]),
    )


def clear_of_roads(rects: Rects, fields: GroundFields, clearance_m: float) -> np.ndarray:
    """Whether each rectangle keeps ``clearance_m`` from every road edge.

    Args:
        rects: C rectangles.
        fields: the ground fields (road edge distance).
        clearance_m: required distance beyond the asphalt (curb, verge, sidewalk).

    Returns:
        (C,) bool.
    """
    if len(rects) == 0:
        return np.zeros(0, bool)
    g = np.linspace(-1.0, 1.0, 5)
    u, v = np.meshgrid(g, g)
    pts = rects.local_points(u.ravel(), v.ravel())  # C,25,2
    (edge,) = fields.sample(pts[..., 0].ravel(), pts[..., 1].ravel(), ("edge",))
    return edge.reshape(len(rects), -1).min(axis=1) >= clearance_m


def conflict_pairs(a: Rects, b: Rects, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i in a, j in b) of rectangles closer than ``margin`` (separating axes).

    Convention: exact for rotated rectangles: two convex polygons are apart iff one of
    their edge normals separates their projections.

    Args:
        a: rectangles.
        b: rectangles.
        margin: required gap, metres.

    Returns:
        Index arrays i, j.
    """
    ra = np.linalg.norm(a.half, axis=1)
    rb = np.linalg.norm(b.half, axis=1)
    dist = np.linalg.norm(a.center[:, None] - b.center[None], axis=-1)
    i, j = np.nonzero(dist < ra[:, None] + rb[None] + margin)
    if len(i) == 0:
        return i, j
    ca, cb = a.corners()[i], b.corners()[j]  # P,4,2
    angles = np.stack([a.angle[i], a.angle[i] + np.pi / 2, b.angle[j], b.angle[j] + np.pi / 2], 1)
    axes = np.stack([np.cos(angles), np.sin(angles)], -1)  # P,4,2
    pa = np.einsum("pkc,pac->pak", ca, axes)  # P,4 axes,4 corners
    pb = np.einsum("pkc,pac->pak", cb, axes)
    separated = (pa.max(-1) + margin <= pb.min(-1)) | (pb.max(-1) + margin <= pa.min(-1))
    hit = ~separated.any(axis=1)
    return i[hit], j[hit]


def greedy_accept(
    rng: np.random.Generator, rects: Rects, fixed: Rects | None, margin: float
) -> np.ndarray:
    """Accept rectangles in random order unless they conflict with accepted or fixed ones.

    Args:
        rng: random generator.
        rects: C candidates.
        fixed: rectangles already in the scene (or None).
        margin: required gap between rectangles, metres.

    Returns:
        (C,) bool acceptance mask.
    """
    ok = np.ones(len(rects), bool)
    if fixed is not None and len(fixed):
        i, _ = conflict_pairs(rects, fixed, margin)
        ok[i] = False
    i, j = conflict_pairs(rects, rects, margin)
    keep = i != j
    i, j = i[keep], j[keep]
    order = np.argsort(i, kind="stable")
    i, j = i[order], j[order]
    starts = np.searchsorted(i, np.arange(len(rects) + 1))
    accepted = np.zeros(len(rects), bool)
    for k in rng.permutation(len(rects)):
        if ok[k] and not accepted[j[starts[k] : starts[k + 1]]].any():
            accepted[k] = True
    return accepted
