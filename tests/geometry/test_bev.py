import math

import numpy as np
import pytest
import torch

from cvloc.geometry.bev import (
    bev_from_prior,
    ego_grid_xy,
    ego_to_world_xy,
    lift_to_ground_image,
    satellite_grid_uv,
    warp_to_bev,
)
from cvloc.geometry.cameras import intrinsics_from_hfov
from cvloc.geometry.checks import ShapeError
from cvloc.geometry.pose import world_to_cam_from_pose

CAMERA_HEIGHT_M = 1.65


# ---------------------------------------------------------------------------------------------
# Hand-written references (design.md conventions, no library geometry).


def ref_camera_axes(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """Rows: the camera's x (right), y (down), z (forward) axes in the world frame."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array(
        [math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)]
    )
    right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
    down = np.cross(forward, right)  # y = z x x for a right-handed camera frame
    return np.stack([right, down, forward])


def ref_project(point_cam, camera_model, size, K=None):
    """(u, v, in_front) of one camera-frame point, with plain math."""
    x, y, z = point_cam
    W, H = size
    if camera_model == "pinhole":
        in_front = z > 0.1
        u = K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2] if in_front else 0.0
        v = K[1, 1] * y / z + K[1, 2] if in_front else 0.0
    else:
        horiz = math.hypot(x, z)
        in_front = horiz > 0.1
        phi = math.degrees(math.atan2(x, z))
        phi = phi - 360.0 if phi >= 180.0 else phi  # columns cover azimuths [-180, 180)
        el = math.degrees(math.atan2(-y, horiz))
        u = (phi + 180.0) / 360.0 * W - 0.5
        v = (90.0 - el) / 180.0 * H - 0.5
    return u, v, in_front


def ref_lift(points_xy, heights, poses, camera_model, size, K=None):
    """Brute force, cell by cell: returns uv (B, Z, H, W, 2) and valid (B, Z, H, W)."""
    B, H, W, _ = points_xy.shape
    Z = len(heights)
    uv = np.zeros((B, Z, H, W, 2))
    valid = np.zeros((B, Z, H, W), dtype=bool)
    for b, (cx, cy, yaw, pitch) in enumerate(poses):
        axes = ref_camera_axes(yaw, pitch)
        centre = np.array([cx, cy, CAMERA_HEIGHT_M])
        for k in range(Z):
            for i in range(H):
                for j in range(W):
                    p = np.array([points_xy[b, i, j, 0], points_xy[b, i, j, 1], heights[k]])
                    p_cam = axes @ (p - centre)
                    Kb = None if K is None else K[b]
                    u, v, in_front = ref_project(p_cam, camera_model, size, Kb)
                    inside = -0.5 <= u <= size[0] - 0.5 and -0.5 <= v <= size[1] - 0.5
                    uv[b, k, i, j] = (u, v)
                    valid[b, k, i, j] = in_front and inside
    return uv, valid


def texture(x, y):
    """A smooth analytic top-view pattern over the ground plane (x east, y north, metres)."""
    return np.sin(2 * np.pi * x / 5.0 + 0.3) * np.cos(2 * np.pi * y / 6.0) + 0.3 * np.sin(
        2 * np.pi * (x + y) / 7.0
    )


def render_plane(camera_model, size, camera_xy, yaw_deg, K=None):
    """Ground image of the textured plane z = 0, by ray-plane intersection per pixel."""
    W, H = size
    vv, uu = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    if camera_model == "pinhole":
        rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)])
    else:
        phi = np.radians((uu + 0.5) / W * 360.0 - 180.0)
        el = np.radians(90.0 - (vv + 0.5) / H * 180.0)
        rays = np.stack([np.sin(phi) * np.cos(el), -np.sin(el), np.cos(phi) * np.cos(el)])
    rays_world = np.einsum("ck,chw->khw", ref_camera_axes(yaw_deg), rays)
    down = rays_world[2] < -1e-9
    t = np.where(down, CAMERA_HEIGHT_M / np.where(down, -rays_world[2], 1.0), 0.0)
    x = camera_xy[0] + t * rays_world[0]
    y = camera_xy[1] + t * rays_world[1]
    return np.where(down, texture(x, y), 0.0)


# ---------------------------------------------------------------------------------------------
# Helpers.


def random_scene(batch, camera_model, size, dtype=torch.float64, seed=0, grid=(6, 7)):
    """Random BEV points around random level cameras (some cells behind each camera)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(batch, 2, generator=g, dtype=dtype) - 0.5) * 4.0
    yaw = (torch.rand(batch, generator=g, dtype=dtype) - 0.5) * 360.0
    points = xy[:, None, None] + (torch.rand(batch, *grid, 2, generator=g, dtype=dtype) - 0.5) * 24
    w2c = world_to_cam_from_pose(xy, yaw, CAMERA_HEIGHT_M)
    K = None
    if camera_model == "pinhole":
        K = intrinsics_from_hfov(80.0, size[0], size[1], dtype).expand(batch, 3, 3).clone()
    return points, w2c, K, xy, yaw


# ---------------------------------------------------------------------------------------------


class TestSatelliteGridUV:
    def test_smoke(self):
        uv = satellite_grid_uv(2, 3)
        assert uv.shape == (2, 3, 2)
        assert torch.equal(uv[1, 2], torch.tensor([2.0, 1.0]))

    def test_stride(self):
        uv = satellite_grid_uv(4, 5, stride=8.0, dtype=torch.float64)
        assert uv.dtype == torch.float64
        assert torch.allclose(uv[0, 0], torch.tensor([3.5, 3.5], dtype=torch.float64))
        # The grid covers [-0.5, 8 W - 0.5] x [-0.5, 8 H - 0.5] symmetrically.
        assert torch.allclose(uv[-1, -1], torch.tensor([35.5, 27.5], dtype=torch.float64))
        assert torch.allclose(uv[0, 0] + uv[-1, -1], torch.tensor([39.0, 31.0]).double())

    def test_exception(self):
        with pytest.raises(ValueError):
            satellite_grid_uv(0, 3)
        with pytest.raises(ValueError):
            satellite_grid_uv(2, 3, stride=0.0)


class TestEgoGrid:
    def test_smoke(self):
        xy = ego_grid_xy(3, 5, 0.5)
        assert xy.shape == (3, 5, 2)
        assert torch.equal(xy[1, 2], torch.zeros(2))  # camera at the centre
        assert torch.equal(xy[0, 2], torch.tensor([0.0, 0.5]))  # row 0 is forward
        assert torch.equal(xy[1, 0], torch.tensor([-1.0, 0.0]))  # column 0 is left

    @pytest.mark.parametrize("batch", [1, 2, 5])
    def test_cardinality(self, batch):
        ego = ego_grid_xy(4, 3, 1.0)
        out = ego_to_world_xy(ego, torch.zeros(batch, 2), torch.zeros(batch))
        assert out.shape == (batch, 4, 3, 2)
        out = ego_to_world_xy(
            ego.expand(batch, 4, 3, 2), torch.zeros(batch, 2), torch.zeros(batch)
        )
        assert out.shape == (batch, 4, 3, 2)

    def test_heading(self):
        ego = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]], dtype=torch.float64)  # 2 m ahead, 1 m right
        cam = torch.tensor([[10.0, -3.0], [10.0, -3.0]], dtype=torch.float64)
        out = ego_to_world_xy(ego, cam, torch.tensor([90.0, 0.0], dtype=torch.float64))
        # Facing east: forward is +x, right is -y (south). Facing north: forward +y, right +x.
        expected = torch.tensor(
            [[[[12.0, -3.0], [10.0, -4.0]]], [[[10.0, -1.0], [11.0, -3.0]]]], dtype=torch.float64
        )
        assert torch.allclose(out, expected)

    def test_exception(self):
        with pytest.raises(ValueError):
            ego_grid_xy(3, 3, 0.0)
        with pytest.raises(ShapeError):
            ego_to_world_xy(ego_grid_xy(2, 2, 1.0), torch.zeros(2, 2), torch.zeros(3))


class TestLiftToGroundImage:
    @pytest.mark.parametrize(
        ("camera_model", "size"), [("pinhole", (64, 48)), ("panorama", (64, 32))]
    )
    def test_smoke(self, camera_model, size):
        points, w2c, K, _, _ = random_scene(2, camera_model, size, torch.float32)
        uv, valid = lift_to_ground_image(
            points, torch.tensor([0.0, 2.0]), w2c, camera_model, size, K
        )
        assert uv.shape == (2, 2, 6, 7, 2) and uv.dtype == torch.float32
        assert valid.shape == (2, 2, 6, 7) and valid.dtype == torch.bool
        assert torch.isfinite(uv).all()

    @pytest.mark.parametrize("batch", [1, 2, 5])
    @pytest.mark.parametrize(
        ("camera_model", "size"), [("pinhole", (64, 48)), ("panorama", (64, 32))]
    )
    def test_cardinality(self, batch, camera_model, size):
        points, w2c, K, _, _ = random_scene(batch, camera_model, size)
        heights = torch.zeros(batch, 3, dtype=torch.float64)  # per-sample heights (B, Z)
        uv, valid = lift_to_ground_image(points, heights, w2c, camera_model, size, K)
        assert uv.shape == (batch, 3, 6, 7, 2)
        assert valid.shape == (batch, 3, 6, 7)

    @pytest.mark.parametrize(
        ("camera_model", "size"), [("pinhole", (64, 48)), ("panorama", (64, 32))]
    )
    def test_against_brute_force(self, camera_model, size):
        B = 2
        points, _, K, xy, yaw = random_scene(B, camera_model, size)
        points[:, 0, 0] = xy  # a cell at the camera centre: on the panorama's pole, invalid
        pitch = torch.tensor([0.0, 7.0], dtype=torch.float64)
        w2c = world_to_cam_from_pose(xy, yaw, CAMERA_HEIGHT_M, pitch_deg=pitch)
        heights = [-0.7, 0.0, 1.2, 3.5]
        uv, valid = lift_to_ground_image(
            points, torch.tensor(heights, dtype=torch.float64), w2c, camera_model, size, K
        )
        poses = [(*xy[b].tolist(), yaw[b].item(), pitch[b].item()) for b in range(B)]
        K_np = None if K is None else K.numpy()
        uv_ref, valid_ref = ref_lift(points.numpy(), heights, poses, camera_model, size, K_np)
        assert np.array_equal(valid.numpy(), valid_ref)
        assert valid_ref.any() and not valid_ref.all()
        np.testing.assert_allclose(uv.numpy()[valid_ref], uv_ref[valid_ref], atol=1e-6)
        assert torch.isfinite(uv).all()

    def test_behind_camera_is_invalid(self):
        size = (64, 48)
        cam = torch.zeros(1, 2, dtype=torch.float64)
        w2c = world_to_cam_from_pose(cam, torch.zeros(1, dtype=torch.float64), CAMERA_HEIGHT_M)
        K = intrinsics_from_hfov(90.0, *size, torch.float64)[None]
        # Straight ahead at 5 m, straight behind at 5 m, and 5 cm ahead (closer than min_depth).
        points = torch.tensor([[[[0.0, 5.0], [0.0, -5.0], [0.0, 0.05]]]], dtype=torch.float64)
        uv, valid = lift_to_ground_image(points, torch.zeros(1), w2c, "pinhole", size, K)
        assert valid[0, 0, 0].tolist() == [True, False, False]
        f = K[0, 0, 0].item()
        expected = [K[0, 0, 2].item(), K[0, 1, 2].item() + f * CAMERA_HEIGHT_M / 5.0]
        assert torch.allclose(uv[0, 0, 0, 0], torch.tensor(expected, dtype=torch.float64))
        assert torch.equal(uv[0, 0, 0, 1], torch.full((2,), -1.0, dtype=torch.float64))

    def test_no_nan_gradient_at_camera_centre(self):
        size = (64, 32)
        cam = torch.zeros(1, 2, dtype=torch.float64)
        w2c = world_to_cam_from_pose(cam, torch.zeros(1, dtype=torch.float64), CAMERA_HEIGHT_M)
        points = ego_grid_xy(3, 3, 1.0, torch.float64)[None].requires_grad_(True)
        uv, valid = lift_to_ground_image(
            points, torch.tensor([CAMERA_HEIGHT_M]), w2c, "panorama", size
        )
        assert not valid[0, 0, 1, 1]  # the cell at the camera centre
        uv.sum().backward()
        assert torch.isfinite(points.grad).all()

    def test_dtype_agreement(self):
        size = (64, 32)
        points, w2c, _, _, _ = random_scene(2, "panorama", size)
        heights = torch.tensor([0.0, 1.0], dtype=torch.float64)
        uv64, valid64 = lift_to_ground_image(points, heights, w2c, "panorama", size)
        uv32, valid32 = lift_to_ground_image(
            points.float(), heights.float(), w2c.float(), "panorama", size
        )
        assert uv32.dtype == torch.float32
        assert torch.equal(valid32, valid64)
        assert torch.allclose(uv32.double(), uv64, atol=1e-3)

    def test_exception(self):
        size = (64, 48)
        points, w2c, K, _, _ = random_scene(2, "pinhole", size)
        h = torch.zeros(1)
        with pytest.raises(ValueError, match="camera_model"):
            lift_to_ground_image(points, h, w2c, "fisheye", size, K)
        with pytest.raises(ValueError, match="K is required"):
            lift_to_ground_image(points, h, w2c, "pinhole", size, None)
        with pytest.raises(ValueError, match="W = 2 H"):
            lift_to_ground_image(points, h, w2c, "panorama", size)
        with pytest.raises(ValueError, match="ground_size"):
            lift_to_ground_image(points, h, w2c, "pinhole", (0, 48), K)
        with pytest.raises(ShapeError):
            lift_to_ground_image(points, h, w2c[:1], "pinhole", size, K)
        with pytest.raises(ShapeError):
            lift_to_ground_image(points, torch.zeros(3, 2), w2c, "pinhole", size, K)


class TestWarpToBev:
    @staticmethod
    def _inputs(batch, size=(32, 16), feat_hw=(4, 8), Z=2, H=3, W=5, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        features = torch.randn(batch, 3, *feat_hw, generator=g, dtype=dtype)
        uv = torch.rand(batch, Z, H, W, 2, generator=g, dtype=dtype) * torch.tensor(
            size, dtype=dtype
        )
        uv = uv - 0.5
        valid = torch.rand(batch, Z, H, W, generator=g) > 0.3
        return features, uv, valid

    def test_smoke(self):
        features, uv, valid = self._inputs(2, dtype=torch.float32)
        bev = warp_to_bev(features, uv, valid, (32, 16))
        assert bev.shape == (2, 3, 2, 3, 5) and bev.dtype == torch.float32
        assert (bev.permute(0, 2, 3, 4, 1)[~valid] == 0).all()

    @pytest.mark.parametrize("batch", [1, 2, 5])
    @pytest.mark.parametrize("panorama", [False, True])
    def test_cardinality(self, batch, panorama):
        features, uv, valid = self._inputs(batch)
        assert warp_to_bev(features, uv, valid, (32, 16), panorama).shape == (batch, 3, 2, 3, 5)

    @pytest.mark.parametrize("feat_hw", [(48, 64), (12, 16), (6, 8)])
    def test_pixel_centre_convention(self, feat_hw):
        # Features = the ground pixel of each feature-pixel centre; bilinear is exact on a
        # linear function, so sampling must return the query pixel at any resolution.
        size = (64, 48)
        h, w = feat_hw
        u_c = (torch.arange(w, dtype=torch.float64) + 0.5) * size[0] / w - 0.5
        v_c = (torch.arange(h, dtype=torch.float64) + 0.5) * size[1] / h - 0.5
        vv, uu = torch.meshgrid(v_c, u_c, indexing="ij")
        features = torch.stack([uu, vv])[None]
        g = torch.Generator().manual_seed(1)
        t = torch.rand(1, 1, 4, 6, 2, generator=g, dtype=torch.float64)
        lo = torch.stack([u_c[0], v_c[0]])
        hi = torch.stack([u_c[-1], v_c[-1]])
        uv = lo + t * (hi - lo)
        valid = torch.ones(1, 1, 4, 6, dtype=torch.bool)
        for panorama in (False, True):
            bev = warp_to_bev(features, uv, valid, size, panorama)
            assert torch.allclose(bev[0].permute(1, 2, 3, 0), uv[0], atol=1e-9)

    @pytest.mark.parametrize("offset", [-2.0, 1.5, 3.5])
    def test_feature_offset(self, offset):
        # Each cell holds the pixel it describes, offset from the pixel-centre convention;
        # read with that offset, sampling returns the query pixel.
        size, (h, w) = (64, 48), (12, 16)
        u_c = (torch.arange(w, dtype=torch.float64) + 0.5) * size[0] / w - 0.5 + offset
        v_c = (torch.arange(h, dtype=torch.float64) + 0.5) * size[1] / h - 0.5 + offset
        vv, uu = torch.meshgrid(v_c, u_c, indexing="ij")
        features = torch.stack([uu, vv])[None]
        t = torch.rand(
            1, 1, 4, 6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        lo, hi = torch.stack([u_c[0], v_c[0]]), torch.stack([u_c[-1], v_c[-1]])
        uv = lo + t * (hi - lo)
        valid = torch.ones(1, 1, 4, 6, dtype=torch.bool)
        bev = warp_to_bev(features, uv, valid, size, feature_offset_px=offset)
        assert torch.allclose(bev[0].permute(1, 2, 3, 0), uv[0], atol=1e-9)
        assert not torch.allclose(
            warp_to_bev(features, uv, valid, size)[0].permute(1, 2, 3, 0), uv[0]
        )

    def test_panorama_seam(self):
        size, w = (64, 32), 16
        az_centres = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 360.0 - 180.0

        def signal(az_deg):
            az = torch.deg2rad(az_deg)
            return torch.cos(az) + 0.5 * torch.sin(2 * az) + 0.3

        features = signal(az_centres).expand(1, 1, 8, w).clone()
        # Seam (-0.5 == W - 0.5), just either side of it, and beyond the image (wraps).
        u = torch.tensor([-0.5, -0.3, 63.2, 63.5, 1.0, 65.0, -3.0], dtype=torch.float64)
        uv = torch.stack([u, torch.full_like(u, 15.5)], -1).reshape(1, 1, 1, -1, 2)
        valid = torch.ones(1, 1, 1, len(u), dtype=torch.bool)
        got = warp_to_bev(features, uv, valid, size, panorama=True)[0, 0, 0, 0]
        # Reference: linear interpolation of the periodic column sequence.
        c = (u + 0.5) * w / size[0] - 0.5
        j0 = torch.floor(c)
        frac = c - j0
        g = signal(az_centres)
        j0 = j0.long()
        expected = (1 - frac) * g[j0 % w] + frac * g[(j0 + 1) % w]
        assert torch.allclose(got, expected, atol=1e-12)
        # ... which is close to the true signal at the seam, and not zero.
        az = (u + 0.5) / size[0] * 360.0 - 180.0
        assert torch.allclose(got, signal(az), atol=0.12)
        assert got[0] < -0.6
        # Without the periodic flag the seam reads the border column only.
        flat = warp_to_bev(features, uv, valid, size, panorama=False)[0, 0, 0, 0]
        assert torch.isclose(flat[0], g[0])

    def test_dtype_agreement(self):
        features, uv, valid = self._inputs(2)
        for panorama in (False, True):
            b64 = warp_to_bev(features, uv, valid, (32, 16), panorama)
            b32 = warp_to_bev(features.float(), uv.float(), valid, (32, 16), panorama)
            assert b32.dtype == torch.float32
            assert torch.allclose(b32.double(), b64, atol=1e-4)

    def test_autocast_low_precision_features(self):
        features, uv, valid = self._inputs(2, dtype=torch.float32)
        expected = warp_to_bev(features.bfloat16().float(), uv, valid, (32, 16))
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            got = warp_to_bev(features.bfloat16(), uv, valid, (32, 16))
        assert got.dtype == torch.bfloat16
        assert torch.allclose(got.float(), expected, atol=2e-2)

    @pytest.mark.parametrize("panorama", [False, True])
    def test_gradcheck(self, panorama):
        features, uv, valid = self._inputs(1, feat_hw=(3, 4), Z=1, H=2, W=3)
        features.requires_grad_(True)
        uv.requires_grad_(True)

        def fn(f, p):
            return warp_to_bev(f, p, valid, (32, 16), panorama)

        assert torch.autograd.gradcheck(fn, (features, uv), eps=1e-6, atol=1e-5)

    def test_exception(self):
        features, uv, valid = self._inputs(2)
        with pytest.raises(ShapeError):
            warp_to_bev(features, uv, valid[:, :1], (32, 16))
        with pytest.raises(ShapeError):
            warp_to_bev(features[:1], uv, valid, (32, 16))
        with pytest.raises(ShapeError):
            warp_to_bev(features[0], uv, valid, (32, 16))
        with pytest.raises(ValueError):
            warp_to_bev(features, uv, valid, (32,))


def _prior_batch(batch, camera_model, size, dtype=torch.float64):
    """Satellite-frame inputs of bev_from_prior: 0.2 m/px, world origin at the image centre."""
    g = torch.Generator().manual_seed(3)
    sat_center_uv = torch.full((batch, 2), 31.5, dtype=dtype)
    camera_uv = sat_center_uv + (torch.rand(batch, 2, generator=g, dtype=dtype) - 0.5) * 10.0
    yaw = (torch.rand(batch, generator=g, dtype=dtype) - 0.5) * 360.0
    K = None
    if camera_model == "pinhole":
        K = intrinsics_from_hfov(90.0, size[0], size[1], dtype).expand(batch, 3, 3).clone()
    return dict(
        K=K,
        camera_model=camera_model,
        ground_size=size,
        sat_center_uv=sat_center_uv,
        m_per_px=torch.full((batch,), 0.2, dtype=dtype),
        camera_uv_prior=camera_uv,
        yaw_deg_prior=yaw,
        camera_height_m=torch.full((batch,), CAMERA_HEIGHT_M, dtype=dtype),
    )


def _rendered_plane(camera_model, size):
    """bev_from_prior inputs, the world origin's pixel, the camera (metres) and the ground
    image of the textured plane as seen from the prior, as a (1, 1, H, W) feature map."""
    args = _prior_batch(1, camera_model, size)
    cu, cv = args["sat_center_uv"][0].tolist()
    cam_uv = args["camera_uv_prior"][0].numpy()
    cam_xy = np.array([cam_uv[0] - cu, -(cam_uv[1] - cv)]) * 0.2
    K = None if args["K"] is None else args["K"][0].numpy()
    image = render_plane(camera_model, size, cam_xy, args["yaw_deg_prior"].item(), K)
    return args, (cu, cv), cam_xy, torch.from_numpy(image)[None, None]


class TestBevFromPrior:
    @pytest.mark.parametrize("batch", [1, 2, 5])
    @pytest.mark.parametrize(
        ("camera_model", "size"), [("pinhole", (64, 48)), ("panorama", (64, 32))]
    )
    def test_cardinality(self, batch, camera_model, size):
        args = _prior_batch(batch, camera_model, size)
        features = torch.randn(batch, 4, size[1] // 8, size[0] // 8, dtype=torch.float64)
        bev, valid = bev_from_prior(features, grid_hw=(8, 8), stride=8.0, **args)
        assert bev.shape == (batch, 4, 8, 8) and valid.shape == (batch, 8, 8)
        bev, valid = bev_from_prior(
            features, grid_hw=(8, 8), stride=8.0, heights_m=torch.tensor([0.0, 1.0, 2.0]), **args
        )
        assert bev.shape == (batch, 4, 3, 8, 8) and valid.shape == (batch, 3, 8, 8)

    @pytest.mark.parametrize(
        ("camera_model", "size", "pool", "atol"),
        [
            ("pinhole", (320, 240), 1, 0.01),
            ("pinhole", (320, 240), 2, 0.03),
            ("panorama", (512, 256), 1, 0.03),
            # 1/2 resolution: about 0.6 m per feature row at 6 m, the error of the box
            # filter plus bilinear interpolation on a 3.8 m wavelength.
            ("panorama", (512, 256), 2, 0.1),
        ],
    )
    def test_textured_plane(self, camera_model, size, pool, atol):
        # Render the ground image of a known top-view texture, lift it with the true pose as
        # prior and compare with the texture at the satellite cell centres.
        args, (cu, cv), cam_xy, features = _rendered_plane(camera_model, size)
        features = torch.nn.functional.avg_pool2d(features, pool)  # a 1/pool feature map
        bev, valid = bev_from_prior(features, grid_hw=(32, 32), stride=2.0, **args)
        grid_uv = satellite_grid_uv(32, 32, 2.0, torch.float64).numpy()
        x, y = (grid_uv[..., 0] - cu) * 0.2, -(grid_uv[..., 1] - cv) * 0.2
        dist = np.hypot(x - cam_xy[0], y - cam_xy[1])
        compare = valid[0].numpy() & (dist > 1.5) & (dist < 6.0)
        assert compare.sum() > 50
        err = np.abs(bev[0, 0].numpy() - texture(x, y))[compare]
        assert err.max() < atol, err.max()
        assert np.sqrt((err**2).mean()) < atol / 3
        # Cells behind a pinhole camera or outside the image stay empty.
        assert (bev[0, 0].numpy()[~valid[0].numpy()] == 0).all()

    @pytest.mark.parametrize(
        ("camera_model", "size"), [("pinhole", (320, 240)), ("panorama", (512, 256))]
    )
    def test_samples_per_cell_average_the_footprint(self, camera_model, size):
        # A cell with n x n samples is the mean of the texture at n x n points spread evenly
        # over its footprint, computed here from the cell corners in world metres.
        n, stride, grid = 3, 4.0, 16
        args, (cu, cv), cam_xy, features = _rendered_plane(camera_model, size)
        bev, valid = bev_from_prior(
            features, grid_hw=(grid, grid), stride=stride, samples_per_cell=n, **args
        )
        assert bev.shape == (1, 1, grid, grid) and valid.shape == (1, grid, grid)
        offsets = (np.arange(n) + 0.5) / n * stride  # sub-point centres from the cell corner
        corner_u = np.arange(grid) * stride - 0.5  # the left edge of cell j, pixels
        su = (corner_u[:, None] + offsets[None]).reshape(-1)
        sub_u, sub_v = np.meshgrid(su, su, indexing="xy")
        x, y = (sub_u - cu) * 0.2, -(sub_v - cv) * 0.2
        expected = texture(x, y).reshape(grid, n, grid, n).mean(axis=(1, 3))
        dist = np.hypot(x - cam_xy[0], y - cam_xy[1]).reshape(grid, n, grid, n)
        # Compare the cells whose every sample is in view (the fine grid's point samples).
        _, fine_valid = bev_from_prior(
            features, grid_hw=(grid * n, grid * n), stride=stride / n, **args
        )
        in_view = fine_valid[0].numpy().reshape(grid, n, grid, n).all(axis=(1, 3))
        near = ((dist > 1.5) & (dist < 6.0)).all(axis=(1, 3)) & in_view
        assert near.sum() > 10 and (valid[0].numpy() >= in_view).all()
        err = np.abs(bev[0, 0].numpy() - expected)[near]
        assert err.max() < 0.03, err.max()
        # One sample per cell is the default (eq. 1).
        one, one_valid = bev_from_prior(features, grid_hw=(grid, grid), stride=stride, **args)
        same, same_valid = bev_from_prior(
            features, grid_hw=(grid, grid), stride=stride, samples_per_cell=1, **args
        )
        assert torch.equal(one, same) and torch.equal(one_valid, same_valid)

    def test_samples_per_cell_average_only_visible_points(self):
        # Constant features: every cell with a visible sample is exactly the constant, also
        # where part of its footprint is out of view (a mean over visible points only).
        args = _prior_batch(2, "pinhole", (64, 48))
        features = torch.full((2, 2, 6, 8), 3.0, dtype=torch.float64)
        heights = torch.tensor([0.0, 1.0])
        bev, valid = bev_from_prior(
            features, grid_hw=(8, 8), stride=8.0, heights_m=heights, samples_per_cell=4, **args
        )
        assert bev.shape == (2, 2, 2, 8, 8) and valid.shape == (2, 2, 8, 8)
        assert valid.any() and not valid.all()
        on = valid[:, None].expand_as(bev)
        assert (bev[on] == 3.0).all() and (bev[~on] == 0).all()

    def test_exception(self):
        args = _prior_batch(2, "pinhole", (64, 48))
        features = torch.randn(2, 4, 6, 8, dtype=torch.float64)
        with pytest.raises(ValueError, match="samples_per_cell"):
            bev_from_prior(features, grid_hw=(8, 8), stride=8.0, samples_per_cell=0, **args)
        with pytest.raises(ValueError, match="K is required"):
            bev_from_prior(features, grid_hw=(8, 8), stride=8.0, **{**args, "K": None})
        with pytest.raises(ShapeError):
            bev_from_prior(
                features, grid_hw=(8, 8), stride=8.0, **{**args, "m_per_px": torch.ones(3)}
            )
