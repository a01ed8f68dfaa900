"""Procedural albedo of the ground plane: asphalt and markings, curbs, sidewalks, lots.

The ground is sampled from the scene's distance fields (:mod:`.ground`) at the hit
points, so both views see exactly the same markings, curbs and paving. Layers are
composited back to front (lot cover, sidewalk, verge, driveway, curb, asphalt) with
anti-aliased coverages, and each layer's albedo is only evaluated where it is visible.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.ground import GroundFields
from cvloc.data.synthetic.lots import CURB_M
from cvloc.data.synthetic.noise import detail, noise
from cvloc.data.synthetic.patterns import (
    F32,
    below,
    column,
    dashes,
    joints,
    line,
    mix,
    put,
    take,
    tint,
)
from cvloc.data.synthetic.roads import LANE_M, PARKING_LANE_M, RoadNetwork
from cvloc.data.synthetic.style import Style

WHITE = np.array([0.72, 0.72, 0.69], F32)
YELLOW = np.array([0.66, 0.50, 0.08], F32)
CURB = np.array([0.50, 0.49, 0.46], F32)


def _markings(net: RoadNetwork, lat, s, road, junc, fw) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of white markings and of the centre line (evaluated only near lines)."""
    hw = take(net.half_width.astype(F32), road)
    alat = np.abs(lat)
    white, centre = np.zeros_like(lat), np.zeros_like(lat)
    outside = junc > -fw
    i = np.flatnonzero(outside & (alat < 0.3))
    kind, li, fi = take(net.marking, take(road, i)), take(lat, i), take(fw, i)
    dashed = line(li, 0.06, fi) * dashes(take(s, i), 9.0, 1.0 / 3.0, fi)
    double = np.maximum(line(li - 0.15, 0.055, fi), line(li + 0.15, 0.055, fi))
    cov = np.where(kind == 0, dashed, np.where(kind == 1, double, 0.0))
    centre[i] = cov * below(-take(junc, i), 0.0, fi)
    lanes = take(np.array([net.lanes(r) for r in range(len(net.half_width))], F32), road)
    k = np.round(alat / F32(LANE_M))
    i = np.flatnonzero(outside & (k >= 1) & (k < lanes) & (np.abs(alat - k * LANE_M) < 0.3))
    fi = take(fw, i)
    white[i] = line(take(alat - k * LANE_M, i), 0.06, fi) * dashes(take(s, i), 9.0, 1 / 3, fi)
    edge_pos = hw - take(np.where(net.parking, PARKING_LANE_M, 0.35).astype(F32), road)
    i = np.flatnonzero(outside & (hw >= 3.4) & (np.abs(alat - edge_pos) < 0.3))
    white[i] = np.maximum(take(white, i), line(take(alat - edge_pos, i), 0.06, take(fw, i)))
    white *= below(-junc, 0.0, fw)
    i = np.flatnonzero((junc > 0.5) & (junc < 4.3) & (alat < hw))
    fi, ai = take(fw, i), take(alat, i)
    band = line(take(junc, i) - 2.4, 1.5, fi) * below(ai, take(hw, i) - 0.4, fi)
    white[i] = np.maximum(take(white, i), band * dashes(take(lat, i) + 0.25, 1.0, 0.5, fi))
    return white, centre


def _lot_cover(fields, style, x, y, mid, fine, fw) -> np.ndarray:
    """Unbuilt lots: lawn with soil patches, or paving, chosen by a large-scale noise."""
    veg = noise(x + 311.0, y - 77.0, 9.0, 3)
    threshold = -0.55 * np.log(style.vegetation / (1.0 - style.vegetation))
    w = np.clip((veg - F32(threshold)) * 3.0 + 0.5, 0.0, 1.0)
    out = np.zeros((3, len(x)), F32)
    g, p = np.flatnonzero(w > 0), np.flatnonzero(w < 1)
    mg, fg = take(mid, g), take(fine, g)
    grass = tint(style.grass, 0.2 * mg, 0.18 * fg)
    soil = tint(style.soil, 0.1 * mg, 0.15 * fg)
    patch = np.clip(noise(take(x, g), take(y, g), 2.5, 3) * 2.0 - 2.6, 0.0, 1.0)
    put(out, g, mix(grass, soil, patch))
    grid = joints(take(x, p), take(y, p), 0.6, 0.18, take(fw, p))
    paving = tint(style.paving, 0.06 * take(mid, p), 0.05 * take(fine, p), -grid)
    wp = take(w, p)
    put(out, p, np.where(wp > 0, mix(paving, take(out, p), wp), paving))
    return out


def _sidewalk(fields, style, x, y, edge, mid, fine, fw) -> np.ndarray:
    """Sidewalk slabs, joints aligned with the street."""
    (s,) = fields.sample(x, y, ("s",))
    return tint(style.sidewalk, 0.05 * mid, 0.06 * fine, -joints(s, edge, 1.0, 0.2, fw))


def _asphalt(fields, net, style, x, y, mid, fine, fw) -> np.ndarray:
    """Asphalt with worn lane markings and crosswalks."""
    lat, s, junc, road = fields.sample(x, y, ("lat", "s", "junc", "road"))
    asphalt = tint(style.asphalt, 0.12 * mid, 0.12 * fine, 0.1 * noise(x, y, 7.0, 0))
    white, centre = _markings(net, lat, s, road, junc, fw)
    wear = np.clip(0.75 + 0.3 * mid, 0.0, 1.0)
    asphalt = mix(asphalt, column(WHITE), white * wear)
    return mix(asphalt, column(YELLOW if style.marking_yellow else WHITE), centre * wear)


def ground_albedo(
    fields: GroundFields, net: RoadNetwork, style: Style, x: np.ndarray, y: np.ndarray, fw
) -> np.ndarray:
    """Albedo of the ground plane at points.

    Convention: scene frame (x east, y north), metres.

    Args:
        fields: the ground distance fields.
        net: the streets (per-road attributes).
        style: the scene style.
        x: (N,) east, metres.
        y: (N,) north, metres.
        fw: (N,) pixel footprint on the ground, metres.

    Returns:
        (3, N) float32 linear albedo.
    """
    x, y = np.asarray(x, F32), np.asarray(y, F32)
    edge, pave = fields.sample(x, y, ("edge", "pave"))
    fw = np.maximum(np.asarray(fw, F32), F32(0.01))
    mid, fine = detail(x, y, 1.1, 1, fw), detail(x, y, 0.12, 2, fw)
    sw0 = CURB_M + style.verge_m
    curb = below(edge, CURB_M, fw)
    cover = [
        below(edge, sw0 + style.sidewalk_m, fw),
        below(edge, sw0, fw) if style.verge_m > 0 else np.zeros_like(x),
        below(pave, 0.0, fw) * (1 - curb),
        curb,
        below(edge, 0.0, fw),
    ]
    visible = [np.ones_like(x), *cover]
    for i in range(len(visible) - 1):
        for later in cover[i:]:
            visible[i] = visible[i] * (1 - later)
    out = np.zeros((3, len(x)), F32)
    for k, w in enumerate(visible):
        i = np.flatnonzero(w > 0)
        if len(i) == 0:
            continue
        xi, yi, mi, fi, wi = take(x, i), take(y, i), take(mid, i), take(fine, i), take(fw, i)
        if k == 0:
            color = _lot_cover(fields, style, xi, yi, mi, fi, wi)
        elif k == 1:
            color = _sidewalk(fields, style, xi, yi, take(edge, i), mi, fi, wi)
        elif k == 2:
            color = tint(style.grass, 0.2 * mi, 0.18 * fi)
        elif k == 3:
            color = tint(style.paving * 1.15, 0.05 * mi, 0.06 * fi)
        elif k == 4:
            color = tint(CURB, 0.05 * fi)
        else:
            color = _asphalt(fields, net, style, xi, yi, mi, fi, wi)
        color *= take(w, i)
        for c in range(3):
            out[c][i] += color[c]
    return out
