"""Batch construction of scene primitives.

Layout code adds primitives in batches (K buildings, K trees at once), each argument a
per-item array or a shared value; :meth:`PrimitiveBuilder.build` concatenates them into
the structure-of-arrays :class:`.primitives.Boxes` and :class:`.primitives.Solids`.
"""

from __future__ import annotations

import numpy as np

from cvloc.data.synthetic.primitives import Boxes, Material, Solids


def _batch(value: object, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """A scalar or per-item value as a (k, *shape) float64 array (a broadcast view)."""
    a = np.asarray(value, np.float64)
    return a if a.shape == (k, *shape) else np.broadcast_to(a, (k, *shape))


class PrimitiveBuilder:
    """Collects batches of primitives, then freezes them into :class:`Boxes`/:class:`Solids`.

    Every method takes K items at once; each argument is a per-item array with leading
    size K or a value shared by all items.
    """

    def __init__(self) -> None:
        self._boxes: list[dict[str, np.ndarray]] = []
        self._solids: list[dict[str, np.ndarray]] = []

    def boxes(
        self,
        center: np.ndarray,
        angle: np.ndarray | float,
        z0: np.ndarray | float,
        z1: np.ndarray | float,
        bottom: np.ndarray,
        material: Material,
        color: np.ndarray,
        top: np.ndarray | None = None,
        color2: np.ndarray | None = None,
        params: np.ndarray | None = None,
    ) -> None:
        """Add K frustum boxes (plain boxes when ``top`` is None).

        Convention: scene frame (x east, y north, z up), metres; ``angle`` turns the
        local x axis counter-clockwise from east.

        Args:
            center: (K, 2) footprint centres, metres.
            angle: (K,) local x axes, radians counter-clockwise from east.
            z0: (K,) bottom heights, metres.
            z1: (K,) top heights, metres.
            bottom: (K, 2) half extents (local x, y) at z0.
            material: the material of all K.
            color: (K, 3) or (3,) albedo in [0, 1].
            top: (K, 2) half extents at z1 (defaults to ``bottom``).
            color2: (K, 3) or (3,) second albedo (defaults to ``color``).
            params: (K, 4) or (4,) material parameters (defaults to zeros).
        """
        k = len(np.atleast_2d(np.asarray(center)))
        self._boxes.append(
            {
                "center": _batch(center, k, (2,)),
                "angle": _batch(angle, k, ()),
                "z0": _batch(z0, k, ()),
                "z1": _batch(z1, k, ()),
                "bottom": _batch(bottom, k, (2,)),
                "top": _batch(bottom if top is None else top, k, (2,)),
                "material": np.full(k, int(material)),
                "color": _batch(color, k, (3,)),
                "color2": _batch(color if color2 is None else color2, k, (3,)),
                "params": _batch(0.0 if params is None else params, k, (4,)),
            }
        )

    def solids(
        self,
        center: np.ndarray,
        z0: np.ndarray | float,
        z1: np.ndarray | float,
        q: np.ndarray,
        material: Material,
        color: np.ndarray,
        color2: np.ndarray | None = None,
    ) -> None:
        """Add K solids of revolution with r(z)^2 = q0 + q1 z + q2 z^2 on [z0, z1].

        Convention: scene frame, metres; vertical axes; z absolute (ground z = 0).

        Args:
            center: (K, 2) axis positions, metres.
            z0: (K,) bottom heights.
            z1: (K,) top heights.
            q: (K, 3) profile coefficients (absolute z).
            material: the material of all K.
            color: (K, 3) or (3,) albedo.
            color2: (K, 3) or (3,) second albedo (defaults to ``color``).
        """
        k = len(np.atleast_2d(np.asarray(center)))
        self._solids.append(
            {
                "center": _batch(center, k, (2,)),
                "z0": _batch(z0, k, ()),
                "z1": _batch(z1, k, ()),
                "q": _batch(q, k, (3,)),
                "material": np.full(k, int(material)),
                "color": _batch(color, k, (3,)),
                "color2": _batch(color if color2 is None else color2, k, (3,)),
                "params": np.zeros((k, 4)),
            }
        )

    def cylinders(self, center, z0, z1, r0, r1, material: Material, color) -> None:
        """Add K (truncated) cones, radius r0 at z0 and r1 at z1 (cylinders if equal).

        Convention: scene frame, metres; vertical axes.

        Args:
            center: (K, 2) axis positions.
            z0: (K,) bottom heights.
            z1: (K,) top heights (> z0).
            r0: (K,) radii at z0.
            r1: (K,) radii at z1.
            material: the material.
            color: (K, 3) or (3,) albedo.
        """
        z0, z1, r0, r1 = (np.asarray(v, np.float64) for v in (z0, z1, r0, r1))
        k = (r1 - r0) / (z1 - z0)  # r(z) = a + k z
        a = r0 - k * z0
        q = np.stack(np.broadcast_arrays(a * a, 2 * a * k, k * k), axis=-1)
        self.solids(center, z0, z1, q, material, color)

    def spheroids(self, center, zc, radius, half_height, material: Material, color) -> None:
        """Add K spheroids (horizontal ``radius``, vertical ``half_height``) centred at zc.

        Convention: scene frame, metres; vertical axes.

        Args:
            center: (K, 2) axis positions.
            zc: (K,) heights of the centres.
            radius: (K,) horizontal radii.
            half_height: (K,) vertical semi-axes.
            material: the material.
            color: (K, 3) or (3,) albedo.
        """
        zc, radius, half = (np.asarray(v, np.float64) for v in (zc, radius, half_height))
        k = (radius / half) ** 2  # r^2 = R^2 - k (z - zc)^2
        q = np.stack(np.broadcast_arrays(radius**2 - k * zc * zc, 2 * k * zc, -k), axis=-1)
        self.solids(center, zc - half, zc + half, q, material, color)

    def build(self) -> tuple[Boxes, Solids]:
        """Freeze the collected primitives.

        Returns:
            The boxes and the solids.
        """
        return Boxes(**_concat(self._boxes, _BOX_KEYS)), Solids(
            **_concat(self._solids, _SOLID_KEYS)
        )


_BOX_KEYS = {
    "center": (2,),
    "angle": (),
    "z0": (),
    "z1": (),
    "bottom": (2,),
    "top": (2,),
    "material": (),
    "color": (3,),
    "color2": (3,),
    "params": (4,),
}
_SOLID_KEYS = {
    "center": (2,),
    "z0": (),
    "z1": (),
    "q": (3,),
    "material": (),
    "color": (3,),
    "color2": (3,),
    "params": (4,),
}


def _concat(parts: list[dict[str, np.ndarray]], keys: dict[str, tuple]) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in keys.items():
        arrays = [p[name] for p in parts]
        out[name] = np.concatenate(arrays) if arrays else np.zeros((0, *shape))
    out["material"] = out["material"].astype(np.int64)
    return out
