"""Auxiliary cross-view losses: targets, alignment InfoNCE and the pre-training objective."""

from __future__ import annotations

import dataclasses

import torch

from cvloc.config import TrainConfig
from cvloc.losses_aux import (
    alignment_loss,
    correlation_loss,
    features_loss,
    ground_truth_cells,
)


def _shift_east(B=1, H=4, W=4, stride=8):
    """GT flow moving every BEV cell one cell east, and correlations peaked on / off it."""
    gt_flow = torch.zeros(B, 2, H * stride, W * stride)
    gt_flow[:, 0] = stride
    corr = torch.full((B, H * W, H * W), -20.0)
    off = torch.full((B, H * W, H * W), -20.0)
    for i in range(H):
        for j in range(W):
            if j + 1 < W:
                corr[:, i * W + j, i * W + j + 1] = 20.0
                off[:, i * W + j, i * W + j] = 20.0
    return gt_flow, corr, off


def test_ground_truth_cells_of_a_rigid_shift():
    gt_flow, _, _ = _shift_east(H=3, W=5)
    cells = ground_truth_cells(gt_flow, 8)
    assert cells.shape == (1, 2, 3, 5)
    jj, ii = torch.meshgrid(torch.arange(5.0), torch.arange(3.0), indexing="xy")
    torch.testing.assert_close(cells[0, 0], jj + 1)
    torch.testing.assert_close(cells[0, 1], ii)


def test_correlation_loss_targets_the_gt_cells():
    # A correlation that peaks exactly at the GT cell of every BEV cell has near-zero loss;
    # the same peak one cell off has a large one.
    gt_flow, corr, off = _shift_east()
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    good = correlation_loss(corr, valid, gt_flow, 8)
    bad = correlation_loss(off, valid, gt_flow, 8)
    assert float(good) < 1e-6 and float(bad) > 30.0
    # Cells whose target leaves the grid (the last column) or that are invisible are ignored.
    valid[:, :, :3] = False
    assert float(correlation_loss(corr, valid, gt_flow, 8)) == 0.0


def test_alignment_loss_prefers_the_gt_alignment():
    gt_flow, corr, off = _shift_east()
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[:, :, 3] = False  # cells whose target would leave the grid
    good = alignment_loss(corr / 10, valid, gt_flow, 8, radius=2)
    bad = alignment_loss(off / 10, valid, gt_flow, 8, radius=2)
    # Good: shift 0 scores 2; any other shift scores -2 per cell whose shifted target stays
    # on the 4 x 4 grid and 0 per cell whose target leaves it, averaged over the 12 cells.
    scores = []
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            inside = sum(
                0 <= j + 1 + dx < 4 and 0 <= i + dy < 4 for i in range(4) for j in range(3)
            )
            scores.append(2.0 if dx == dy == 0 else -2.0 * inside / 12)
    expected = -torch.log_softmax(torch.tensor(scores), 0)[12]
    assert abs(float(good) - float(expected)) < 1e-5
    assert float(bad) > 3.0
    # Only samples with a visible cell count; none at all gives 0.
    assert float(alignment_loss(corr, torch.zeros_like(valid), gt_flow, 8, 2)) == 0.0


def test_alignment_loss_gradient_reaches_the_correlation():
    gt_flow, corr, _ = _shift_east()
    corr = (corr / 40).requires_grad_()
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    alignment_loss(corr, valid, gt_flow, 8, radius=1).backward()
    grad = corr.grad[0]
    # Raising a GT entry lowers the loss; the gradient is finite everywhere.
    assert torch.isfinite(grad).all() and float(grad[0, 1]) < 0


def test_features_loss_weights_and_parts():
    gt_flow, corr, _ = _shift_east(B=2)
    B = 2
    batch = {
        "satellite": torch.zeros(B, 3, 32, 32),
        "sat_center_uv": torch.full((B, 2), 15.5),
        "m_per_px": torch.full((B,), 0.5),
        "camera_uv_prior": torch.full((B, 2), 15.5),
        "yaw_deg_prior": torch.zeros(B),
        "camera_uv_gt": torch.tensor([[23.5, 15.5], [23.5, 15.5]]),  # 8 px east: GT flow
        "yaw_deg_gt": torch.zeros(B),
    }
    valid = torch.ones(B, 4, 4, dtype=torch.bool)
    pred = {
        "correlation": corr / 10,
        "feature_valid": valid,
        "camera_uv_pred": batch["camera_uv_gt"],
        "yaw_deg_pred": torch.zeros(B),
    }
    cfg = dataclasses.replace(
        TrainConfig(), corr_loss_weight=0.5, align_loss_weight=2.0, align_radius=1
    )
    total, parts = features_loss(pred, batch, cfg, epoch=0)
    expected = 0.5 * parts["correlation"] + 2.0 * parts["alignment"]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(
        parts["correlation"], correlation_loss(corr / 10, valid, gt_flow, 8)
    )
    assert float(parts["epe_final_px"]) < 1e-4  # the predicted pose is the GT
