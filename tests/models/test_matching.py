"""Matching: descriptors, similarity, adaptive dustbin + dual softmax, matches, pose."""

import math

import pytest
import torch

from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import apply_rigid_2d, relative_rigid_2d
from cvloc.models.matching import (
    AdaptiveDustbin,
    DescriptorHead,
    MatchingConfig,
    extract_matches,
    pose_from_matches,
    prior_window_mask,
    similarity,
)


def test_descriptors_are_unit_norm():
    head = DescriptorHead(6, 5, norm="batch")
    d = head(torch.randn(2, 6, 4, 3))
    assert d.shape == (2, 5, 4, 3)
    assert torch.allclose(d.norm(dim=1), torch.ones(2, 4, 3), atol=1e-5)


def test_similarity_is_scaled_cosine():
    d_bev = torch.nn.functional.normalize(torch.randn(2, 4, 3, 3), dim=1)
    d_sat = torch.nn.functional.normalize(torch.randn(2, 4, 2, 5), dim=1)
    S = similarity(d_bev, d_sat, 0.1)
    assert S.shape == (2, 9, 10)
    assert torch.allclose(S[1, 4, 7], (d_bev[1, :, 1, 1] * d_sat[1, :, 1, 2]).sum() / 0.1)
    assert S.abs().max() <= 10.0 + 1e-4


class TestPriorWindow:
    grid, stride, m_per_px = (12, 12), 8.0, 0.5  # 48 m x 48 m, cells of 4 m

    def mask(self, shift_m, yaw_deg, cam=(40.0, 52.0)):
        B = len(shift_m)
        return prior_window_mask(
            self.grid,
            self.stride,
            torch.tensor([cam] * B),
            torch.full((B,), self.m_per_px),
            torch.tensor(shift_m),
            torch.tensor(yaw_deg),
        )

    def test_true_cells_are_always_inside(self):
        # Independent check: move every prior-placed BEV cell by random true poses inside
        # the bounds; the satellite cell nearest to its true position must be allowed.
        H, W = self.grid
        cam = torch.tensor([40.0, 52.0], dtype=torch.float64)
        j, i = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
        uv = torch.stack([(j + 0.5) * self.stride - 0.5, (i + 0.5) * self.stride - 0.5], -1)
        uv = uv.reshape(-1, 2).double()
        mask = self.mask([6.0], [10.0])[0]
        g = torch.Generator().manual_seed(0)
        # The corners of the bounds (the worst cases), then random poses inside them.
        extremes = [(sx, sy, d) for sx in (-1, 1) for sy in (-1, 1) for d in (-1, 1)]
        random = (torch.rand(30, 3, generator=g, dtype=torch.float64) * 2 - 1).tolist()
        for sx, sy, d in extremes + random:
            shift_px = torch.tensor([sx, sy], dtype=torch.float64) * 6.0 / self.m_per_px
            yaw = math.radians(10.0 * d)
            R = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
            true_uv = cam + shift_px + (uv - cam) @ R.double().T
            col = ((true_uv[:, 0] + 0.5) / self.stride - 0.5).round().long()
            row = ((true_uv[:, 1] + 0.5) / self.stride - 0.5).round().long()
            inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
            n = torch.nonzero(inside)[:, 0]
            assert mask[n, row[inside] * W + col[inside]].all()

    def test_window_excludes_what_the_prior_rules_out(self):
        mask = self.mask([2.0, 2.0, 0.0], [0.0, 180.0, 0.0])
        H, W = self.grid
        assert mask.shape == (3, H * W, H * W)
        assert mask[0].diagonal().all()  # a cell's own prior position
        # Known heading, 2 m shift: reach 2 sqrt(2) + 4 sqrt(2) = 8.5 m, about two cells.
        assert mask[0].sum(1).max() < 0.2 * H * W
        assert not mask[0, 0, H * W - 1]
        # An unknown heading lets far cells swing around the camera.
        assert mask[1].sum() > 3 * mask[0].sum()
        assert mask[2].all()  # shift_range 0: undeclared, the whole map

    def test_dustbin_gives_no_mass_outside_the_window(self):
        g = torch.Generator().manual_seed(1)
        S = 3 * torch.randn(1, 144, 144, generator=g)
        valid = torch.ones(1, 144, dtype=torch.bool)
        window = self.mask([2.0], [0.0])
        c = AdaptiveDustbin(hidden=8, init=1.0)(S, valid, window)
        assert (c.probs[:, :-1, :-1][~window] == 0).all()
        assert torch.allclose(c.row_softmax.sum(2), torch.ones(1, 145), atol=1e-6)
        assert (c.probs[:, :-1, :-1][window] > 0).all()


class TestDustbin:
    def coupling(self, seed=0, valid=None):
        g = torch.Generator().manual_seed(seed)
        S = 3 * torch.randn(2, 12, 15, generator=g)
        valid = torch.rand(2, 12, generator=g) > 0.3 if valid is None else valid
        dustbin = AdaptiveDustbin(hidden=8, init=1.0)
        with torch.no_grad():
            for p in dustbin.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        return S, valid, dustbin, dustbin(S, valid)

    def test_rows_and_columns_sum_correctly(self):
        *_, c = self.coupling()
        assert c.probs.shape == (2, 13, 16)
        assert torch.allclose(c.row_softmax.sum(2), torch.ones(2, 13), atol=1e-6)
        assert torch.allclose(c.col_softmax.sum(1), torch.ones(2, 16), atol=1e-6)
        assert torch.allclose(c.probs, c.row_softmax * c.col_softmax)
        assert (c.probs >= 0).all() and (c.probs <= 1).all()
        # Every BEV cell spends at most all of its mass on matches, every satellite cell too.
        assert (c.probs[:, :-1, :].sum(2) <= 1 + 1e-6).all()
        assert (c.probs[:, :, :-1].sum(1) <= 1 + 1e-6).all()

    def test_unseen_cells_go_to_the_dustbin(self):
        _, valid, _, c = self.coupling()
        unseen = ~valid
        assert unseen.any()
        assert torch.allclose(c.row_softmax[:, :-1, -1][unseen], torch.ones(int(unseen.sum())))
        assert (c.probs[:, :-1, :-1][unseen] == 0).all()
        # ... and take no part in the satellite cells' column softmax.
        assert (c.col_softmax[:, :-1, :-1][unseen] == 0).all()

    def test_dustbin_score_adapts_to_context(self):
        S, valid, _, c = self.coupling()
        padded_row = torch.log(c.row_softmax[:, :-1])  # log-probabilities of each row
        z_row = padded_row[..., -1] - padded_row[..., 0] + S[..., 0]  # dustbin score
        seen = valid.nonzero()
        scores = z_row[seen[:, 0], seen[:, 1]]
        assert scores.std() > 1e-3  # not one learned constant
        constant = AdaptiveDustbin(hidden=8, init=2.0)(S, valid)  # zero-initialised MLPs
        log_row = torch.log(constant.row_softmax[:, :-1])
        z = log_row[..., -1] - log_row[..., 0] + S[..., 0]
        assert torch.allclose(z[valid], torch.full_like(z[valid], 2.0), atol=1e-4)


class TestExtractMatches:
    def test_bilinear_row_gives_its_exact_location(self):
        H, W, stride = 4, 5, 8.0
        probs = torch.zeros(1, 2, H * W)
        # Cell (row 1.25, col 2.5): bilinear weights over rows 1-2, cols 2-3, total mass 0.8.
        for (r, c), w in {(1, 2): 0.375, (1, 3): 0.375, (2, 2): 0.125, (2, 3): 0.125}.items():
            probs[0, 0, r * W + c] = 0.8 * w
        dst_uv, weight = extract_matches(probs, (H, W), stride, radius=1)
        expected = torch.tensor([(2.5 + 0.5) * stride - 0.5, (1.25 + 0.5) * stride - 0.5])
        assert torch.allclose(dst_uv[0, 0], expected)
        assert weight[0, 0].item() == pytest.approx(0.8)
        assert weight[0, 1] == 0 and torch.isfinite(dst_uv).all()  # an unmatched row

    def test_window_ignores_a_distant_mode(self):
        H = W = 8
        probs = torch.zeros(1, 1, H * W)
        probs[0, 0, 1 * W + 1] = 0.5
        probs[0, 0, 6 * W + 6] = 0.3  # a second, weaker mode far away
        dst_uv, weight = extract_matches(probs, (H, W), 1.0, radius=2)
        assert torch.allclose(dst_uv[0, 0], torch.tensor([1.0, 1.0]))
        assert weight[0, 0].item() == pytest.approx(0.5)
        whole_row, _ = extract_matches(probs, (H, W), 1.0, radius=H)
        assert not torch.allclose(whole_row[0, 0], torch.tensor([1.0, 1.0]))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_rows_without_mass_give_finite_gradients(self, dtype):
        # Rows with zero or denormal mass (the coupling outside the prior window, or
        # underflowing softmax products) once made d(dst)/d(probs) 0 / 0 = NaN.
        H, W = 3, 4
        logits = torch.randn(1, 4, H * W, dtype=dtype)
        scale = torch.tensor([1.0, 0.0, torch.finfo(dtype).tiny, 1e-30], dtype=dtype)
        logits.requires_grad_(True)
        probs = logits.softmax(-1) * scale[None, :, None]
        dst_uv, weight = extract_matches(probs, (H, W), 8.0, radius=1)
        (dst_uv.sum() + weight.sum()).backward()
        assert torch.isfinite(logits.grad).all()
        assert torch.equal(dst_uv[0, 1], torch.tensor([3.5, 3.5], dtype=dtype))  # cell (0, 0)
        assert logits.grad[0, 0].abs().sum() > 0  # a real row still learns


def rigid_matches(B=2, N=60, seed=0):
    """BEV cells at the prior and their exact matches under a known prior -> GT motion."""
    g = torch.Generator().manual_seed(seed)
    center = torch.full((B, 2), 63.5)
    m = torch.full((B,), 0.25)
    prior_uv = center + 3 * torch.randn(B, 2, generator=g)
    prior_yaw = 30 * torch.randn(B, generator=g)
    gt_uv = prior_uv + 8 * torch.randn(B, 2, generator=g)
    gt_yaw = prior_yaw + 8 * torch.randn(B, generator=g)
    src_uv = 128 * torch.rand(B, N, 2, generator=g)
    R, t = relative_rigid_2d(
        pixel_to_world_xy(prior_uv, center, m),
        prior_yaw,
        pixel_to_world_xy(gt_uv, center, m),
        gt_yaw,
    )
    src_xy = pixel_to_world_xy(src_uv, center[:, None], m[:, None])
    dst_xy = apply_rigid_2d(R, t, src_xy)
    dst_uv = dst_xy / m[:, None, None] * torch.tensor([1.0, -1.0]) + center[:, None]
    return src_uv, dst_uv, (center, m, prior_uv, prior_yaw), (gt_uv, gt_yaw)


class TestPoseFromMatches:
    def test_exact_matches_give_the_pose(self):
        src, dst, geo, (gt_uv, gt_yaw) = rigid_matches()
        weight = torch.rand(2, 60) + 0.1
        xy, yaw, uv, fit_weight = pose_from_matches(src, dst, weight, *geo)
        torch.testing.assert_close(fit_weight, weight, rtol=0, atol=0)  # the plain fit's
        assert torch.allclose(uv, gt_uv, atol=1e-3)
        assert torch.allclose(yaw, gt_yaw, atol=1e-3)
        assert torch.allclose(xy, pixel_to_world_xy(uv, geo[0], geo[1]), atol=1e-5)

    def test_no_weight_keeps_the_prior(self):
        src, dst, geo, _ = rigid_matches()
        _, yaw, uv, _ = pose_from_matches(src, dst, torch.zeros(2, 60), *geo)
        assert torch.allclose(uv, geo[2]) and torch.allclose(yaw, geo[3])

    def test_ransac_rejects_outliers_procrustes_does_not(self):
        src, dst, geo, (gt_uv, gt_yaw) = rigid_matches(N=80)
        dst = dst.clone()
        dst[:, :24] = 128 * torch.rand(2, 24, 2, generator=torch.Generator().manual_seed(3))
        weight = torch.ones(2, 80)
        ransac = MatchingConfig(solver="ransac", ransac_iters=64, ransac_threshold_m=0.5)
        _, yaw_r, uv_r, inlier_w = pose_from_matches(src, dst, weight, *geo, config=ransac)
        uv_p = pose_from_matches(src, dst, weight, *geo)[2]
        assert torch.allclose(uv_r, gt_uv, atol=1e-3) and torch.allclose(yaw_r, gt_yaw, atol=1e-3)
        assert (uv_p - gt_uv).norm(dim=-1).max() > 1.0
        # The fit's weights: the inlier set (every true match, no random one lands on its
        # true place within 0.5 m).
        assert (inlier_w[:, 24:] == 1).all() and (inlier_w[:, :24] == 0).all()
        # Deterministic: the seed fixes the hypotheses.
        again = pose_from_matches(src, dst, weight, *geo, config=ransac)
        assert torch.equal(again[2], uv_r)

    def test_robust_refits_reject_outliers_without_ransac(self):
        src, dst, geo, (gt_uv, gt_yaw) = rigid_matches(N=80)
        dst = dst.clone()
        # Wrong matches 4-12 px (1.6-4.7 m) off, as FineMatch's near-misses.
        g = torch.Generator().manual_seed(4)
        direction = torch.nn.functional.normalize(torch.randn(2, 24, 2, generator=g), dim=-1)
        dst[:, :24] += direction * (4 + 8 * torch.rand(2, 24, 1, generator=g))
        weight = torch.ones(2, 80)
        robust = MatchingConfig(robust_iters=4, robust_sigma_m=0.5)
        _, yaw_r, uv_r, fit_w = pose_from_matches(src, dst, weight, *geo, config=robust)
        uv_p = pose_from_matches(src, dst, weight, *geo)[2]
        assert torch.allclose(uv_r, gt_uv, atol=2e-2) and torch.allclose(yaw_r, gt_yaw, atol=2e-2)
        assert (uv_p - gt_uv).norm(dim=-1).max() > 0.2
        # The near-misses (>= 4 px = 1 m = 2 sigma off: kernel <= exp(-2) = 0.135) fade out;
        # the true matches keep their weight.
        assert (fit_w[:, :24] < 0.14).all() and (fit_w[:, 24:] > 0.99).all()

    def test_robust_fit_started_from_a_shift(self):
        # A pure shift of the camera (heading right) and a heavy cluster of matches all
        # 5 m off in the same direction, as a repeated structure gives: started from the
        # weighted fit, the re-weighting keeps the cluster; started from a rigid shift
        # near the truth (an alignment, here 0.5 m off), it keeps the true matches.
        g = torch.Generator().manual_seed(7)
        center, m = torch.full((2, 2), 63.5), torch.full((2,), 0.25)
        prior_uv = center + 4 * torch.randn(2, 2, generator=g)
        prior_yaw = torch.tensor([10.0, -70.0])
        gt_uv = prior_uv + torch.tensor([[12.0, -6.0], [-8.0, 10.0]])
        src = 128 * torch.rand(2, 80, 2, generator=g)
        dst = src + (gt_uv - prior_uv)[:, None]
        dst[:, :30] += torch.tensor([0.0, 20.0])  # 20 px = 5 m
        weight = torch.cat([torch.full((2, 30), 5.0), torch.ones(2, 50)], dim=1)
        geo = (center, m, prior_uv, prior_yaw)
        robust = MatchingConfig(robust_iters=3, robust_sigma_m=1.0, robust_start="alignment")
        uv_fit = pose_from_matches(src, dst, weight, *geo, config=robust)[2]
        assert ((uv_fit - gt_uv).norm(dim=-1) > 8.0).all()  # > 2 m: pulled to the cluster
        start = gt_uv + torch.tensor([1.2, -1.6])  # 2 px = 0.5 m off
        _, yaw, uv, fit_w = pose_from_matches(
            src, dst, weight, *geo, config=robust, start_uv=start
        )
        torch.testing.assert_close(uv, gt_uv, atol=1e-3, rtol=0)
        torch.testing.assert_close(yaw, prior_yaw, atol=1e-3, rtol=0)
        # The fit's weights: the cluster's 5 * exp(-(5 m)^2 / 2), the true matches' 1.
        torch.testing.assert_close(fit_w[:, :30], torch.full((2, 30), 5 * math.exp(-12.5)))
        torch.testing.assert_close(fit_w[:, 30:], torch.ones(2, 50), atol=1e-4, rtol=0)
        ransac = MatchingConfig(solver="ransac")
        with pytest.raises(ValueError, match="RANSAC"):
            pose_from_matches(src, dst, weight, *geo, config=ransac, start_uv=start)

    def test_gradient_reaches_matches_and_weights(self):
        src, dst, geo, _ = rigid_matches()
        dst = (dst + 0.5 * torch.randn_like(dst)).requires_grad_()
        weight = (torch.rand(2, 60) + 0.1).requires_grad_()
        xy, yaw, _, _ = pose_from_matches(src, dst, weight, *geo)
        (xy.sum() + yaw.sum()).backward()
        assert torch.isfinite(dst.grad).all() and dst.grad.abs().sum() > 0
        assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError):
        MatchingConfig(solver="magsac")
    with pytest.raises(ValueError):
        MatchingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="robust"):
        MatchingConfig(robust_iters=-1)
    with pytest.raises(ValueError, match="robust"):
        MatchingConfig(robust_sigma_m=0.0)
    with pytest.raises(ValueError, match="robust_start"):
        MatchingConfig(robust_iters=2, robust_start="median")
    with pytest.raises(ValueError, match="robust_iters >= 1"):
        MatchingConfig(robust_start="alignment")  # robust_iters 0: nothing to start
    with pytest.raises(ValueError, match="procrustes"):
        MatchingConfig(solver="ransac", robust_iters=2, robust_start="alignment")
