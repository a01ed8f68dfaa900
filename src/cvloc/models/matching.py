"""Fine-grained matching: descriptors, similarity, adaptive-dustbin dual softmax, pose.

ViewBridge (seed 000, notes sections 1.5-1.7) matches L2-normalised BEV and satellite
descriptors by a similarity S = D_bev^T D_sat / tau (FG2: tau = 0.1), refines S
(:mod:`.simrefiner`), turns it into a coupling with an adaptive dustbin and a dual
softmax, and fits the pose by weighted Procrustes without RANSAC. Our choices where the
paper is silent:

- **Adaptive dustbin.** S is padded with a dustbin column (score z_n per BEV cell), a
  dustbin row (z_m per satellite cell) and a corner. The scores are a learned base plus a
  small MLP of the row's / column's statistics (max, logsumexp, mean, std; an ambiguous,
  flat row should go to the dustbin), instead of FG2's single learned constant. BEV cells
  not seen by the camera get -1e4 everywhere but in the dustbin column: they match
  nothing and take no part in the column softmax.
- **Prior window.** The prior pose comes with its noise bounds (``shift_range_m`` per
  axis, ``yaw_range_deg``), so a BEV cell at distance r from the prior camera can only
  lie within sqrt(2) shift + 2 r sin(yaw_range / 2) (+ one cell) of where the prior puts
  it. Satellite cells outside that disc are masked before the coupling
  (:func:`prior_window_mask`): it removes matches the benchmark's own prior rules out
  (FG2 matches the whole map), and with them the far-off outliers that turned the
  weighted Procrustes by up to 180 deg. The statistics of the dustbin
  still describe the whole row. ``prior_window=False`` matches globally.
- **Coupling.** P = softmax_row(S_bar) * softmax_col(S_bar) over the (N + 1) x (M + 1)
  padded matrix (FG2's dual softmax); each factor sums to 1 along its axis.
- **Matches.** A BEV cell's match is the expectation of its row of P in a (2r + 1)^2
  window around the row's maximum, weighted by the window's mass: all N cells, no
  sampling noise, differentiable (FG2 samples 1024 pairs from P). A whole-row expectation
  would average far-apart modes into a location that matches nothing.
- **Pose.** :func:`cvloc.geometry.procrustes.weighted_procrustes_2d` on the metric match
  pairs (float32, autocast off), composed with the prior pose exactly as the DenseFlow
  pose head does. ``robust_iters`` > 0 re-fits with the matches far from the fit faded
  out (:func:`cvloc.geometry.procrustes.robust_procrustes_2d`, a Welsch M-estimator:
  still no sampling, no threshold, differentiable); off by default, the shipped weights
  record what validation chose. RANSAC (:func:`ransac_rigid_2d`) exists for comparisons
  only.
- **Match scores.** Each match is reported with the weight it has in the pose fit (as
  DenseFlow's are its pose head's weights): its coupling mass, times its Welsch weight at
  the robust fit (the M-estimator's soft inlier set), or zero off RANSAC's inliers. A match
  the consensus rejects no longer ranks among the confident ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.checks import check_shape
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import apply_rigid_2d, compose_pose_with_rigid_2d
from cvloc.geometry.procrustes import robust_procrustes_2d, weighted_procrustes_2d
from cvloc.models.encoders import make_norm
from cvloc.models.simstats import similarity_stats, stats_mlp

SOLVERS = ("procrustes", "ransac")
ROBUST_STARTS = ("fit", "alignment")
# Score of the entries of unseen BEV cells: exp() of it is exactly 0 in float32.
NO_MATCH_SCORE = -1.0e4


@dataclass(frozen=True)
class MatchingConfig:
    """Similarity, dustbin, match extraction and pose solver.

    Attributes:
        temperature: tau of S = D_bev^T D_sat / tau (0.1 in FG2).
        dustbin_init: initial dustbin base score.
        dustbin_hidden: hidden width of the dustbin MLPs.
        window_radius: r of the match window, in cells.
        prior_window: mask satellite cells the prior's noise bounds rule out
            (:func:`prior_window_mask`); False: match against the whole map.
        solver: ``"procrustes"`` (the method) or ``"ransac"`` (comparison only).
        ransac_iters: RANSAC hypotheses (2 matches each).
        ransac_threshold_m: inlier distance, metres.
        ransac_seed: seed of RANSAC's sampling (deterministic results).
        robust_iters: re-weighted Procrustes fits after the first (0: the plain weighted
            fit; :func:`cvloc.geometry.procrustes.robust_procrustes_2d`).
        robust_sigma_m: the residual scale of their Gaussian kernel, metres.
        robust_start: where the re-weighting starts: ``"fit"``, the plain weighted fit;
            ``"alignment"``, the best rigid shift of the whole BEV (FineMatch's
            ``align_uv_pred``, when the batch declares ``shift_range_m``; else the fit).
            A few heavy, coherently wrong matches can pull the plain fit metres away,
            after which the re-weighting keeps them as the inliers; the shift, a
            consensus of every cell's similarity, is not swayed by them (kitti-small
            val, 400 pairs: see ``training/README.md``).
    """

    temperature: float = 0.1
    dustbin_init: float = 1.0
    dustbin_hidden: int = 16
    window_radius: int = 2
    prior_window: bool = True
    solver: str = "procrustes"
    ransac_iters: int = 256
    ransac_threshold_m: float = 2.0
    ransac_seed: int = 0
    robust_iters: int = 0
    robust_sigma_m: float = 6.0
    robust_start: str = "fit"

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not self.temperature > 0 or not self.ransac_threshold_m > 0:
            raise ValueError(f"temperature and ransac_threshold_m must be positive, got {self}")
        if min(self.dustbin_hidden, self.ransac_iters) < 1 or self.window_radius < 0:
            raise ValueError(f"widths and iterations must be positive, got {self}")
        if self.robust_iters < 0 or not self.robust_sigma_m > 0:
            raise ValueError(f"robust_iters must be >= 0 and robust_sigma_m > 0, got {self}")
        if self.robust_start not in ROBUST_STARTS:
            raise ValueError(
                f"robust_start must be one of {ROBUST_STARTS}, got {self.robust_start!r}"
            )
        if self.robust_start != "fit" and (self.robust_iters < 1 or self.solver != "procrustes"):
            raise ValueError(
                f"robust_start={self.robust_start!r} needs the procrustes solver with "
                f"robust_iters >= 1, got {self}"
            )


class DescriptorHead(nn.Module):
    """3x3 conv, norm, ReLU, 1x1 conv, then L2 normalisation over channels.

    Args:
        in_dim: input channels.
        out_dim: descriptor dimension D.
        norm: normalisation name (:func:`cvloc.models.encoders.make_norm`).
    """

    def __init__(self, in_dim: int, out_dim: int, norm: str = "batch") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 3, padding=1, bias=False),
            make_norm(norm, in_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_dim, out_dim, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Describe every cell.

        Args:
            features: (B, C, H, W).

        Returns:
            (B, D, H, W) unit-norm descriptors.
        """
        return F.normalize(self.net(features), dim=1)


def similarity(d_bev: torch.Tensor, d_sat: torch.Tensor, temperature: float) -> torch.Tensor:
    """S[b, n, m] = <d_bev[b, :, n], d_sat[b, :, m]> / tau, in float32 (autocast off).

    Args:
        d_bev: (B, D, H, W) BEV descriptors; cell n = i W + j.
        d_sat: (B, D, H2, W2) satellite descriptors; cell m = k W2 + l.
        temperature: tau.

    Returns:
        (B, N, M) scores, N = H W, M = H2 W2.
    """
    check_shape(d_bev, ["B", "D", "H", "W"], "d_bev")
    check_shape(d_sat, [d_bev.shape[0], d_bev.shape[1], "H2", "W2"], "d_sat")
    with torch.autocast(device_type=d_bev.device.type, enabled=False):
        return d_bev.float().flatten(2).transpose(1, 2) @ d_sat.float().flatten(2) / temperature


class Coupling(NamedTuple):
    """The dual-softmax coupling of a padded similarity.

    Attributes:
        probs: (B, N + 1, M + 1) P = row_softmax * col_softmax; index N / M = dustbin.
        row_softmax: (B, N + 1, M + 1), each row sums to 1.
        col_softmax: (B, N + 1, M + 1), each column sums to 1.
    """

    probs: torch.Tensor
    row_softmax: torch.Tensor
    col_softmax: torch.Tensor


class AdaptiveDustbin(nn.Module):
    """Dustbin scores from row / column statistics, and the dual-softmax coupling.

    Args:
        hidden: hidden width of the two MLPs.
        init: initial base score.
    """

    def __init__(self, hidden: int, init: float = 1.0) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.tensor(float(init)))
        self.row_mlp = stats_mlp(hidden, 1)
        self.col_mlp = stats_mlp(hidden, 1)
        for mlp in (self.row_mlp, self.col_mlp):  # start at the constant dustbin
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def forward(
        self,
        similarity: torch.Tensor,
        row_valid: torch.Tensor,
        window: torch.Tensor | None = None,
    ) -> Coupling:
        """Pad with the dustbin and couple (float32, autocast off).

        Args:
            similarity: (B, N, M) refined scores.
            row_valid: (B, N) bool, the BEV cells seen by the camera.
            window: optional (B, N, M) bool, the entries allowed to match
                (:func:`prior_window_mask`); the others get no coupling mass.

        Returns:
            The coupling.
        """
        check_shape(similarity, ["B", "N", "M"], "similarity")
        B = similarity.shape[0]
        with torch.autocast(device_type=similarity.device.type, enabled=False):
            S = similarity.float()
            rows, cols = similarity_stats(S, row_valid)
            z_row = self.base + self.row_mlp(rows)  # B,N,1
            z_col = (self.base + self.col_mlp(cols)).transpose(1, 2)  # B,1,M
            allowed = row_valid[..., None] if window is None else row_valid[..., None] & window
            S = torch.where(allowed, S, S.new_tensor(NO_MATCH_SCORE))
            top = torch.cat([S, z_row], dim=2)  # B,N,M+1
            bottom = torch.cat([z_col, self.base.expand(B, 1, 1)], dim=2)  # B,1,M+1
            padded = torch.cat([top, bottom], dim=1)  # B,N+1,M+1
            row_sm = torch.softmax(padded, dim=2)
            col_sm = torch.softmax(padded, dim=1)
        return Coupling(row_sm * col_sm, row_sm, col_sm)


def prior_window_mask(
    grid_hw: tuple[int, int],
    stride: float,
    camera_uv_prior: torch.Tensor,
    m_per_px: torch.Tensor,
    shift_range_m: torch.Tensor,
    yaw_range_deg: torch.Tensor,
) -> torch.Tensor:
    """The BEV-cell / satellite-cell pairs that the prior's noise bounds allow.

    Convention: BEV cell n and satellite cell m share the grid of
    :func:`cvloc.geometry.bev.satellite_grid_uv` (the BEV placed at the prior pose);
    distances in metres. The true position of BEV cell n lies within
    ``sqrt(2) shift_range_m + 2 r_n sin(min(yaw_range_deg, 180) / 2)`` of its prior
    position, r_n its distance to the prior camera; one cell diagonal is added for the
    cell quantisation. A cell's own prior position is always inside, so no row is empty.
    A sample with ``shift_range_m`` 0 (undeclared, :data:`cvloc.data.pairs.META_DEFAULTS`)
    is not masked; ``yaw_range_deg`` 0 means a known heading.

    Args:
        grid_hw: (H, W) cell grid, N = M = H W.
        stride: satellite pixels per cell.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        m_per_px: (B,) metres per satellite pixel.
        shift_range_m: (B,) half-width of the prior's position noise per axis (0:
            undeclared, the whole map).
        yaw_range_deg: (B,) half-width of the prior's heading noise.

    Returns:
        (B, N, M) bool.
    """
    check_shape(camera_uv_prior, ["B", 2], "camera_uv_prior")
    B = camera_uv_prior.shape[0]
    scalars = {
        "m_per_px": m_per_px,
        "shift_range_m": shift_range_m,
        "yaw_range_deg": yaw_range_deg,
    }
    for name, value in scalars.items():
        check_shape(value, [B], name)
    uv = satellite_grid_uv(*grid_hw, stride, torch.float32, camera_uv_prior.device)
    uv = uv.reshape(-1, 2)  # N,2
    m = m_per_px.float()[:, None]  # B,1
    r_px = (uv[None] - camera_uv_prior.float()[:, None]).norm(dim=-1)  # B,N
    half_yaw = torch.deg2rad(yaw_range_deg.float().clamp(0.0, 180.0)) / 2
    reach_m = (
        math.sqrt(2.0) * shift_range_m.float()[:, None]
        + 2.0 * torch.sin(half_yaw)[:, None] * r_px * m
        + math.sqrt(2.0) * stride * m
    )  # B,N
    distance_m = torch.cdist(uv, uv)[None] * m[..., None]  # B,N,M
    undeclared = (shift_range_m <= 0)[:, None, None]
    return (distance_m <= reach_m[..., None]) | undeclared


def extract_matches(
    probs: torch.Tensor, grid_hw: tuple[int, int], stride: float, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each BEV cell's match: the windowed expectation of its coupling row.

    Convention: satellite cell m = k W + l is centred at satellite pixel
    (u, v) = ((l + 0.5) stride - 0.5, (k + 0.5) stride - 0.5) (north-up, pixel centres at
    integers), as :func:`cvloc.geometry.bev.satellite_grid_uv`.

    Args:
        probs: (B, N, M) coupling without the dustbin row and column.
        grid_hw: (H, W) of the satellite cell grid, M = H W.
        stride: satellite pixels per cell.
        radius: r, the window is (2r + 1)^2 cells around the row's maximum.

    Returns:
        dst_uv: (B, N, 2) matched satellite pixels (the cell (0, 0) centre where the weight
        is 0) and weight: (B, N) the coupling mass inside the window.
    """
    H, W = grid_hw
    check_shape(probs, ["B", "N", H * W], "probs")
    cells = torch.arange(H * W, device=probs.device)
    row, col = (cells // W).to(probs.dtype), (cells % W).to(probs.dtype)  # M,
    top = probs.argmax(-1, keepdim=True)  # B,N,1
    top_row, top_col = (top // W).to(probs.dtype), (top % W).to(probs.dtype)
    window = ((row - top_row).abs() <= radius) & ((col - top_col).abs() <= radius)  # B,N,M
    masked = torch.where(window, probs, 0.0)
    weight = masked.sum(-1)
    # A row without (or with underflowing) mass has no match. Its quotient is replaced, not
    # clamped: d(num / w) / dw = -num / w^2 is 0 / 0 = NaN at w = 0 and overflows for
    # denormal w, and NaN times the zero gradient torch.where passes back is still NaN.
    # Above sqrt(tiny), 1 / w^2 stays finite.
    has_mass = (weight > torch.finfo(probs.dtype).tiny ** 0.5)[..., None]
    denom = torch.where(has_mass, weight[..., None], 1.0)
    num = torch.stack([(masked * col).sum(-1), (masked * row).sum(-1)], -1)
    cell_uv = torch.where(has_mass, num / denom, 0.0)
    return (cell_uv + 0.5) * stride - 0.5, weight


def pose_from_matches(
    src_uv: torch.Tensor,
    dst_uv: torch.Tensor,
    weight: torch.Tensor,
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    yaw_deg_prior: torch.Tensor,
    config: MatchingConfig | None = None,
    known_heading: torch.Tensor | None = None,
    start_uv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera pose from BEV-to-satellite matches by weighted Procrustes (or RANSAC).

    Convention: ``src_uv`` are BEV cells placed with the camera at the prior pose, in
    satellite pixels; world x east, y north (metres, origin ``sat_center_uv``); yaw
    clockwise from north. The rigid fit dst ~ R src + t moves the prior pose onto the
    estimate (:func:`cvloc.geometry.pose.compose_pose_with_rigid_2d`). Float32 with
    autocast off; without weight the prior pose is returned.

    Args:
        src_uv: (B, N, 2) BEV cell centres, satellite pixels.
        dst_uv: (B, N, 2) matched satellite pixels.
        weight: (B, N) non-negative match weights.
        sat_center_uv: (B, 2) satellite pixel of the world origin.
        m_per_px: (B,) satellite metres per pixel.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        yaw_deg_prior: (B,) prior heading.
        config: solver settings (default: weighted Procrustes).
        known_heading: optional (B,) bool, samples whose prior heading is exact: their
            pose keeps it and only the position is fitted.
        start_uv: optional (B, 2) camera pixel of a rigid shift of the BEV (at the prior
            heading) from which the robust re-weighting starts instead of from the
            weighted fit (``config.robust_start``; needs ``robust_iters`` >= 1).

    Returns:
        camera_xy: (B, 2) metres, yaw_deg: (B,) in (-180, 180], camera_uv: (B, 2) pixels,
        fit_weight: (B, N) the weight each match has in the fit: ``weight`` (NaN as 0)
        for the plain fit, its inlier weight at the fit with ``robust_iters`` > 0, 0 off
        RANSAC's inlier set.
    """
    cfg = config if config is not None else MatchingConfig()
    check_shape(src_uv, ["B", "N", 2], "src_uv")
    check_shape(dst_uv, list(src_uv.shape), "dst_uv")
    check_shape(weight, list(src_uv.shape[:2]), "weight")
    with torch.autocast(device_type=src_uv.device.type, enabled=False):
        center, m = sat_center_uv.float(), m_per_px.float()
        src_xy = pixel_to_world_xy(src_uv.float(), center[:, None], m[:, None])
        dst_xy = pixel_to_world_xy(dst_uv.float(), center[:, None], m[:, None])
        prior_xy = pixel_to_world_xy(camera_uv_prior.float(), center, m)
        if cfg.solver == "ransac":
            if start_uv is not None:
                raise ValueError("start_uv starts the robust Procrustes fit, not RANSAC")
            R, t, fit_weight = ransac_rigid_2d(src_xy, dst_xy, weight.float(), cfg, known_heading)
        else:
            # Moving the camera by d moves every BEV cell by d: dst ~ src + d.
            start_t = None
            if start_uv is not None:
                start_t = pixel_to_world_xy(start_uv.float(), center, m) - prior_xy
            R, t, fit_weight = robust_procrustes_2d(
                src_xy, dst_xy, weight.float(), cfg.robust_sigma_m, cfg.robust_iters,
                known_heading, start_t,
            )  # fmt: skip
        camera_xy, yaw_deg = compose_pose_with_rigid_2d(R, t, prior_xy, yaw_deg_prior.float())
        camera_uv = world_xy_to_pixel(camera_xy, center, m)
    return camera_xy, yaw_deg, camera_uv, fit_weight


@torch.no_grad()
def ransac_rigid_2d(
    src_xy: torch.Tensor,
    dst_xy: torch.Tensor,
    weight: torch.Tensor,
    config: MatchingConfig,
    known_heading: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RANSAC over 2-match rigid hypotheses, then weighted Procrustes on the inliers.

    For comparisons only (not differentiable). Hypotheses draw their 2 matches with
    probability proportional to the weights, from a generator seeded with
    ``config.ransac_seed``; a hypothesis scores the summed weight of its inliers (residual
    below ``config.ransac_threshold_m``); the best one's inliers are refitted.

    Args:
        src_xy: (B, N, 2) source points, metres.
        dst_xy: (B, N, 2) matched points, metres.
        weight: (B, N) non-negative weights.
        config: iterations, threshold and seed.
        known_heading: optional (B,) bool: the final refit keeps the identity rotation.

    Returns:
        R: (B, 2, 2), t: (B, 2); identity and zero for samples without weight; the weights
        of the final fit (B, N): ``weight`` on the inliers, 0 elsewhere.
    """
    B, N, _ = src_xy.shape
    K = config.ransac_iters
    gen = torch.Generator(device=src_xy.device).manual_seed(config.ransac_seed)
    w = torch.nan_to_num(weight).clamp_min(0.0)
    # Samples without weight draw uniformly; their final fit has no weight anyway.
    probs = torch.where(w.sum(-1, keepdim=True) > 0, w, 1.0)
    pick = torch.multinomial(probs, 2 * K, replacement=True, generator=gen).reshape(B, K, 2)
    batch = torch.arange(B, device=src_xy.device)[:, None, None]
    s, d = src_xy[batch, pick], dst_xy[batch, pick]  # B,K,2,2
    R_h, t_h = weighted_procrustes_2d(s.flatten(0, 1), d.flatten(0, 1), s.new_ones(B * K, 2))
    moved = apply_rigid_2d(R_h, t_h, src_xy.repeat_interleave(K, 0)).reshape(B, K, N, 2)
    inlier = (moved - dst_xy[:, None]).norm(dim=-1) < config.ransac_threshold_m  # B,K,N
    best = (inlier * w[:, None]).sum(-1).argmax(-1)  # B,
    keep = inlier[torch.arange(B, device=src_xy.device), best]
    fit_weight = w * keep
    R, t = weighted_procrustes_2d(src_xy, dst_xy, fit_weight, known_heading)
    return R, t, fit_weight
