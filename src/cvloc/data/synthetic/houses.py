"""Suburban detached houses: walls, gable or hip roofs, wings, driveways, gardens.

Houses are 1 to 2 storeys, set back behind front gardens facing their street, some with
a wing behind (an L footprint); roofs overhang the walls by their eaves, their ridge runs
along the longer side, and gable ends take the facade colour. Each house gets a paved
driveway to the curb, often with a car, and garden points for bushes and trees.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.buildings import Extras, accept_wings, frontage_clearance
from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import CURB_M, Rects, clear_of_roads, frontage_lots, greedy_accept
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.roads import RoadNetwork
from cvloc.data.synthetic.style import Style

EAVE_M = 0.4


def suburb_houses(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    style: Style,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> Extras:
    """Detached houses with pitched roofs, driveways, cars and front gardens.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields (road clearance checks).
        style: the scene style.
        camera_xy: (2,) camera position to keep clear.
        builder: receives the primitives.

    Returns:
        Footprints, driveways, driveway cars and garden points.
    """
    front = frontage_clearance(style)
    lots = frontage_lots(rng, net, front + 4.0, (8.0, 13.0), (7.0, 11.0), (7.0, 16.0), 4.0)
    lots = lots.subset(clear_of_roads(lots, fields, front + 2.0))
    lots = lots.subset(~lots.contains(camera_xy[None], 1.5)[0])
    lots = lots.subset(greedy_accept(rng, lots, None, 4.0))
    wings, parent = accept_wings(rng, lots, fields, front + 2.0, 0.35, (0.3, 0.8), (3.0, 6.0))
    n = len(lots)
    wall_h = rng.choice([2.9, 3.2, 5.8, 6.3], n) + rng.uniform(-0.2, 0.2, n)
    facade = style.pick(rng, "facade", n)
    params = np.stack(
        [
            np.where(wall_h < 4, wall_h, wall_h / 2),
            rng.uniform(2.8, 4.0, n),
            rng.random(n),
            np.zeros(n),
        ],
        1,
    )
    pitch = np.tan(np.radians(rng.uniform(22.0, 40.0, n)))
    hip = rng.random(n) < 0.35
    roof = style.pick(rng, "roof_pitched", n)
    owner = np.concatenate([np.arange(n), parent])
    parts = Rects.concat([lots, wings])
    builder.boxes(
        parts.center,
        parts.angle,
        0.0,
        wall_h[owner],
        parts.half,
        Material.WALL,
        facade[owner],
        params=params[owner],
    )
    _pitched_roofs(
        parts, wall_h[owner], pitch[owner], hip[owner], roof[owner], facade[owner], builder
    )
    paved, cars = _driveways(rng, lots, net, camera_xy)
    front_pts = lots.local_points(rng.uniform(-1.4, 1.4, (n, 4)), rng.uniform(1.3, 1.9, (n, 4)))
    back_pts = lots.local_points(rng.uniform(-1.3, 1.3, (n, 3)), -rng.uniform(1.6, 3.0, (n, 3)))
    garden = np.concatenate([front_pts, back_pts], axis=1).reshape(-1, 2)
    return Extras(footprints=[lots, wings], paved=paved, cars=cars, garden=garden)


def _pitched_roofs(parts: Rects, wall_h, pitch, hip, roof, facade, builder) -> None:
    """Gable or hip roofs whose ridge runs along each part's longer side."""
    swap = parts.half[:, 0] < parts.half[:, 1]
    angle = parts.angle + swap * np.pi / 2
    px = np.where(swap, parts.half[:, 1], parts.half[:, 0])
    py = np.where(swap, parts.half[:, 0], parts.half[:, 1])
    top_x = np.where(hip, np.maximum(px - py, 0.0), px + EAVE_M)
    top = np.stack([top_x, np.zeros_like(top_x)], 1)
    bottom = np.stack([px + EAVE_M, py + EAVE_M], 1)
    builder.boxes(
        parts.center,
        angle,
        wall_h,
        wall_h + (py + EAVE_M) * pitch,
        bottom,
        Material.ROOF,
        roof,
        top=top,
        color2=facade,
    )


def _driveways(
    rng: np.random.Generator, lots: Rects, net: RoadNetwork, camera_xy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A paved driveway from each house front to its street's curb, maybe with a car."""
    n = len(lots)
    ca, sa = np.cos(lots.angle), np.sin(lots.angle)
    ex, ey = np.stack([ca, sa], 1), np.stack([-sa, ca], 1)
    along = rng.choice([-1.0, 1.0], n) * (lots.half[:, 0] - 1.6)
    start = lots.center + ex * along[:, None] + ey * lots.half[:, 1:]
    length = np.zeros(n)
    for road in np.unique(lots.road):
        sel = np.flatnonzero(lots.road == road)
        _, lateral = net.project(int(road), start[sel])
        length[sel] = np.abs(lateral) - net.half_width[road] - CURB_M
    ok = length > 1.0
    mid = start + ey * (length / 2)[:, None]
    paved = np.stack(
        [mid[:, 0], mid[:, 1], lots.angle + np.pi / 2, length / 2 + 0.1, np.full(n, 1.5)], 1
    )[ok]
    dist = np.clip(rng.uniform(2.6, 3.5, n), None, np.maximum(2.6, length - 2.5))
    car_xy = start + ey * dist[:, None]
    car_ok = ok & (rng.random(n) < 0.6) & (np.linalg.norm(car_xy - camera_xy, axis=1) > 4.0)
    heading = lots.angle + np.pi / 2 * rng.choice([-1.0, 1.0], n)
    cars = np.concatenate([car_xy, heading[:, None]], 1)[car_ok]
    return paved, cars
