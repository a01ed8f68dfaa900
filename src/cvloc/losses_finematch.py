"""Training losses of FineMatch: matching InfoNCE, virtual-correspondence pose loss, height.

ViewBridge (seed 000, notes section 4) trains with L_M (InfoNCE on the BEV matches, as
FG2), L_VCE (virtual correspondence error of the pose) and L_height (surface height
against a satellite-derived height). Our choices:

- **GT partners.** BEV cell n (a world point placed with the prior pose) truly lies
  where the rigid motion prior -> GT pose moves it (:func:`gt_cell_uv`, the warp of
  DenseFlow's flow ground truth).
- **Matching: symmetric InfoNCE, soft positives.** The true location falls between
  satellite cells, so the positive is spread bilinearly over its 4 cells
  (:func:`matching_targets`); at the optimum a row is those weights, whose expectation
  is the exact location, so the windowed expected match of
  :func:`cvloc.models.matching.extract_matches` is unbiased (a one-hot nearest cell
  quantises matches to a cell, 3 m at kitti-small). BEV -> satellite: cross-entropy of
  each row's softmax over all M satellite cells; satellite -> BEV: of each column's
  softmax over the seen BEV rows, weighted by the column's share of the positive mass;
  averaged. Unseen cells (``bev_valid``) and cells whose 4 partner cells are not all on
  the grid are ignored. It acts on the refined similarity; the dustbin learns through
  the pose loss (the coupling mass is the Procrustes weight).
- **Pose (VCE).** Mean distance (metres) between a grid of virtual points around the
  prior camera moved by the predicted and by the GT prior -> pose motion (FG2's L_VCE).
- **Alignment (optional, ours).** The alignment InfoNCE of DenseFlow's feature
  pre-training (:func:`cvloc.losses_aux.alignment_loss_at`) on the refined similarity: the
  mean score of all seen BEV cells at their GT cells must beat the same mean at every
  rigid shift within ``align_radius`` cells. The per-cell InfoNCE alone barely leaves
  chance (log M) on a CPU budget; the whole-BEV term gives the descriptors a signal from
  the first steps, as it did DenseFlow's encoders (``training/README.md``).
- **Height.** ``sat_height_m`` (top-most surface height per satellite pixel) at each
  cell's GT location, nearest pixel (no blending of a roof with the street beside it);
  cross-entropy of the bin softmax against a Gaussian over the bins at the clamped
  height (sigma in bins, as GS-ViewBridge), divided by log Z (1 for a uniform
  prediction), on cells whose column is seen and whose GT location is on the image.
  Skipped without ``sat_height_m`` and for the flat ground (one bin).
- **Visibility (optional, ours).** With the visibility head
  (:mod:`cvloc.models.visibility`), binary cross-entropy of its logit against whether the
  ground pixel a seen cell is lifted to (at its predicted height, through the prior
  camera: the pixel its match is reported with) truly shows a point within
  ``visibility_radius_cells`` of the cell's GT location (:func:`visibility_targets`).
  Needs the per-pixel ground truth ``gt_sat_uv_grd`` (the synthetic world's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cvloc.data.batch import camera_xy
from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import apply_rigid_2d, relative_rigid_2d, wrap_deg
from cvloc.losses_aux import alignment_loss_at, masked_mean
from cvloc.models.matching import NO_MATCH_SCORE

if TYPE_CHECKING:
    from cvloc.config import TrainConfig


@dataclass(frozen=True)
class FineMatchLossConfig:
    """Weights and settings of the FineMatch loss (``train.finematch``).

    total = ``matching_weight`` L_M + ``pose_weight`` L_VCE + ``height_weight`` L_height
    + ``align_weight`` L_align + ``visibility_weight`` L_vis.
    The notes give 1 for L_VCE and L_M at known orientation (L_M: 100 at unknown); the
    height weight is unpublished, ours is 1 (L_height starts near 1, L_M near log M).

    Attributes:
        matching_weight: weight of the symmetric InfoNCE.
        pose_weight: weight of the VCE (metres).
        height_weight: weight of the height cross-entropy.
        align_weight: weight of the alignment InfoNCE (0: off, as the paper).
        align_radius: the largest shift of its negatives, in cells.
        height_sigma_bins: sigma of the Gaussian height target, in bins.
        vce_extent_m: side of the square of virtual points around the prior camera.
        vce_points: virtual points per side.
        visibility_weight: weight of the visibility cross-entropy (0: off; needs the
            model's visibility head and ``gt_sat_uv_grd`` in the batches).
        visibility_radius_cells: a cell counts as seen when its lifted pixel's true
            satellite location is within this many cells of the cell's.
    """

    matching_weight: float = 1.0
    pose_weight: float = 1.0
    height_weight: float = 1.0
    align_weight: float = 0.0
    align_radius: int = 8
    height_sigma_bins: float = 0.75
    vce_extent_m: float = 10.0
    vce_points: int = 10
    visibility_weight: float = 0.0
    visibility_radius_cells: float = 1.5

    def __post_init__(self) -> None:
        weights = (self.matching_weight, self.pose_weight, self.height_weight,
                   self.align_weight, self.visibility_weight)  # fmt: skip
        if min(weights) < 0 or not any(w > 0 for w in weights) or self.align_radius < 0:
            raise ValueError(
                f"loss weights must be >= 0 and not all 0 (and align_radius >= 0), got {self}"
            )
        if not self.visibility_radius_cells > 0:
            raise ValueError(f"visibility_radius_cells must be positive, got {self}")
        if not self.height_sigma_bins > 0 or not self.vce_extent_m > 0 or self.vce_points < 1:
            raise ValueError(f"sigma, extent and points must be positive, got {self}")


def gt_cell_uv(batch: dict[str, Any], grid_hw: tuple[int, int], stride: float) -> torch.Tensor:
    """Where each BEV cell, placed with the prior pose, truly lies on the satellite image.

    Convention: cell n = i W + j is satellite pixel centre ((j + 0.5) stride - 0.5,
    (i + 0.5) stride - 0.5) at the prior pose; world x east, y north, metres.

    Args:
        batch: ``sat_center_uv`` (B, 2), ``m_per_px`` (B,), ``camera_uv_prior`` /
            ``camera_uv_gt`` (B, 2), ``yaw_deg_prior`` / ``yaw_deg_gt`` (B,).
        grid_hw: (H, W) of the cell grid.
        stride: satellite pixels per cell.

    Returns:
        (B, N, 2) satellite pixels, float32.
    """
    center, m = batch["sat_center_uv"].float(), batch["m_per_px"].float()
    R, t = relative_rigid_2d(
        camera_xy(batch, "prior").float(),
        batch["yaw_deg_prior"].float(),
        camera_xy(batch, "gt").float(),
        batch["yaw_deg_gt"].float(),
    )
    grid = satellite_grid_uv(*grid_hw, stride, torch.float32, center.device).reshape(1, -1, 2)
    cells_xy = pixel_to_world_xy(grid, center[:, None], m[:, None])
    return world_xy_to_pixel(apply_rigid_2d(R, t, cells_xy), center[:, None], m[:, None])


def matching_targets(
    gt_uv: torch.Tensor, grid_hw: tuple[int, int], stride: float, row_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear soft positives of every BEV cell over the satellite cells.

    Args:
        gt_uv: (B, N, 2) true satellite pixels of the BEV cells (:func:`gt_cell_uv`).
        grid_hw: (H, W) of the satellite cell grid (H, W >= 2).
        stride: satellite pixels per cell.
        row_valid: (B, N) bool, the BEV cells seen by the camera.

    Returns:
        targets: (B, N, M) weights, each partnered row sums to 1, others are 0;
        has_partner: (B, N) bool.
    """
    H, W = grid_hw
    x = (gt_uv[..., 0] + 0.5) / stride - 0.5  # cell coordinates, integer at centres
    y = (gt_uv[..., 1] + 0.5) / stride - 0.5
    has_partner = row_valid & (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    x0 = x.floor().clamp(0, W - 2)
    y0 = y.floor().clamp(0, H - 2)
    fx, fy = (x - x0).clamp(0, 1), (y - y0).clamp(0, 1)
    base = (y0 * W + x0).long()
    index = torch.stack([base, base + 1, base + W, base + W + 1], -1)  # B,N,4
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    weight = weight * has_partner[..., None]
    targets = gt_uv.new_zeros(*gt_uv.shape[:2], H * W)
    return targets.scatter_add_(2, index, weight), has_partner


def infonce_loss(
    similarity: torch.Tensor, targets: torch.Tensor, row_valid: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with soft positives, averaged over the partnered rows.

    Args:
        similarity: (B, N, M) refined scores.
        targets: (B, N, M) soft positives (:func:`matching_targets`).
        row_valid: (B, N) bool, the BEV rows that compete in the column softmax.

    Returns:
        () batch mean; a sample without partners contributes 0.
    """
    log_row = F.log_softmax(similarity, dim=2)
    masked = torch.where(row_valid[..., None], similarity, similarity.new_tensor(NO_MATCH_SCORE))
    log_col = F.log_softmax(masked, dim=1)
    # Each partnered row carries mass 1, so this is the column CE weighted by column mass.
    both = -(targets * (log_row + log_col)).sum((1, 2))
    return (0.5 * both / targets.sum((1, 2)).clamp_min(1.0)).mean()


def surface_height_targets(
    sat_height_m: torch.Tensor, gt_uv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The satellite surface height at each BEV cell's true location (nearest pixel).

    Args:
        sat_height_m: (B, Hs, Ws) surface height of every satellite pixel.
        gt_uv: (B, N, 2) true satellite pixels of the BEV cells.

    Returns:
        heights: (B, N) metres and inside: (B, N) bool, the location is on the image.
    """
    Hs, Ws = sat_height_m.shape[-2:]
    u, v = gt_uv.unbind(-1)
    inside = (u >= -0.5) & (u <= Ws - 0.5) & (v >= -0.5) & (v <= Hs - 0.5)
    grid = torch.stack([(u + 0.5) / Ws * 2 - 1, (v + 0.5) / Hs * 2 - 1], -1)[:, None]
    heights = F.grid_sample(
        sat_height_m[:, None].float(), grid, mode="nearest", align_corners=False
    )  # B,1,1,N
    return heights[:, 0, 0], inside


def height_loss(
    logits: torch.Tensor,
    bins_m: torch.Tensor,
    target_m: torch.Tensor,
    mask: torch.Tensor,
    sigma_bins: float,
) -> torch.Tensor:
    """Cross-entropy of the height bins against a Gaussian target, divided by log Z.

    Args:
        logits: (B, Z, H, W) height-bin logits, Z >= 2.
        bins_m: (Z,) evenly spaced bin centres.
        target_m: (B, N) target heights, N = H W (clamped to the bins' range).
        mask: (B, N) bool, the cells to supervise.
        sigma_bins: Gaussian sigma, in bins.

    Returns:
        () batch mean of the per-sample mean over masked cells (0 without any).
    """
    Z = bins_m.shape[0]
    position = (target_m.clamp(bins_m[0], bins_m[-1]) - bins_m[0]) / (bins_m[1] - bins_m[0])
    k = torch.arange(Z, device=logits.device, dtype=torch.float32)
    target = torch.softmax(-0.5 * ((k - position[..., None]) / sigma_bins) ** 2, dim=-1)
    log_p = F.log_softmax(logits.float().flatten(2).transpose(1, 2), dim=-1)  # B,N,Z
    ce = -(target * log_p).sum(-1) / math.log(Z)
    return masked_mean(ce, mask)


def vce_loss(
    pred: dict[str, Any], batch: dict[str, Any], extent_m: float, points: int
) -> torch.Tensor:
    """Virtual correspondence error (FG2's L_VCE), metres, per sample.

    Args:
        pred: ``camera_xy_pred`` (B, 2), ``yaw_deg_pred`` (B,).
        batch: the prior and GT poses and geo-referencing.
        extent_m: side of the square of virtual points centred at the prior camera.
        points: virtual points per side.

    Returns:
        (B,) mean distance between the points moved by the predicted and the GT motion.
    """
    prior_xy, prior_yaw = camera_xy(batch, "prior").float(), batch["yaw_deg_prior"].float()
    R_gt, t_gt = relative_rigid_2d(
        prior_xy, prior_yaw, camera_xy(batch, "gt").float(), batch["yaw_deg_gt"].float()
    )
    R, t = relative_rigid_2d(prior_xy, prior_yaw, pred["camera_xy_pred"], pred["yaw_deg_pred"])
    side = torch.linspace(-extent_m / 2, extent_m / 2, points, device=prior_xy.device)
    offsets = torch.stack(torch.meshgrid(side, side, indexing="xy"), -1).reshape(1, -1, 2)
    virtual = prior_xy[:, None] + offsets
    diff = apply_rigid_2d(R, t, virtual) - apply_rigid_2d(R_gt, t_gt, virtual)
    return ((diff**2).sum(-1) + 1e-12).sqrt().mean(-1)  # eps: finite gradient at 0


def visibility_targets(
    pred: dict[str, Any], batch: dict[str, Any], gt_uv: torch.Tensor, radius_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether the ground pixel each BEV cell is lifted to truly shows that cell.

    Convention: satellite pixels; the cells lifted as the correspondence metrics lift them
    (:func:`cvloc.evaluate.match_gt_sat_uv`: the prior camera, the predicted height).

    Args:
        pred: ``match_src_uv`` (B, N, 2), ``match_height_m`` (B, N), ``bev_valid``.
        batch: with ``gt_sat_uv_grd`` (B, Hg, Wg, 2).
        gt_uv: (B, N, 2) the cells' GT satellite locations (:func:`gt_cell_uv`).
        radius_px: how near the lifted pixel's true location must be, satellite pixels.

    Returns:
        target: (B, N) float 1 (seen) / 0 and mask: (B, N) bool, the seen cells whose
        lifted pixel has a ground truth.

    Raises:
        KeyError: the batch has no ``gt_sat_uv_grd``.
    """
    if "gt_sat_uv_grd" not in batch:
        raise KeyError(
            "train.finematch.visibility_weight > 0 needs gt_sat_uv_grd in the batches "
            "(synthetic data, with data.cache_train=false and data.cache_val=false: the caches "
            "drop it)"
        )
    # Imported here: cvloc.evaluate -> checkpoint -> config imports this module.
    from cvloc.evaluate import match_gt_sat_uv

    with torch.no_grad():
        pixel_gt = match_gt_sat_uv(pred, batch, pred["match_height_m"].detach()).float()
        mask = torch.isfinite(pixel_gt).all(-1) & (pred["bev_valid"].flatten(1) > 0)
        near = (pixel_gt - gt_uv).norm(dim=-1) <= radius_px
        return (near & mask).float(), mask


def finematch_loss(
    pred: dict[str, Any], batch: dict[str, Any], cfg: TrainConfig, epoch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """FineMatch's total loss (see the module docstring), weights from ``cfg.finematch``.

    Args:
        pred: :class:`cvloc.models.FineMatch` output.
        batch: the batch (GT and prior poses, geo-referencing, optional ``sat_height_m``).
        cfg: training configuration.
        epoch: 0-based epoch (unused: constant weights; every loss has this signature).

    Returns:
        (total, parts): the scalar loss and detached scalars ``loss``, ``matching``,
        ``pose`` (VCE, metres), ``height`` (0 when skipped), ``alignment`` (0 when off),
        ``height_mae_m`` (mean absolute surface-height error on the supervised cells, 0
        when skipped), ``visibility`` (0 when off) and ``visibility_acc`` (the head's
        accuracy at probability 0.5 on its targets, 0 when off),
        ``epe_final_px`` (mean distance of the partnered cells' matches to their GT
        location, satellite pixels), ``position_m`` and ``yaw_deg`` (pose errors).
    """
    del epoch
    fm = cfg.finematch
    grid_hw = tuple(pred["surface_height_m"].shape[-2:])
    stride = batch["satellite"].shape[-1] / grid_hw[1]
    row_valid = pred["bev_valid"].flatten(1) > 0
    gt_uv = gt_cell_uv(batch, grid_hw, stride)
    targets, has_partner = matching_targets(gt_uv, grid_hw, stride, row_valid)
    matching = infonce_loss(pred["similarity"].float(), targets, row_valid)
    pose = vce_loss(pred, batch, fm.vce_extent_m, fm.vce_points).mean()
    height, height_mae, bins = (
        matching.new_zeros(()),
        matching.new_zeros(()),
        pred["height_bins_m"],
    )
    if "sat_height_m" in batch and bins.shape[0] > 1:
        target_m, inside = surface_height_targets(batch["sat_height_m"], gt_uv)
        mask = inside & (pred["column_valid"].flatten(1) > 0)
        height = height_loss(pred["height_logits"], bins, target_m, mask, fm.height_sigma_bins)
        error = (pred["match_height_m"].detach() - target_m.clamp(bins[0], bins[-1])).abs()
        height_mae = masked_mean(error, mask)
    total = fm.matching_weight * matching + fm.pose_weight * pose + fm.height_weight * height
    align = matching.new_zeros(())
    if fm.align_weight > 0:
        cells = ((gt_uv + 0.5) / stride - 0.5).transpose(1, 2).unflatten(2, grid_hw)
        align = alignment_loss_at(
            pred["similarity"].float(), row_valid.unflatten(1, grid_hw), cells, fm.align_radius
        )
        total = total + fm.align_weight * align
    visibility, visibility_acc = matching.new_zeros(()), matching.new_zeros(())
    if fm.visibility_weight > 0:
        if "visibility_logits" not in pred:
            raise KeyError(
                "train.finematch.visibility_weight > 0 needs the visibility head "
                "(model.finematch.visibility=true)"
            )
        target, mask = visibility_targets(pred, batch, gt_uv, fm.visibility_radius_cells * stride)
        logits = pred["visibility_logits"].float().flatten(1)
        per_cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        visibility = masked_mean(per_cell, mask)
        visibility_acc = masked_mean(((logits > 0).float() == target).float(), mask)
        total = total + fm.visibility_weight * visibility
    with torch.no_grad():
        epe = masked_mean((pred["match_dst_uv"] - gt_uv).norm(dim=-1), has_partner)
        position = (pred["camera_xy_pred"] - camera_xy(batch, "gt")).norm(dim=-1).mean()
        yaw = wrap_deg(pred["yaw_deg_pred"] - batch["yaw_deg_gt"]).abs().mean()
    parts = {
        "loss": total,
        "matching": matching,
        "pose": pose,
        "height": height,
        "alignment": align,
        "visibility": visibility,
    }
    parts = {k: v.detach() for k, v in parts.items()}
    parts.update(height_mae_m=height_mae, epe_final_px=epe, position_m=position, yaw_deg=yaw,
                 visibility_acc=visibility_acc.detach())  # fmt: skip
    return total, parts
