"""Vectorised ray-primitive intersection kernels and the depth test.

Kernels take per-candidate arrays (one entry per (ray, primitive) candidate pair, see
:mod:`.raycast` for how candidates are culled) and return the entry parameter t of each
ray into its primitive. They run in float32: callers recompute hit points in float64 from
t, so the points lie exactly on their rays whatever the rounding of t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKY, GROUND, BOX, SOLID = 0, 1, 2, 3
F32 = np.float32


@dataclass
class Hits:
    """First hits of N rays.

    Attributes:
        t: (N,) float32 ray parameter of the hit (inf where nothing is hit).
        kind: (N,) int8: SKY (nothing), GROUND (z = 0), BOX or SOLID.
        prim: (N,) int32 primitive index within its family (-1 otherwise).
        face: (N,) int8 box face (0..5, see :func:`.primitives.box_planes`) or solid part
            (0 side, 1 bottom cap, 2 top cap).
    """

    t: np.ndarray
    kind: np.ndarray
    prim: np.ndarray
    face: np.ndarray

    def subset(self, idx: np.ndarray) -> Hits:
        """The hits of some rays.

        Args:
            idx: (M,) ray indices.

        Returns:
            Hits of the M rays.
        """
        return Hits(*(np.take(a, idx) for a in (self.t, self.kind, self.prim, self.face)))


def expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enumerate ``counts[i]`` items for every i.

    Args:
        counts: (P,) non-negative ints.

    Returns:
        owner: (sum counts,) index i of each item; local: (sum counts,) its rank in 0..counts[i]-1.
    """
    counts = np.asarray(counts, np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


def slab_hits(den: np.ndarray, num: np.ndarray, t_min: float) -> tuple[np.ndarray, np.ndarray]:
    """First crossing of rays with convex polyhedra given as half-spaces n . x <= d.

    Convention: for a ray o + t D, ``den[k] = n_k . D`` and ``num[k] = d_k - n_k . o``;
    plane k is entered where den < 0 and left where den > 0.

    Args:
        den: (K, M) float32.
        num: (K, M) float32.
        t_min: smallest accepted entry parameter.

    Returns:
        t: (M,) entry parameter (inf for misses); face: (M,) int8 index of the entered plane.
    """
    m = den.shape[1]
    t_in = np.full(m, -np.inf, F32)
    t_out = np.full(m, np.inf, F32)
    face = np.zeros(m, np.int8)
    miss = np.zeros(m, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(den.shape[0]):
            d, n = den[k], num[k]
            t = n / d
            enter = (d < 0) & (t > t_in)
            t_in = np.where(enter, t, t_in)
            face[enter] = k
            t_out = np.where(d > 0, np.minimum(t_out, t), t_out)
            miss |= (d == 0) & (n < 0)
    hit = (t_in <= t_out) & (t_in > t_min) & ~miss
    return np.where(hit, t_in, F32(np.inf)), face


def solid_hits(
    pp: np.ndarray,
    pd: np.ndarray,
    dd: np.ndarray | float,
    oz: np.ndarray | float,
    dz: np.ndarray | float,
    q: np.ndarray,
    z0: np.ndarray,
    z1: np.ndarray,
    t_min: float,
) -> tuple[np.ndarray, np.ndarray]:
    """First crossing of rays with convex solids of revolution (vertical axes).

    Convention: ray o + t D; with p = o_xy - axis_xy: ``pp = |p|^2``, ``pd = p . D_xy``,
    ``dd = |D_xy|^2``, ``oz = o_z``, ``dz = D_z``; the solid is r_xy^2 <= q0 + q1 z + q2 z^2,
    z0 <= z <= z1 (:class:`.primitives.Solids`). Heights (``oz``, ``z0``, ``z1`` and the
    profile) are relative to a reference height near the solid (its ``zref``), which
    keeps the quadratic well conditioned in float32. All arguments broadcast to (M,).

    Args:
        pp: (M,) squared horizontal distance of the origin to the axis.
        pd: (M,) dot product of that offset with the horizontal direction.
        dd: (M,) or scalar squared horizontal direction length.
        oz: (M,) or scalar origin height.
        dz: (M,) or scalar vertical direction component.
        q: (3, M) profile coefficients per candidate.
        z0: (M,) bottom heights.
        z1: (M,) top heights.
        t_min: smallest accepted parameter.

    Returns:
        t: (M,) entry parameter (inf for misses), in the precision of ``pp`` (at least
        float32); face: (M,) int8 0 side, 1 bottom cap, 2 top cap.
    """
    q0, q1, q2 = q
    a = dd - q2 * dz * dz
    b = 2 * pd - q1 * dz - 2 * q2 * oz * dz
    c = pp - q0 - q1 * oz - q2 * oz * oz
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.maximum(disc, 0))
        qq = -0.5 * (b + np.copysign(sq, b))
        linear = np.abs(a) < 1e-7
        r1 = np.where(linear, -c / b, qq / a)
        r2 = np.where(linear, np.inf, c / qq)
        r1 = np.where(disc < 0, np.inf, r1)
        roots = [r1, np.where(disc < 0, np.inf, r2)]
        best = np.full(np.broadcast(pp, dz).shape, np.inf, np.result_type(pp, F32))
        face = np.zeros(best.shape, np.int8)
        for r in roots:
            z = oz + r * dz
            ok = (r > t_min) & (z >= z0) & (z <= z1) & (r < best)
            best = np.where(ok, r, best)
        for k, zc in ((1, z0), (2, z1)):
            r = (zc - oz) / dz
            rad2 = pp + 2 * r * pd + r * r * dd
            ok = (r > t_min) & (rad2 <= q0 + q1 * zc + q2 * zc * zc) & (r < best)
            best = np.where(ok, r, best)
            face = np.where(ok, np.int8(k), face)
    return best, face


def merge_hits(depth: np.ndarray, results: list[tuple]) -> Hits:
    """Depth-test candidate hits of several primitive families into per-ray first hits.

    Args:
        depth: (N,) float32 parameter of the ground hit per ray (inf for none); updated
            in place to the first hit's.
        results: per family ``(kind, ray, t, prim, face)`` with (M,) arrays: the family
            code (BOX or SOLID), the ray index of each candidate, its entry parameter
            (inf for misses), primitive index and face.

    Returns:
        The first hit of every ray.
    """
    kind = np.where(np.isfinite(depth), GROUND, SKY).astype(np.int8)
    prim = np.full(len(depth), -1, np.int32)
    face = np.zeros(len(depth), np.int8)
    for _, pix, t, _, _ in results:
        np.minimum.at(depth, pix, t)
    for fam, pix, t, pr, fc in results:
        win = np.isfinite(t) & (t == depth[pix])
        kind[pix[win]] = fam
        prim[pix[win]] = pr[win]
        face[pix[win]] = fc[win]
    return Hits(depth, kind, prim, face)
