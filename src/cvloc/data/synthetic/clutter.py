"""Small street furniture and garden boundaries: bins, bollards, benches, signs, hedges.

These are the small above-ground objects that break the flat-ground assumption at the
scale of a few pixels: bins and bollards on town sidewalks, benches, sign posts with a
plate, and, in suburbs, hedges and low walls along the front of the lots.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.buildings import Extras
from cvloc.data.synthetic.furniture import METAL, free_of
from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import CURB_M, Rects, conflict_pairs
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.roads import RoadNetwork
from cvloc.data.synthetic.style import Style

SIGN_COLORS = np.array([[0.05, 0.15, 0.55], [0.6, 0.05, 0.04], [0.75, 0.75, 0.72]])


def _sidewalk_spots(
    rng: np.random.Generator, net: RoadNetwork, style: Style, n: int, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """Random sidewalk points ``offset`` behind the curb, and the normals away from the street."""
    road = rng.integers(len(net.polylines), size=n)
    side = rng.choice([-1.0, 1.0], n)
    xy, normal = np.zeros((n, 2)), np.zeros((n, 2))
    for r in np.unique(road):
        i = np.flatnonzero(road == r)
        p, t = net.frames(int(r), rng.uniform(0, net.length(int(r)), len(i)))
        nrm = np.stack([t[:, 1], -t[:, 0]], 1) * side[i, None]
        xy[i] = p + nrm * (net.half_width[r] + CURB_M + style.verge_m + offset)
        normal[i] = nrm
    return xy, normal


def add_clutter(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    style: Style,
    extras: Extras,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> None:
    """Bins, bollards, benches and signs on sidewalks; hedges and walls along lots.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields (junction and road clearance).
        style: the scene style.
        extras: building footprints (kept clear).
        camera_xy: (2,) camera position (kept 1.5 m clear).
        builder: receives the primitives.
    """
    n = 60 if style.layout == "town" else 25
    xy, normal = _sidewalk_spots(rng, net, style, n, rng.uniform(0.3, 0.6))
    edge, junc = fields.sample(xy[:, 0], xy[:, 1], ("edge", "junc"))
    ok = (edge > CURB_M) & (junc > 1.0) & free_of(xy, extras.footprints, 0.5)
    ok &= np.linalg.norm(xy - camera_xy, axis=1) > 1.5
    xy, normal = xy[ok], normal[ok]
    kind = rng.integers(4, size=len(xy))
    b = kind == 0  # bins
    builder.cylinders(
        xy[b],
        0.0,
        1.0,
        0.28,
        0.3,
        Material.POLE,
        np.array([0.12, 0.2, 0.12]) * rng.uniform(0.7, 1.3),
    )
    b = kind == 1  # bollards
    builder.cylinders(xy[b], 0.0, 0.9, 0.1, 0.08, Material.POLE, METAL * 0.6)
    b = kind == 2  # benches, along the street
    ang = np.arctan2(normal[b, 1], normal[b, 0])
    builder.boxes(
        xy[b],
        ang,
        0.35,
        0.5,
        np.array([0.25, 0.9]),
        Material.LOW_WALL,
        np.array([0.35, 0.25, 0.15]),
    )
    b = kind == 3  # signs: post and plate
    builder.cylinders(xy[b], 0.0, 2.6, 0.04, 0.04, Material.POLE, METAL)
    ang = np.arctan2(normal[b, 1], normal[b, 0])
    color = SIGN_COLORS[rng.integers(len(SIGN_COLORS), size=int(b.sum()))]
    builder.boxes(xy[b], ang, 2.0, 2.6, np.array([0.03, 0.3]), Material.POLE, color)
    if style.layout == "suburb":
        _hedges(rng, extras, camera_xy, builder, style)


def _hedges(
    rng: np.random.Generator,
    extras: Extras,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
    style: Style,
) -> None:
    """Hedges or low walls along part of the front of some lots."""
    lots = extras.footprints[0]
    k = np.flatnonzero(rng.random(len(lots)) < 0.4)
    if len(k) == 0:
        return
    sel = lots.subset(k)
    side = rng.choice([-1.0, 1.0], len(k))
    # Along the lot front, 3.5 m in front of the house, on the side away from the driveway.
    center = sel.local_points(side[:, None] * 0.45, np.full((len(k), 1), 1.0))[:, 0]
    ca, sa = np.cos(sel.angle), np.sin(sel.angle)
    center = center + np.stack([-sa, ca], 1) * 3.0
    half = np.stack([sel.half[:, 0] * 0.5, np.full(len(k), 0.4)], 1)
    hedges = Rects(center, sel.angle, half, sel.road, sel.side)
    ok = ~hedges.contains(camera_xy[None], 1.0)[0] & free_of(center, extras.footprints, 0.5)
    if len(extras.paved):
        p = extras.paved
        drives = Rects(p[:, :2], p[:, 2], p[:, 3:5], np.zeros(len(p), int), np.zeros(len(p), int))
        ok[conflict_pairs(hedges, drives, 0.3)[0]] = False
    wall = rng.random(len(k)) < 0.3
    height = np.where(wall, rng.uniform(0.6, 1.0, len(k)), rng.uniform(0.9, 1.8, len(k)))
    for mask, mat, color in (
        (ok & ~wall, Material.HEDGE, style.palette["leaf"][0] * 0.8),
        (ok & wall, Material.LOW_WALL, np.array([0.45, 0.42, 0.38])),
    ):
        builder.boxes(
            center[mask],
            sel.angle[mask],
            0.0,
            height[mask],
            half[mask] * [1.0, 0.5 if mat == Material.LOW_WALL else 1.0],
            mat,
            color,
        )
