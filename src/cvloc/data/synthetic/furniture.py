"""Trees, bushes and cars of the synthetic world, generated in batches.

Trees are a trunk (truncated cone) with a canopy of one to three overlapping spheroids
whose bottom is 2.7 to 4 m above the ground: from above the canopy hides the ground,
from the street (camera at 1.65 or 2 m) the ground under it stays visible. Conifers are
a trunk and a cone. Cars are a body frustum and a cabin frustum (glass sides, painted
roof) standing 0.28 m above the ground, so the ground under them is seen from the street
but never from above.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.builder import PrimitiveBuilder
from cvloc.data.synthetic.buildings import Extras
from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import CURB_M, Rects
from cvloc.data.synthetic.noise import noise
from cvloc.data.synthetic.primitives import Material
from cvloc.data.synthetic.roads import RoadNetwork
from cvloc.data.synthetic.style import Style

BARK = np.array([0.16, 0.12, 0.09])
METAL = np.array([0.32, 0.33, 0.34])
GLASS = np.array([0.04, 0.05, 0.06])


def free_of(xy: np.ndarray, footprints: list[Rects], margin: float) -> np.ndarray:
    """Which points lie outside every footprint grown by ``margin``.

    Args:
        xy: (N, 2) points.
        footprints: rectangle sets.
        margin: growth of the rectangles, metres.

    Returns:
        (N,) bool.
    """
    ok = np.ones(len(xy), bool)
    for r in footprints:
        if len(r) and len(xy):
            ok &= ~r.contains(xy, margin).any(axis=1)
    return ok


def trees(
    rng: np.random.Generator,
    builder: PrimitiveBuilder,
    xy: np.ndarray,
    style: Style,
    size: np.ndarray,
) -> None:
    """Add deciduous trees and conifers.

    Convention: scene frame metres; canopies start 2.7 to 4 m above the ground.

    Args:
        rng: random generator.
        builder: receives the primitives.
        xy: (K, 2) trunk positions.
        style: the scene style (leaf palette, conifer share).
        size: (K,) crown scale factors (about 0.5 to 1.3).
    """
    k = len(xy)
    leaf = style.pick(rng, "leaf", k, 0.12)
    conifer = rng.random(k) < style.conifer_frac
    base = rng.uniform(2.7, 4.0, k)
    c, d = np.flatnonzero(conifer), np.flatnonzero(~conifer)
    top = rng.uniform(8.0, 16.0, k) * size
    builder.cylinders(xy[c], 0.0, base[c] + 1.0, 0.2, 0.14, Material.TRUNK, BARK)
    builder.cylinders(
        xy[c],
        base[c],
        top[c],
        rng.uniform(1.4, 2.8, k)[c] * size[c],
        0.0,
        Material.CONIFER,
        leaf[c] * 0.7,
    )
    radius = rng.uniform(1.8, 4.0, k) * size
    half = radius * rng.uniform(0.7, 1.0, k)
    zc = base + half
    trunk = rng.uniform(0.12, 0.28, k)
    builder.cylinders(xy[d], 0.0, zc[d], trunk[d], trunk[d] * 0.6, Material.TRUNK, BARK)
    builder.spheroids(xy[d], zc[d], radius[d], half[d], Material.CANOPY, leaf[d])
    lobe = np.repeat(d, 2)
    lobe = lobe[rng.random(len(lobe)) < 0.5]
    n = len(lobe)
    ang, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.3, 0.6, n) * radius[lobe]
    r2, h2 = rng.uniform(0.5, 0.75, n) * radius[lobe], rng.uniform(0.5, 0.75, n) * half[lobe]
    z2 = np.maximum(zc[lobe] + rng.uniform(-0.2, 0.4, n) * half[lobe], base[lobe] + h2)
    center = xy[lobe] + dist[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
    builder.spheroids(
        center, z2, r2, h2, Material.CANOPY, leaf[lobe] * rng.uniform(0.85, 1.15, (n, 1))
    )


def cars(
    rng: np.random.Generator, builder: PrimitiveBuilder, poses: np.ndarray, style: Style
) -> None:
    """Add cars (body and cabin).

    Convention: scene frame metres; heading angle counter-clockwise from east, the car's
    local +x is its front; bodies span z 0.28 to about 1 m, cabins up to about 1.5 m.

    Args:
        rng: random generator.
        builder: receives the primitives.
        poses: (K, 3) centre x, y and heading angle (radians counter-clockwise from east).
        style: the scene style (car palette).
    """
    k = len(poses)
    xy, a = poses[:, :2], poses[:, 2]
    hl, hw = rng.uniform(2.0, 2.45, k), rng.uniform(0.85, 0.95, k)
    tall = rng.random(k) < 0.25  # SUV / van
    body_top = np.where(tall, 1.05, rng.uniform(0.85, 0.95, k))
    roof = body_top + np.where(tall, 0.75, rng.uniform(0.45, 0.55, k))
    paint = style.pick(rng, "car", k, 0.04)
    builder.boxes(
        xy,
        a,
        0.28,
        body_top,
        np.stack([hl, hw], 1),
        Material.CAR_BODY,
        paint,
        top=np.stack([hl - 0.12, hw - 0.05], 1),
    )
    back = np.where(tall, -0.2, -0.1) * hl
    cabin = xy + back[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
    bottom = np.stack([0.42 * hl * np.where(tall, 1.6, 1.0), hw - 0.08], 1)
    top = np.stack([bottom[:, 0] * np.where(tall, 0.85, 0.6), hw - 0.22], 1)
    builder.boxes(
        cabin, a, body_top, roof, bottom, Material.CAR_CABIN, paint, top=top, color2=GLASS
    )


def _street_trees(
    rng: np.random.Generator, net: RoadNetwork, fields: GroundFields, style: Style
) -> np.ndarray:
    """Trunk positions of trees lining the streets (in the verge or by the curb)."""
    out = [np.zeros((0, 2))]
    lateral = CURB_M + (style.verge_m / 2 if style.verge_m > 1.0 else 0.9)
    for road in range(len(net.polylines)):
        for side in (1, -1):
            if rng.random() > 0.55 * style.tree_density:
                continue
            spacing = rng.uniform(8.0, 14.0)
            s = np.arange(rng.uniform(0, spacing), net.length(road), spacing)
            p, t = net.frames(road, s)
            normal = np.stack([t[:, 1], -t[:, 0]], 1) * side
            out.append(p + normal * (net.half_width[road] + lateral))
    pts = np.concatenate(out)
    edge, junc = fields.sample(pts[:, 0], pts[:, 1], ("edge", "junc"))
    return pts[(edge > CURB_M + 0.3) & (junc > 3.0)]


def _scatter_trees(rng: np.random.Generator, fields: GroundFields, style: Style) -> np.ndarray:
    """Trunk positions of park, yard and woodland trees, clustered by a noise field."""
    n = int((40 if style.layout == "town" else 110) * style.tree_density) * 4
    pts = rng.uniform(-fields.extent, fields.extent, (n, 2))
    shift = rng.uniform(0, 1000, 2)
    density = noise(pts[:, 0] + shift[0], pts[:, 1] + shift[1], 40.0, channel=3)
    pts = pts[density > 0.7]
    (edge,) = fields.sample(pts[:, 0], pts[:, 1], ("edge",))
    return pts[edge > CURB_M + style.verge_m + style.sidewalk_m + 1.0]


def add_vegetation(
    rng: np.random.Generator,
    net: RoadNetwork,
    fields: GroundFields,
    style: Style,
    extras: Extras,
    camera_xy: np.ndarray,
    builder: PrimitiveBuilder,
) -> None:
    """Street trees, scattered trees, garden trees and bushes.

    Args:
        rng: random generator.
        net: the streets.
        fields: ground distance fields.
        style: the scene style.
        extras: building footprints and garden points.
        camera_xy: (2,) camera position (trunks keep 1.5 m away, bushes 2.5 m).
        builder: receives the primitives.
    """
    pts = np.concatenate(
        [_street_trees(rng, net, fields, style), _scatter_trees(rng, fields, style)]
    )
    pts = pts[
        free_of(pts, extras.footprints, 2.0) & (np.linalg.norm(pts - camera_xy, axis=1) > 1.5)
    ]
    trees(rng, builder, pts, style, rng.uniform(0.7, 1.25, len(pts)))
    g = extras.garden
    (edge,) = fields.sample(g[:, 0], g[:, 1], ("edge",))
    g = g[
        (edge > CURB_M + style.verge_m + style.sidewalk_m + 0.8)
        & free_of(g, extras.footprints, 1.2)
        & (np.linalg.norm(g - camera_xy, axis=1) > 2.5)
    ]
    is_tree = rng.random(len(g)) < 0.3
    trees(rng, builder, g[is_tree], style, rng.uniform(0.55, 0.9, int(is_tree.sum())))
    b = g[~is_tree]
    r = rng.uniform(0.5, 1.3, len(b))
    builder.spheroids(
        b,
        r * 0.55,
        r,
        r * rng.uniform(0.6, 0.9, len(b)),
        Material.BUSH,
        style.pick(rng, "leaf", len(b), 0.15) * 0.9,
    )
