"""The figure of ``cvloc localize``: the pose on the satellite and the matches that made it.

Top: the ground image; bottom: the satellite image with the predicted pose (red), its
1-sigma position ellipse, the prior (orange, dashed; a dot without a heading) and its
search square. The strongest correspondences, spread over the ground image, are lines
from their ground pixel to their satellite pixel, coloured by score.

As :mod:`cvloc.viz` (whose helpers this reuses), figures use the Agg canvas and change no
global matplotlib state. Convention: input-image pixels, integer pixel centres; satellite
north-up (u east, v south); headings clockwise from north.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch, Ellipse
from PIL import Image

from cvloc.localize_result import ellipse_1sigma
from cvloc.viz import PRIOR_COLOR, draw_image, draw_pose, draw_search_region

PRED_COLOR = "#ff1744"
SCORE_CMAP = "viridis"
POSE_ZORDER = 5
GRID = (16, 6)  # ground-image cells (columns, rows) that each keep their best match


def strongest_spread(
    ground_uv: np.ndarray, scores: np.ndarray, size_wh: tuple[int, int], max_matches: int
) -> np.ndarray:
    """Indices of strong matches spread over the ground image, strongest first.

    The image is cut into :data:`GRID` cells; each keeps its best-scoring match, and the
    ``max_matches`` best of those are returned, so a few textured spots cannot take all.

    Args:
        ground_uv: (N, 2) ground pixels.
        scores: (N,) scores.
        size_wh: (W, H) of the ground image.
        max_matches: the most indices returned.

    Returns:
        (M,) indices, M <= max_matches.
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=int)
    cols = np.clip((ground_uv[:, 0] + 0.5) / size_wh[0] * GRID[0], 0, GRID[0] - 1).astype(int)
    rows = np.clip((ground_uv[:, 1] + 0.5) / size_wh[1] * GRID[1], 0, GRID[1] - 1).astype(int)
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique((rows * GRID[0] + cols)[order], return_index=True)
    best = order[first]
    return best[np.argsort(-scores[best], kind="stable")][:max_matches]


def localization_figure(result: Any, max_matches: int = 60) -> Figure:
    """Draw a :class:`cvloc.localize_result.LocalizationResult` (with its images).

    Args:
        result: the result; ``ground_image`` and ``satellite_image`` must be set.
        max_matches: the most correspondences drawn as lines.

    Returns:
        The figure (Agg canvas attached).
    """
    ground, sat = result.ground_image, result.satellite_image
    (hg, wg), (hs, ws) = ground.shape[:2], sat.shape[:2]
    width_in = 8.0
    # Rows: ground (full width), satellite (centred, 60 % of the width), then the text,
    # legend and colour bar, below everything the lines cross.
    heights = [width_in * hg / wg + 0.3, 0.6 * width_in * hs / ws + 0.3, 1.0]
    fig = Figure(figsize=(width_in, sum(heights)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 3, height_ratios=heights, width_ratios=[0.42, 0.28, 0.3])
    ax_g, ax_s = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :])
    ax_text, ax_legend, ax_bar = (fig.add_subplot(grid[2, i]) for i in range(3))
    keep = strongest_spread(result.ground_uv, result.scores, (wg, hg), max_matches)
    n = len(result.scores)
    title = f"ground {wg}x{hg}: the {len(keep)} strongest of {n} correspondences"
    draw_image(ax_g, ground.transpose(2, 0, 1) / 255.0, title)
    draw_image(ax_s, sat.transpose(2, 0, 1) / 255.0, f"satellite {ws}x{hs}, north up")
    before = set(ax_s.get_children())
    _draw_prior_and_pose(ax_s, result)
    for artist in set(ax_s.get_children()) - before:
        artist.set_zorder(POSE_ZORDER)  # above the matches
    _zoom_to_search(ax_s, result, (ws, hs))
    cmap = ScalarMappable(Normalize(0.0, 1.0), SCORE_CMAP)
    for i in keep[::-1]:  # weakest first, so the strongest lines end on top
        color = cmap.to_rgba(result.scores[i])
        line = ConnectionPatch(
            xyA=tuple(result.ground_uv[i]), coordsA=ax_g.transData,
            xyB=tuple(result.sat_uv[i]), coordsB=ax_s.transData,
            color=color, linewidth=0.8, alpha=0.85, zorder=2, clip_on=False, in_layout=False,
        )  # fmt: skip
        ax_s.add_artist(line)  # drawn with the satellite axes, under the poses (zorder)
        ax_g.plot(*result.ground_uv[i], "o", ms=2.5, color=color, mec="black", mew=0.3)
        ax_s.plot(*result.sat_uv[i], "o", ms=2.5, color=color, mec="black", mew=0.3)
    for ax in (ax_text, ax_legend, ax_bar):
        ax.set_axis_off()
    # Out of the layout: a long checkpoint path must not squeeze the images.
    ax_text.text(0.0, 1.0, _summary(result), va="top", fontsize=7.5, family="monospace",
                 in_layout=False)  # fmt: skip
    ax_legend.legend(*ax_s.get_legend_handles_labels(), loc="upper left", fontsize=7.5)
    bar = fig.colorbar(
        cmap, cax=ax_bar.inset_axes((0.0, 0.7, 1.0, 0.15)), orientation="horizontal"
    )
    bar.set_label("correspondence score", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def save_visualization(result: Any, path: str | os.PathLike, max_matches: int = 60) -> Path:
    """Write :func:`localization_figure` as a PNG.

    Args:
        result: the result, with its images.
        path: the PNG file.
        max_matches: the most correspondences drawn.

    Returns:
        The path.
    """
    path = Path(path)
    fig = localization_figure(result, max_matches)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    # A 256-colour palette: a third of the RGB size (photos compress poorly); the octree keeps
    # small saturated marks (the red pose) that a median cut merges away.
    palette = Image.fromarray(rgb).quantize(
        256, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    palette.save(path, optimize=True)
    return path


def _draw_prior_and_pose(ax: Any, result: Any) -> None:
    """Prior, search square, 1-sigma ellipse and predicted pose on the satellite axes."""
    inputs = result.inputs
    m = inputs["m_per_px"]
    prior_uv, prior_yaw = inputs["prior"]["uv"], inputs["prior"]["yaw_deg"]
    radius_px = inputs["search_radius_m"] / m
    arrow_px = 0.5 * radius_px
    draw_search_region(ax, prior_uv, radius_px, 0.0, 0.0)
    if prior_yaw is None:
        ax.plot(*prior_uv, "o", color=PRIOR_COLOR, ms=6, mec="black", label="prior (any heading)")
    else:
        draw_pose(ax, prior_uv, prior_yaw, PRIOR_COLOR, arrow_px, "--", "prior")
    ax.plot(
        [], [], "--", color=PRIOR_COLOR, label=f"search region +-{inputs['search_radius_m']:.1f} m"
    )
    if result.covariance_m2 is not None:
        flip = np.diag([1.0, -1.0])  # x east, y north -> u east, v south
        values, vectors = np.linalg.eigh(flip @ result.covariance_m2 @ flip / m**2)
        angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
        width, height = 2 * np.sqrt(np.maximum(values[::-1], 0.0))
        ellipse = Ellipse(tuple(result.camera_uv), width, height, angle=angle, fill=False)
        ellipse.set(edgecolor=PRED_COLOR, linewidth=1.5, label="1-sigma position")
        ax.add_patch(ellipse)
    draw_pose(ax, result.camera_uv, result.yaw_deg, PRED_COLOR, arrow_px, "-", "prediction")


def _zoom_to_search(ax: Any, result: Any, size_wh: tuple[int, int]) -> None:
    """Show the search square, the pose and the drawn matches, not the whole tile."""
    inputs = result.inputs
    r = inputs["search_radius_m"] / inputs["m_per_px"]
    corners = np.asarray(inputs["prior"]["uv"]) + np.array([[-r, -r], [r, r]])
    points = np.concatenate([corners, result.camera_uv[None], result.sat_uv[:200]])
    lo, hi = points.min(0), points.max(0)
    margin = 0.08 * (hi - lo).max()
    lo = np.maximum(lo - margin, -0.5)
    hi = np.minimum(hi + margin, np.array(size_wh) - 0.5)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])  # v grows downwards


def _summary(result: Any) -> str:
    """The pose and its quality as a few lines of text."""
    lines = [
        f"method      {Path(result.inputs['method']).name}",
        f"camera uv   {result.camera_uv[0]:.1f}, {result.camera_uv[1]:.1f} px",
        f"camera xy   {result.camera_xy_m[0]:+.2f} E, {result.camera_xy_m[1]:+.2f} N m",
        f"yaw         {result.yaw_deg:.1f} deg",
    ]
    if result.latlon is not None:
        lines.append(f"lat, lon    {result.latlon[0]:.6f}, {result.latlon[1]:.6f}")
    lines.append(f"confidence  {result.confidence:.2f}")
    lines.append(f"matches     {result.num_confident_matches} confident / {len(result.scores)}")
    if result.covariance_m2 is not None:
        major, minor, _ = ellipse_1sigma(result.covariance_m2)
        lines.append(f"1-sigma     {major:.2f} x {minor:.2f} m, {result.yaw_std_deg:.2f} deg")
    return "\n".join(lines)
