"""Auxiliary cross-view losses on DenseFlow's correlation volume (not in the paper).

The paper starts its encoders from ImageNet weights; we cannot download them, and from a
random start the flow losses of eq. 4-7 reach the encoders only through the correlation
lookups of an untrained GRU, which on 2 CPU cores learns nothing useful in thousands of
steps (``training/README.md``). Two InfoNCE terms give the encoders a direct signal:

- :func:`correlation_loss`, per BEV cell: its correlation row peaks at its ground-truth
  satellite cell (1 positive among all H2 W2 cells). Individual cells are often
  featureless (road, grass), so this learns slowly.
- :func:`alignment_loss`, per sample: the mean correlation of all visible BEV cells with
  their ground-truth cells must beat the same mean at every rigid shift of those cells
  within ``align_radius``. This is template matching in feature space, the objective of
  the classical baseline with learned features; it learns an order of magnitude faster.

:func:`features_loss` is the objective of ``train.objective=features``: cross-view feature
pre-training of the encoders and the RefineBlock with these two terms only, the stand-in
for the ImageNet initialisation (``configs/denseflow-synth-kitti-small-features.yaml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cvloc.models.corr import shifted_match_scores
from cvloc.models.pose_head import flow_from_pose

if TYPE_CHECKING:  # cvloc.config imports losses_finematch, which imports this module
    from cvloc.config import TrainConfig


def ground_truth_flow(batch: dict[str, Any], sat_hw: tuple[int, int]) -> torch.Tensor:
    """The flow implied by the ground-truth pose for every BEV pixel (placed at the prior).

    Args:
        batch: batch with ``sat_center_uv`` (B, 2), ``m_per_px`` (B,), ``camera_uv_prior``
            (B, 2), ``yaw_deg_prior`` (B,), ``camera_uv_gt`` (B, 2), ``yaw_deg_gt`` (B,).
        sat_hw: (Hs, Ws) of the satellite image.

    Returns:
        (B, 2, Hs, Ws) flow in satellite pixels.
    """
    return flow_from_pose(
        sat_hw,
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_uv_gt"],
        batch["yaw_deg_gt"],
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over the masked entries, then the batch mean.

    Shared by every training loss (DenseFlow's per-pixel terms, FineMatch's per-match ones).

    Args:
        values: (B, ...) values.
        mask: (B, ...) of the same shape, bool or 0/1.

    Returns:
        () scalar; samples without a masked entry contribute 0.
    """
    w = mask.to(values.dtype).flatten(1)
    return ((values.flatten(1) * w).sum(1) / w.sum(1).clamp_min(1.0)).mean()


def ground_truth_cells(gt_flow: torch.Tensor, stride: int) -> torch.Tensor:
    """The satellite feature cell each BEV cell truly matches, at sub-cell precision.

    Convention: feature cell (i, j) covers satellite pixels [s j, s j + s) x [s i, s i + s),
    so the mean of a rigid flow over the block is its value at the cell centre; positions
    are (x, y) = (column, row) in cells, integers at cell centres.

    Args:
        gt_flow: (B, 2, Hs, Ws) ground-truth flow in satellite pixels.
        stride: satellite pixels per feature cell.

    Returns:
        (B, 2, Hs / stride, Ws / stride) target cell positions.
    """
    cell_flow = F.avg_pool2d(gt_flow, stride) / stride
    H, W = cell_flow.shape[-2:]
    ii, jj = torch.meshgrid(
        torch.arange(H, dtype=cell_flow.dtype, device=cell_flow.device),
        torch.arange(W, dtype=cell_flow.dtype, device=cell_flow.device),
        indexing="ij",
    )
    return cell_flow + torch.stack([jj, ii])[None]


def correlation_loss(
    correlation: torch.Tensor, feature_valid: torch.Tensor, gt_flow: torch.Tensor, stride: int
) -> torch.Tensor:
    """InfoNCE of each visible BEV cell's correlation row at its ground-truth satellite cell.

    The target is the satellite cell nearest to :func:`ground_truth_cells`.

    Args:
        correlation: (B, H W, H2 W2) level-0 correlation of BEV and satellite cells.
        feature_valid: (B, H, W) BEV cells seen by the camera.
        gt_flow: (B, 2, Hs, Ws) ground-truth flow in satellite pixels.
        stride: satellite pixels per feature cell.

    Returns:
        Scalar mean cross-entropy over visible cells whose target lies on the grid (0 when
        there is none).
    """
    targets = torch.round(ground_truth_cells(gt_flow, stride)).long()
    tx, ty = targets[:, 0], targets[:, 1]
    H2, W2 = targets.shape[-2:]
    ok = feature_valid & (tx >= 0) & (tx < W2) & (ty >= 0) & (ty < H2)
    if not ok.any():
        return correlation.new_zeros(())
    target = (ty.clamp(0, H2 - 1) * W2 + tx.clamp(0, W2 - 1)).flatten(1)  # B,HW
    ce = F.cross_entropy(correlation.float().transpose(1, 2), target, reduction="none")
    return ce[ok.flatten(1)].mean()


def alignment_loss(
    correlation: torch.Tensor,
    feature_valid: torch.Tensor,
    gt_flow: torch.Tensor,
    stride: int,
    radius: int,
) -> torch.Tensor:
    """InfoNCE of the ground-truth alignment of the whole BEV against its rigid shifts.

    :func:`alignment_loss_at` with the targets of :func:`ground_truth_cells`.

    Args:
        correlation: (B, H W, H2 W2) level-0 correlation of BEV and satellite cells.
        feature_valid: (B, H, W) BEV cells seen by the camera.
        gt_flow: (B, 2, Hs, Ws) ground-truth flow in satellite pixels.
        stride: satellite pixels per feature cell.
        radius: the largest negative shift along each axis, in cells.

    Returns:
        Scalar mean cross-entropy over the samples with a visible cell (0 when none has).
    """
    return alignment_loss_at(
        correlation, feature_valid, ground_truth_cells(gt_flow, stride), radius
    )


def alignment_loss_at(
    correlation: torch.Tensor, feature_valid: torch.Tensor, targets: torch.Tensor, radius: int
) -> torch.Tensor:
    """InfoNCE of the alignment of the visible BEV cells at ``targets`` against its shifts.

    Scores: :func:`cvloc.models.corr.shifted_match_scores` of the visible cells at their
    targets, for every shift in [-radius, radius]^2; the positive is shift 0. Cells whose
    target leaves the grid still count (they score 0 there, as at any shift that leaves
    it). Serves DenseFlow's correlation and FineMatch's similarity alike.

    Convention: targets in satellite feature cells, (x, y) = (column, row), integer values
    at cell centres.

    Args:
        correlation: (B, H W, H2 W2) scores of BEV cells against satellite cells.
        feature_valid: (B, H, W) BEV cells seen by the camera.
        targets: (B, 2, H, W) the satellite cell each BEV cell truly lies on.
        radius: the largest negative shift along each axis, in cells.

    Returns:
        Scalar mean cross-entropy over the samples with a visible cell (0 when none has).
    """
    scores = shifted_match_scores(
        correlation, tuple(targets.shape[-2:]), targets, feature_valid, radius
    )
    seen = feature_valid.flatten(1).any(1)
    if not seen.any():
        return correlation.new_zeros(())
    positive = torch.full_like(seen, scores.shape[1] // 2, dtype=torch.long)
    return F.cross_entropy(scores[seen], positive[seen])


def auxiliary_losses(
    pred: dict[str, Any], gt_flow: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted-in terms of a DenseFlow prediction: (correlation, alignment) losses.

    Args:
        pred: prediction with ``correlation`` (B, H W, H2 W2) and ``feature_valid``
            (B, H, W).
        gt_flow: (B, 2, Hs, Ws) ground-truth flow.
        cfg: training configuration (``corr_loss_weight``, ``align_loss_weight``,
            ``align_radius``). The correlation term is always computed (it is cheap and
            worth logging); the alignment term only with a positive weight (else 0).

    Returns:
        (correlation loss, alignment loss), scalars.
    """
    valid = pred["feature_valid"]
    stride = gt_flow.shape[-1] // valid.shape[-1]
    zero = gt_flow.new_zeros(())
    corr = correlation_loss(pred["correlation"], valid, gt_flow, stride)
    align = zero
    if cfg.align_loss_weight > 0:
        align = alignment_loss(pred["correlation"], valid, gt_flow, stride, cfg.align_radius)
    return corr, align


def features_loss(
    pred: dict[str, Any], batch: dict[str, Any], cfg: TrainConfig, epoch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Objective of cross-view feature pre-training: weighted correlation + alignment terms.

    Args:
        pred: DenseFlow prediction of ``forward(batch, correlation_only=True)``.
        batch: the batch (ground-truth and prior poses, geo-referencing).
        cfg: training configuration (the two weights and ``align_radius``).
        epoch: unused (the objective does not change over epochs).

    Returns:
        (total, parts): parts ``loss``, ``correlation``, ``alignment`` and
        ``epe_final_px`` (end-point error of the alignment pose's flow over visible
        pixels, in satellite pixels).
    """
    del epoch
    sat_hw = tuple(batch["satellite"].shape[-2:])
    gt_flow = ground_truth_flow(batch, sat_hw)
    corr, align = auxiliary_losses(pred, gt_flow, cfg)
    total = cfg.corr_loss_weight * corr + cfg.align_loss_weight * align
    with torch.no_grad():
        flow = flow_from_pose(
            sat_hw,
            batch["sat_center_uv"],
            batch["m_per_px"],
            batch["camera_uv_prior"],
            batch["yaw_deg_prior"],
            pred["camera_uv_pred"],
            pred["yaw_deg_pred"],
        )
        valid = F.interpolate(pred["feature_valid"][:, None].float(), size=sat_hw)
        epe = masked_mean(torch.linalg.vector_norm(flow - gt_flow, dim=1, keepdim=True), valid)
    parts = {
        "loss": total.detach(),
        "correlation": corr.detach(),
        "alignment": align.detach(),
        "epe_final_px": epe,
    }
    return total, parts
