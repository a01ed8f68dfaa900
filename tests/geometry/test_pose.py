import math

import numpy as np
import pytest
import torch

from cvloc.geometry.cameras import intrinsics_from_hfov, pinhole_project
from cvloc.geometry.pose import (
    apply_rigid_2d,
    compose_pose_with_rigid_2d,
    forward_xy_to_yaw,
    relative_rigid_2d,
    rotation_2d,
    transform_points,
    world_to_cam_from_pose,
    wrap_deg,
    yaw_to_forward_uv,
    yaw_to_forward_xy,
)


def test_wrap_deg():
    a = torch.tensor([-180.0, 180.0, 190.0, -190.0, 540.0, 0.0, -359.0])
    assert torch.allclose(
        wrap_deg(a), torch.tensor([180.0, 180.0, -170.0, 170.0, 180.0, 0.0, 1.0])
    )


def test_forward_vectors():
    yaw = torch.tensor([0.0, 90.0, 180.0, -90.0])
    assert torch.allclose(
        yaw_to_forward_xy(yaw),
        torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]),
        atol=1e-7,
    )
    # On the satellite image north is -v and east is +u.
    assert torch.allclose(
        yaw_to_forward_uv(yaw),
        torch.tensor([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
        atol=1e-7,
    )
    back = forward_xy_to_yaw(yaw_to_forward_xy(torch.tensor([-170.0, 33.0, 180.0])))
    assert torch.allclose(back, torch.tensor([-170.0, 33.0, 180.0]), atol=1e-5)


class TestWorldToCam:
    def test_level_camera_axes(self, dtype):
        T = world_to_cam_from_pose(
            torch.tensor([[10.0, -4.0]], dtype=dtype), torch.tensor([90.0], dtype=dtype), 1.65
        )
        # Facing east: a point 5 m east of the camera at camera height is straight ahead.
        p = transform_points(
            T,
            torch.tensor(
                [[[15.0, -4.0, 1.65], [10.0, -6.0, 1.65], [10.0, -4.0, 0.0]]], dtype=dtype
            ),
        )
        assert torch.allclose(p[0, 0], torch.tensor([0.0, 0.0, 5.0], dtype=dtype), atol=1e-6)
        # 2 m south is to the right when facing east.
        assert torch.allclose(p[0, 1], torch.tensor([2.0, 0.0, 0.0], dtype=dtype), atol=1e-6)
        # The ground below the camera is 1.65 m down (y down).
        assert torch.allclose(p[0, 2], torch.tensor([0.0, 1.65, 0.0], dtype=dtype), atol=1e-6)
        R = T[0, :3, :3]
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=dtype), atol=1e-6)
        assert torch.isclose(torch.det(R), torch.tensor(1.0, dtype=dtype))

    def test_pitch_up_moves_horizon_down(self):
        K = intrinsics_from_hfov(60.0, 200, 100)[None]
        far = torch.tensor([[[0.0, 1000.0, 1.5]]])  # far point at eye height, straight north
        v0 = pinhole_project(
            transform_points(world_to_cam_from_pose(torch.zeros(1, 2), torch.zeros(1), 1.5), far),
            K,
        )[0]
        v1 = pinhole_project(
            transform_points(
                world_to_cam_from_pose(torch.zeros(1, 2), torch.zeros(1), 1.5, pitch_deg=5.0), far
            ),
            K,
        )[0]
        assert abs(float(v0[0, 0, 1]) - 49.5) < 1e-3
        assert float(v1[0, 0, 1]) > float(v0[0, 0, 1]) + 5

    def test_against_numpy_reference(self):
        rng = np.random.default_rng(1)
        xy = rng.normal(size=(3, 2)) * 10
        yaw = rng.uniform(-180, 180, size=3)
        T = world_to_cam_from_pose(torch.from_numpy(xy), torch.from_numpy(yaw), 2.0).numpy()
        for b in range(3):
            y = math.radians(yaw[b])
            fwd = np.array([math.sin(y), math.cos(y), 0.0])
            right = np.array([math.cos(y), -math.sin(y), 0.0])
            down = np.array([0.0, 0.0, -1.0])
            c = np.array([xy[b, 0], xy[b, 1], 2.0])
            X = rng.normal(size=3) * 5
            expected = np.array([right @ (X - c), down @ (X - c), fwd @ (X - c)])
            assert np.allclose(T[b, :3, :3] @ X + T[b, :3, 3], expected)


class TestRigid2d:
    def test_rotation_ccw(self):
        R = rotation_2d(torch.tensor([math.pi / 2]))
        assert torch.allclose(R[0] @ torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), atol=1e-7)

    @pytest.mark.parametrize("batch", [1, 2, 5])
    def test_relative_then_compose_is_identity(self, batch, dtype):
        g = torch.Generator().manual_seed(batch)
        a_xy = torch.randn(batch, 2, generator=g, dtype=dtype) * 20
        b_xy = torch.randn(batch, 2, generator=g, dtype=dtype) * 20
        a_yaw = (torch.rand(batch, generator=g, dtype=dtype) - 0.5) * 360
        b_yaw = (torch.rand(batch, generator=g, dtype=dtype) - 0.5) * 360
        R, t = relative_rigid_2d(a_xy, a_yaw, b_xy, b_yaw)
        xy, yaw = compose_pose_with_rigid_2d(R, t, a_xy, a_yaw)
        assert torch.allclose(xy, b_xy, atol=1e-4)
        assert torch.allclose(wrap_deg(yaw - b_yaw), torch.zeros_like(yaw), atol=1e-3)

    def test_points_follow_pose(self):
        # A point fixed relative to the camera moves with the relative transform.
        a_xy, a_yaw = torch.tensor([[0.0, 0.0]]), torch.tensor([0.0])
        b_xy, b_yaw = torch.tensor([[5.0, 0.0]]), torch.tensor([90.0])
        R, t = relative_rigid_2d(a_xy, a_yaw, b_xy, b_yaw)
        # 1 m ahead of a (north) must land 1 m ahead of b (east of b).
        out = apply_rigid_2d(R, t, torch.tensor([[[0.0, 1.0]]]))
        assert torch.allclose(out, torch.tensor([[[6.0, 0.0]]]), atol=1e-6)
