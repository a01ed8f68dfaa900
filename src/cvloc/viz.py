"""Figures: drawing helpers and pair previews (prediction figures: :mod:`cvloc.viz_prediction`).

Every function draws on a :class:`matplotlib.axes.Axes` or builds a
:class:`matplotlib.figure.Figure` rendered with the Agg canvas, so importing this module
changes no global matplotlib state (no ``pyplot``, no ``matplotlib.use``).

Conventions (``docs/conventions.md``): images are shown with integer pixel centres
(``imshow``'s default extent), satellite images north-up with u east and v south, and
headings are compass degrees clockwise from north: forward = (sin yaw, -cos yaw) in (u, v).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon, Wedge
from PIL import Image

from cvloc.data.pairs import pair_to_item
from cvloc.geometry import panorama_uv_to_angles, pixel_to_world_xy, wrap_deg

GT_COLOR = "#00e676"
PRIOR_COLOR = "#ff9100"


def to_image(chw: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (3, H, W) float image in [0, 1] (tensor or array) as (H, W, 3) for ``imshow``.

    Args:
        chw: (3, H, W) image.

    Returns:
        (H, W, 3) float array clipped to [0, 1].
    """
    arr = chw.detach().cpu().numpy() if isinstance(chw, torch.Tensor) else np.asarray(chw)
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def draw_image(ax: Axes, chw: torch.Tensor | np.ndarray, title: str = "") -> None:
    """Show an image with pixel centres at integer (u, v) and no axis ticks.

    Args:
        ax: target axes.
        chw: (3, H, W) image in [0, 1].
        title: axes title.
    """
    ax.imshow(to_image(chw))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_pose(
    ax: Axes,
    uv: Any,
    yaw_deg: float,
    color: str = GT_COLOR,
    length_px: float = 30.0,
    linestyle: str = "-",
    label: str | None = None,
) -> None:
    """Draw a 3-DoF pose on a satellite image: a dot at the position and a heading arrow.

    Convention: satellite pixels (u east, v south); forward = (sin yaw, -cos yaw).

    Args:
        ax: axes showing the satellite image.
        uv: (2,) camera position in satellite pixels.
        yaw_deg: heading, degrees clockwise from north.
        color: colour of dot and arrow.
        length_px: arrow length in satellite pixels.
        linestyle: arrow shaft style (e.g. ``"--"`` for a prior).
        label: legend label (attached to the dot).
    """
    u, v = (float(x) for x in uv)
    yaw = np.deg2rad(float(yaw_deg))
    tip = (u + length_px * np.sin(yaw), v - length_px * np.cos(yaw))
    ax.annotate(
        "",
        xy=tip,
        xytext=(u, v),
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2.0, "linestyle": linestyle},
    )
    ax.plot([u], [v], "o", color=color, markersize=6, markeredgecolor="black", label=label)


def draw_search_region(
    ax: Axes,
    uv: Any,
    half_width_px: float,
    yaw_deg: float,
    yaw_range_deg: float,
    frame_yaw_deg: float = 0.0,
    color: str = PRIOR_COLOR,
    radius_px: float = 30.0,
) -> None:
    """Draw the region a method searches: a position square and a heading wedge.

    Convention: satellite pixels (u east, v south). The square has half-width
    ``half_width_px`` along the axes of a frame rotated by ``frame_yaw_deg`` (0: north-up
    axes, as VIGOR's offsets; the prior heading: longitudinal / lateral, as KITTI's). The
    wedge spans yaw +- yaw_range_deg around the prior heading (a full disc at 180).

    Args:
        ax: axes showing the satellite image.
        uv: (2,) prior position in satellite pixels.
        half_width_px: half-width of the position square in pixels (0 draws none).
        yaw_deg: prior heading, degrees clockwise from north.
        yaw_range_deg: half-width of the heading range in degrees (0 draws none).
        frame_yaw_deg: heading of the square's "forward" axis, degrees clockwise from north.
        color: outline and fill colour.
        radius_px: wedge radius in pixels.
    """
    centre = np.array([float(x) for x in uv])
    if half_width_px > 0:
        a = np.deg2rad(float(frame_yaw_deg))
        forward = np.array([np.sin(a), -np.cos(a)]) * half_width_px
        right = np.array([np.cos(a), np.sin(a)]) * half_width_px
        corners = [centre + forward + right, centre + forward - right]
        corners += [centre - forward - right, centre - forward + right]
        square = Polygon(corners, closed=True, fill=False)
        square.set(edgecolor=color, linestyle="--", linewidth=1.5)
        ax.add_patch(square)
    if yaw_range_deg > 0:
        # In (u, v) data coordinates the heading direction sits at angle yaw - 90 from +u.
        mid = float(yaw_deg) - 90.0
        span = min(float(yaw_range_deg), 180.0)
        wedge = Wedge(tuple(centre), radius_px, mid - span, mid + span, alpha=0.25)
        wedge.set(facecolor=color, edgecolor=color)
        ax.add_patch(wedge)


def draw_points(
    ax: Axes,
    uv: np.ndarray,
    values: np.ndarray,
    cmap: str | Colormap,
    norm: Normalize,
    size: float = 2.0,
) -> Any:
    """Scatter colour-coded points without changing the axes limits.

    Args:
        ax: target axes.
        uv: (N, 2) pixel coordinates.
        values: (N,) values mapped to colours.
        cmap: colormap.
        norm: value normalisation.
        size: marker area in points^2.

    Returns:
        The scatter artist (for a colorbar).
    """
    limits = ax.get_xlim(), ax.get_ylim()
    artist = ax.scatter(
        uv[:, 0], uv[:, 1], c=values, cmap=cmap, norm=norm, s=size, linewidths=0, alpha=0.8
    )
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    return artist


def item_correspondences(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The sparse correspondences stored densely in an item's ``gt_sat_uv_grd``.

    Args:
        item: a dataset item; without ``gt_sat_uv_grd`` (Hg, Wg, 2) it has none.

    Returns:
        ground_uv: (N, 2) ground pixel centres in row-major order; sat_uv: (N, 2)
        satellite pixels.
    """
    if "gt_sat_uv_grd" not in item:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    dense = item["gt_sat_uv_grd"].detach().cpu().numpy()
    v, u = np.nonzero(np.isfinite(dense).all(axis=-1))
    return np.stack([u, v], axis=-1).astype(np.float32), dense[v, u]


def ground_azimuth_deg(
    item: dict[str, Any], ground_uv: np.ndarray
) -> tuple[np.ndarray, tuple[float, float]]:
    """Horizontal angle of ground pixels relative to the heading, and its display range.

    Convention: degrees clockwise from the optical axis seen from above (right is
    positive). Pinhole: atan((u - cx) / fx), ignoring skew; panorama: the column's
    azimuth phi = ((u + 0.5) / W) 360 - 180.

    Args:
        item: a dataset item (``camera_model``, ``K``, ``ground``).
        ground_uv: (N, 2) ground pixels.

    Returns:
        azimuth: (N,) degrees; (lo, hi): the azimuths of the image's left and right edges.
    """
    h, w = item["ground"].shape[-2:]
    if item["camera_model"] == "panorama":
        uv = torch.from_numpy(ground_uv)
        return panorama_uv_to_angles(uv, w, h)[0].numpy(), (-180.0, 180.0)
    K = item["K"].detach().cpu().numpy()

    def angle(u: np.ndarray) -> np.ndarray:
        return np.rad2deg(np.arctan((u - K[0, 2]) / K[0, 0]))

    edges = angle(np.array([-0.5, w - 0.5]))
    return angle(ground_uv[:, 0]), (float(edges[0]), float(edges[1]))


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` points, fixed by ``seed``, in order.

    Args:
        n: number of points.
        max_points: the most to keep.
        seed: RNG seed (the same figure every time).

    Returns:
        (M,) sorted indices, M = min(n, max_points).
    """
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def pair_preview_figure(item_or_pair: Any, max_points: int = 3000) -> Figure:
    """Preview one pair: ground image, poses on the satellite, correspondences on both.

    Rows: the ground image; the ground image with its correspondences; the satellite
    image with the GT pose (green, solid), the prior (orange, dashed) and the prior's
    search region, beside the satellite image with the correspondences. Correspondences
    are coloured by the ground pixel's azimuth relative to the heading (cyclic colormap
    for panoramas), the same colour on both images.

    Args:
        item_or_pair: a dataset item (:mod:`cvloc.data.batch` schema, unbatched) or a
            generator pair with ``ground``, ``satellite``, ``meta``, ``ground_uv``,
            ``sat_uv``, ``height_m``, ``sat_height_m`` attributes.
        max_points: the most correspondences drawn (a fixed random subset).

    Returns:
        The figure (Agg canvas attached).
    """
    item = _as_item(item_or_pair)
    h_g, w_g = item["ground"].shape[-2:]
    h_s, w_s = item["satellite"].shape[-2:]
    # Row heights in inches that fit the images' aspect ratios at this width, plus room for
    # titles, so constrained layout leaves no gaps between the rows.
    width_in, title_in = 8.0, 0.3
    ground_in = width_in / (w_g / h_g) + title_in
    sat_in = (width_in / 2) * (h_s / w_s) + 2 * title_in
    bar_in = 0.6
    heights = [ground_in, ground_in, sat_in, bar_in]
    fig = Figure(figsize=(width_in, sum(heights) + 0.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, 2, height_ratios=heights)
    ax_g = fig.add_subplot(grid[0, :])
    ax_gc = fig.add_subplot(grid[1, :])
    ax_pose = fig.add_subplot(grid[2, 0])
    ax_sc = fig.add_subplot(grid[2, 1])
    ax_bar = fig.add_subplot(grid[3, :])

    model = item["camera_model"]
    draw_image(ax_g, item["ground"], f"{item['name']}: ground ({model}, {w_g}x{h_g})")
    draw_image(ax_pose, item["satellite"], _pose_title(item))
    _draw_poses(ax_pose, item)
    ground_uv, sat_uv = item_correspondences(item)
    keep = subsample(len(ground_uv), max_points)
    title = f"{len(ground_uv)} correspondences ({len(keep)} drawn)"
    draw_image(ax_gc, item["ground"], f"ground: {title}")
    draw_image(ax_sc, item["satellite"], f"satellite: {title}")
    azimuth, (lo, hi) = ground_azimuth_deg(item, ground_uv[keep])
    cmap = "hsv" if model == "panorama" else "turbo"
    norm = Normalize(lo, hi)
    artist = draw_points(ax_gc, ground_uv[keep], azimuth, cmap, norm)
    draw_points(ax_sc, sat_uv[keep], azimuth, cmap, norm)
    draw_pose(ax_sc, item["camera_uv_gt"], float(item["yaw_deg_gt"]), length_px=0.08 * w_s)
    # A short, wide colorbar in its own row: the image panels keep their full width.
    ax_bar.set_axis_off()
    bar_ax = ax_bar.inset_axes((0.2, 0.55, 0.6, 0.25))
    bar = fig.colorbar(artist, cax=bar_ax, orientation="horizontal")
    bar.set_label("correspondence colour: ground azimuth from the heading (deg, clockwise)")
    bar.ax.tick_params(labelsize=7)
    bar.ax.xaxis.label.set_fontsize(8)
    return fig


def plot_pair_preview(
    item_or_pair: Any,
    path: str | os.PathLike,
    max_points: int = 3000,
    dpi: int = 80,
    palette: bool = True,
) -> Path:
    """Write the :func:`pair_preview_figure` of one pair as an image file.

    Args:
        item_or_pair: a dataset item or a generator pair (see :func:`pair_preview_figure`).
        path: output file; the format follows the suffix (``.png`` recommended).
        max_points: the most correspondences drawn.
        dpi: resolution; 80 gives a 640-pixel-wide figure.
        palette: store a PNG with an adaptive 256-colour palette: about 4x smaller
            (150 kB instead of 600 kB) and visually the same. Ignored for other formats.

    Returns:
        The written path.
    """
    return save_figure(pair_preview_figure(item_or_pair, max_points), path, dpi, palette)


def _as_item(item_or_pair: Any) -> dict[str, Any]:
    if isinstance(item_or_pair, dict):
        return item_or_pair
    p = item_or_pair
    return pair_to_item(
        p.ground, p.satellite, p.meta, p.ground_uv, p.sat_uv, p.height_m, p.sat_height_m
    )


def _draw_poses(ax: Axes, item: dict[str, Any]) -> None:
    """GT pose, prior pose and the prior's search region, with a legend."""
    m_per_px = float(item["m_per_px"])
    arrow = 0.08 * item["satellite"].shape[-1]
    prior_uv, prior_yaw = item["camera_uv_prior"], float(item["yaw_deg_prior"])
    half_px = float(item["shift_range_m"]) / m_per_px
    yaw_range = float(item["yaw_range_deg"])
    # The protocols of the real benchmarks: KITTI (pinhole) offsets the position along and
    # across the heading, VIGOR (panorama) along the north-up image axes.
    frame_yaw = prior_yaw if item["camera_model"] == "pinhole" else 0.0
    draw_search_region(ax, prior_uv, half_px, prior_yaw, yaw_range, frame_yaw, radius_px=arrow)
    draw_pose(ax, prior_uv, prior_yaw, PRIOR_COLOR, arrow, "--", "prior")
    draw_pose(ax, item["camera_uv_gt"], float(item["yaw_deg_gt"]), GT_COLOR, arrow, "-", "GT")
    region = Line2D([], [], color=PRIOR_COLOR, linestyle="--", label="search region")
    handles = [*ax.get_legend_handles_labels()[0], region]
    ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8)


def _pose_title(item: dict[str, Any]) -> str:
    """Satellite panel title: resolution, prior ranges and the prior's actual error."""
    gt_xy = pixel_to_world_xy(item["camera_uv_gt"], item["sat_center_uv"], item["m_per_px"])
    prior_xy = pixel_to_world_xy(item["camera_uv_prior"], item["sat_center_uv"], item["m_per_px"])
    dist_m = float(torch.linalg.norm(prior_xy - gt_xy))
    dyaw = abs(float(wrap_deg(item["yaw_deg_prior"] - item["yaw_deg_gt"])))
    return (
        f"satellite ({float(item['m_per_px']):.3f} m/px): GT and prior\n"
        f"prior range ±{float(item['shift_range_m']):.1f} m, "
        f"±{float(item['yaw_range_deg']):.0f}°; prior error {dist_m:.1f} m, {dyaw:.1f}°"
    )


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 80, palette: bool = True) -> Path:
    """Write a figure, as a 256-colour palette PNG when ``palette`` and the suffix allow.

    Args:
        fig: the figure.
        path: output file; the format follows the suffix; parent directories are created.
        dpi: resolution.
        palette: quantise a ``.png`` to an adaptive 256-colour palette (about 4x smaller,
            visually the same). Ignored for other formats.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (palette and path.suffix.lower() == ".png"):
        fig.savefig(path, dpi=dpi)
        return path
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    rgb = Image.open(buffer).convert("RGB")
    rgb.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path
