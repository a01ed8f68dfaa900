"""Denser matches: an affine match field is reproduced exactly between its sources, weightless
neighbours never pull a match, and the wrapper keeps the pose and the coarse sources."""

import math

import pytest
import torch
from test_denseflow import make_batch
from test_finematch import TINY as TINY_FINEMATCH

from cvloc.models.dense_matches import DenseMatches, source_grid_hw, upsample_matches
from cvloc.models.finematch import FineMatch


def affine_field(H, W, spacing, B=2, seed=0):
    """A rotated, shifted grid of sources and the matches of one affine map (float64)."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid = torch.stack([j, i], -1).reshape(1, -1, 2).double() * spacing
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    src = (grid @ rot.T + torch.tensor([40.0, -7.0])).expand(B, -1, -1)
    A = torch.eye(2, dtype=torch.float64) + 0.1 * torch.randn(
        2, 2, generator=g, dtype=torch.float64
    )
    t = torch.tensor([3.0, 5.5], dtype=torch.float64)
    return src, src @ A.T + t, A, t


def test_an_affine_field_is_reproduced_between_its_sources():
    H, W, f, spacing = 4, 5, 3, 8.0
    src, dst, A, t = affine_field(H, W, spacing)
    weight = torch.full(src.shape[:2], 0.7, dtype=torch.float64)
    fine_src, fine_dst, fine_w, height = upsample_matches(src, dst, weight, (H, W), f)
    assert height is None
    Hf, Wf = (H - 1) * f + 1, (W - 1) * f + 1
    assert fine_src.shape == (2, Hf * Wf, 2) and fine_w.shape == (2, Hf * Wf)
    # The fine sources: the same rotated grid at spacing / f, row-major.
    expected_src, _, _, _ = affine_field(Hf, Wf, spacing / f)
    torch.testing.assert_close(fine_src, expected_src.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(fine_dst, (fine_src.double() @ A.T + t).float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(fine_w, torch.full_like(fine_w, 0.7))
    # Every f-th point along each axis is an original source with its own match.
    coarse = torch.arange(Hf * Wf).reshape(Hf, Wf)[::f, ::f].flatten()
    torch.testing.assert_close(fine_src[:, coarse], src.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(fine_dst[:, coarse], dst.float(), atol=1e-4, rtol=0)


def test_weightless_neighbours_never_pull_a_match():
    H, W, f = 3, 3, 2
    src, _, _, _ = affine_field(H, W, 8.0, B=1)
    t = torch.tensor([3.0, 5.5], dtype=torch.float64)
    dst = src + t  # a translation: every weighted mean of displacements is t
    weight = torch.ones(1, H * W, dtype=torch.float64)
    weight[0, 4] = 0.0  # the centre: unseen, its "match" garbage
    dst = dst.clone()
    dst[0, 4] = 1e6
    heights = torch.arange(H * W, dtype=torch.float64)[None]
    heights[0, 4] = 1e3
    fine_src, fine_dst, fine_w, fine_h = upsample_matches(src, dst, weight, (H, W), f, heights)
    assert fine_h is not None
    seen = fine_w > 0
    assert seen.sum() == 5 * 5 - 1  # only the centre point has no weighted neighbour
    torch.testing.assert_close(fine_dst[seen], (fine_src[seen] + t.float()), atol=1e-3, rtol=0)
    centre = 2 * 5 + 2
    assert fine_w[0, centre] == 0 and torch.equal(fine_dst[0, centre], fine_src[0, centre])
    assert fine_h[seen].max() <= 8.0  # the garbage height of the centre pulls nothing
    # Halfway between cells 0 (h 0, w 1) and 4 (w 0): the weight halves, the height is cell 0's.
    diagonal = 1 * 5 + 1
    assert fine_w[0, diagonal].item() == pytest.approx(0.75)
    # Between cells 0 and 1 (weights 1, 1): the plain mean height.
    assert fine_h[0, 1].item() == pytest.approx(0.5)


def test_factor_one_and_bad_input():
    src, dst, _, _ = affine_field(2, 3, 8.0)
    weight = torch.ones(2, 6, dtype=torch.float64)
    out = upsample_matches(src, dst, weight, (2, 3), 1)
    assert out[0] is src and out[1] is dst and out[2] is weight
    with pytest.raises(ValueError, match="factor must be >= 1"):
        upsample_matches(src, dst, weight, (2, 3), 0)
    with pytest.raises(ValueError, match="at least 2 x 2"):
        upsample_matches(src, dst, weight, (1, 6), 2)
    with pytest.raises(ValueError, match="factor >= 2"):
        DenseMatches(torch.nn.Identity(), 1)


@pytest.mark.parametrize(
    ("n", "hw", "grid"),
    [(1024, (256, 256), (32, 32)), (16384, (256, 256), (128, 128)), (8, (256, 512), (2, 4))],
)
def test_source_grid_from_the_count(n, hw, grid):
    assert source_grid_hw(n, hw) == grid


def test_sources_that_are_no_grid_are_refused():
    with pytest.raises(ValueError, match="not a regular grid"):
        source_grid_hw(1000, (256, 256))


def test_wrapper_keeps_the_pose_and_the_coarse_matches():
    torch.manual_seed(0)
    model = FineMatch(TINY_FINEMATCH).eval()
    batch = make_batch(B=1, seed=3)
    with torch.inference_mode():
        plain, dense = model(batch), DenseMatches(model, 4)(batch)
    H, W = (s // TINY_FINEMATCH.stride for s in batch["satellite"].shape[-2:])
    Hf, Wf = (H - 1) * 4 + 1, (W - 1) * 4 + 1
    assert dense["match_src_uv"].shape == (1, Hf * Wf, 2)
    assert dense["match_height_m"].shape == dense["match_weight"].shape == (1, Hf * Wf)
    for key in ("camera_uv_pred", "yaw_deg_pred", "surface_height_m"):
        assert torch.equal(dense[key], plain[key])
    coarse = torch.arange(Hf * Wf).reshape(Hf, Wf)[::4, ::4].flatten()
    for key in ("match_src_uv", "match_weight", "match_height_m"):
        torch.testing.assert_close(dense[key][:, coarse], plain[key].float(), atol=1e-4, rtol=0)
    has = plain["match_weight"] > 0
    torch.testing.assert_close(
        dense["match_dst_uv"][:, coarse][has], plain["match_dst_uv"][has], atol=1e-3, rtol=0
    )
