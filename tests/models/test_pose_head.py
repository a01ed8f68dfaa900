import pytest
import torch

from cvloc.geometry.bev import bev_from_prior
from cvloc.geometry.cameras import intrinsics_from_hfov
from cvloc.geometry.checks import ShapeError
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import world_to_cam_from_pose, wrap_deg
from cvloc.models.pose_head import flow_from_pose, pose_from_flow


def _poses(B, dtype=torch.float64, seed=0, yaw_spread=180.0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    sat_center_uv = 30 + 10 * rand(B, 2)
    m_per_px = 0.1 + 0.2 * rand(B)
    uv_prior = 20 + 24 * rand(B, 2)
    yaw_prior = 360 * rand(B) - 180
    uv_gt = uv_prior + 30 * rand(B, 2) - 15
    yaw_gt = wrap_deg(yaw_prior + yaw_spread * (2 * rand(B) - 1))
    return sat_center_uv, m_per_px, uv_prior, yaw_prior, uv_gt, yaw_gt


def _texture(uv):
    """A smooth satellite texture, a function of the satellite pixel."""
    return torch.sin(0.15 * uv[..., 0]) + torch.cos(0.11 * uv[..., 1])


def _render_flat_ground(K, world_to_cam, size, center, m):
    """Ground image of the textured flat ground: every pixel's ray meets z = 0."""
    W, H = size
    R, t = world_to_cam[:, :3, :3], world_to_cam[:, :3, 3]
    centre = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # B,3 camera centre
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3).to(K.dtype)
    rays = pix @ torch.linalg.inv(K).transpose(1, 2) @ R  # world directions, B,N,3
    s = -centre[:, None, 2] / rays[..., 2]
    ground_xy = centre[:, None, :2] + s[..., None] * rays[..., :2]
    value = _texture(world_xy_to_pixel(ground_xy, center[:, None], m[:, None]))
    return torch.where(rays[..., 2] < 0, value, 0.0).reshape(-1, 1, H, W)


class TestPoseFromFlow:
    def test_flow_from_pose_matches_bev_projection(self):
        # The BEV placed with the prior pose shows at p' the satellite content at
        # p' + flow_from_pose(GT): the ground truth of the matching loss is consistent
        # with cvloc.geometry.bev.
        dt = torch.float64
        B, S, size = 2, 64, (256, 128)
        K = intrinsics_from_hfov(90.0, *size, dtype=dt).expand(B, 3, 3)
        center, m = torch.full((B, 2), 31.5, dtype=dt), torch.full((B,), 0.2, dtype=dt)
        height = torch.full((B,), 1.65, dtype=dt)
        uv_gt = torch.tensor([[30.0, 35.0], [33.0, 29.0]], dtype=dt)
        yaw_gt = torch.tensor([30.0, -120.0], dtype=dt)
        uv_prior = uv_gt + torch.tensor([[5.0, -3.0], [-4.0, 6.0]], dtype=dt)
        yaw_prior = yaw_gt + torch.tensor([8.0, -10.0], dtype=dt)
        T_gt = world_to_cam_from_pose(pixel_to_world_xy(uv_gt, center, m), yaw_gt, height)
        image = _render_flat_ground(K, T_gt, size, center, m)
        bev, valid = bev_from_prior(
            image, K, "pinhole", size, center, m, uv_prior, yaw_prior, height, (S, S), 1.0
        )
        flow = flow_from_pose((S, S), center, m, uv_prior, yaw_prior, uv_gt, yaw_gt)
        v, u = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        target_uv = torch.stack([u, v], -1).to(dt) + flow.permute(0, 2, 3, 1)
        near = (target_uv - uv_gt[:, None, None]).norm(dim=-1) < 40  # 8 m: fine sampling
        err = (bev[:, 0] - _texture(target_uv)).abs()[valid & near]
        assert err.numel() > 500 and err.max() < 0.05
        wrong = (bev[:, 0] - _texture(target_uv - 2 * flow.permute(0, 2, 3, 1))).abs()
        assert wrong[valid & near].mean() > 0.3

    @pytest.mark.parametrize("stride", [1, 3])
    def test_round_trip(self, stride):
        B, H, W = 6, 24, 32
        center, m, uv_prior, yaw_prior, uv_gt, yaw_gt = _poses(B)
        yaw_gt[0] = wrap_deg(yaw_prior[0] + 179.0)  # near-opposite headings included
        flow = flow_from_pose((H, W), center, m, uv_prior, yaw_prior, uv_gt, yaw_gt)
        assert flow.shape == (B, 2, H, W) and flow.dtype == torch.float64
        pose = pose_from_flow(flow, torch.ones(B, H, W), center, m, uv_prior, yaw_prior, stride)
        xy_gt = pixel_to_world_xy(uv_gt, center, m)
        torch.testing.assert_close(pose.camera_xy, xy_gt, atol=1e-6, rtol=0)
        torch.testing.assert_close(pose.camera_uv, uv_gt, atol=1e-6, rtol=0)
        yaw_err = wrap_deg(pose.yaw_deg - yaw_gt).abs()
        assert yaw_err.max() < 1e-6

    def test_round_trip_float32_with_weights(self):
        B, H, W = 3, 32, 32
        center, m, uv_prior, yaw_prior, uv_gt, yaw_gt = _poses(B, torch.float32, seed=3)
        flow = flow_from_pose((H, W), center, m, uv_prior, yaw_prior, uv_gt, yaw_gt)
        weights = torch.rand(B, H, W) * (torch.rand(B, H, W) > 0.5)
        pose = pose_from_flow(
            flow + 50 * (weights == 0)[:, None], weights, center, m, uv_prior, yaw_prior
        )
        torch.testing.assert_close(pose.camera_uv, uv_gt, atol=2e-3, rtol=0)
        assert wrap_deg(pose.yaw_deg - yaw_gt).abs().max() < 2e-3

    def test_zero_flow_is_prior(self):
        B = 4
        center, m, uv_prior, yaw_prior, _, _ = _poses(B, seed=1)
        pose = pose_from_flow(
            torch.zeros(B, 2, 8, 8), torch.rand(B, 8, 8), center, m, uv_prior, yaw_prior
        )
        torch.testing.assert_close(pose.camera_uv, uv_prior, atol=1e-12, rtol=0)
        torch.testing.assert_close(pose.yaw_deg, yaw_prior, atol=1e-12, rtol=0)
        assert (
            flow_from_pose((8, 8), center, m, uv_prior, yaw_prior, uv_prior, yaw_prior).abs().max()
            < 1e-12
        )

    def test_no_weight_is_prior(self):
        center, m, uv_prior, yaw_prior, _, _ = _poses(2, seed=2)
        pose = pose_from_flow(
            torch.randn(2, 2, 5, 5), torch.zeros(2, 5, 5), center, m, uv_prior, yaw_prior
        )
        torch.testing.assert_close(pose.camera_uv, uv_prior, atol=1e-12, rtol=0)

    def test_pure_shift(self):
        # A uniform flow moves the camera by the same pixels and keeps the heading.
        center, m, uv_prior, yaw_prior, _, _ = _poses(2, seed=4)
        flow = torch.tensor([3.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1).expand(2, 2, 6, 7)
        pose = pose_from_flow(flow, torch.ones(2, 6, 7), center, m, uv_prior, yaw_prior)
        torch.testing.assert_close(pose.camera_uv, uv_prior + flow[:, :, 0, 0])
        torch.testing.assert_close(pose.yaw_deg, yaw_prior)

    def test_correspondences(self):
        center, m, uv_prior, yaw_prior, _, _ = _poses(1, seed=5)
        flow = torch.randn(1, 2, 6, 8, dtype=torch.float64)
        w = torch.rand(1, 6, 8)
        pose = pose_from_flow(flow, w, center, m, uv_prior, yaw_prior, stride=2)
        assert pose.src_uv.shape == (1, 12, 2) and pose.weight.shape == (1, 12)
        torch.testing.assert_close(
            pose.src_uv[0, 0], torch.tensor([1.0, 1.0], dtype=torch.float64)
        )
        torch.testing.assert_close(pose.dst_uv[0, 0], 1.0 + flow[0, :, 1, 1])
        torch.testing.assert_close(pose.weight[0, 0], w[0, 1, 1].double())

    def test_gradcheck(self):
        center, m, uv_prior, yaw_prior, uv_gt, yaw_gt = _poses(2, seed=6, yaw_spread=30.0)
        flow = flow_from_pose((4, 5), center, m, uv_prior, yaw_prior, uv_gt, yaw_gt)
        flow = (flow + 0.3 * torch.randn_like(flow)).requires_grad_(True)
        weights = (torch.rand(2, 4, 5, dtype=torch.float64) + 0.1).requires_grad_(True)

        def fn(f, w):
            pose = pose_from_flow(f, w, center, m, uv_prior, yaw_prior)
            return pose.camera_xy, pose.yaw_deg

        assert torch.autograd.gradcheck(fn, (flow, weights))

    def test_exception(self):
        center, m, uv_prior, yaw_prior, _, _ = _poses(2)
        with pytest.raises(ShapeError, match="weights"):
            pose_from_flow(
                torch.zeros(2, 2, 4, 4), torch.ones(2, 4, 5), center, m, uv_prior, yaw_prior
            )
        with pytest.raises(ShapeError, match="yaw_deg"):
            pose_from_flow(
                torch.zeros(2, 2, 4, 4), torch.ones(2, 4, 4), center, m, uv_prior, yaw_prior[:1]
            )
        with pytest.raises(ValueError, match="stride"):
            pose_from_flow(
                torch.zeros(2, 2, 4, 4),
                torch.ones(2, 4, 4),
                center,
                m,
                uv_prior,
                yaw_prior,
                stride=0,
            )
