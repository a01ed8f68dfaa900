"""Cars and poles along the streets: parked and driving cars, street lights, signals.

Parked cars fill the parking lanes of wide streets (right-hand traffic, so cars face the
direction of their side); a few cars drive or wait in the driving lanes, never in the
ground camera's own lane close to it. Poles stand on the sidewalk just behind the curb;
street lights carry an arm over the road, traffic lights stand at junction corners.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.buildings import Extras
from cvloc.data.synthetic.furniture import METAL, cars, free_of
from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import CURB_M
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.roads import LANE_M, RoadNetwork
from cvloc.data.synthetic.style import Style

CAR_CLEAR_M = 3.5  # minimum distance from a car centre to the camera


def _parked(rng: np.random.Generator, net: RoadNetwork, fields: GroundFields) -> np.ndarray:
    """Poses (x, y, angle) of cars in the parking lanes."""
    poses = [np.zeros((0, 3))]
    for road in np.flatnonzero(net.parking):
        occupancy = rng.uniform(0.35, 0.85)
        for side in (1, -1):
            s = np.cumsum(rng.uniform(5.0, 7.5, int(net.length(road) / 5.0) + 1))
            s = s[(s < net.length(road)) & (rng.random(len(s)) < occupancy)]
            p, t = net.frames(int(road), s)
            xy = p + np.stack([t[:, 1], -t[:, 0]], 1) * side * (net.half_width[road] - 1.15)
            ang = np.arctan2(t[:, 1], t[:, 0]) + (0.0 if side > 0 else np.pi)
            poses.append(np.concatenate([xy, ang[:, None]], 1))
    poses = np.concatenate(poses)
    (junc,) = fields.sample(poses[:, 0], poses[:, 1], ("junc",))
    return poses[junc > 7.0]


def _driving(
    rng: np.random.Generator, net: RoadNetwork, fields: GroundFields, camera: tuple
) -> np.ndarray:
    """Poses of a few cars in the driving lanes, away from the camera's lane and each other."""
    n = int(rng.integers(0, 7))
    road = rng.integers(len(net.polylines), size=n)
    s = rng.uniform(0, 1, n) * np.array([net.length(r) for r in road])
    direction = rng.choice([-1, 1], n)
    lane = rng.integers(0, 3, n) % np.array([net.lanes(r) for r in road], dtype=int)
    poses = []
    cam_road, cam_s, cam_dir = camera
    for i in range(n):
        if road[i] == cam_road and direction[i] == cam_dir and abs(s[i] - cam_s) < 30.0:
            continue
        p, t = net.frames(int(road[i]), s[i : i + 1])
        xy = p[0] + np.array([t[0, 1], -t[0, 0]]) * direction[i] * LANE_M * (lane[i] + 0.5)
        ang = np.arctan2(t[0, 1], t[0, 0]) + (0.0 if direction[i] > 0 else np.pi)
        if all(np.hypot(*(xy - q[:2])) > 7.0 for q in poses):
            poses.append(np.array([xy[0], xy[1], ang]))
    poses = np.asarray(poses).reshape(-1, 3)
    (junc,) = fields.sample(poses[:, 0], poses[:, 1], ("junc",))
    return poses[junc > 1.0]


def add_cars(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    style: Style,
    extras: Extras,
    camera: tuple[int, float, int],
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> None:
    """Parked, driving and driveway cars.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields.
        style: the scene style.
        extras: driveway cars from the building pass.
        camera: (road, arc length, direction +-1) of the camera.
        camera_xy: (2,) camera position.
        builder: receives the primitives.
    """
    poses = np.concatenate(
        [_parked(rng, net, fields), _driving(rng, net, fields, camera), extras.cars]
    )
    poses = poses[np.linalg.norm(poses[:, :2] - camera_xy, axis=1) > CAR_CLEAR_M]
    cars(rng, builder, poses, style)


def add_poles(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    extras: Extras,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> None:
    """Street lights along the streets and traffic lights at junctions.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields.
        extras: building footprints (poles keep clear).
        camera_xy: (2,) camera position (poles keep 1.2 m away).
        builder: receives the primitives.
    """
    xy, normal = [np.zeros((0, 2))], [np.zeros((0, 2))]
    for road in range(len(net.polylines)):
        spacing = rng.uniform(12.0, 18.0)
        s = np.arange(rng.uniform(0, spacing), net.length(road), spacing)
        p, t = net.frames(road, s)
        n = np.stack([t[:, 1], -t[:, 0]], 1) * np.where(np.arange(len(s)) % 2 == 0, 1, -1)[:, None]
        xy.append(p + n * (net.half_width[road] + CURB_M + 0.45))
        normal.append(n)
    xy, normal = np.concatenate(xy), np.concatenate(normal)
    edge, junc = fields.sample(xy[:, 0], xy[:, 1], ("edge", "junc"))
    ok = (edge > CURB_M) & (junc > 2.0) & free_of(xy, extras.footprints, 0.3)
    ok &= np.linalg.norm(xy - camera_xy, axis=1) > 1.2
    xy, normal = xy[ok], normal[ok]
    h = rng.uniform(6.5, 8.5, len(xy))
    builder.cylinders(xy, 0.0, h, 0.11, 0.07, Material.POLE, METAL)
    builder.boxes(
        xy - normal * 0.9,
        np.arctan2(normal[:, 1], normal[:, 0]),
        h - 0.3,
        h - 0.08,
        np.array([1.0, 0.14]),
        Material.POLE,
        METAL * 0.8,
    )
    if len(net.junctions) == 0:
        return
    ang = rng.uniform(0, 2 * np.pi, (len(net.junctions), 1)) + np.arange(12) * np.pi / 6
    rad = net.junction_radius[:, None] + rng.uniform(0.5, 1.5, (len(net.junctions), 1))
    pts = net.junctions[:, None] + rad[..., None] * np.stack([np.cos(ang), np.sin(ang)], -1)
    pts = pts.reshape(-1, 2)
    (edge,) = fields.sample(pts[:, 0], pts[:, 1], ("edge",))
    ok = (edge > 0.4) & (edge < 1.5) & free_of(pts, extras.footprints, 0.3)
    ok &= np.linalg.norm(pts - camera_xy, axis=1) > 1.2
    ok = ok.reshape(len(net.junctions), 12)
    ok &= np.cumsum(ok, axis=1) <= 2  # at most two signals per junction
    pts = pts[ok.ravel()]
    h = rng.uniform(3.6, 4.4, len(pts))
    builder.cylinders(pts, 0.0, h - 0.9, 0.09, 0.08, Material.POLE, METAL * 0.5)
    builder.boxes(
        pts,
        rng.uniform(0, np.pi, len(pts)),
        h - 1.0,
        h,
        np.array([0.18, 0.18]),
        Material.POLE,
        np.full(3, 0.04),
    )
