"""Road networks of the synthetic world: a rotated town grid or curvy suburban streets.

A network is a list of polylines (centre lines) with per-road attributes, plus the
junctions where roads meet. Road 0 always passes through the scene origin, where the
ground camera is placed. Polylines are sampled every few metres, so curved roads are
smooth at street scale; the lateral offset ``lat`` of a point is positive to the right
of the polyline's direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PARKING_LANE_M = 2.2
LANE_M = 3.3


@dataclass
class RoadNetwork:
    """Centre lines and attributes of the roads of one scene.

    Attributes:
        polylines: R arrays (K_i, 2) of centre-line points, metres (scene frame).
        half_width: (R,) half width of the asphalt, metres.
        parking: (R,) bool, a parking lane along both curbs.
        marking: (R,) int: 0 dashed white centre line, 1 double solid yellow, 2 none.
        junctions: (J, 2) junction centres. junction_radius: (J,) metres.
    """

    polylines: list[np.ndarray]
    half_width: np.ndarray
    parking: np.ndarray
    marking: np.ndarray
    junctions: np.ndarray
    junction_radius: np.ndarray
    _cum: list[np.ndarray] = field(init=False, repr=False)
    _tangent: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cum, self._tangent = [], []
        for pts in self.polylines:
            seg = np.diff(pts, axis=0)
            length = np.linalg.norm(seg, axis=1)
            self._cum.append(np.concatenate([[0.0], np.cumsum(length)]))
            self._tangent.append(seg / length[:, None])

    def lanes(self, road: int) -> int:
        """Driving lanes per direction of a road.

        Args:
            road: road index.

        Returns:
            At least 1.
        """
        drive = self.half_width[road] - PARKING_LANE_M * self.parking[road]
        return max(1, round(drive / LANE_M))

    def frames(self, road: int, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points and unit tangents of a road at arc lengths s (clamped to the road).

        Convention: scene frame metres; tangents along the polyline direction.

        Args:
            road: road index.
            s: (K,) arc lengths from the polyline's first point, metres.

        Returns:
            points (K, 2), tangents (K, 2).
        """
        cum, tangent = self._cum[road], self._tangent[road]
        s = np.asarray(s, np.float64)
        i = np.clip(np.searchsorted(cum, s, "right") - 1, 0, len(tangent) - 1)
        return self.polylines[road][i] + tangent[i] * (s - cum[i])[:, None], tangent[i]

    def project(self, road: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Closest point of a road's centre line to points: arc length and lateral offset.

        Convention: lateral offset positive to the right of the polyline's direction.

        Args:
            road: road index.
            xy: (K, 2) points, metres.

        Returns:
            s (K,) arc lengths, lateral (K,) signed offsets, metres.
        """
        pts, cum, tangent = self.polylines[road], self._cum[road], self._tangent[road]
        w = xy[:, None, :] - pts[None, :-1]  # K,S,2
        along = np.clip(np.einsum("ksc,sc->ks", w, tangent), 0.0, np.diff(cum)[None])
        off = w - along[..., None] * tangent[None]
        k = np.argmin(np.einsum("ksc,ksc->ks", off, off), axis=1)
        rows = np.arange(len(xy))
        wk, tk = w[rows, k], tangent[k]
        return cum[k] + along[rows, k], wk[:, 0] * tk[:, 1] - wk[:, 1] * tk[:, 0]

    def arc_lengths(self, road: int) -> np.ndarray:
        """Arc length at every polyline point of a road.

        Args:
            road: road index.

        Returns:
            (K,) metres, starting at 0.
        """
        return self._cum[road]

    def length(self, road: int) -> float:
        """Arc length of a road, metres.

        Args:
            road: road index.

        Returns:
            The length.
        """
        return float(self._cum[road][-1])


def _clip_line(p: np.ndarray, d: np.ndarray, extent: float) -> np.ndarray | None:
    """The end points of the infinite line p + s d inside the square [-extent, extent]^2."""
    with np.errstate(divide="ignore"):
        a = (-extent - p) / d
        b = (extent - p) / d
    lo = np.nanmax(np.minimum(a, b))
    hi = np.nanmin(np.maximum(a, b))
    if hi - lo < 10.0:
        return None
    return p[None] + np.array([[lo], [hi]]) * d[None]


def _integrate_curve(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, wiggle: float
) -> np.ndarray:
    """A smooth curve of given length from ``start``; curvature a sum of two sinusoids."""
    s = np.arange(0.0, length + 4.0, 4.0)
    amp = rng.uniform(0.3, 1.0, 2) * wiggle
    wl = rng.uniform(45.0, 110.0, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)
    ang = heading + sum(amp[i] * (np.sin(s / wl[i] + ph[i]) - np.sin(ph[i])) for i in range(2))
    steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) * 4.0
    return start[None] + np.concatenate([[[0.0, 0.0]], np.cumsum(steps[:-1], axis=0)])


def _two_way_curve(
    rng: np.random.Generator, start: np.ndarray, extent: float, wiggle: float
) -> np.ndarray:
    """A smooth curve through ``start`` in both directions, cut to the scene square."""
    heading = rng.uniform(0, 2 * np.pi)
    fwd = _integrate_curve(rng, start, heading, 2 * extent, wiggle)
    bwd = _integrate_curve(rng, start, heading + np.pi, 2 * extent, wiggle)
    curve = np.concatenate([bwd[::-1], fwd[1:]])
    inside = np.all(np.abs(curve) <= extent, axis=1)
    # Keep the run of inside points that contains ``start`` (index len(bwd) - 1).
    k = len(bwd) - 1
    lo = k - np.argmin(inside[k::-1]) + 1 if not inside[: k + 1].all() else 0
    hi = k + np.argmin(inside[k:]) if not inside[k:].all() else len(curve)
    return curve[lo:hi]


def town_roads(rng: np.random.Generator, extent: float) -> RoadNetwork:
    """A rotated grid of straight streets, sometimes with a curved avenue.

    Convention: scene frame metres; streets are cut to the square [-extent, extent]^2.

    Args:
        rng: random generator.
        extent: half size of the square scene, metres.

    Returns:
        The network; road 0 passes through the origin.
    """
    theta = rng.uniform(0, np.pi)
    axes = [np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])]
    lines, widths = [], []
    for k, d in enumerate(axes):
        normal = axes[1 - k]
        offsets = [0.0] if k == 0 else [rng.uniform(-40.0, 40.0)]
        for sign in (1, -1):
            while abs(offsets[-1] if sign > 0 else offsets[0]) < 1.5 * extent:
                gap = rng.uniform(48.0, 95.0)
                if sign > 0:
                    offsets.append(offsets[-1] + gap)
                else:
                    offsets.insert(0, offsets[0] - gap)
        for off in offsets:
            line = _clip_line(normal * off, d, extent)
            if line is not None:
                lines.append((abs(off) < 1e-9 and k == 0, line))
                widths.append(rng.choice([3.6, 5.5, 6.0, 7.5], p=[0.25, 0.35, 0.2, 0.2]))
    order = sorted(range(len(lines)), key=lambda i: not lines[i][0])
    polylines = [lines[i][1] for i in order]
    hw = np.array([widths[i] for i in order])
    if rng.random() < 0.35:  # a curved avenue crossing the grid
        avenue = _two_way_curve(rng, rng.uniform(-0.5, 0.5, 2) * extent, extent, 0.5)
        if len(avenue) > 10:
            polylines.append(avenue)
            hw = np.append(hw, 5.5)
    return _finish(rng, polylines, hw)


def suburb_roads(rng: np.random.Generator, extent: float) -> RoadNetwork:
    """A curvy main street through the origin with curvy side streets (T junctions).

    Convention: scene frame metres; streets are cut to the square [-extent, extent]^2.

    Args:
        rng: random generator.
        extent: half size of the square scene, metres.

    Returns:
        The network; road 0 passes through the origin.
    """
    main = _two_way_curve(rng, np.zeros(2), extent, 0.6)
    polylines = [main]
    hw = [rng.uniform(3.2, 4.6)]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(main, axis=0), axis=1))])
    s_origin = float(arc[np.argmin(np.linalg.norm(main, axis=1))])  # vertices every 4 m
    for _ in range(int(rng.integers(1, 4))):
        s = s_origin + rng.choice([-1, 1]) * rng.uniform(30.0, extent * 0.9)
        i = int(np.clip(np.searchsorted(arc, s), 1, len(main) - 1))
        t = main[i] - main[i - 1]
        side = rng.choice([-1, 1])
        ang = np.arctan2(t[1], t[0]) + side * (np.pi / 2 + rng.uniform(-0.3, 0.3))
        branch = _integrate_curve(rng, main[i], ang, 2 * extent, 0.5)
        branch = branch[: np.argmax(np.any(np.abs(branch) > extent, axis=1)) or len(branch)]
        if len(branch) > 5:
            polylines.append(branch)
            hw.append(rng.uniform(3.0, 4.0))
    return _finish(rng, polylines, np.array(hw))


def _finish(rng: np.random.Generator, polylines: list[np.ndarray], hw: np.ndarray) -> RoadNetwork:
    """Attributes and junctions of a set of centre lines."""
    n = len(polylines)
    parking = hw >= 5.4
    marking = np.where(hw < 3.4, 2, rng.choice([0, 1], size=n, p=[0.7, 0.3]))
    junctions, radii = [], []
    for a in range(n):
        for b in range(a + 1, n):
            for p in _crossings(polylines[a], polylines[b]):
                junctions.append(p)
                radii.append(max(hw[a], hw[b]) + 1.5)
    return RoadNetwork(
        polylines=polylines,
        half_width=hw.astype(np.float64),
        parking=parking,
        marking=marking.astype(np.int64),
        junctions=np.asarray(junctions, np.float64).reshape(-1, 2),
        junction_radius=np.asarray(radii, np.float64),
    )


def _crossings(pa: np.ndarray, pb: np.ndarray) -> list[np.ndarray]:
    """Intersection points of two polylines (touching end points count)."""
    a0, a1 = pa[:-1, None], pa[1:, None]
    b0, b1 = pb[None, :-1], pb[None, 1:]
    da, db = a1 - a0, b1 - b0
    den = da[..., 0] * db[..., 1] - da[..., 1] * db[..., 0]
    w = b0 - a0
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (w[..., 0] * db[..., 1] - w[..., 1] * db[..., 0]) / den
        tb = (w[..., 0] * da[..., 1] - w[..., 1] * da[..., 0]) / den
    eps = 1e-6
    ok = (ta >= -eps) & (ta <= 1 + eps) & (tb >= -eps) & (tb <= 1 + eps)
    ia, ib = np.nonzero(ok)
    pts = [pa[i] + ta[i, j] * (pa[i + 1] - pa[i]) for i, j in zip(ia, ib, strict=True)]
    unique: list[np.ndarray] = []
    for p in pts:
        if all(np.linalg.norm(p - q) > 1.0 for q in unique):
            unique.append(p)
    return unique
