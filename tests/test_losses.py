"""DenseFlow losses (eq. 4-7): hand-checked values, consistency, schedule, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cvloc.config import TrainConfig, load_config
from cvloc.losses import (
    confidence_loss,
    denseflow_loss,
    ground_truth_flow,
    loss_schedule,
    masked_mean,
    standardize,
)
from cvloc.models import DenseFlow
from cvloc.models.pose_head import flow_from_pose

H = W = 16


def pose_batch(B: int = 2, offset_uv=(3.0, -2.0), dyaw: float = 4.0) -> dict:
    """A batch with only the pose and geo-referencing keys the losses read."""
    prior_uv = torch.tensor([[7.5, 7.5]]).repeat(B, 1)
    return {
        "sat_center_uv": torch.full((B, 2), 7.5),
        "m_per_px": torch.full((B,), 0.5),
        "camera_uv_prior": prior_uv,
        "yaw_deg_prior": torch.full((B,), 10.0),
        "camera_uv_gt": prior_uv + torch.tensor(offset_uv),
        "yaw_deg_gt": torch.full((B,), 10.0 + dyaw),
    }


def perfect_pred(batch: dict, iters: int = 3) -> dict:
    gt = ground_truth_flow(batch, (H, W))
    B = gt.shape[0]
    return {
        "flow_iters": [gt.clone() for _ in range(iters)],
        "confidence_iters": [torch.full((B, 1, H, W), 0.5) for _ in range(iters)],
        "bev_valid": torch.ones(B, 1, H, W),
        "camera_uv_pred": batch["camera_uv_gt"].clone(),
        "yaw_deg_pred": batch["yaw_deg_gt"].clone(),
    }


class TestSchedule:
    def test_switch_epoch(self):
        cfg = TrainConfig(switch_epoch=15)
        assert loss_schedule(cfg, 0) == (1.0, 200.0)
        assert loss_schedule(cfg, 14) == (1.0, 200.0)
        assert loss_schedule(cfg, 15) == (10.0, 20.0)
        assert loss_schedule(cfg, 24) == (10.0, 20.0)

    def test_parts_report_the_schedule(self):
        batch = pose_batch()
        cfg = TrainConfig(switch_epoch=2)
        _, early = denseflow_loss(perfect_pred(batch), batch, cfg, epoch=1)
        _, late = denseflow_loss(perfect_pred(batch), batch, cfg, epoch=2)
        assert (float(early["beta"]), float(early["kappa"])) == (1.0, 200.0)
        assert (float(late["beta"]), float(late["kappa"])) == (10.0, 20.0)


class TestDenseflowLoss:
    def test_perfect_prediction_has_zero_matching_and_position_loss(self):
        batch = pose_batch()
        total, parts = denseflow_loss(perfect_pred(batch), batch, TrainConfig(), 0)
        assert float(parts["matching"]) == pytest.approx(0.0, abs=1e-5)
        assert float(parts["position"]) == pytest.approx(0.0, abs=1e-5)
        assert float(parts["epe_final_px"]) == pytest.approx(0.0, abs=1e-5)
        # With all errors equal the standardised error is 0: each pixel costs sigmoid(0).
        assert float(parts["confidence"]) == pytest.approx(3 * 0.5)
        assert float(total) == pytest.approx(100 * 1.5, rel=1e-5)

    def test_gt_flow_is_zero_when_prior_is_gt(self):
        batch = pose_batch(offset_uv=(0.0, 0.0), dyaw=0.0)
        assert ground_truth_flow(batch, (H, W)).abs().max() < 1e-5

    def test_gt_flow_of_a_pure_shift(self):
        batch = pose_batch(offset_uv=(3.0, -2.0), dyaw=0.0)
        gt = ground_truth_flow(batch, (H, W))
        torch.testing.assert_close(gt[:, 0], torch.full((2, H, W), 3.0))
        torch.testing.assert_close(gt[:, 1], torch.full((2, H, W), -2.0))

    def test_hand_checked_matching_and_position(self):
        # Prior = GT: the GT flow is 0; a constant predicted flow (1, -2) costs |1| + |-2| = 3
        # per visible pixel, whatever the visible share.
        batch = pose_batch(offset_uv=(0.0, 0.0), dyaw=0.0)
        pred = perfect_pred(batch, iters=2)
        pred["flow_iters"] = [torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(2, 2, H, W)] * 2
        pred["bev_valid"][:, :, : H // 2] = 0
        pred["camera_uv_pred"] = batch["camera_uv_gt"] + torch.tensor([1.0, -2.0])
        pred["yaw_deg_pred"] = batch["yaw_deg_gt"] + 190.0  # wraps to -170: error 170
        cfg = TrainConfig(iter_gamma=0.5)
        total, parts = denseflow_loss(pred, batch, cfg, 0)
        assert float(parts["matching"]) == pytest.approx(0.5 * 3 + 3)
        assert float(parts["position_yaw_deg"]) == pytest.approx(170.0)
        assert float(parts["position_uv_px"]) == pytest.approx(3.0)
        expected = 4.5 + 100 * float(parts["confidence"]) + 1.0 * 173.0
        assert float(total) == pytest.approx(expected, rel=1e-5)

    def test_yaw_error_wraps(self):
        batch = pose_batch(dyaw=0.0)
        batch["yaw_deg_gt"] = torch.full((2,), -179.0)
        pred = perfect_pred(batch)
        pred["yaw_deg_pred"] = torch.full((2,), 179.0)
        _, parts = denseflow_loss(pred, batch, TrainConfig(), 0)
        assert float(parts["position_yaw_deg"]) == pytest.approx(2.0, abs=1e-4)

    @pytest.mark.parametrize("term", ["matching", "confidence", "position"])
    def test_ablation_switch_removes_its_term(self, term):
        batch = pose_batch()
        pred = perfect_pred(batch)
        pred["flow_iters"] = [f + 1.0 for f in pred["flow_iters"]]
        pred["camera_uv_pred"] = pred["camera_uv_pred"] + 2.0
        cfg = TrainConfig()
        total, parts = denseflow_loss(pred, batch, cfg, 0)
        off = dataclasses.replace(cfg, **{f"use_{term}_loss": False})
        total_off, _ = denseflow_loss(pred, batch, off, 0)
        weight = {"matching": 1.0, "confidence": cfg.alpha, "position": cfg.beta_initial}[term]
        assert float(total - total_off) == pytest.approx(weight * float(parts[term]), rel=1e-5)

    def test_iteration_weights(self):
        batch = pose_batch(offset_uv=(0.0, 0.0), dyaw=0.0)
        pred = perfect_pred(batch, iters=3)
        pred["flow_iters"] = [torch.full((2, 2, H, W), float(i + 1)) for i in range(3)]
        _, plain = denseflow_loss(pred, batch, TrainConfig(iter_gamma=1.0), 0)
        _, raft = denseflow_loss(pred, batch, TrainConfig(iter_gamma=0.8), 0)
        assert float(plain["matching"]) == pytest.approx(2 + 4 + 6)
        assert float(raft["matching"]) == pytest.approx(0.64 * 2 + 0.8 * 4 + 6)


class TestConfidenceLoss:
    def test_hand_checked(self):
        # Two visible pixels with errors 1 and 3: standardised -1 and +1 (population std);
        # S = 1 on the good one and 0 on the bad one each cost sigmoid(-1/kappa).
        error = torch.tensor([1.0, 3.0, 100.0]).view(1, 1, 1, 3)
        valid = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
        conf = torch.tensor([1.0, 0.0, 0.3]).view(1, 1, 1, 3)
        loss = confidence_loss(conf, error, valid, kappa=1.0)
        assert float(loss) == pytest.approx(1 / (1 + math.exp(1.0)), rel=1e-6)

    def test_right_confidence_costs_less(self):
        error = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
        valid = torch.ones_like(error)
        good = confidence_loss(torch.tensor([1.0, 0.0]).view(1, 1, 1, 2), error, valid, 20.0)
        bad = confidence_loss(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), error, valid, 20.0)
        assert good < bad

    def test_constant_error_is_guarded(self):
        d = torch.full((2, 1, 4, 4), 5.0)
        z = standardize(d, torch.ones_like(d))
        assert torch.equal(z, torch.zeros_like(d))

    def test_masked_mean_ignores_invalid_and_empty_samples(self):
        values = torch.arange(8.0).view(2, 1, 2, 2)
        valid = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(2, 1, 2, 2)
        # Sample 0: mean of 0 and 1; sample 1: no valid pixel, contributes 0.
        assert float(masked_mean(values, valid)) == pytest.approx((0.5 + 0.0) / 2)


def tiny_model_batch(B: int = 2) -> dict:
    """A random pinhole batch at 64x16 ground / 32x32 satellite pixels."""
    K = torch.tensor([[40.0, 0.0, 31.5], [0.0, 40.0, 7.5], [0.0, 0.0, 1.0]])
    batch = pose_batch(B)
    batch.update(
        {
            "ground": torch.rand(B, 3, 16, 64),
            "satellite": torch.rand(B, 3, 32, 32),
            "camera_model": ["pinhole"] * B,
            "K": K.expand(B, 3, 3).clone(),
            "camera_height_m": torch.full((B,), 1.65),
            "sat_center_uv": torch.full((B, 2), 15.5),
            "camera_uv_prior": torch.full((B, 2), 15.5),
            "camera_uv_gt": torch.tensor([[18.0, 13.0]]).repeat(B, 1),
        }
    )
    return batch


def test_gradients_are_finite_through_the_model():
    torch.manual_seed(0)
    cfg = load_config("overfit")
    model = DenseFlow(cfg.model.denseflow)
    batch = tiny_model_batch()
    total, parts = denseflow_loss(model(batch), batch, cfg.train, epoch=0)
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(v) for v in parts.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_gt_flow_matches_flow_from_pose():
    batch = pose_batch()
    expected = flow_from_pose(
        (H, W),
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_uv_gt"],
        batch["yaw_deg_gt"],
    )
    torch.testing.assert_close(ground_truth_flow(batch, (H, W)), expected)
