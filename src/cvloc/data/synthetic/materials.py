"""Procedural albedo of the objects (boxes and solids), evaluated at 3-D hit points.

Both views call the same functions at the same surface points, so a roof's colour, a
facade's windows or a canopy's texture is identical in the ground and the satellite
image; only lighting and sensor response differ. Facades carry window grids (per
building bay width, floor height and window proportions), shop fronts and doors; flat
roofs a lighter parapet rim; pitched roofs tile rows; cars paint, glass, wheels and
lights; canopies leafy clumps. Texture finer than the pixel footprint is faded out
(:func:`.noise.detail`) and hard edges are anti-aliased (:mod:`.patterns`).
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.noise import cell_random, detail, noise
from cvloc.data.synthetic.patterns import F32, below, column, line, mix, put, take, tint
from cvloc.data.synthetic.primitives import Boxes, Material, Solids

GLASS = np.array([0.045, 0.055, 0.07], F32)
SKY_GLINT = np.array([0.16, 0.19, 0.24], F32)
HEADLIGHT = np.array([0.8, 0.8, 0.75], F32)
TAILLIGHT = np.array([0.45, 0.02, 0.02], F32)


def _facade(tab, idx, face, P, lx, ly, fw) -> np.ndarray:
    """Walls with a grid of windows, shop fronts and doors."""
    hx, hy = tab[10], tab[11]
    u = np.where(face < 2, ly + hy, lx + hx)
    width = np.where(face < 2, 2 * hy, 2 * hx)
    z, color = P[2], tab[0:3]
    floor_h, bay_w, style_r, shop = tab[6], tab[7], tab[8], tab[9]
    nb = np.maximum(np.round(width / bay_w), 1.0)
    bay = width / nb
    bu = u / bay
    bi = np.floor(bu)
    fu = np.abs(bu - bi - 0.5) * bay
    fl = np.floor(z / floor_h)
    fz = z / floor_h - fl
    ww = 0.3 + 0.35 * np.mod(style_r * 7.31, 1.0)
    wh = 0.42 + 0.25 * np.mod(style_r * 13.7, 1.0)
    cov = below(fu, ww * bay / 2, fw) * below(np.abs(fz - 0.56) * floor_h, wh * floor_h / 2, fw)
    cov *= below(z, tab[12] - 0.9, fw)
    store = below(fu, 0.44 * bay, fw) * below(np.abs(fz - 0.47) * floor_h, 0.38 * floor_h, fw)
    cov = np.where((shop > 0) & (fl == 0), store, cov)
    door_bay = np.floor(cell_random(idx, 7, 11) * nb)
    door = (fl == 0) & (bi == door_bay) & (fu < 0.22 * bay) & (fz < 0.72) & (shop == 0)
    glass = column(GLASS) + column(SKY_GLINT) * cell_random(bi + 1000 * idx, fl, 5)
    siding = np.where(style_r < 0.25, 0.12 * line(np.mod(z, F32(0.22)) - 0.11, 0.015, fw), 0.0)
    wall = tint(
        color,
        0.07 * noise(u, z, 2.0, 1),
        0.05 * detail(u, z, 0.25, 2, fw),
        -siding,
        -0.12 * below(fz * floor_h, 0.15, fw),
    )
    return np.where(door, color * 0.35, mix(wall, glass, cov))


def _wall(tab, idx, face, P, lx, ly, fw) -> np.ndarray:
    """Building bodies: facades on the sides, a flat roof with a parapet rim on top."""
    out = np.empty((3, len(idx)), F32)
    s, r = np.flatnonzero(face < 4), np.flatnonzero(face >= 4)
    put(
        out,
        s,
        _facade(
            take(tab, s),
            take(idx, s),
            take(face, s),
            take(P, s),
            take(lx, s),
            take(ly, s),
            take(fw, s),
        ),
    )
    tr, fr = take(tab, r), take(fw, r)
    edge = np.minimum(tr[10] - np.abs(take(lx, r)), tr[11] - np.abs(take(ly, r)))
    x, y = take(P[0], r), take(P[1], r)
    put(
        out,
        r,
        tint(
            tr[3:6],
            0.1 * noise(x, y, 1.5, 1),
            0.07 * detail(x, y, 0.2, 2, fr),
            0.3 * below(edge, 0.3, fr),
        ),
    )
    return out


def _roof(tab, idx, face, P, lx, ly, fw, boxes: Boxes) -> np.ndarray:
    """Pitched roofs: tile rows on the slopes, wall colour on gable ends, dark eaves."""
    z = P[2]
    rows = np.clip(2.0 - 8.0 * fw, 0.0, 1.0) * line(np.mod(z, F32(0.32)) - 0.16, 0.03, fw)
    tiles = tint(tab[0:3], 0.08 * detail(P[0] + z, P[1], 0.2, 2, fw), -0.25 * rows)
    sloped = take(boxes.normals_t[2], idx * 6 + face) > 0.05
    other = np.where(face == 5, tab[0:3] * 0.45, tab[3:6])
    return np.where(sloped, tiles, other)


def _car_body(tab, face, P, lx, ly, fw) -> np.ndarray:
    """Car paint with a dark sill, wheels, head and tail lights."""
    z, hx = P[2], tab[10]
    paint = tint(tab[0:3], 0.02 * detail(P[0], P[1] + z, 0.2, 2, fw))
    paint = np.where((z < 0.42) & (face < 4), paint * 0.55, paint)
    wheel = (np.abs(np.abs(lx) - 0.62 * hx) < 0.36) & (z < 0.62) & (face >= 2) & (face < 4)
    paint = np.where(wheel, F32(0.03), paint)
    lamp = (face < 2) & (np.abs(np.abs(ly) - (tab[11] - 0.25)) < 0.2) & (z > 0.6)
    lamp_col = np.where(face == 0, column(HEADLIGHT), column(TAILLIGHT))
    return np.where(lamp, lamp_col, paint)


def _object(m: int, tab, idx, face, P, lx, ly, fw, boxes: Boxes) -> np.ndarray:
    """Albedo of the hits on boxes of one material."""
    if m == Material.WALL:
        return _wall(tab, idx, face, P, lx, ly, fw)
    if m == Material.ROOF:
        return _roof(tab, idx, face, P, lx, ly, fw, boxes)
    if m == Material.ROOF_UNIT:
        return tint(
            tab[0:3], -0.15 * line(np.mod(np.where(face < 2, ly, lx), F32(0.4)) - 0.2, 0.03, fw)
        )
    if m == Material.CAR_BODY:
        return _car_body(tab, face, P, lx, ly, fw)
    if m == Material.HEDGE:
        x, y, z = P
        leaves = 0.25 * noise(x + 0.5 * z, y - 0.5 * z, 0.8, 2) + 0.3 * detail(
            x - z, y + z, 0.3, 1, fw
        )
        return tab[0:3] * np.clip(0.85 + leaves, 0.4, 1.4)
    if m == Material.CAR_CABIN:
        glint = np.clip(noise(P[0] + P[2], P[1], 0.6, 1), 0.0, None)
        return np.where(face < 4, tab[3:6] * (1.0 + 1.5 * glint), tab[0:3])
    return tint(tab[0:3], 0.05 * detail(P[0] + P[2], P[1], 0.2, 2, fw))


def box_albedo(boxes: Boxes, idx: np.ndarray, face: np.ndarray, P: np.ndarray, fw) -> np.ndarray:
    """Albedo of box hits (walls, roofs, cars, clutter), evaluated per material.

    Convention: scene frame; ``face`` indexes :func:`.primitives.box_planes`.

    Args:
        boxes: the boxes.
        idx: (M,) box index of each hit.
        face: (M,) face index.
        P: (3, M) hit points, metres.
        fw: (M,) pixel footprint, metres.

    Returns:
        (3, M) float32 linear albedo.
    """
    fw = np.maximum(np.asarray(fw, F32), F32(0.005))
    tab = take(boxes.table_t, idx)
    dx = (P[0] - take(boxes.center[:, 0], idx)).astype(F32)
    dy = (P[1] - take(boxes.center[:, 1], idx)).astype(F32)
    ca, sa = np.cos(tab[13]), np.sin(tab[13])
    lx, ly = ca * dx + sa * dy, ca * dy - sa * dx
    P32 = P.astype(F32)
    mat = take(boxes.material, idx)
    out = np.empty((3, len(idx)), F32)
    for m in np.unique(mat):
        i = np.flatnonzero(mat == m)
        put(
            out,
            i,
            _object(
                int(m),
                take(tab, i),
                take(idx, i),
                take(face, i),
                take(P32, i),
                take(lx, i),
                take(ly, i),
                take(fw, i),
                boxes,
            ),
        )
    return out


def solid_albedo(solids: Solids, idx: np.ndarray, P: np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Albedo of solid hits (trunks, canopies, conifers, bushes, poles).

    Convention: scene frame, metres.

    Args:
        solids: the solids.
        idx: (M,) solid index of each hit.
        P: (3, M) hit points.
        fw: (M,) pixel footprint, metres.

    Returns:
        (3, M) float32 linear albedo.
    """
    P = P.astype(F32)
    out = take(solids.color_t, idx)
    mat = take(solids.material, idx)
    i = np.flatnonzero(np.isin(mat, [Material.CANOPY, Material.CONIFER, Material.BUSH]))
    x, y, z = take(P, i)
    clumps = 0.22 * noise(x - 0.3 * z, y + 0.8 * z, 1.6, 2)
    clumps += 0.3 * detail(x + 0.6 * z, y - 0.4 * z, 0.45, 1, take(fw, i))
    put(out, i, take(out, i) * np.clip(0.8 + clumps, 0.3, 1.5))
    i = np.flatnonzero(mat == Material.TRUNK)
    dx = take(P[0], i) - take(solids.center[:, 0], take(idx, i)).astype(F32)
    dy = take(P[1], i) - take(solids.center[:, 1], take(idx, i)).astype(F32)
    bark = 1.0 + 0.2 * detail(np.arctan2(dy, dx) * 0.3, take(P[2], i) * 0.15, 0.08, 3, take(fw, i))
    put(out, i, take(out, i) * bark)
    return out
