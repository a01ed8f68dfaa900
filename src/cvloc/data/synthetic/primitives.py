"""Scene primitives of the synthetic world, stored as structures of arrays.

Two analytic solid families cover every object above the ground plane z = 0:

- **Frustum boxes** (:class:`Boxes`): convex polyhedra with a rectangular bottom
  (half extents ``bottom`` at ``z0``) and a parallel, centred rectangular top (half
  extents ``top`` at ``z1``), rotated by ``angle`` about the vertical axis. A box has
  top == bottom; a gable roof has top = (bx, 0); a hip roof (bx - by, 0); a pyramid (0, 0);
  a car cabin a smaller top. Each is the intersection of 6 half-spaces n . x <= d, so one
  slab test intersects them all.
- **Solids of revolution** (:class:`Solids`) about a vertical axis whose squared radius
  is a quadratic in height, r(z)^2 = q0 + q1 z + q2 z^2 for z in [z0, z1]: cylinders
  (trunks, poles), cones and truncated cones (conifers), spheroids (canopies, bushes).
  All are convex, so the first ray hit is the smallest valid root or cap crossing.

Frames: the scene frame is metric, x east, y north, z up, ground z = 0 (the sample's
world frame shifted by the prior position, see :mod:`cvloc.data.synthetic.generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Material(IntEnum):
    """Material of a primitive; selects its albedo function (:mod:`.materials`)."""

    WALL = 0  # building body: facade on the sides, flat roof on top
    ROOF = 1  # pitched roof (gable, hip, pyramid)
    ROOF_UNIT = 2  # rooftop plant room / AC unit
    CAR_BODY = 3
    CAR_CABIN = 4
    HEDGE = 5
    LOW_WALL = 6  # garden wall, fence, kiosk
    TRUNK = 7
    CANOPY = 8
    CONIFER = 9
    POLE = 10
    BUSH = 11


@dataclass
class Boxes:
    """Frustum boxes (see module docstring); all arrays have leading size N.

    Attributes:
        center: (N, 2) footprint centre, metres.
        angle: (N,) rotation of the local x axis, radians counter-clockwise from east.
        z0: (N,) bottom height. z1: (N,) top height (> z0).
        bottom: (N, 2) half extents (local x, y) at z0. top: (N, 2) half extents at z1.
        material: (N,) int, :class:`Material`.
        color: (N, 3) main albedo (facade, car paint). color2: (N, 3) second albedo (roof).
        params: (N, 4) material parameters (e.g. floor height, bay width, style, seed).
        normals: (N, 6, 3) outward plane normals, faces ordered +x, -x, +y, -y, top, bottom
            (local axes). offsets: (N, 6) plane offsets d, inside is n . x <= d.
        radius: (N,) radius of the footprint's bounding circle about ``center``.
        plain: (N,) bool, top == bottom (a right prism: vertical sides, flat top).
        corners: (N, 4, 2) footprint corners (of the larger of the bottom and top
            rectangles), counter-clockwise.
        normals_t: (3, 6 N) float64 plane normals, column 6 i + face (fast gathers).
        table_t: (14, N) float32 channel-first copies for per-hit gathers: color (0..2),
            color2 (3..5), params (6..9), bottom half extents (10, 11), z1 (12), angle (13).
        sweep_t: (6, N) footprint data for swept-region tests: local x axis (2), centre
            projections on the local x and y axes (2), footprint half extents (2).
    """

    center: np.ndarray
    angle: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    bottom: np.ndarray
    top: np.ndarray
    material: np.ndarray
    color: np.ndarray
    color2: np.ndarray
    params: np.ndarray
    normals: np.ndarray = field(init=False)
    offsets: np.ndarray = field(init=False)
    radius: np.ndarray = field(init=False)
    plain: np.ndarray = field(init=False)
    corners: np.ndarray = field(init=False)
    normals_t: np.ndarray = field(init=False)
    table_t: np.ndarray = field(init=False)
    sweep_t: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if np.any(self.top > self.bottom + 1e-9) or np.any(self.z1 <= self.z0):
            raise ValueError("frustum boxes must taper upwards (top <= bottom, z1 > z0)")
        self.normals, self.offsets = box_planes(
            self.center, self.angle, self.z0, self.z1, self.bottom, self.top
        )
        self.radius = np.linalg.norm(np.maximum(self.bottom, self.top), axis=1)
        self.plain = np.all(self.top == self.bottom, axis=1)
        half = np.maximum(self.bottom, self.top)
        signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
        lx, ly = signs[None, :, 0] * half[:, None, 0], signs[None, :, 1] * half[:, None, 1]
        ca, sa = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None]
        self.corners = np.stack(
            [
                self.center[:, None, 0] + ca * lx - sa * ly,
                self.center[:, None, 1] + sa * lx + ca * ly,
            ],
            axis=-1,
        )
        self.normals_t = self.normals.reshape(-1, 3).T.copy()
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        cx, cy = self.center.T
        self.sweep_t = np.stack(
            [ca, sa, ca * cx + sa * cy, ca * cy - sa * cx, *np.maximum(self.bottom, self.top).T]
        )
        self.table_t = np.concatenate(
            [
                self.color.T,
                self.color2.T,
                self.params.T,
                self.bottom.T,
                self.z1[None],
                self.angle[None],
            ]
        ).astype(np.float32)

    def __len__(self) -> int:
        return len(self.z0)


def box_planes(
    center: np.ndarray,
    angle: np.ndarray,
    z0: np.ndarray,
    z1: np.ndarray,
    bottom: np.ndarray,
    top: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Half-space planes of frustum boxes.

    Convention: scene frame (x east, y north, z up); local x axis at ``angle`` radians
    counter-clockwise from east; outward unit normals; a point x is inside iff
    n . x <= d for all six planes. Faces: +x, -x, +y, -y (sides, tilted inwards when the
    top is smaller than the bottom), top (z = z1), bottom (z = z0).

    Args:
        center: (N, 2) metres.
        angle: (N,) radians.
        z0: (N,) bottom heights.
        z1: (N,) top heights.
        bottom: (N, 2) half extents at z0.
        top: (N, 2) half extents at z1.

    Returns:
        normals: (N, 6, 3); offsets: (N, 6).
    """
    n = len(z0)
    ex = np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # N,2 local x axis
    ey = np.stack([-ex[:, 1], ex[:, 0]], axis=-1)
    dz = z1 - z0
    normals = np.zeros((n, 6, 3))
    offsets = np.zeros((n, 6))
    for axis, e in ((0, ex), (1, ey)):
        # In the (local axis, z) plane the side runs from (b, z0) to (t, z1).
        b, t = bottom[:, axis], top[:, axis]
        norm = np.hypot(dz, b - t)
        n_h, n_z = dz / norm, (b - t) / norm
        c_proj = np.sum(center * e, axis=1)
        for k, sign in ((2 * axis, 1.0), (2 * axis + 1, -1.0)):
            normals[:, k, :2] = sign * n_h[:, None] * e
            normals[:, k, 2] = n_z
            offsets[:, k] = n_h * (sign * c_proj + b) + n_z * z0
    normals[:, 4, 2], offsets[:, 4] = 1.0, z1
    normals[:, 5, 2], offsets[:, 5] = -1.0, -z0
    return normals, offsets


@dataclass
class Solids:
    """Convex solids of revolution about vertical axes; all arrays have leading size N.

    Attributes:
        center: (N, 2) axis position, metres.
        z0: (N,) bottom height. z1: (N,) top height.
        q: (N, 3) profile r(z)^2 = q0 + q1 z + q2 z^2 (absolute z, metres), concave or
            linear-squared so the solid is convex.
        material: (N,) int, :class:`Material`.
        color: (N, 3) albedo. color2: (N, 3) second albedo (e.g. highlights).
        params: (N, 4) material parameters.
        rmax: (N,) largest radius over [z0, z1].
        color_t: (3, N) float32 channel-first albedo (fast gathers).
        zref: (N,) reference height (z0 + z1) / 2.
        q_rel: (N, 3) the profile in z - zref (well conditioned in float32).
    """

    center: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    q: np.ndarray
    material: np.ndarray
    color: np.ndarray
    color2: np.ndarray
    params: np.ndarray
    rmax: np.ndarray = field(init=False)
    zref: np.ndarray = field(init=False)
    q_rel: np.ndarray = field(init=False)
    color_t: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.color_t = self.color.T.astype(np.float32)
        q0, q1, q2 = self.q.T
        zr = self.zref = (self.z0 + self.z1) / 2
        self.q_rel = np.stack([q0 + q1 * zr + q2 * zr * zr, q1 + 2 * q2 * zr, q2], axis=-1)
        zs = np.linspace(0.0, 1.0, 17)[None, :] * (self.z1 - self.z0)[:, None] + self.z0[:, None]
        r2 = self.q[:, :1] + self.q[:, 1:2] * zs + self.q[:, 2:3] * zs**2
        self.rmax = np.sqrt(np.maximum(r2.max(axis=1), 0.0)) * 1.02 + 1e-3

    def __len__(self) -> int:
        return len(self.z0)
