"""Small helpers for procedural textures on channel-first colour arrays.

Per-point colours are stored channel first, (3, N) float32: numpy gathers and scatters
rows of a channel-first array with fast one-dimensional indexing, while fancy indexing of
(N, 3) arrays is several times slower. Coverage helpers anti-alias hard edges with the
pixel footprint ``fw`` (metres).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Gather along the last axis: (..., N) -> (..., M).

    Args:
        a: (..., N) array.
        idx: (M,) indices.

    Returns:
        (..., M).
    """
    return np.take(a, idx, axis=-1)


def put(out: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """Scatter along the last axis of a 2-D array: out[:, idx] = values, row by row.

    Args:
        out: (C, N) array, modified in place.
        idx: (M,) indices.
        values: (C, M) values.
    """
    for c in range(out.shape[0]):
        out[c][idx] = values[c]


def below(v: np.ndarray, threshold: np.ndarray | float, fw: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of v < threshold.

    Args:
        v: (N,) values (metres).
        threshold: (N,) or scalar threshold.
        fw: (N,) pixel footprint (metres).

    Returns:
        (N,) in [0, 1].
    """
    return np.clip((threshold - v) / fw + F32(0.5), 0.0, 1.0)


def line(d: np.ndarray, half_width: float | np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Coverage of a line of given half width at signed distance d.

    Args:
        d: (N,) signed distance to the line's centre (metres).
        half_width: half width (metres).
        fw: (N,) pixel footprint (metres).

    Returns:
        (N,) in [0, 1].
    """
    return below(np.abs(d), half_width, fw)


def dashes(s: np.ndarray, period: float, duty: float, fw: np.ndarray) -> np.ndarray:
    """Coverage of dashes of length period * duty repeating every period along s.

    Args:
        s: (N,) position along the dashes (metres).
        period: dash period (metres).
        duty: dash share of the period.
        fw: (N,) pixel footprint (metres).

    Returns:
        (N,) in [0, 1].
    """
    f = np.mod(s, F32(period))
    return np.clip(np.minimum(f, F32(period * duty) - f) / fw + F32(0.5), 0.0, 1.0)


def mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Blend colours a and b with weight w of b.

    Args:
        a: (3, N) or (3, 1) colours.
        b: (3, N) or (3, 1) colours.
        w: (N,) weights.

    Returns:
        (3, N).
    """
    return a + (b - a) * w


def tint(color: np.ndarray, *terms: np.ndarray) -> np.ndarray:
    """A colour scaled per point by 1 + sum(terms).

    Args:
        color: (3,) or (3, N) albedo.
        terms: (N,) relative variations.

    Returns:
        (3, N) float32.
    """
    total = terms[0] + F32(1.0)
    for t in terms[1:]:
        total += t
    c = np.asarray(color, F32)
    return (c[:, None] if c.ndim == 1 else c) * total


def column(color: np.ndarray) -> np.ndarray:
    """A (3,) colour as a float32 (3, 1) column that broadcasts against (3, N).

    Args:
        color: (3,) albedo.

    Returns:
        (3, 1).
    """
    return np.asarray(color, F32)[:, None]


def joints(
    u: np.ndarray, v: np.ndarray, period: float, strength: float, fw: np.ndarray
) -> np.ndarray:
    """Darkening by a square grid of thin joints (tiles, slabs), faded out when sub-pixel.

    Joint lines 4 cm wide every ``period`` metres along u and v; they fade out as the
    pixel footprint grows from a quarter to half of the period, where they could only
    alias.

    Args:
        u: (N,) first surface coordinate (metres).
        v: (N,) second surface coordinate (metres).
        period: joint spacing (metres).
        strength: darkening on a joint.
        fw: (N,) pixel footprint (metres).

    Returns:
        (N,) darkening in [0, 2 strength].
    """
    fade = np.clip(2.0 - 4.0 * fw / F32(period), 0.0, 1.0)
    out = np.zeros_like(fade)
    i = np.flatnonzero(fade > 0)
    if len(i):
        fi, p, h = np.take(fw, i), F32(period), F32(period / 2)
        d = line(np.mod(np.take(u, i), p) - h, 0.02, fi) + line(
            np.mod(np.take(v, i), p) - h, 0.02, fi
        )
        out[i] = F32(strength) * d * np.take(fade, i)
    return out
