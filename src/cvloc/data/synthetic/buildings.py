"""Buildings of the synthetic world: town perimeter blocks and suburban detached houses.

Town buildings are flat-roofed boxes of 1 to 10 storeys (3 to 35 m) at the back of the
sidewalk, some with rear wings (L and T footprints) and rooftop plant rooms; their
facades carry window grids and, often, ground-floor shop fronts. Suburban houses are
1 to 2 storeys with gable or hip roofs whose eaves overhang the walls, some with a wing
(L footprint), set back behind front gardens, with a driveway and often a car.
Facade and roof albedos come from the scene style's palettes, so facades and roofs look
different from each other and from one area to the other. Everything is generated in
batches (no per-building python work beyond the lot acceptance loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import (
    CURB_M,
    Rects,
    clear_of_roads,
    frontage_lots,
    greedy_accept,
)
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.roads import RoadNetwork
from cvloc.data.synthetic.style import Style

FLOOR_P = np.array([0.04, 0.08, 0.14, 0.16, 0.16, 0.14, 0.11, 0.08, 0.05, 0.04])


@dataclass
class Extras:
    """What the building pass hands to the vegetation and traffic passes.

    Attributes:
        footprints: rectangles of everything built.
        paved: (P, 5) paved rectangles (centre x, y, angle, half length, half width).
        cars: (C, 3) car poses (x, y, heading angle rad counter-clockwise from east).
        garden: (G, 2) garden points near houses, for trees and bushes.
    """

    footprints: list[Rects] = field(default_factory=list)
    paved: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    cars: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    garden: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def frontage_clearance(style: Style) -> float:
    """Distance from the road edge to the back of the sidewalk (curb, verge, sidewalk).

    Args:
        style: the scene style.

    Returns:
        Metres.
    """
    return CURB_M + style.verge_m + style.sidewalk_m


def _wings(rng: np.random.Generator, lots: Rects, width: tuple, depth: tuple) -> Rects:
    """A candidate wing behind every lot (local x of a wing points away from the street)."""
    n = len(lots)
    ww = rng.uniform(*width, n) * lots.half[:, 0]
    wd = rng.uniform(*depth, n)
    along = rng.choice([-1.0, 1.0], n) * (lots.half[:, 0] - ww)
    back = lots.half[:, 1] + wd - 0.3
    ca, sa = np.cos(lots.angle), np.sin(lots.angle)
    center = lots.center + np.stack([ca * along + sa * back, sa * along - ca * back], 1)
    return Rects(center, lots.angle + np.pi / 2, np.stack([wd, ww], 1), lots.road, lots.side)


def accept_wings(
    rng: np.random.Generator,
    lots: Rects,
    fields: GroundFields,
    clearance: float,
    prob: float,
    width: tuple[float, float],
    depth: tuple[float, float],
) -> tuple[Rects, np.ndarray]:
    """Wings that fit (no overlap, clear of roads) behind a random subset of lots.

    Args:
        rng: random generator.
        lots: the accepted lots.
        fields: ground distance fields (road clearance).
        clearance: required distance from road edges, metres.
        prob: share of lots that try a wing.
        width: range of wing widths as a share of the lot's half width.
        depth: range of wing half depths, metres.

    Returns:
        The accepted wings and the index of each one's lot.
    """
    parent = np.flatnonzero(rng.random(len(lots)) < prob)
    wings = _wings(rng, lots, width, depth).subset(parent)
    ok = greedy_accept(rng, wings, lots, 1.0) & clear_of_roads(wings, fields, clearance)
    return wings.subset(ok), parent[ok]


def town_buildings(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    style: Style,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> Extras:
    """Perimeter-block buildings along every street.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields (road clearance checks).
        style: the scene style.
        camera_xy: (2,) camera position to keep clear.
        builder: receives the primitives.

    Returns:
        Footprints and other placement hints.
    """
    clearance = frontage_clearance(style)
    lots = frontage_lots(rng, net, clearance, (8.0, 24.0), (10.0, 18.0), (0.0, 0.8), 0.6)
    lots = lots.subset(rng.random(len(lots)) > 0.08)  # occasional gaps between buildings
    lots = lots.subset(clear_of_roads(lots, fields, clearance - 0.05))
    lots = lots.subset(~lots.contains(camera_xy[None], 1.5)[0])
    lots = lots.subset(greedy_accept(rng, lots, None, 0.0))
    wings, parent = accept_wings(rng, lots, fields, clearance, 0.45, (0.35, 0.8), (5.0, 14.0))
    n = len(lots)
    floor_h = rng.uniform(3.0, 3.5, n)
    height = rng.choice(np.arange(1, 11), n, p=FLOOR_P) * floor_h + rng.uniform(0.3, 1.0, n)
    wing_h = np.maximum(3.2, height[parent] - rng.integers(0, 3, len(parent)) * floor_h[parent])
    facade = style.pick(rng, "facade", n)
    roof = style.pick(rng, "roof_flat", n)
    shop = (rng.random(n) < 0.6).astype(float)
    params = np.stack([floor_h, rng.uniform(2.6, 3.8, n), rng.random(n), shop], 1)
    builder.boxes(
        lots.center,
        lots.angle,
        0.0,
        height,
        lots.half,
        Material.WALL,
        facade,
        color2=roof,
        params=params,
    )
    wing_params = params[parent] * [1, 1, 1, 0]
    builder.boxes(
        wings.center,
        wings.angle,
        0.0,
        wing_h,
        wings.half,
        Material.WALL,
        facade[parent],
        color2=roof[parent],
        params=wing_params,
    )
    _roof_units(rng, Rects.concat([lots, wings]), np.concatenate([height, wing_h]), builder)
    sheds = _back_buildings(rng, Rects.concat([lots, wings]), fields, clearance, style, builder)
    return Extras(footprints=[lots, wings, sheds])


def _back_buildings(
    rng: np.random.Generator,
    built: Rects,
    fields: GroundFields,
    clearance: float,
    style: Style,
    builder: PrimitiveBuilder,
) -> Rects:
    """Low sheds and garages in the block interiors, behind some buildings."""
    k = np.flatnonzero(rng.random(len(built)) < 0.35)
    lots = built.subset(k)
    n = len(k)
    size = np.stack([rng.uniform(1.5, 4.0, n), rng.uniform(1.5, 3.0, n)], 1)
    back = lots.half[:, 1] + rng.uniform(1.0, 6.0, n) + size[:, 1]
    along = rng.uniform(-1, 1, n) * np.maximum(lots.half[:, 0] - size[:, 0], 0.0)
    ca, sa = np.cos(lots.angle), np.sin(lots.angle)
    center = lots.center + np.stack([ca * along + sa * back, sa * along - ca * back], 1)
    sheds = Rects(center, lots.angle, size, lots.road, lots.side)
    ok = greedy_accept(rng, sheds, built, 0.5) & clear_of_roads(sheds, fields, clearance)
    sheds = sheds.subset(ok)
    m = len(sheds)
    params = np.stack([np.full(m, 3.0), np.full(m, 3.0), rng.random(m), np.zeros(m)], 1)
    builder.boxes(
        sheds.center,
        sheds.angle,
        0.0,
        rng.uniform(2.5, 4.5, m),
        sheds.half,
        Material.WALL,
        style.pick(rng, "facade", m),
        color2=style.pick(rng, "roof_flat", m),
        params=params,
    )
    return sheds


def _roof_units(
    rng: np.random.Generator, roofs: Rects, height: np.ndarray, builder: PrimitiveBuilder
) -> None:
    """Up to three plant rooms / AC units on every flat roof."""
    idx = np.repeat(np.arange(len(roofs)), 3)
    keep = rng.random(len(idx)) < 0.45
    size = rng.uniform(0.8, 2.5, (len(idx), 2))
    room = roofs.half[idx] - size - 0.6
    keep &= np.all(room > 0, axis=1)
    idx, size, room = idx[keep], size[keep], room[keep]
    off = rng.uniform(-1, 1, (len(idx), 2)) * room
    ca, sa = np.cos(roofs.angle[idx]), np.sin(roofs.angle[idx])
    center = roofs.center[idx] + np.stack(
        [ca * off[:, 0] - sa * off[:, 1], sa * off[:, 0] + ca * off[:, 1]], 1
    )
    grey = np.repeat(rng.uniform(0.35, 0.7, (len(idx), 1)), 3, axis=1)
    z0 = height[idx]
    builder.boxes(
        center,
        roofs.angle[idx],
        z0,
        z0 + rng.uniform(0.8, 2.8, len(idx)),
        size,
        Material.ROOF_UNIT,
        grey,
    )
