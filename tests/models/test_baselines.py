import math

import pytest
import torch
import torch.nn.functional as F

from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.models.baselines import (
    ClassicalBaseline,
    ClassicalConfig,
    PriorBaseline,
    correlation_search,
    gradient_features,
    masked_ncc,
    yaw_offsets,
)

M_PER_PX = 0.2
CAMERA_HEIGHT_M = 1.65


def texture(size: int, seed: int) -> torch.Tensor:
    """(1, 1, size, size) smooth random texture with blobs at several scales."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 1, size, size)
    for cells, amp in ((8, 1.0), (24, 0.6), (64, 0.3)):
        noise = torch.rand(1, 1, cells, cells, generator=g)
        out += amp * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    return (out - out.min()) / (out.max() - out.min())


def sample_uv(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (1, C, H, W) at pixel coordinates uv (..., 2), pixel centres at ints."""
    H, W = image.shape[-2:]
    grid = torch.stack([(uv[..., 0] + 0.5) / W * 2 - 1, (uv[..., 1] + 0.5) / H * 2 - 1], -1)
    return F.grid_sample(image, grid[None].float(), align_corners=False, padding_mode="zeros")


def compass_matrix_uv(deg: float) -> torch.Tensor:
    """Rotation on the v-down satellite image by a clockwise (compass) angle."""
    r = math.radians(deg)
    return torch.tensor([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


# ---------------------------------------------------------------------------------------------
# The search core on a satellite image and a rotated / shifted crop of it.


def test_masked_ncc_exact_shift_is_one():
    image = texture(48, 0)[0]  # 1,H,W
    shift = (5, -3)  # du, dv
    template = torch.roll(image, (-shift[1], -shift[0]), dims=(-2, -1))  # template(q) = image(q+t)
    mask = torch.zeros(1, 48, 48, dtype=torch.bool)
    mask[:, 10:38, 12:36] = True
    scores = masked_ncc(template[None], mask, image, max_shift=8)
    assert scores.shape == (1, 17, 17)
    assert scores[0, 8 + shift[1], 8 + shift[0]].item() == pytest.approx(1.0, abs=1e-9)
    flat = scores[0].flatten()
    assert int(flat.argmax()) == (8 + shift[1]) * 17 + 8 + shift[0]


def test_masked_ncc_is_pearson_correlation():
    # Brute-force reference at a few shifts, multi-channel, with a random mask.
    g = torch.Generator().manual_seed(1)
    template, image = torch.rand(2, 2, 20, 24, generator=g).unbind(0)
    mask = torch.rand(1, 20, 24, generator=g) > 0.3
    scores = masked_ncc(template[None], mask, image, max_shift=4, min_overlap=0.1)
    for du, dv in ((0, 0), (3, -2), (-4, 4)):
        a, b = [], []
        for v in range(20):
            for u in range(24):
                if mask[0, v, u] and 0 <= v + dv < 20 and 0 <= u + du < 24:
                    a.append(template[:, v, u])
                    b.append(image[:, v + dv, u + du])
        a, b = torch.cat(a).double(), torch.cat(b).double()
        ref = torch.corrcoef(torch.stack([a, b]))[0, 1]
        assert scores[0, 4 + dv, 4 + du].item() == pytest.approx(ref.item(), abs=1e-9)


def test_yaw_offsets():
    assert yaw_offsets(10, 1).tolist() == list(range(-10, 11))
    full = yaw_offsets(180, 6)
    assert len(full) == 60 and full[0] == -180 and full[-1] == 174
    assert yaw_offsets(3, 2, center_deg=40).tolist() == [38, 40, 42]


@pytest.mark.parametrize(
    ("yaw_deg", "yaw_range", "shift"),
    [
        (0.0, 10.0, (0.0, 0.0)),
        (4.0, 10.0, (6.0, -3.0)),
        (-7.0, 10.0, (-2.0, 5.0)),
        (-96.0, 180.0, (3.0, 4.0)),
        (2.5, 10.0, (1.5, -2.25)),
    ],
)
def test_correlation_search_recovers_rotation_and_shift(yaw_deg, yaw_range, shift):
    # The template for heading offset d is the image seen from a camera rotated by
    # (yaw_deg - d) about `pivot` and displaced by `shift`, masked to a sector in front of it
    # (what the BEV of a pinhole camera covers): at d = yaw_deg it equals image(q + shift).
    size = 96
    image = texture(size, 2)
    pivot = torch.tensor([47.0, 50.0])
    t = torch.tensor(shift)
    vv, uu = torch.meshgrid(
        torch.arange(size.__float__()), torch.arange(size.__float__()), indexing="ij"
    )
    q = torch.stack([uu, vv], -1)  # H,W,2
    rel = q - pivot
    sector = (rel[..., 1] < -2) & (rel[..., 0].abs() < -rel[..., 1]) & (rel.norm(dim=-1) < 40)

    def render(offsets, camera_shift):
        out = []
        for d in offsets.tolist():
            src = pivot + t + (rel - camera_shift.float()) @ compass_matrix_uv(yaw_deg - d).T
            out.append(sample_uv(image, src)[0])
        feats, mask = gradient_features(torch.stack(out).double(), sector.expand(len(out), -1, -1))
        return feats, mask

    image_feats, _ = gradient_features(image.double(), None)
    cfg = ClassicalConfig(yaw_step_deg=1.0, coarse_yaw_step_deg=6.0)
    found = correlation_search(render, image_feats[0], yaw_range, 10, cfg)
    exact = float(yaw_deg).is_integer() and all(float(x).is_integer() for x in shift)
    tol_px, tol_deg = (0.05, 0.05) if exact else (0.3, 0.4)
    assert found.yaw_offset_deg == pytest.approx(yaw_deg, abs=tol_deg)
    assert found.shift_uv.tolist() == pytest.approx(list(shift), abs=tol_px)
    if exact:
        assert found.score == pytest.approx(1.0, abs=1e-3)


def test_gradient_features_edge_of_mask_is_no_edge():
    image = torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 4:12] = True
    image[..., ~mask[0]] = 0.0  # a masked BEV is zero outside: a step at the border
    for feature, channels in (("magnitude", 1), ("orientation", 2)):
        feats, eroded = gradient_features(image, mask, feature)
        assert feats.shape == (1, channels, 16, 16)
        assert eroded.sum() == 36 and bool(eroded[0, 5:11, 5:11].all())
        assert feats.abs().max() < 1e-9


# ---------------------------------------------------------------------------------------------
# Whole baselines on batches.


def camera_extrinsics(camera_xy, yaw_deg, height):
    """world_to_cam written out from design.md (level camera), independent of the library."""
    y = math.radians(yaw_deg)
    R = torch.tensor(
        [[math.cos(y), -math.sin(y), 0.0], [0.0, 0.0, -1.0], [math.sin(y), math.cos(y), 0.0]]
    )
    C = torch.tensor([camera_xy[0], camera_xy[1], height])
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ C
    return T


def render_plane(sat, K, world_to_cam, size_wh, sat_center_uv, m_per_px):
    """Ground image of the textured ground plane z = 0 whose texture is the satellite image."""
    W, H = size_wh
    vv, uu = torch.meshgrid(
        torch.arange(H.__float__()), torch.arange(W.__float__()), indexing="ij"
    )
    rays_cam = torch.stack([uu, vv, torch.ones_like(uu)], -1) @ torch.linalg.inv(K).T
    R, t = world_to_cam[:3, :3], world_to_cam[:3, 3]
    center = -R.T @ t
    rays = rays_cam @ R  # world directions (R^T applied to row vectors)
    lam = -center[2] / rays[..., 2]
    ground = center + lam[..., None] * rays
    uv = torch.stack(
        [
            sat_center_uv[0] + ground[..., 0] / m_per_px,
            sat_center_uv[1] - ground[..., 1] / m_per_px,
        ],
        -1,
    )
    image = sample_uv(sat, uv)[0]
    return torch.where((rays[..., 2] < -1e-3)[None], image, torch.full_like(image, 0.5))


def plane_batch(prior_shift_m=(2.6, -1.8), prior_dyaw=-4.0, yaw_gt=33.0, seed=3):
    size, ground_wh = 256, (192, 96)
    sat = texture(size, seed).expand(1, 3, -1, -1)
    center = torch.tensor([127.5, 127.5])
    camera_uv_gt = torch.tensor([131.0, 120.0])
    xy_gt = pixel_to_world_xy(camera_uv_gt, center, M_PER_PX)
    f = (ground_wh[0] / 2) / math.tan(math.radians(45))
    K = torch.tensor([[f, 0, (ground_wh[0] - 1) / 2], [0, f, (ground_wh[1] - 1) / 2], [0, 0, 1.0]])
    T = camera_extrinsics(xy_gt.tolist(), yaw_gt, CAMERA_HEIGHT_M)
    ground = render_plane(sat[:, :1], K, T, ground_wh, center, M_PER_PX).expand(3, -1, -1)
    prior_uv = camera_uv_gt + torch.tensor([prior_shift_m[0], -prior_shift_m[1]]) / M_PER_PX
    item = {
        "name": ["plane"],
        "ground": ground[None].contiguous(),
        "satellite": sat.contiguous(),
        "camera_model": ["pinhole"],
        "K": K[None],
        "world_to_cam": T[None],
        "camera_height_m": torch.tensor([CAMERA_HEIGHT_M]),
        "m_per_px": torch.tensor([M_PER_PX]),
        "sat_center_uv": center[None],
        "camera_uv_gt": camera_uv_gt[None],
        "yaw_deg_gt": torch.tensor([yaw_gt]),
        "camera_uv_prior": prior_uv[None],
        "yaw_deg_prior": torch.tensor([yaw_gt + prior_dyaw]),
        "shift_range_m": torch.tensor([5.0]),
        "yaw_range_deg": torch.tensor([8.0]),
    }
    return item


def test_prior_baseline_returns_prior():
    batch = plane_batch()
    out = PriorBaseline()(batch)
    assert torch.equal(out["camera_uv_pred"], batch["camera_uv_prior"])
    assert torch.equal(out["yaw_deg_pred"], batch["yaw_deg_prior"])
    expected_xy = (batch["camera_uv_prior"] - batch["sat_center_uv"]) * torch.tensor([1, -1])
    torch.testing.assert_close(out["camera_xy_pred"], expected_xy * M_PER_PX)


@pytest.mark.parametrize("feature", ["orientation", "magnitude"])
def test_classical_baseline_localizes_textured_plane(feature):
    # A ground image rendered from the satellite texture lying on the ground plane: the flat
    # BEV at the right pose is a (blurred) copy of the satellite image. This checks the
    # conventions end to end (a sign or frame error costs metres and degrees), not accuracy:
    # the bounds leave room for the weak heading observability of a 90-degree view, where
    # a heading error is nearly a sideways shift of the visible sector.
    batch = plane_batch()
    out = ClassicalBaseline(ClassicalConfig(feature=feature))(batch)
    err_uv = (out["camera_uv_pred"] - batch["camera_uv_gt"]).norm().item()
    err_yaw = abs(out["yaw_deg_pred"] - batch["yaw_deg_gt"]).item()
    assert err_uv * M_PER_PX < 0.5  # prior: 3.2 m
    assert err_yaw < 1.5  # prior: 4 degrees
    expected_xy = pixel_to_world_xy(out["camera_uv_pred"], batch["sat_center_uv"], M_PER_PX)
    torch.testing.assert_close(out["camera_xy_pred"], expected_xy)
    # Correspondences follow the same rigid motion: the prior camera maps onto the estimate.
    src, dst, w = out["match_src_uv"], out["match_dst_uv"], out["match_weight"]
    cells = (256 // 2) ** 2  # 0.4 m cells on a 0.2 m/px satellite image
    assert src.shape == dst.shape == (1, cells, 2) and w.shape == (1, cells)
    assert (w > 0).sum() > 100
    # Scores in [0, 1]: relative gradient strength times the search's NCC.
    assert w.max().item() == pytest.approx(min(max(out["search_score"].item(), 0.0), 1.0))
    assert (w >= 0).all()
    M = compass_matrix_uv(out["yaw_deg_pred"].item() - batch["yaw_deg_prior"].item())
    expected = out["camera_uv_pred"][:, None] + (src - batch["camera_uv_prior"][:, None]) @ M.T
    torch.testing.assert_close(dst, expected, atol=1e-3, rtol=0)


def test_classical_baseline_batches_samples_independently():
    a, b = plane_batch(seed=3), plane_batch(prior_shift_m=(-3.0, 2.0), prior_dyaw=5.0, seed=4)
    batch = {k: a[k] + b[k] if isinstance(a[k], list) else torch.cat([a[k], b[k]]) for k in a}
    model = ClassicalBaseline(ClassicalConfig(cell_m=0.8))
    out = model(batch)
    single = model(b)
    torch.testing.assert_close(out["camera_uv_pred"][1:], single["camera_uv_pred"])
    torch.testing.assert_close(out["yaw_deg_pred"][1:], single["yaw_deg_pred"])


def test_classical_config_rejects_bad_values():
    with pytest.raises(ValueError, match="feature"):
        ClassicalConfig(feature="sift")
    with pytest.raises(ValueError, match="cell_m"):
        ClassicalConfig(cell_m=0.0)
    with pytest.raises(ValueError, match="min_overlap"):
        ClassicalConfig(min_overlap=0.0)
