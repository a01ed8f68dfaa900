"""Shared protocol helpers of the real-benchmark loaders.

Per-sample randomness from (seed, purpose, index, epoch) only (:func:`sample_rng`, never a
DataLoader worker's RNG, so a resumed epoch reproduces its samples), the HighlyAccurate
heading-frame prior parametrisation of KITTI and Ford (:func:`prior_from_heading_noise`
and its inverse), split-file parsing with line numbers, and validation hold-outs.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvloc.geometry.geo import world_xy_to_pixel
from cvloc.geometry.pose import wrap_deg as _wrap_deg

log = logging.getLogger(__name__)


class SplitFormatError(ValueError):
    """A split / label file has a malformed line (the message names file and line)."""


def sample_rng(seed: int, purpose: str, index: int, epoch: int = 0) -> np.random.Generator:
    """A random generator that depends on (seed, purpose, index, epoch) and nothing else.

    Args:
        seed: the dataset seed (>= 0).
        purpose: what the numbers are for (e.g. "kitti-train"), so that streams differ.
        index: the sample index (>= 0).
        epoch: the training epoch (0 for fixed validation / test noise).

    Returns:
        A NumPy generator.
    """
    # crc32, not hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(purpose.encode()), index, epoch])


def _heading_axes(yaw_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward and left unit vectors (..., 2) of compass headings in the world frame."""
    yaw = np.radians(yaw_deg)
    forward = np.stack([np.sin(yaw), np.cos(yaw)], axis=-1)
    left = np.stack([-np.cos(yaw), np.sin(yaw)], axis=-1)
    return forward, left


def prior_from_heading_noise(
    camera_xy_gt: np.ndarray,
    yaw_deg_gt: np.ndarray,
    noise: np.ndarray,
    shift_range_m: float = 20.0,
    yaw_range_deg: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The prior pose of a normalised HighlyAccurate-style noise (lon, lat, theta).

    Convention: world x east, y north (metres); compass yaw (degrees clockwise from north).
    With f_gt / l_gt the GT heading's forward / left unit vectors, R = ``shift_range_m`` and
    Y = ``yaw_range_deg``: GT = prior + lon R f_gt + lat R l_gt and yaw_gt = yaw_prior -
    theta Y (derived from the peer loader in ``docs/datasets.md``).

    Args:
        camera_xy_gt: (..., 2) GT camera position in metres.
        yaw_deg_gt: (...,) GT heading.
        noise: (..., 3) normalised (lon, lat, theta), nominally in [-1, 1].
        shift_range_m: metres per unit of lon and lat (KITTI / Ford: 20).
        yaw_range_deg: degrees per unit of theta (10; 180 for unknown orientation).

    Returns:
        prior_xy: (..., 2) metres; prior_yaw_deg: (...,) wrapped to (-180, 180].
    """
    noise = np.asarray(noise, dtype=np.float64)
    forward, left = _heading_axes(np.asarray(yaw_deg_gt, dtype=np.float64))
    offset = (noise[..., :1] * forward + noise[..., 1:2] * left) * shift_range_m
    prior_xy = np.asarray(camera_xy_gt, dtype=np.float64) - offset
    return prior_xy, wrap_deg(np.asarray(yaw_deg_gt) + noise[..., 2] * yaw_range_deg)


def heading_noise_from_pose(
    camera_xy: np.ndarray,
    yaw_deg: np.ndarray,
    prior_xy: np.ndarray,
    prior_yaw_deg: np.ndarray,
    yaw_deg_gt: np.ndarray,
    shift_range_m: float = 20.0,
    yaw_range_deg: float = 10.0,
) -> np.ndarray:
    """Normalised (lon, lat, theta) of a pose relative to the prior, in the GT heading frame.

    Convention: inverse of :func:`prior_from_heading_noise` for the GT pose; for any other
    pose (a prediction) the same per-sample axes (the GT heading's) are used, so that the
    protocol's errors |d lon| * R and |d lat| * R are exactly the longitudinal and lateral
    errors of :func:`cvloc.metrics.localization_errors`.

    Args:
        camera_xy: (..., 2) the pose's camera position in metres.
        yaw_deg: (...,) the pose's heading.
        prior_xy: (..., 2) the prior position.
        prior_yaw_deg: (...,) the prior heading.
        yaw_deg_gt: (...,) the GT heading (defines the axes).
        shift_range_m: metres per unit of lon and lat (KITTI / Ford: 20).
        yaw_range_deg: degrees per unit of theta (10; 180 for unknown orientation).

    Returns:
        (..., 3) float64 (lon, lat, theta).
    """
    forward, left = _heading_axes(np.asarray(yaw_deg_gt, dtype=np.float64))
    d = np.asarray(camera_xy, dtype=np.float64) - np.asarray(prior_xy, dtype=np.float64)
    lon = (d * forward).sum(-1) / shift_range_m
    lat = (d * left).sum(-1) / shift_range_m
    theta = wrap_deg(np.asarray(prior_yaw_deg) - np.asarray(yaw_deg)) / yaw_range_deg
    return np.stack([lon, lat, theta], axis=-1)


def wrap_deg(angle_deg: np.ndarray | float) -> np.ndarray:
    """(...,) float64 angles wrapped to (-180, 180] (:func:`cvloc.geometry.pose.wrap_deg`).

    Args:
        angle_deg: (...,) degrees.
    """
    return _wrap_deg(torch.as_tensor(np.asarray(angle_deg, dtype=np.float64))).numpy()


def xy_to_uv(xy: np.ndarray, center_uv: np.ndarray, m_per_px: float) -> np.ndarray:
    """(..., 2) float64 satellite pixels of world points.

    Convention: :func:`cvloc.geometry.geo.world_xy_to_pixel`: u = cu + x / m, v = cv - y / m.

    Args:
        xy: (..., 2) metres.
        center_uv: (2,) the world origin's pixel.
        m_per_px: metres per pixel.
    """
    xy_t = torch.as_tensor(np.asarray(xy, dtype=np.float64))
    c = torch.as_tensor(np.asarray(center_uv, dtype=np.float64))
    return world_xy_to_pixel(xy_t, c, m_per_px).numpy()


def read_split_lines(path: str | os.PathLike, what: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank line of a split file.

    Args:
        path: the file.
        what: what the file is, for the error messages (FileNotFoundError when missing,
            :class:`SplitFormatError` when not UTF-8 text).

    Returns:
        The lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected: {what})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SplitFormatError(f"{path}: not UTF-8 text ({exc}); expected: {what}") from exc
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def parse_floats(fields: list[str], path: Path, line_no: int, what: str) -> list[float]:
    """The finite floats of a split line, or :class:`SplitFormatError` naming the line.

    Args:
        fields: the text fields.
        path: the split file (for the message).
        line_no: the 1-based line number (for the message).
        what: the expected line format (for the message).
    """
    try:
        values = [float(f) for f in fields]
    except ValueError:
        values = [float("nan")]
    if not np.all(np.isfinite(values)):
        raise SplitFormatError(f"{path}:{line_no}: expected {what}, got {' '.join(fields)!r}")
    return values


def tail_fraction(names: list[str], fraction: float, group_of: Any) -> set[str]:
    """The held-out names: the last ``fraction`` (rounded up) of every group, sorted.

    A stretch at the end of each sequence leaks less into validation than random frames,
    whose neighbours would stay in training.

    Args:
        names: the training names.
        fraction: the share held out, in [0, 1).
        group_of: maps a name to its group (a drive, a log).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of(name), []).append(name)
    held_out: set[str] = set()
    for members in groups.values():
        k = math.ceil(fraction * len(members))
        held_out.update(sorted(members)[len(members) - k :])
    return held_out
