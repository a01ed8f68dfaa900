import math

import numpy as np
import pytest
import torch

from cvloc.geometry.cameras import (
    intrinsics_from_hfov,
    panorama_angles_to_uv,
    panorama_project,
    panorama_unproject,
    panorama_uv_to_angles,
    pinhole_project,
    pinhole_unproject,
    scale_intrinsics,
)
from cvloc.geometry.checks import ShapeError


class TestIntrinsics:
    def test_hfov_edges(self, dtype):
        W, H = 640, 480
        K = intrinsics_from_hfov(90.0, W, H, dtype=dtype)
        # The left image edge u = -0.5 sees 45 degrees to the left.
        pts = torch.tensor([[[-1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]], dtype=dtype)
        uv, _ = pinhole_project(pts, K[None])
        assert torch.allclose(uv[0, :, 0], torch.tensor([-0.5, W - 0.5], dtype=dtype))
        assert K[0, 2] == (W - 1) / 2 and K[1, 2] == (H - 1) / 2

    def test_exception(self):
        with pytest.raises(ValueError, match="hfov"):
            intrinsics_from_hfov(180.0, 10, 10)
        with pytest.raises(ValueError, match="size"):
            intrinsics_from_hfov(60.0, 0, 10)

    def test_scale_keeps_rays(self, dtype):
        # Resizing the image must not change which ray a physical image position sees.
        K = torch.tensor([[721.5, 0.0, 609.6], [0.0, 721.5, 172.9], [0.0, 0.0, 1.0]], dtype=dtype)
        sx, sy = 1024 / 1242, 256 / 375
        K2 = scale_intrinsics(K, sx, sy)
        pts = torch.randn(1, 50, 3, dtype=dtype) + torch.tensor([0.0, 0.0, 10.0], dtype=dtype)
        uv1, _ = pinhole_project(pts, K[None])
        uv2, _ = pinhole_project(pts, K2[None])
        expected = (uv1 + 0.5) * torch.tensor([sx, sy], dtype=dtype) - 0.5
        assert torch.allclose(uv2, expected, atol=1e-4)

    def test_scale_batched_shape(self):
        K = intrinsics_from_hfov(60.0, 100, 50).expand(5, 3, 3)
        assert scale_intrinsics(K, 0.5, 0.5).shape == (5, 3, 3)


class TestPinhole:
    @pytest.mark.parametrize("batch", [1, 2, 5])
    def test_round_trip(self, batch, dtype):
        K = intrinsics_from_hfov(80.0, 512, 128, dtype=dtype).expand(batch, 3, 3).clone()
        K[:, 0, 1] = 0.3  # skew must be handled too
        pts = torch.rand(batch, 20, 3, dtype=dtype) * 4 - 2
        pts[..., 2] = pts[..., 2].abs() + 1.0
        uv, depth = pinhole_project(pts, K)
        assert uv.shape == (batch, 20, 2) and depth.shape == (batch, 20)
        back = pinhole_unproject(uv, depth, K)
        assert torch.allclose(back, pts, atol=1e-5 if dtype == torch.float32 else 1e-10)

    def test_against_matrix_product(self):
        # Independent computation: homogeneous K @ X.
        K = torch.tensor([[500.0, 2.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
        pts = torch.tensor([[[0.5, -0.2, 3.0], [-1.0, 1.0, 7.0]]])
        uv, _ = pinhole_project(pts, K[None])
        hom = (K @ pts[0].T).T
        assert torch.allclose(uv[0], hom[:, :2] / hom[:, 2:], atol=1e-4)

    def test_behind_camera_finite(self):
        K = intrinsics_from_hfov(60.0, 64, 32)[None]
        uv, depth = pinhole_project(torch.tensor([[[1.0, 1.0, -2.0], [0.0, 0.0, 0.0]]]), K)
        assert torch.isfinite(uv).all() and (depth <= 0).all()

    def test_exception(self):
        with pytest.raises(ShapeError, match="points_cam"):
            pinhole_project(torch.zeros(2, 5, 2), torch.eye(3)[None])


class TestPanorama:
    def test_design_md_mapping(self, dtype):
        W, H = 640, 320
        uv = torch.tensor(
            [[(W - 1) / 2, (H - 1) / 2], [-0.5, -0.5], [W - 0.5, H - 0.5]], dtype=dtype
        )
        phi, el = panorama_uv_to_angles(uv, W, H)
        # phi = ((u + 0.5) / W) * 360 - 180, el = 90 - ((v + 0.5) / H) * 180 (design.md).
        assert torch.allclose(phi, torch.tensor([0.0, -180.0, 180.0], dtype=dtype), atol=1e-9)
        assert torch.allclose(el, torch.tensor([0.0, 90.0, -90.0], dtype=dtype), atol=1e-9)

    def test_directions(self, dtype):
        W, H = 64, 32
        # Forward, right, back-left and up directions in the camera frame (x right, y down, z fwd).
        pts = torch.tensor(
            [[[0.0, 0.0, 5.0], [3.0, 0.0, 0.0], [-1.0, 0.0, -1.0], [0.0, -2.0, 1e-9]]], dtype=dtype
        )
        uv, rng = panorama_project(pts, W, H)
        phi, el = panorama_uv_to_angles(uv[0], W, H)
        assert torch.allclose(phi[:3], torch.tensor([0.0, 90.0, -135.0], dtype=dtype), atol=1e-6)
        assert torch.allclose(el, torch.tensor([0.0, 0.0, 0.0, 90.0], dtype=dtype), atol=1e-5)
        assert torch.allclose(rng[0, :2], torch.tensor([5.0, 3.0], dtype=dtype))

    def test_round_trip(self, dtype):
        W, H = 128, 64
        u = torch.rand(200, dtype=dtype) * W - 0.5
        v = torch.rand(200, dtype=dtype) * (H - 2) + 0.5  # away from the poles
        uv = torch.stack([u, v], -1)
        rays = panorama_unproject(uv, W, H)
        assert torch.allclose(rays.norm(dim=-1), torch.ones(200, dtype=dtype), atol=1e-6)
        uv2, _ = panorama_project(rays[None] * 7.0, W, H)
        assert torch.allclose(uv2[0], uv, atol=1e-3 if dtype == torch.float32 else 1e-8)

    def test_angles_round_trip_wraps(self):
        uv = panorama_angles_to_uv(torch.tensor([190.0]), torch.tensor([10.0]), 360, 180)
        # 190 degrees is -170: column (10 / 360) * 360 - 0.5.
        assert torch.allclose(uv, torch.tensor([[9.5, 79.5]]))

    def test_exception(self):
        with pytest.raises(ValueError, match="W = 2 H"):
            panorama_uv_to_angles(torch.zeros(1, 2), 100, 100)

    def test_reference_formula_numpy(self):
        # Independent numpy implementation of the forward mapping.
        rng = np.random.default_rng(0)
        p = rng.normal(size=(100, 3))
        W, H = 200, 100
        phi = np.degrees(np.arctan2(p[:, 0], p[:, 2]))
        el = np.degrees(np.arcsin(-p[:, 1] / np.linalg.norm(p, axis=1)))
        u = (phi + 180) / 360 * W - 0.5
        v = (90 - el) / 180 * H - 0.5
        uv, _ = panorama_project(torch.from_numpy(p)[None], W, H)
        assert np.allclose(uv[0, :, 0].numpy(), u, atol=1e-9)
        assert np.allclose(uv[0, :, 1].numpy(), v, atol=1e-9)
        assert math.isclose(float(uv[0, :, 0].max()), float(u.max()))
