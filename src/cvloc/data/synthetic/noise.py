"""Deterministic randomness for the synthetic world: seed hashing and procedural noise.

Seeds are derived by hashing a tuple of labelled parts (BLAKE2b), so different purposes
(scene layout, camera placement, prior noise, appearance) and different namespaces
(seed, split, area, index, epoch) can never collide the way ``seed + index`` would.

Noise is evaluated at arbitrary surface points, so both views see exactly the same
texture at the same 3-D point. Instead of hashing a lattice per query (slow in numpy),
a few channels of tileable fractal value noise are built once per process (a 256 x 256
table, about 1 ms) and sampled bilinearly with wrap-around; different scales, offsets and
channels give decorrelated patterns.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

NOISE_SIZE = 256
NOISE_CHANNELS = 4


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends on every part and on nothing else.

    Args:
        parts: labelled values (strings, ints); their ``repr`` is hashed (numpy scalars
            as the equal python value, so np.int64(3) and 3 give the same seed).

    Returns:
        A non-negative int usable by ``np.random.default_rng``.
    """
    text = "\x1f".join(repr(p.item() if isinstance(p, np.generic) else p) for p in parts)
    text = text.encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@functools.lru_cache(maxsize=1)
def noise_table() -> np.ndarray:
    """Tileable fractal value noise, normalised to zero mean and unit std per channel.

    Returns:
        (NOISE_CHANNELS, NOISE_SIZE, NOISE_SIZE) float32; read-only.
    """
    rng = np.random.default_rng(20240611)
    n = NOISE_SIZE
    out = np.zeros((NOISE_CHANNELS, n, n), np.float32)
    for cells in (4, 8, 16, 32, 64, 128, 256):
        lattice = rng.standard_normal((NOISE_CHANNELS, cells, cells)).astype(np.float32)
        pos = (np.arange(n, dtype=np.float32) + 0.5) * cells / n - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible lattice creases
        i0 %= cells
        i1 = (i0 + 1) % cells
        rows = lattice[:, i0] * (1 - f)[None, :, None] + lattice[:, i1] * f[None, :, None]
        up = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i1] * f[None, None, :]
        out += up * (cells**-0.5)  # 1/f^0.5 spectrum: soft but detailed
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True)
    out.setflags(write=False)
    return out


def noise(x: np.ndarray, y: np.ndarray, scale_m: float, channel: int = 0) -> np.ndarray:
    """Sample the noise table bilinearly at metric coordinates.

    Convention: one table period spans ``scale_m * NOISE_SIZE / 8`` metres, so features
    are about ``scale_m`` metres large; the table wraps around.

    Args:
        x: (*,) first coordinate in metres (any planar parametrisation).
        y: (*,) second coordinate in metres, same shape as ``x``.
        scale_m: feature size in metres.
        channel: which independent noise channel, in [0, NOISE_CHANNELS).

    Returns:
        (*,) float32 noise, about zero mean and unit std.
    """
    table = noise_table()[channel].reshape(-1)
    k = np.float32(8.0 / scale_m)
    fx = np.asarray(x, np.float32) * k
    fy = np.asarray(y, np.float32) * k
    x0, y0 = np.floor(fx), np.floor(fy)
    tx, ty = fx - x0, fy - y0
    mask = NOISE_SIZE - 1
    ix = x0.astype(np.int32) & mask
    iy = (y0.astype(np.int32) & mask) << 8
    ix1 = (ix + 1) & mask
    iy1 = (iy + NOISE_SIZE) & (mask << 8)
    top = table[iy + ix]
    top += (table[iy + ix1] - top) * tx
    bottom = table[iy1 + ix]
    bottom += (table[iy1 + ix1] - bottom) * tx
    top += (bottom - top) * ty
    return top


def cell_random(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) value per integer cell (a stateless integer hash).

    Args:
        ix: (*,) integer cell coordinates.
        iy: (*,) integer cell coordinates, same shape.
        salt: decorrelates different uses.

    Returns:
        (*,) float32 in [0, 1).
    """
    h = np.asarray(ix, np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)
    h ^= np.asarray(iy, np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)
    h ^= np.uint32((salt * 0xC2B2AE3D) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def noise_nearest(x: np.ndarray, y: np.ndarray, scale_m: float, channel: int = 0) -> np.ndarray:
    """:func:`noise` sampled at the nearest table entry (one gather instead of four).

    Good enough for fine detail: a table entry spans scale_m / 8 metres, below a pixel
    wherever the detail is not faded out.

    Args:
        x: (*,) first coordinate in metres.
        y: (*,) second coordinate in metres, same shape as ``x``.
        scale_m: feature size in metres.
        channel: which independent noise channel.

    Returns:
        (*,) float32.
    """
    k = np.float32(8.0 / scale_m)
    mask = NOISE_SIZE - 1
    ix = (np.asarray(x, np.float32) * k).astype(np.intp) & mask
    iy = (np.asarray(y, np.float32) * k).astype(np.intp) & mask
    return np.take(noise_table()[channel].reshape(-1), (iy << 8) | ix)


def detail(
    x: np.ndarray, y: np.ndarray, scale_m: float, channel: int, fw: np.ndarray
) -> np.ndarray:
    """Band-limited :func:`noise`: faded out where a pixel is larger than the features.

    Sub-pixel texture averages out in a real image; fading it with the pixel footprint
    ``fw`` (full amplitude for fw <= scale / 2, zero for fw >= scale) is the cheap
    pre-filter, and skips the evaluation where the noise would vanish anyway. Scales
    below 0.5 m use :func:`noise_nearest`.

    Args:
        x: (N,) first coordinate in metres.
        y: (N,) second coordinate in metres.
        scale_m: feature size in metres.
        channel: noise channel.
        fw: (N,) pixel footprint in metres.

    Returns:
        (N,) float32.
    """
    sample = noise_nearest if scale_m < 0.5 else noise
    att = np.clip(2.0 - 2.0 * np.asarray(fw, np.float32) / np.float32(scale_m), 0.0, 1.0)
    i = np.flatnonzero(att > 0)
    if len(i) == len(att):
        return sample(x, y, scale_m, channel) * att
    out = np.zeros(len(att), np.float32)
    if len(i):
        out[i] = sample(np.take(x, i), np.take(y, i), scale_m, channel) * np.take(att, i)
    return out
