import math

import pytest
import torch
import torch.nn.functional as F

from cvloc.geometry.checks import ShapeError
from cvloc.models.corr import CorrPyramid


def _features(B=2, C=5, H=3, W=4, H2=8, W2=12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H2, W2, generator=g)


def _brute_force(bev, sat_level, coords_level, radius):
    """Direct dot products at integer offsets around integer level coordinates."""
    B, C, H, W = bev.shape
    H2, W2 = sat_level.shape[-2:]
    out = torch.zeros(B, (2 * radius + 1) ** 2, H, W)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                x0, y0 = (round(c) for c in coords_level[b, :, i, j].tolist())
                k = 0
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        x, y = x0 + dx, y0 + dy
                        if 0 <= x < W2 and 0 <= y < H2:
                            out[b, k, i, j] = bev[b, :, i, j] @ sat_level[b, :, y, x]
                        k += 1
    return out / math.sqrt(C)


class TestCorrPyramid:
    def test_cardinality(self):
        bev, sat = _features()
        corr = CorrPyramid(bev, sat, levels=3, radius=2)
        out = corr.lookup(torch.zeros(2, 2, 3, 4))
        assert out.shape == (2, 3 * 25, 3, 4) and corr.channels == 75
        assert [p.shape[-2:] for p in corr.pyramid] == [(8, 12), (4, 6), (2, 3)]

    def test_level0_vs_brute_force(self):
        bev, sat = _features()
        r = 2
        g = torch.Generator().manual_seed(1)
        # Integer positions, some near or beyond the border (zero padding there).
        coords = torch.stack(
            [
                torch.randint(-2, 14, (2, 3, 4), generator=g),
                torch.randint(-2, 10, (2, 3, 4), generator=g),
            ],
            dim=1,
        ).float()
        out = CorrPyramid(bev, sat, levels=2, radius=r).lookup(coords)
        torch.testing.assert_close(out[:, : (2 * r + 1) ** 2], _brute_force(bev, sat, coords, r))

    @pytest.mark.parametrize("level", [1, 2])
    def test_pooled_levels_vs_brute_force(self, level):
        bev, sat = _features()
        r = 1
        g = torch.Generator().manual_seed(2)
        # Integer cells k of the pooled level sit at level-0 x = 2^n (k + 0.5) - 0.5.
        k = torch.stack(
            [
                torch.randint(0, 12 >> level, (2, 3, 4), generator=g),
                torch.randint(0, 8 >> level, (2, 3, 4), generator=g),
            ],
            dim=1,
        ).float()
        coords = 2**level * (k + 0.5) - 0.5
        out = CorrPyramid(bev, sat, levels=3, radius=r).lookup(coords)
        n = (2 * r + 1) ** 2
        sat_level = F.avg_pool2d(sat, 2**level)  # correlation is linear in sat
        expected = _brute_force(bev, sat_level, k, r)
        torch.testing.assert_close(out[:, level * n : (level + 1) * n], expected)

    def test_bilinear_between_cells(self):
        bev, sat = _features(B=1, H=1, W=1)
        corr = CorrPyramid(bev, sat, levels=1, radius=0)
        a = corr.lookup(torch.tensor([3.0, 2.0]).view(1, 2, 1, 1))
        b = corr.lookup(torch.tensor([4.0, 2.0]).view(1, 2, 1, 1))
        c = corr.lookup(torch.tensor([3.0, 3.0]).view(1, 2, 1, 1))
        mid = corr.lookup(torch.tensor([3.25, 2.5]).view(1, 2, 1, 1))
        d = corr.lookup(torch.tensor([4.0, 3.0]).view(1, 2, 1, 1))
        expected = 0.75 * 0.5 * a + 0.25 * 0.5 * b + 0.75 * 0.5 * c + 0.25 * 0.5 * d
        torch.testing.assert_close(mid, expected)

    def test_gradients_reach_features(self):
        bev, sat = _features()
        bev.requires_grad_(True)
        sat.requires_grad_(True)
        CorrPyramid(bev, sat, 2, 1).lookup(torch.rand(2, 2, 3, 4) * 6).sum().backward()
        assert bev.grad.abs().sum() > 0 and sat.grad.abs().sum() > 0

    def test_exception(self):
        bev, sat = _features()
        with pytest.raises(ShapeError, match="sat"):
            CorrPyramid(bev, sat[:, :4], 2, 1)
        with pytest.raises(ShapeError, match="too few"):
            CorrPyramid(bev, sat, levels=5, radius=1)
        with pytest.raises(ShapeError, match="coords"):
            CorrPyramid(bev, sat, 2, 1).lookup(torch.zeros(2, 2, 4, 3))


def test_shifted_match_scores_against_a_loop():
    from cvloc.models.corr import shifted_match_scores

    g = torch.Generator().manual_seed(3)
    B, H, W, r = 2, 4, 5, 2
    corr = torch.randn(B, H * W, H * W, generator=g)
    targets = torch.stack(
        [torch.randint(0, W, (B, H, W), generator=g), torch.randint(0, H, (B, H, W), generator=g)],
        dim=1,
    ).float()
    weight = torch.rand(B, H, W, generator=g)
    weight[1] = 0.0  # no visible cell: scores 0
    scores = shifted_match_scores(corr, (H, W), targets, weight, r)
    assert scores.shape == (B, (2 * r + 1) ** 2)
    expected = torch.zeros_like(scores)
    for b in range(B):
        shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        for k, (dy, dx) in enumerate(shifts):
            total = 0.0
            for i in range(H):
                for j in range(W):
                    x = int(targets[b, 0, i, j]) + dx
                    y = int(targets[b, 1, i, j]) + dy
                    if 0 <= x < W and 0 <= y < H:  # zero outside the grid
                        total += float(weight[b, i, j] * corr[b, i * W + j, y * W + x])
            expected[b, k] = total / max(float(weight[b].sum()), 1e-6)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(scores[1] == 0)


def test_shifted_match_scores_rejects_bad_input():
    from cvloc.models.corr import shifted_match_scores

    corr, targets, weight = torch.zeros(1, 4, 4), torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2)
    with pytest.raises(ValueError, match="radius"):
        shifted_match_scores(corr, (2, 2), targets, weight, -1)
    with pytest.raises(ShapeError, match="correlation"):
        shifted_match_scores(torch.zeros(1, 4, 5), (2, 2), targets, weight, 1)
