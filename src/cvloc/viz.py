"""Figures: pair previews, and predictions in the style of DenseFlow's Figures 4 and 5.

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

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch, Polygon, Wedge
from PIL import Image

from cvloc.data.pairs import pair_to_item
from cvloc.evaluate import lift_matches_to_ground
from cvloc.geometry import bev_from_prior, panorama_uv_to_angles, pixel_to_world_xy, wrap_deg

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


# ---------------------------------------------------------------------------- predictions
# Figures of a localizer's output in the style of DenseFlow's Figures 4 and 5. ``pred`` is
# the model's output for ``collate([item])`` (a batch of one); only its first sample is read.

CONFIDENCE_THRESHOLD = 0.5  # Fig. 5: circles above, stars below
CONFIDENCE_CMAP = "RdYlBu"  # red: unsure, blue: confident (Fig. 5 draws confident in blue)
PRED_COLOR = "#ff1744"
UNSEEN_GREY = 0.85  # BEV cells the ground camera does not see
_LIFT_KEYS = ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior", "camera_height_m")


def bev_image(item: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground image projected to the satellite pixel grid at the prior pose.

    DenseFlow's ground projection (:func:`cvloc.geometry.bev.bev_from_prior`, flat ground)
    applied to the RGB image instead of features, at satellite resolution (stride 1).

    Convention: BEV pixel (u, v) is satellite pixel (u, v) with the camera at its prior
    pose; north-up.

    Args:
        item: a dataset item (unbatched).

    Returns:
        bev: (3, Hs, Ws) RGB in [0, 1], zero where unseen; valid: (Hs, Ws) bool.
    """
    ground = item["ground"].detach().cpu().float()[None]
    pinhole = item["camera_model"] == "pinhole"

    def one(key: str) -> torch.Tensor:
        return item[key].detach().cpu().float()[None]

    bev, valid = bev_from_prior(
        ground,
        one("K") if pinhole else None,
        item["camera_model"],
        (ground.shape[-1], ground.shape[-2]),
        one("sat_center_uv"),
        one("m_per_px"),
        one("camera_uv_prior"),
        one("yaw_deg_prior"),
        one("camera_height_m"),
        tuple(item["satellite"].shape[-2:]),
        1.0,
    )
    return bev[0], valid[0]


def prediction_matches(item: dict[str, Any], pred: dict[str, Any]) -> dict[str, np.ndarray]:
    """A prediction's correspondences with a score in [0, 1] and their ground pixels.

    The score is the model's confidence map at the match source (``confidence_iters``,
    DenseFlow) or else the match weight divided by its maximum (e.g. the classical
    baseline's gradient strength). Matches of weight 0 (unseen BEV cells) are dropped.

    Convention: sources are BEV pixels (satellite pixels placed with the prior pose),
    destinations satellite pixels; ground pixels are where the source's flat-ground point
    projects in the prior camera (:func:`cvloc.evaluate.lift_matches_to_ground`).

    Args:
        item: the dataset item.
        pred: the prediction for ``collate([item])`` with ``match_src_uv``,
            ``match_dst_uv`` (1, N, 2) and ``match_weight`` (1, N).

    Returns:
        ``src_uv``, ``dst_uv``, ``ground_uv`` (M, 2), ``score`` (M,) and ``ground_valid``
        (M,) bool, M the matches of nonzero weight.
    """
    src = pred["match_src_uv"][:1].detach().cpu().float()
    weight = pred["match_weight"][0].detach().cpu().float()
    if "confidence_iters" in pred:
        conf = pred["confidence_iters"][-1][0, 0].detach().cpu().float()
        ij = src[0].round().long()
        ij[:, 0].clamp_(0, conf.shape[1] - 1)
        ij[:, 1].clamp_(0, conf.shape[0] - 1)
        score = conf[ij[:, 1], ij[:, 0]]
    else:
        score = weight / weight.max().clamp(min=1e-12)
    h, w = item["ground"].shape[-2:]
    ground_uv, ground_valid = lift_matches_to_ground(
        src,
        *(item[k].detach().cpu().float()[None] for k in _LIFT_KEYS),
        item["camera_model"],
        (w, h),
        item["K"].detach().cpu().float()[None],
    )
    keep = (weight > 0).numpy()
    out = {"src_uv": src[0], "dst_uv": pred["match_dst_uv"][0], "ground_uv": ground_uv[0]}
    out = {k: v.detach().cpu().float().numpy()[keep] for k, v in out.items()}
    out["score"] = score.clamp(0.0, 1.0).numpy()[keep]
    out["ground_valid"] = ground_valid[0].numpy()[keep]
    return out


def spread_subset(uv: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly over their bounding box.

    The box is cut into square cells, grown until at most ``max_points`` are occupied, and
    the first point of every occupied cell is kept: a lattice-like, deterministic subset.

    Args:
        uv: (N, 2) pixel coordinates.
        max_points: the most points to keep, >= 1.

    Returns:
        (M,) sorted indices, M <= max_points.
    """
    if len(uv) <= max_points:
        return np.arange(len(uv))
    lo = uv.min(axis=0)
    spacing = float(np.sqrt(np.prod(uv.max(axis=0) - lo + 1.0) / max_points))
    while True:
        cells = np.floor((uv - lo) / spacing).astype(np.int64)
        _, first = np.unique(cells, axis=0, return_index=True)
        if len(first) <= max_points:
            return np.sort(first)
        spacing *= 1.2


def draw_match_markers(ax: Axes, uv: np.ndarray, score: np.ndarray) -> Any:
    """Mark points coloured by score: circles above 0.5 (confident), stars below (Fig. 5).

    The axes limits do not change.

    Args:
        ax: target axes.
        uv: (N, 2) pixel coordinates.
        score: (N,) scores in [0, 1].

    Returns:
        A scatter artist for a colorbar (None when there are no points).
    """
    limits = ax.get_xlim(), ax.get_ylim()
    artist = None
    for confident, marker, size in ((True, "o", 22.0), (False, "*", 55.0)):
        pick = (score > CONFIDENCE_THRESHOLD) == confident
        if pick.any():
            artist = ax.scatter(
                *uv[pick].T,
                c=score[pick],
                cmap=CONFIDENCE_CMAP,
                vmin=0.0,
                vmax=1.0,
                s=size,
                marker=marker,
                edgecolors="black",
                linewidths=0.4,
            )
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    return artist


def draw_matches(
    ax_src: Axes, ax_dst: Axes, src_uv: np.ndarray, dst_uv: np.ndarray, score: np.ndarray
) -> Any:
    """Join matches across two images by lines and mark both ends (Fig. 4 and 5).

    Lines and markers are coloured by score; markers are circles above 0.5 and stars
    below (:func:`draw_match_markers`), the same on both images.

    Args:
        ax_src: axes of the source image (e.g. the BEV).
        ax_dst: axes of the destination image (the satellite), in the same figure.
        src_uv: (N, 2) source pixels.
        dst_uv: (N, 2) destination pixels.
        score: (N,) scores in [0, 1].

    Returns:
        A scatter artist for a colorbar (None when there are no matches).
    """
    cmap = matplotlib.colormaps[CONFIDENCE_CMAP]
    for a, b, s in zip(src_uv, dst_uv, score, strict=True):
        line = ConnectionPatch(tuple(a), tuple(b), "data", "data", axesA=ax_src, axesB=ax_dst)
        line.set(color=cmap(float(s)), linewidth=0.7, alpha=0.7)
        ax_dst.figure.add_artist(line)
    draw_match_markers(ax_src, src_uv, score)
    return draw_match_markers(ax_dst, dst_uv, score)


def draw_confidence(ax: Axes, confidence: np.ndarray, valid: np.ndarray, title: str) -> Any:
    """Show a confidence map on the BEV grid, unseen cells grey, a contour at 0.5.

    Args:
        ax: target axes.
        confidence: (H, W) scores in [0, 1].
        valid: (H, W) bool, the cells the ground camera sees.
        title: axes title.

    Returns:
        The image artist (for a colorbar).
    """
    ax.set_facecolor((UNSEEN_GREY,) * 3)
    masked = np.ma.masked_where(~valid, confidence)
    artist = ax.imshow(masked, cmap=CONFIDENCE_CMAP, vmin=0.0, vmax=1.0)
    if valid.any() and confidence[valid].min() < CONFIDENCE_THRESHOLD < confidence[valid].max():
        ax.contour(masked, levels=[CONFIDENCE_THRESHOLD], colors="black", linewidths=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def draw_prediction_poses(ax: Axes, item: dict[str, Any], pred: dict[str, Any]) -> None:
    """Predicted (red), prior (orange, dashed) and GT (green) poses, with a legend.

    Drawn in that order, so the GT stays visible over a prediction close to it.

    Args:
        ax: axes showing the satellite image.
        item: the dataset item.
        pred: the prediction (``camera_uv_pred`` (1, 2), ``yaw_deg_pred`` (1,)).
    """
    arrow = 0.08 * item["satellite"].shape[-1]
    pred_uv, pred_yaw = pred["camera_uv_pred"][0].detach().cpu(), float(pred["yaw_deg_pred"][0])
    draw_pose(ax, pred_uv, pred_yaw, PRED_COLOR, arrow, "-", "predicted")
    prior_yaw = float(item["yaw_deg_prior"])
    draw_pose(ax, item["camera_uv_prior"], prior_yaw, PRIOR_COLOR, arrow, "--", "prior")
    draw_pose(ax, item["camera_uv_gt"], float(item["yaw_deg_gt"]), GT_COLOR, arrow, "-", "GT")
    ax.legend(loc="lower left", fontsize=7, framealpha=0.8)


def zoom_to(axes: list[Axes], uv: np.ndarray, size_wh: tuple[int, int], margin_px: float) -> None:
    """Set the same square view on several image axes: the box of ``uv`` plus a margin.

    Args:
        axes: axes showing images of size ``size_wh`` (e.g. the BEV and the satellite).
        uv: (N, 2) pixels that must stay in view (N >= 1).
        size_wh: (W, H) of the images; the view stays inside them.
        margin_px: margin around the box in pixels.
    """
    lo, hi = uv.min(axis=0) - margin_px, uv.max(axis=0) + margin_px
    side = min(float((hi - lo).max()), float(min(size_wh)))
    start = [
        float(np.clip((lo[i] + hi[i] - side) / 2, -0.5, size_wh[i] - 0.5 - side)) for i in (0, 1)
    ]
    for ax in axes:
        ax.set_xlim(start[0], start[0] + side)
        ax.set_ylim(start[1] + side, start[1])  # image axes: v grows downwards


def localization_figure(
    item: dict[str, Any], pred: dict[str, Any], method: str = "DenseFlow", max_matches: int = 40
) -> Figure:
    """DenseFlow Fig. 4: ground image, matching inliers, poses on the satellite image.

    Top left: the ground image. Bottom left: the BEV (ground image projected at the prior
    pose) beside the satellite image, joined by the confident matches (score > 0.5, the
    inliers), at most ``max_matches`` spread over the BEV. Right: the satellite image with the
    GT, prior and predicted poses; the title gives the errors.

    Args:
        item: the dataset item.
        pred: the prediction for ``collate([item])``.
        method: the method's name for the title.
        max_matches: the most matches drawn (an evenly spread subset).

    Returns:
        The figure (Agg canvas attached).
    """
    (h_g, w_g), side = item["ground"].shape[-2:], 4.5
    left_w = 2 * side
    heights = [left_w * h_g / w_g + 0.3, side + 0.3]
    fig = Figure(figsize=(left_w + sum(heights), sum(heights) + 0.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=heights, width_ratios=[side, side, sum(heights)])
    ax_g, ax_pose = fig.add_subplot(grid[0, :2]), fig.add_subplot(grid[:, 2])
    ax_bev, ax_sat = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    draw_image(ax_g, item["ground"], f"{item['name']}: ground image")
    bev, valid = bev_image(item)
    draw_image(ax_bev, _with_unseen_grey(bev, valid), "BEV at the prior pose")
    draw_image(ax_sat, item["satellite"], "satellite: matching inliers")
    m = prediction_matches(item, pred)
    inlier = np.flatnonzero(m["score"] > CONFIDENCE_THRESHOLD)
    pick = inlier[spread_subset(m["src_uv"][inlier], max_matches)]
    draw_matches(ax_bev, ax_sat, m["src_uv"][pick], m["dst_uv"][pick], m["score"][pick])
    _zoom_to_bev(item, valid, m["dst_uv"][pick], [ax_bev, ax_sat])
    draw_image(ax_pose, item["satellite"], _errors_title(item, pred, method))
    draw_prediction_poses(ax_pose, item, pred)
    return fig


def confidence_figure(
    item: dict[str, Any], pred: dict[str, Any], method: str = "DenseFlow", max_matches: int = 40
) -> Figure:
    """DenseFlow Fig. 5: matches on the ground, BEV and satellite images, confidence map.

    Top: the ground image with the matches' ground pixels. Bottom: the confidence map on
    the BEV grid (unseen cells grey, black contour at 0.5), the BEV and the satellite image
    joined by the matches. A match has the same colour (its score) and shape (circle above
    0.5, star below) in every panel; at most ``max_matches``, spread over the BEV.

    Args:
        item: the dataset item.
        pred: the prediction for ``collate([item])``; without ``confidence_iters`` the
            map shows the normalised match weights.
        method: the method's name for the title.
        max_matches: the most matches drawn (an evenly spread subset).

    Returns:
        The figure (Agg canvas attached).
    """
    (h_g, w_g), side = item["ground"].shape[-2:], 4.0
    heights = [3 * side * h_g / w_g + 0.3, side + 0.3, 0.5]
    fig = Figure(figsize=(3 * side, sum(heights) + 0.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 3, height_ratios=heights)
    ax_g, ax_bar = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[2, :])
    ax_conf, ax_bev, ax_sat = (fig.add_subplot(grid[1, i]) for i in range(3))
    bev, valid = bev_image(item)
    matches = prediction_matches(item, pred)
    pick = spread_subset(matches["src_uv"], max_matches)
    m = {k: v[pick] for k, v in matches.items()}
    confident = int((m["score"] > CONFIDENCE_THRESHOLD).sum())
    title = f"{item['name']}: {method}, {len(pick)} matches drawn, {confident} confident"
    draw_image(ax_g, item["ground"], f"{title} (circles), {len(pick) - confident} not (stars)")
    draw_match_markers(ax_g, m["ground_uv"][m["ground_valid"]], m["score"][m["ground_valid"]])
    label = "confidence (BEV)" if "confidence_iters" in pred else "match weight / max (BEV)"
    draw_confidence(ax_conf, _confidence_map(pred, valid), valid.numpy(), label)
    draw_image(ax_bev, _with_unseen_grey(bev, valid), "BEV at the prior pose")
    draw_image(ax_sat, item["satellite"], "satellite")
    artist = draw_matches(ax_bev, ax_sat, m["src_uv"], m["dst_uv"], m["score"])
    _zoom_to_bev(item, valid, m["dst_uv"], [ax_conf, ax_bev, ax_sat])
    ax_bar.set_axis_off()
    if artist is not None:
        bar = fig.colorbar(
            artist, cax=ax_bar.inset_axes((0.2, 0.55, 0.6, 0.25)), orientation="horizontal"
        )
        bar.set_label("match confidence (circle > 0.5, star < 0.5)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def plot_localization(
    item: dict[str, Any],
    pred: dict[str, Any],
    path: str | os.PathLike,
    method: str = "DenseFlow",
    dpi: int = 80,
) -> Path:
    """Write the :func:`localization_figure` (DenseFlow Fig. 4) of one prediction.

    Args:
        item: the dataset item.
        pred: the prediction for ``collate([item])``.
        path: output file (``.png``: 256-colour palette).
        method: the method's name for the title.
        dpi: resolution.

    Returns:
        The written path.
    """
    return save_figure(localization_figure(item, pred, method), path, dpi)


def plot_confidence(
    item: dict[str, Any],
    pred: dict[str, Any],
    path: str | os.PathLike,
    method: str = "DenseFlow",
    dpi: int = 80,
) -> Path:
    """Write the :func:`confidence_figure` (DenseFlow Fig. 5) of one prediction.

    Args:
        item: the dataset item.
        pred: the prediction for ``collate([item])``.
        path: output file (``.png``: 256-colour palette).
        method: the method's name for the title.
        dpi: resolution.

    Returns:
        The written path.
    """
    return save_figure(confidence_figure(item, pred, method), path, dpi)


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


def _zoom_to_bev(
    item: dict[str, Any], valid: torch.Tensor, dst_uv: np.ndarray, axes: list[Axes]
) -> None:
    """Zoom BEV-grid panels to the seen BEV cells and the drawn match ends."""
    v, u = np.nonzero(valid.numpy())
    uv = np.concatenate([np.stack([u, v], axis=-1), dst_uv.reshape(-1, 2)])
    if len(uv):
        w, h = item["satellite"].shape[-1], item["satellite"].shape[-2]
        zoom_to(axes, uv.astype(np.float64), (w, h), margin_px=8.0)


def _with_unseen_grey(bev: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(3, H, W) BEV with unseen cells light grey, so they read as 'no data', not black."""
    return torch.where(valid[None], bev, torch.full_like(bev, UNSEEN_GREY))


def _confidence_map(pred: dict[str, Any], valid: torch.Tensor) -> np.ndarray:
    """(H, W) final confidence map; the normalised match weights when there is none."""
    if "confidence_iters" in pred:
        return pred["confidence_iters"][-1][0, 0].detach().cpu().float().numpy()
    h, w = valid.shape
    conf = np.zeros((h, w), np.float32)
    weight = pred["match_weight"][0].detach().cpu().float()
    ij = pred["match_src_uv"][0].detach().cpu().round().long().numpy()
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    conf[ij[inside, 1], ij[inside, 0]] = (weight / weight.max().clamp(min=1e-12)).numpy()[inside]
    return conf


def _errors_title(item: dict[str, Any], pred: dict[str, Any], method: str) -> str:
    """Satellite panel title: the prediction's and the prior's position / heading errors."""
    center, m = item["sat_center_uv"].cpu().double(), item["m_per_px"].cpu().double()
    gt_xy = pixel_to_world_xy(item["camera_uv_gt"].cpu().double(), center, m)
    lines = []
    for name, uv, yaw in (
        (method, pred["camera_uv_pred"][0], pred["yaw_deg_pred"][0]),
        ("prior", item["camera_uv_prior"], item["yaw_deg_prior"]),
    ):
        xy = pixel_to_world_xy(uv.detach().cpu().double(), center, m)
        dist_m = float(torch.linalg.norm(xy - gt_xy))
        dyaw = abs(float(wrap_deg(yaw.detach().cpu().double() - item["yaw_deg_gt"].double())))
        lines.append(f"{name}: {dist_m:.2f} m, {dyaw:.2f}°")
    return "errors: " + "; ".join(lines)
