"""Per-scene style: layout type, palettes and densities, drawn from the area's distribution.

``area="same"`` and ``area="cross"`` are different distributions, as KITTI's and VIGOR's
same-area and cross-area splits are different parts of the world:

- ``same`` is mostly a dense European-like town (rotated street grid, perimeter blocks of
  4 to 9 storeys, flat gravel roofs, cream/ochre/brick facades, white dashed centre
  lines, few deciduous street trees), sometimes a suburb.
- ``cross`` is mostly a North-American-like suburb (curvy streets, T junctions, detached
  houses with gable or hip roofs in terracotta or shingle, pastel or wooden siding,
  lawns and driveways, many trees including conifers, double yellow centre lines),
  sometimes a town with that palette.

Both layouts occur in both areas, so a model trained on ``same`` is not hopeless on
``cross``, but the shift (layout mix, palettes, vegetation, markings) is real.
Albedos are linear RGB in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AREAS = ("same", "cross")


def _rgb(*values: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(values, np.float64)


PALETTES = {
    "same": {
        "facade": _rgb(
            (0.72, 0.64, 0.50),
            (0.62, 0.52, 0.40),
            (0.58, 0.58, 0.56),
            (0.78, 0.77, 0.74),
            (0.42, 0.19, 0.12),
            (0.68, 0.48, 0.24),
            (0.72, 0.52, 0.47),
            (0.56, 0.47, 0.33),
        ),
        "roof_flat": _rgb(
            (0.33, 0.33, 0.31), (0.17, 0.17, 0.18), (0.50, 0.50, 0.47), (0.28, 0.31, 0.26)
        ),
        "roof_pitched": _rgb((0.14, 0.14, 0.15), (0.33, 0.14, 0.09), (0.28, 0.28, 0.30)),
        "car": _rgb(
            (0.80, 0.80, 0.80),
            (0.03, 0.03, 0.03),
            (0.50, 0.51, 0.53),
            (0.22, 0.22, 0.23),
            (0.05, 0.09, 0.25),
            (0.50, 0.05, 0.04),
        ),
        "leaf": _rgb((0.13, 0.24, 0.06), (0.17, 0.27, 0.08), (0.11, 0.20, 0.07)),
        "asphalt": _rgb((0.10, 0.10, 0.10), (0.13, 0.13, 0.12)),
        "sidewalk": _rgb((0.42, 0.40, 0.37), (0.36, 0.33, 0.31)),
        "grass": _rgb((0.14, 0.25, 0.06), (0.17, 0.26, 0.08)),
        "paving": _rgb((0.46, 0.44, 0.40), (0.40, 0.37, 0.33)),
    },
    "cross": {
        "facade": _rgb(
            (0.80, 0.80, 0.78),
            (0.52, 0.62, 0.72),
            (0.58, 0.68, 0.52),
            (0.78, 0.70, 0.42),
            (0.45, 0.31, 0.18),
            (0.48, 0.21, 0.14),
            (0.43, 0.48, 0.53),
            (0.68, 0.58, 0.44),
        ),
        "roof_flat": _rgb((0.68, 0.68, 0.68), (0.14, 0.14, 0.14), (0.40, 0.40, 0.40)),
        "roof_pitched": _rgb(
            (0.52, 0.22, 0.11), (0.28, 0.20, 0.15), (0.33, 0.33, 0.33), (0.18, 0.27, 0.22)
        ),
        "car": _rgb(
            (0.82, 0.82, 0.80),
            (0.04, 0.04, 0.04),
            (0.55, 0.55, 0.57),
            (0.55, 0.48, 0.35),
            (0.70, 0.55, 0.05),
            (0.07, 0.22, 0.12),
            (0.35, 0.02, 0.03),
        ),
        "leaf": _rgb((0.10, 0.19, 0.07), (0.15, 0.24, 0.05), (0.26, 0.24, 0.07)),
        "asphalt": _rgb((0.17, 0.17, 0.16), (0.21, 0.21, 0.20)),
        "sidewalk": _rgb((0.55, 0.54, 0.51), (0.50, 0.50, 0.48)),
        "grass": _rgb((0.19, 0.29, 0.08), (0.23, 0.30, 0.10)),
        "paving": _rgb((0.56, 0.55, 0.52), (0.30, 0.30, 0.29)),
    },
}


@dataclass(frozen=True)
class Style:
    """Everything area-dependent about one scene.

    Attributes:
        area: ``"same"`` or ``"cross"``.
        layout: ``"town"`` or ``"suburb"``.
        palette: albedo tables (key -> (K, 3)), see :data:`PALETTES`.
        asphalt: (3,) road albedo. sidewalk: (3,) sidewalk albedo. grass: (3,) lawn albedo.
        paving: (3,) paved-area albedo. soil: (3,) bare-soil albedo.
        marking_yellow: whether centre lines are yellow (else white).
        sidewalk_m: sidewalk width. verge_m: grass strip between curb and sidewalk.
        tree_density: street/garden tree multiplier. conifer_frac: share of conifers.
        vegetation: share of unbuilt, unpaved ground that is grass rather than paving.
    """

    area: str
    layout: str
    palette: dict[str, np.ndarray]
    asphalt: np.ndarray
    sidewalk: np.ndarray
    grass: np.ndarray
    paving: np.ndarray
    soil: np.ndarray
    marking_yellow: bool
    sidewalk_m: float
    verge_m: float
    tree_density: float
    conifer_frac: float
    vegetation: float

    def pick(self, rng: np.random.Generator, key: str, n: int, jitter: float = 0.06) -> np.ndarray:
        """Palette colours with a small multiplicative jitter.

        Args:
            rng: random generator.
            key: palette key.
            n: how many colours.
            jitter: relative std of the per-channel jitter.

        Returns:
            (n, 3) albedos.
        """
        table = self.palette[key]
        base = table[rng.integers(len(table), size=n)]
        return np.clip(base * (1 + jitter * rng.standard_normal((n, 3))), 0.01, 0.95)


def sample_style(rng: np.random.Generator, area: str) -> Style:
    """Draw a scene style from an area's distribution.

    Args:
        rng: random generator.
        area: ``"same"`` or ``"cross"``.

    Returns:
        The style.
    """
    pal = PALETTES[area]
    town = rng.random() < (0.7 if area == "same" else 0.3)
    soil = np.array([0.30, 0.22, 0.15]) * rng.uniform(0.8, 1.1)
    return Style(
        area=area,
        layout="town" if town else "suburb",
        palette=pal,
        asphalt=pal["asphalt"][rng.integers(len(pal["asphalt"]))] * rng.uniform(0.9, 1.1),
        sidewalk=pal["sidewalk"][rng.integers(len(pal["sidewalk"]))],
        grass=pal["grass"][rng.integers(len(pal["grass"]))],
        paving=pal["paving"][rng.integers(len(pal["paving"]))],
        soil=soil,
        marking_yellow=bool(rng.random() < (0.1 if area == "same" else 0.6)),
        sidewalk_m=float(rng.uniform(2.5, 4.0) if town else rng.uniform(1.4, 2.0)),
        verge_m=float(0.0 if town else rng.uniform(0.8, 2.5)),
        tree_density=float(rng.uniform(0.4, 1.0) if area == "same" else rng.uniform(0.8, 1.5)),
        conifer_frac=float(0.05 if area == "same" else rng.uniform(0.2, 0.5)),
        vegetation=float(rng.uniform(0.2, 0.5) if town else rng.uniform(0.75, 0.95)),
    )
