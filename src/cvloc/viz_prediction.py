"""Figures of a localizer's prediction, in the style of DenseFlow's Figures 4 and 5.

``pred`` is the model's output for ``collate([item])`` (a batch of one); only its first
sample is read. Figure 4 (:func:`localization_figure`): ground image, BEV at the prior,
satellite with the GT, prior and predicted poses and the matches. Figure 5
(:func:`confidence_figure`): the confidence map and the matches coloured by confidence.
As :mod:`cvloc.viz` (whose drawing helpers these reuse), figures use the Agg canvas and
change no global matplotlib state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch

from cvloc.evaluate import lift_matches_to_ground
from cvloc.geometry import bev_from_prior, pixel_to_world_xy, wrap_deg
from cvloc.viz import GT_COLOR, PRIOR_COLOR, draw_image, draw_pose, save_figure

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


FIGURES: dict[str, Callable[[dict[str, Any], dict[str, Any], str], Figure]] = {
    "localization": localization_figure,
    "confidence": confidence_figure,
}


def plot_prediction(
    kind: str,
    item: dict[str, Any],
    pred: dict[str, Any],
    path: str | os.PathLike,
    method: str = "DenseFlow",
    dpi: int = 80,
) -> Path:
    """Write one prediction figure.

    Args:
        kind: a key of :data:`FIGURES`: ``"localization"`` (:func:`localization_figure`,
            Fig. 4) or ``"confidence"`` (:func:`confidence_figure`, Fig. 5).
        item: the dataset item.
        pred: the prediction for ``collate([item])``.
        path: output file (``.png``: 256-colour palette).
        method: the method's name for the titles.
        dpi: resolution.

    Returns:
        The written path.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in FIGURES:
        raise ValueError(f"kind must be one of {sorted(FIGURES)}, got {kind!r}")
    return save_figure(FIGURES[kind](item, pred, method), path, dpi)


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
