"""FineMatch losses: GT partners, soft InfoNCE, height targets and CE, VCE, dispatch."""

import math

import pytest
import torch

from cvloc.config import TrainConfig
from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.cameras import intrinsics_from_hfov
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import world_to_cam_from_pose
from cvloc.losses import denseflow_loss, loss_for_method
from cvloc.losses_finematch import (
    FineMatchLossConfig,
    finematch_loss,
    gt_cell_uv,
    height_loss,
    infonce_loss,
    matching_targets,
    surface_height_targets,
    vce_loss,
    visibility_targets,
)
from cvloc.models.matching import extract_matches, pose_from_matches

H = W = 6
STRIDE = 8.0


def poses(shift_px=(0.0, 0.0), dyaw=0.0, B=2):
    """Batch keys of a 48 x 48 px satellite, the GT moved from the prior by a shift / turn."""
    center = torch.full((B, 2), 23.5)
    prior_uv = center + torch.tensor([1.0, -2.0])
    return {
        "satellite": torch.zeros(B, 3, H * 8, W * 8),
        "sat_center_uv": center,
        "m_per_px": torch.full((B,), 0.5),
        "camera_uv_prior": prior_uv,
        "yaw_deg_prior": torch.full((B,), 20.0),
        "camera_uv_gt": prior_uv + torch.tensor(shift_px),
        "yaw_deg_gt": torch.full((B,), 20.0 + dyaw),
    }


class TestGroundTruth:
    def test_partners_follow_the_prior_to_gt_motion(self):
        grid = satellite_grid_uv(H, W, STRIDE).reshape(1, -1, 2)
        assert torch.allclose(gt_cell_uv(poses(), (H, W), STRIDE), grid.expand(2, -1, -1))
        shifted = gt_cell_uv(poses((5.0, -3.0)), (H, W), STRIDE)
        assert torch.allclose(shifted, grid + torch.tensor([5.0, -3.0]), atol=1e-4)
        # A pure turn about the prior camera keeps the camera's own cell still.
        batch = poses(dyaw=90.0)
        turned = gt_cell_uv(batch, (H, W), STRIDE)
        camera = batch["camera_uv_prior"][0]
        dist_before = (grid[0] - camera).norm(dim=-1)
        assert torch.allclose((turned[0] - camera).norm(dim=-1), dist_before, atol=1e-4)

    def test_bilinear_targets(self):
        gt_uv = torch.tensor([[[11.5, 3.5], [13.5, 7.5], [-4.0, 3.5], [20.0, 20.0]]])
        valid = torch.tensor([[True, True, True, False]])
        targets, partner = matching_targets(gt_uv, (H, W), STRIDE, valid)
        assert partner.tolist() == [[True, True, False, False]]
        assert torch.allclose(targets.sum(-1), partner.float())
        assert targets[0, 0, 0 * W + 1] == 1.0  # exactly cell (0, 1)
        # The targets' expectation is the exact location, in cell units.
        cells = satellite_grid_uv(H, W, STRIDE).reshape(-1, 2)
        assert torch.allclose(targets[0, 1] @ cells, gt_uv[0, 1])


class TestInfoNCE:
    def test_aligned_similarity_is_best_and_symmetric(self):
        gt_uv = gt_cell_uv(poses((3.0, 2.0), dyaw=4.0), (H, W), STRIDE)
        valid = torch.ones(2, H * W, dtype=torch.bool)
        targets, _ = matching_targets(gt_uv, (H, W), STRIDE, valid)
        aligned = 20.0 * targets
        random = torch.randn(2, H * W, H * W)
        assert 0 <= infonce_loss(aligned, targets, valid) < infonce_loss(random, targets, valid)
        # Symmetric: the transposed problem has the same loss.
        swapped = infonce_loss(random.transpose(1, 2), targets.transpose(1, 2), valid)
        assert swapped.item() == pytest.approx(infonce_loss(random, targets, valid).item())

    def test_unseen_rows_are_ignored(self):
        gt_uv = gt_cell_uv(poses(), (H, W), STRIDE)
        valid = torch.rand(2, H * W, generator=torch.Generator().manual_seed(0)) > 0.5
        targets, partner = matching_targets(gt_uv, (H, W), STRIDE, valid)
        assert torch.equal(partner, valid)
        S = torch.randn(2, H * W, H * W)
        S2 = torch.where(valid[..., None], S, 50.0 * torch.randn_like(S))
        assert torch.allclose(infonce_loss(S, targets, valid), infonce_loss(S2, targets, valid))
        none = torch.zeros_like(valid)
        assert infonce_loss(S, matching_targets(gt_uv, (H, W), STRIDE, none)[0], none) == 0


class TestHeight:
    def test_targets_sample_the_height_map_at_the_gt_location(self):
        sat_height = torch.zeros(2, 48, 48)
        sat_height[:, 8:16, 16:24] = 7.0  # cell (1, 2) of the 6 x 6 grid
        heights, inside = surface_height_targets(sat_height, gt_cell_uv(poses(), (H, W), 8.0))
        assert inside.all() and heights[0, 1 * W + 2] == 7.0 and heights.sum(1)[0] == 7.0
        moved = gt_cell_uv(poses((8.0, 0.0)), (H, W), 8.0)  # one cell east
        heights, inside = surface_height_targets(sat_height, moved)
        assert heights[0, 1 * W + 1] == 7.0 and not inside[0, W - 1]

    def test_uniform_prediction_costs_one(self):
        bins = torch.linspace(0, 14, 8)
        logits = torch.zeros(2, 8, H, W)
        target = 14 * torch.rand(2, H * W)
        mask = torch.ones(2, H * W, dtype=torch.bool)
        assert height_loss(logits, bins, target, mask, 0.75).item() == pytest.approx(1.0)
        # The Gaussian target itself is the best prediction, and beats uniform.
        k = torch.arange(8.0)
        pos = (target / 2.0)[..., None]
        best = (-0.5 * ((k - pos) / 0.75) ** 2).transpose(1, 2).reshape(2, 8, H, W)
        assert height_loss(best, bins, target, mask, 0.75) < 0.7
        assert height_loss(best, bins, target, torch.zeros_like(mask), 0.75) == 0


class TestVCE:
    def test_zero_at_gt_and_translation_error_in_metres(self):
        batch = poses((4.0, 0.0), dyaw=5.0)
        gt = {
            "camera_xy_pred": (batch["camera_uv_gt"] - batch["sat_center_uv"])
            * torch.tensor([0.5, -0.5]),
            "yaw_deg_pred": batch["yaw_deg_gt"],
        }
        assert vce_loss(gt, batch, 10.0, 10).abs().max() < 1e-3
        off = {**gt, "camera_xy_pred": gt["camera_xy_pred"] + torch.tensor([3.0, 4.0])}
        assert torch.allclose(vce_loss(off, batch, 10.0, 10), torch.full((2,), 5.0), atol=1e-4)
        turned = {**gt, "yaw_deg_pred": gt["yaw_deg_pred"] + 10.0}
        assert (vce_loss(turned, batch, 10.0, 10) > 0.5).all()


def fake_prediction(batch, seed=0, Z=4):
    """A FineMatch-like prediction with gradients, on the 6 x 6 grid."""
    g = torch.Generator().manual_seed(seed)
    B = batch["satellite"].shape[0]
    N = H * W
    center, m = batch["sat_center_uv"], batch["m_per_px"]
    xy = (batch["camera_uv_gt"] - center) * torch.tensor([1.0, -1.0]) * m[:, None]
    return {
        "similarity": torch.randn(B, N, N, generator=g).requires_grad_(),
        "height_logits": torch.randn(B, Z, H, W, generator=g).requires_grad_(),
        "height_bins_m": torch.linspace(0, 6, Z),
        "surface_height_m": torch.zeros(B, 1, H, W),
        "match_height_m": torch.zeros(B, N),
        "match_dst_uv": satellite_grid_uv(H, W, STRIDE).reshape(1, -1, 2).expand(B, -1, -1),
        "bev_valid": torch.ones(B, 1, H, W),
        "column_valid": torch.ones(B, 1, H, W),
        "camera_xy_pred": (xy + 1.0).requires_grad_(),
        "yaw_deg_pred": (batch["yaw_deg_gt"] + 3.0).requires_grad_(),
    }


class TestTotal:
    def test_parts_weights_and_gradients(self):
        batch = poses((2.0, 1.0), dyaw=2.0)
        batch["sat_height_m"] = torch.full((2, 48, 48), 2.0)
        pred = fake_prediction(batch)
        cfg = TrainConfig()
        total, parts = finematch_loss(pred, batch, cfg, epoch=0)
        expected = parts["matching"] + parts["pose"] + parts["height"]
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert parts["height"] > 0 and parts["height_mae_m"].item() == pytest.approx(2.0)
        assert parts["position_m"].item() == pytest.approx(math.sqrt(2), rel=1e-5)
        assert parts["yaw_deg"].item() == pytest.approx(3.0, rel=1e-5)
        assert parts["epe_final_px"] > 0
        total.backward()
        for key in ("similarity", "height_logits", "camera_xy_pred", "yaw_deg_pred"):
            assert torch.isfinite(pred[key].grad).all() and pred[key].grad.abs().sum() > 0
        heavy = TrainConfig(finematch=FineMatchLossConfig(height_weight=3.0, pose_weight=0.0))
        total_heavy, _ = finematch_loss(fake_prediction(batch), batch, heavy, epoch=0)
        expected = parts["matching"] + 3 * parts["height"]
        assert total_heavy.item() == pytest.approx(expected.item(), rel=1e-5)

    def test_alignment_term_prefers_the_gt_alignment(self):
        # GT: every BEV cell one cell east of where the prior puts it. A similarity peaked
        # at the GT cells has a small alignment loss, one peaked at the unmoved cells (the
        # prior's alignment) a large one; the term is off (0) by default.
        batch = poses((STRIDE, 0.0))
        n = torch.arange(H * W)
        east = torch.where(n % W < W - 1, n + 1, n)
        peaked = torch.full((2, H * W, H * W), -5.0)
        peaked[:, n, east] = 5.0
        unmoved = torch.full((2, H * W, H * W), -5.0)
        unmoved[:, n, n] = 5.0
        _, parts = finematch_loss({**fake_prediction(batch), "similarity": peaked}, batch,
                                  TrainConfig(), epoch=0)  # fmt: skip
        assert parts["alignment"] == 0
        on = TrainConfig(finematch=FineMatchLossConfig(align_weight=2.0, align_radius=2))
        losses = {}
        for name, sim in (("gt", peaked), ("prior", unmoved)):
            pred = {**fake_prediction(batch), "similarity": sim.clone().requires_grad_()}
            total, parts = finematch_loss(pred, batch, on, epoch=0)
            expected = parts["matching"] + parts["pose"] + 2 * parts["alignment"]
            assert total.item() == pytest.approx(expected.item(), rel=1e-5)
            total.backward()
            assert pred["similarity"].grad.abs().sum() > 0
            losses[name] = parts["alignment"].item()
        assert losses["gt"] < 0.1 < 2.0 < losses["prior"]
        with pytest.raises(ValueError, match="align_radius"):
            FineMatchLossConfig(align_radius=-1)

    def test_height_is_skipped_without_heights_or_bins(self):
        batch = poses()
        _, parts = finematch_loss(fake_prediction(batch), batch, TrainConfig(), epoch=0)
        assert parts["height"] == 0 and parts["height_mae_m"] == 0
        batch["sat_height_m"] = torch.full((2, 48, 48), 2.0)
        _, parts = finematch_loss(fake_prediction(batch, Z=1), batch, TrainConfig(), epoch=0)
        assert parts["height"] == 0

    def test_dispatch_and_config(self):
        assert loss_for_method("denseflow") is denseflow_loss
        assert loss_for_method("finematch") is finematch_loss
        with pytest.raises(ValueError):
            loss_for_method("raft")
        with pytest.raises(ValueError):
            FineMatchLossConfig(matching_weight=0.0, pose_weight=0.0, height_weight=0.0)
        with pytest.raises(ValueError):
            FineMatchLossConfig(vce_points=0)


def test_oracle_coupling_gives_the_gt_pose():
    """The loss's positives, used as the coupling, make the pose head return the GT pose."""
    batch = poses((6.0, -4.0), dyaw=7.0)
    gt_uv = gt_cell_uv(batch, (H, W), STRIDE)
    targets, partner = matching_targets(gt_uv, (H, W), STRIDE, torch.ones(2, H * W) > 0)
    assert partner.float().mean() > 0.5
    dst_uv, weight = extract_matches(targets, (H, W), STRIDE, radius=1)
    src_uv = satellite_grid_uv(H, W, STRIDE).reshape(1, -1, 2).expand(2, -1, -1)
    geo = [batch[k] for k in ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior")]
    _, yaw, uv, _ = pose_from_matches(src_uv, dst_uv, weight, *geo)
    assert torch.allclose(uv, batch["camera_uv_gt"], atol=1e-3)
    assert torch.allclose(yaw, batch["yaw_deg_gt"], atol=1e-3)


def flat_ground_scene(Hg=96, Wg=192, sat=96):
    """A level pinhole camera at the prior (= GT) pose over flat ground, its per-pixel GT
    (where each pixel's ray meets z = 0; NaN above the horizon) computed by ray casting,
    and the BEV cells' ground pixels by forward projection, both independent of cvloc's
    lifting."""
    K = intrinsics_from_hfov(90.0, Wg, Hg)[None]
    center, m = torch.full((1, 2), (sat - 1) / 2), torch.full((1,), 0.5)
    uv, yaw = center + torch.tensor([[3.0, 20.0]]), torch.tensor([30.0])
    xy = pixel_to_world_xy(uv, center, m)
    T = world_to_cam_from_pose(xy, yaw, 1.65)[0].double()
    R, t = T[:3, :3], T[:3, 3]
    v, u = torch.meshgrid(torch.arange(Hg), torch.arange(Wg), indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1).double() @ torch.linalg.inv(K[0].double()).T
    world_dirs = rays @ R  # R^T d per pixel
    origin = -R.T @ t
    s_hit = -origin[2] / world_dirs[..., 2]
    hit = origin[:2] + s_hit[..., None] * world_dirs[..., :2]
    gt_px = world_xy_to_pixel(hit.float(), center[0], m[0])
    gt_px[~(s_hit > 0)] = float("nan")
    cells = satellite_grid_uv(sat // 8, sat // 8, STRIDE).reshape(1, -1, 2)
    cells_xy = pixel_to_world_xy(cells, center[:, None], m[:, None]).double()[0]
    cam = torch.cat([cells_xy, torch.zeros(len(cells_xy), 1)], -1) @ R.T + t
    pixel = (cam @ K[0].double().T)[:, :2] / cam[:, 2:]
    # The image spans [-0.5, W - 0.5] x [-0.5, H - 0.5] (pixel centres at integers).
    inside = (cam[:, 2] > 0) & (pixel[:, 0] >= -0.5) & (pixel[:, 0] <= Wg - 0.5)
    inside &= (pixel[:, 1] >= -0.5) & (pixel[:, 1] <= Hg - 0.5)
    batch = {
        "ground": torch.zeros(1, 3, Hg, Wg),
        "satellite": torch.zeros(1, 3, sat, sat),
        "camera_model": ["pinhole"],
        "K": K,
        "camera_height_m": torch.tensor([1.65]),
        "sat_center_uv": center,
        "m_per_px": m,
        "camera_uv_prior": uv,
        "camera_uv_gt": uv,
        "yaw_deg_prior": yaw,
        "yaw_deg_gt": yaw,
        "gt_sat_uv_grd": gt_px[None],
    }
    N = cells.shape[1]
    pred = {
        "match_src_uv": cells,
        "match_height_m": torch.zeros(1, N),
        "bev_valid": torch.ones(1, 1, sat // 8, sat // 8),
    }
    return batch, pred, pixel.float(), inside


class TestVisibility:
    def test_targets_mark_the_cells_whose_pixel_sees_a_nearer_surface(self):
        batch, pred, pixel, inside = flat_ground_scene()
        grid = (12, 12)
        gt_uv = gt_cell_uv(batch, grid, STRIDE)
        target, mask = visibility_targets(pred, batch, gt_uv, radius_px=12.0)
        assert mask[0].sum() > 10 and torch.equal(mask[0], inside)
        assert (target[0][inside] == 1).all()  # flat ground: every lifted pixel sees its cell
        # An occluder fills the left half of the image: there every pixel sees a surface
        # at the camera, so the cells lifted there are hidden, those on the right not.
        Wg = batch["gt_sat_uv_grd"].shape[2]
        batch["gt_sat_uv_grd"][:, :, : Wg // 2] = batch["camera_uv_gt"][:, None, None]
        target, mask = visibility_targets(pred, batch, gt_uv, radius_px=12.0)
        far = (gt_uv[0] - batch["camera_uv_gt"][0]).norm(dim=-1) > 12.0
        left = inside & (pixel[:, 0] < Wg // 2 - 1.5) & far
        right = inside & (pixel[:, 0] > Wg // 2 + 0.5)
        assert left.sum() > 3 and right.sum() > 3
        assert (target[0][left] == 0).all() and (target[0][right] == 1).all()

    def test_loss_trains_the_head_and_needs_its_inputs(self):
        batch, pred, _, inside = flat_ground_scene()
        B, N = 1, pred["match_src_uv"].shape[1]
        xy = (batch["camera_uv_gt"] - batch["sat_center_uv"]) * torch.tensor([1.0, -1.0]) * 0.5
        pred = {
            **pred,
            "similarity": torch.zeros(B, N, N),
            "height_logits": torch.zeros(B, 4, 12, 12),
            "height_bins_m": torch.linspace(0, 6, 4),
            "surface_height_m": torch.zeros(B, 1, 12, 12),
            "column_valid": torch.ones(B, 1, 12, 12),
            "match_dst_uv": pred["match_src_uv"],
            "camera_xy_pred": xy,
            "yaw_deg_pred": batch["yaw_deg_gt"],
            "visibility_logits": torch.full((B, 1, 12, 12), -2.0, requires_grad=True),
        }
        only = FineMatchLossConfig(
            matching_weight=0.0, pose_weight=0.0, height_weight=0.0, visibility_weight=1.0
        )
        total, parts = finematch_loss(pred, batch, TrainConfig(finematch=only), epoch=0)
        # Every judged cell is seen (target 1) and every logit -2: the BCE is -log sigmoid(-2).
        expected = -torch.nn.functional.logsigmoid(torch.tensor(-2.0))
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert parts["visibility_acc"] == 0
        total.backward()
        grad = pred["visibility_logits"].grad.flatten()
        assert (grad[inside] < 0).all() and (grad[~inside] == 0).all()
        without_head = {k: v for k, v in pred.items() if k != "visibility_logits"}
        with pytest.raises(KeyError, match="visibility head"):
            finematch_loss(without_head, batch, TrainConfig(finematch=only), epoch=0)
        del batch["gt_sat_uv_grd"]
        with pytest.raises(KeyError, match="gt_sat_uv_grd"):
            finematch_loss(pred, batch, TrainConfig(finematch=only), epoch=0)
        with pytest.raises(ValueError, match="visibility_radius_cells"):
            FineMatchLossConfig(visibility_radius_cells=0.0)
