import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cvloc.geometry.checks import ShapeError
from cvloc.geometry.pose import compose_pose_with_rigid_2d, rotation_2d, yaw_to_forward_xy
from cvloc.geometry.procrustes import (
    robust_procrustes_2d,
    rotation_angle_2d,
    weighted_procrustes_2d,
)

DTYPES = [torch.float32, torch.float64]  # for hypothesis; plain tests use the `dtype` fixture
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
FAST = settings(max_examples=40, deadline=None)


def kabsch_svd_2d(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Independent reference: weighted Kabsch/Umeyama via SVD, with the reflection fix.

    One problem: src, dst (N, 2), w (N,). Maximises tr(R H), H = sum w a b^T = U S V^T,
    at R = V diag(1, det(V U^T)) U^T.
    """
    g_src = (w[:, None] * src).sum(0) / w.sum()
    g_dst = (w[:, None] * dst).sum(0) / w.sum()
    a, b = src - g_src, dst - g_dst
    H = (w[:, None, None] * a[:, :, None] * b[:, None, :]).sum(0)
    U, _, Vt = np.linalg.svd(H)
    V = Vt.T
    D = np.diag([1.0, np.sign(np.linalg.det(V @ U.T))])
    R = V @ D @ U.T
    return R, g_dst - R @ g_src


def random_problem(
    gen: torch.Generator, B: int, N: int, dtype: torch.dtype, spread: float = 10.0
) -> tuple[torch.Tensor, ...]:
    """Random rigid motion applied to random points; returns src, dst, w, R, t."""
    angle = (torch.rand(B, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    R = rotation_2d(angle)
    t = torch.randn(B, 2, generator=gen, dtype=torch.float64) * spread
    src = torch.randn(B, N, 2, generator=gen, dtype=torch.float64) * spread
    dst = src @ R.transpose(-1, -2) + t[:, None]
    w = torch.rand(B, N, generator=gen, dtype=torch.float64) + 0.1
    return src.to(dtype), dst.to(dtype), w.to(dtype), R.to(dtype), t.to(dtype)


def grads_finite(src, dst, w) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run the solver with gradients and return R, t and the input gradients."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in (src, dst, w)]
    R, t = weighted_procrustes_2d(*leaves)
    (R.sum() + t.sum()).backward()
    grads = [x.grad for x in leaves if x.requires_grad]
    return R, t, grads


class TestWeightedProcrustes2d:
    def test_smoke(self):
        gen = torch.Generator().manual_seed(0)
        src, dst, w, R_gt, t_gt = random_problem(gen, 2, 8, torch.float64)
        R, t = weighted_procrustes_2d(src, dst, w)
        torch.testing.assert_close(R, R_gt)
        torch.testing.assert_close(t, t_gt)

    @pytest.mark.parametrize("batch_size", [1, 2, 5])
    @pytest.mark.parametrize("num_points", [0, 1, 3, 64])
    def test_cardinality(self, batch_size, num_points):
        src = torch.randn(batch_size, num_points, 2)
        R, t = weighted_procrustes_2d(src, src + 1.0, torch.ones(batch_size, num_points))
        assert R.shape == (batch_size, 2, 2)
        assert t.shape == (batch_size, 2)
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(batch_size))

    def test_exception(self):
        pts = torch.zeros(2, 5, 2)
        w = torch.ones(2, 5)
        with pytest.raises(ShapeError, match="src_xy"):
            weighted_procrustes_2d(torch.zeros(2, 5, 3), pts, w)
        with pytest.raises(ShapeError, match="dst_xy"):
            weighted_procrustes_2d(pts, torch.zeros(5, 2), w)
        with pytest.raises(ShapeError, match="must agree"):
            weighted_procrustes_2d(pts, torch.zeros(2, 4, 2), w)
        with pytest.raises(ShapeError, match="must agree"):
            weighted_procrustes_2d(pts, pts, torch.ones(3, 5))
        with pytest.raises(ShapeError, match="weights"):
            weighted_procrustes_2d(pts, pts, torch.ones(2, 5, 1))
        with pytest.raises(TypeError, match="floating point"):
            weighted_procrustes_2d(pts.long(), pts, w)
        with pytest.raises(TypeError, match="complex"):
            weighted_procrustes_2d(pts, pts, w.to(torch.complex64))

    def test_gradcheck(self):
        gen = torch.Generator().manual_seed(1)
        src, dst, w, _, _ = random_problem(gen, 2, 6, torch.float64, spread=2.0)
        dst = dst + 0.3 * torch.randn(dst.shape, generator=gen, dtype=torch.float64)
        inputs = [x.requires_grad_() for x in (src, dst, w)]
        assert torch.autograd.gradcheck(weighted_procrustes_2d, inputs)

    def test_gradcheck_collinear(self):
        # Collinear points still determine the rotation: the solution stays smooth.
        s = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
        src = torch.stack([s, 0.5 * s], -1)[None]
        dst = (src @ rotation_2d(torch.tensor([0.7], dtype=torch.float64)).mT) + 0.1 * s[:, None]
        w = torch.rand(1, 5, dtype=torch.float64) + 0.5
        inputs = [x.requires_grad_() for x in (src, dst, w)]
        assert torch.autograd.gradcheck(weighted_procrustes_2d, inputs)

    def test_recovers_exact_motion(self, dtype):
        gen = torch.Generator().manual_seed(2)
        src, dst, w, R_gt, t_gt = random_problem(gen, 5, 20, dtype)
        R, t = weighted_procrustes_2d(src, dst, w)
        assert R.dtype == t.dtype == dtype
        torch.testing.assert_close(R, R_gt, atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(t, t_gt, atol=100 * TOL[dtype], rtol=0)

    @FAST
    @given(
        seed=st.integers(0, 2**31 - 1),
        num_in=st.integers(3, 40),
        num_out=st.integers(0, 20),
        noise=st.sampled_from([0.0, 1e-3, 1e-2]),
        outlier_weight=st.sampled_from([0.0, 1e-9, 1e-7]),
        dtype=st.sampled_from(DTYPES),
    )
    def test_property_recovery_with_outliers(
        self, seed, num_in, num_out, noise, outlier_weight, dtype
    ):
        gen = torch.Generator().manual_seed(seed)
        src, dst, w, R_gt, t_gt = random_problem(gen, 2, num_in + num_out, torch.float64)
        dst = dst + noise * torch.randn(dst.shape, generator=gen, dtype=torch.float64)
        # Outliers land anywhere within 100 m but carry (almost) no weight.
        dst[:, num_in:] = (
            torch.rand(2, num_out, 2, generator=gen, dtype=torch.float64) - 0.5
        ) * 200
        w[:, num_in:] = outlier_weight
        R, t = weighted_procrustes_2d(src.to(dtype), dst.to(dtype), w.to(dtype))
        angle_err = (rotation_angle_2d(R.double()) - rotation_angle_2d(R_gt)).abs()
        angle_err = torch.minimum(angle_err, 2 * math.pi - angle_err)
        # Noise sigma on a ~10 m spread of >= 3 points: angle error ~ sigma / 10.
        assert angle_err.max() < 1e-3 + 2 * noise
        assert (t.double() - t_gt).abs().max() < 1e-2 + 200 * noise

    @FAST
    @given(
        seed=st.integers(0, 2**31 - 1),
        num_points=st.integers(2, 30),
        noise=st.sampled_from([0.1, 1.0, 10.0]),
        sparse=st.booleans(),
    )
    def test_property_matches_svd_reference(self, seed, num_points, noise, sparse):
        gen = torch.Generator().manual_seed(seed)
        src, dst, w, _, _ = random_problem(gen, 1, num_points, torch.float64)
        dst = dst + noise * torch.randn(dst.shape, generator=gen, dtype=torch.float64)
        if sparse:  # some exactly-zero weights, but at least two points kept
            w = w * (torch.rand(w.shape, generator=gen, dtype=torch.float64) > 0.5)
            w[:, :2] = w[:, :2] + 0.5
        R, t = weighted_procrustes_2d(src, dst, w)
        R_ref, t_ref = kabsch_svd_2d(src[0].numpy(), dst[0].numpy(), w[0].numpy())
        np.testing.assert_allclose(R[0].numpy(), R_ref, atol=1e-8)
        np.testing.assert_allclose(t[0].numpy(), t_ref, atol=1e-7)

    def test_proper_rotation_where_svd_needs_reflection_fix(self):
        # dst is a mirror image of src plus a small rotation signal: the unconstrained
        # optimum is a reflection (det -1); both solvers must return the best rotation.
        src = torch.tensor(
            [[[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]], dtype=torch.float64
        )
        dst = src * torch.tensor([1.0, -1.0], dtype=torch.float64) + torch.tensor(
            [[[0.0, 0.1], [0.0, -0.1], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64
        )
        w = torch.ones(1, 4, dtype=torch.float64)
        R, t = weighted_procrustes_2d(src, dst, w)
        R_ref, t_ref = kabsch_svd_2d(src[0].numpy(), dst[0].numpy(), w[0].numpy())
        U, _, Vt = np.linalg.svd(
            sum(np.outer(a, b) for a, b in zip(src[0].numpy(), dst[0].numpy(), strict=True))
        )
        assert np.linalg.det(Vt.T @ U.T) < 0  # the plain SVD solution is a reflection
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(1, dtype=torch.float64))
        np.testing.assert_allclose(R[0].numpy(), R_ref, atol=1e-12)
        np.testing.assert_allclose(t[0].numpy(), t_ref, atol=1e-12)

    def test_pose_round_trip_with_compose(self, dtype):
        # Points placed with a prior pose vs. the same points placed with the GT pose: the
        # fitted correction moves the prior onto the GT through compose_pose_with_rigid_2d.
        gen = torch.Generator().manual_seed(3)
        local = torch.randn(2, 30, 2, generator=gen, dtype=torch.float64) * 8  # (right, fwd)

        def place(xy, yaw_deg):
            f = yaw_to_forward_xy(yaw_deg)  # B,2
            r = torch.stack([f[:, 1], -f[:, 0]], -1)  # right of forward, x east y north
            return xy[:, None] + local[..., :1] * r[:, None] + local[..., 1:] * f[:, None]

        prior_xy = torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=torch.float64)
        prior_yaw = torch.tensor([10.0, 170.0], dtype=torch.float64)
        gt_xy = torch.tensor([[-5.0, 12.0], [1.0, 2.0]], dtype=torch.float64)
        gt_yaw = torch.tensor([-15.0, -170.0], dtype=torch.float64)
        src, dst = place(prior_xy, prior_yaw), place(gt_xy, gt_yaw)
        R, t = weighted_procrustes_2d(src.to(dtype), dst.to(dtype), torch.ones(2, 30))
        xy, yaw = compose_pose_with_rigid_2d(R.double(), t.double(), prior_xy, prior_yaw)
        torch.testing.assert_close(xy, gt_xy, atol=1e3 * TOL[dtype], rtol=0)
        torch.testing.assert_close(yaw, gt_yaw, atol=1e3 * TOL[dtype], rtol=0)

    def test_rotation_angle_round_trip(self):
        angle = torch.tensor([-3.1, -1.0, 0.0, 0.5, 3.1])
        torch.testing.assert_close(rotation_angle_2d(rotation_2d(angle)), angle)
        assert rotation_angle_2d(torch.eye(2).expand(3, 4, 2, 2)).shape == (3, 4)
        with pytest.raises(ShapeError):
            rotation_angle_2d(torch.eye(3))


def _degenerate_cases(dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, ...]]:
    """name -> (src, dst, w, expected R or None, expected t or None), B = 2, N = 4."""
    gen = torch.Generator().manual_seed(4)
    src = torch.randn(2, 4, 2, generator=gen).to(dtype) * 5
    dst = torch.randn(2, 4, 2, generator=gen).to(dtype) * 5
    ones = torch.ones(2, 4, dtype=dtype)
    eye = torch.eye(2, dtype=dtype).expand(2, 2, 2)
    zero_t = torch.zeros(2, 2, dtype=dtype)
    same_src = src[:, :1].expand(2, 4, 2).contiguous()
    same_dst = dst[:, :1].expand(2, 4, 2).contiguous()
    one_hot = torch.zeros(2, 4, dtype=dtype)
    one_hot[:, 2] = 0.7
    line = torch.linspace(-3, 3, 4, dtype=dtype)[None, :, None] * torch.tensor(
        [1.0, 2.0], dtype=dtype
    )
    line = line.expand(2, 4, 2).contiguous()
    tiny = torch.finfo(dtype).tiny
    # dst mirrors src: every rotation fits equally well (H00 + H11 = H01 - H10 = 0).
    cross = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=dtype)
    cross = cross.expand(2, 4, 2)
    return {
        "all_zero_weights": (src, dst, 0 * ones, eye, zero_t),
        "negative_weights": (src, dst, -ones, eye, zero_t),
        "denormal_weights": (src, dst, ones * tiny / 16, eye, zero_t),
        "single_weighted_point": (src, dst, one_hot, eye, dst[:, 2] - src[:, 2]),
        "identical_src": (same_src, dst, ones, eye, dst.mean(1) - src[:, 0]),
        "identical_dst": (src, same_dst, ones, eye, dst[:, 0] - src.mean(1)),
        "all_points_equal": (same_src, same_src, ones, eye, zero_t),
        "mirror_image": (cross, cross * torch.tensor([1.0, -1.0], dtype=dtype), ones, eye, zero_t),
        "collinear": (line, line.flip(1) + 1.0, ones, -eye, torch.ones(2, 2, dtype=dtype)),
        "tiny_weights": (src, dst, ones * 1e-30, None, None),
        "huge_coordinates": (src * 1e12, dst * 1e12, ones, None, None),
        "small_coordinates": (src * 1e-12, dst * 1e-12, ones, None, None),
        "large_offset": (src + 1e6, dst + 1e6, ones, None, None),
        "zero_weight_far_outlier": (
            torch.cat([src[:, :3], torch.full((2, 1, 2), 1e30, dtype=dtype)], 1),
            dst,
            torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=dtype).expand(2, 4),
            None,
            None,
        ),
    }


@pytest.mark.parametrize("case", list(_degenerate_cases(torch.float64)))
def test_degenerate_cases_finite_values_and_gradients(case, dtype):
    src, dst, w, R_exp, t_exp = _degenerate_cases(dtype)[case]
    R, t, grads = grads_finite(src, dst, w)
    assert torch.isfinite(R).all() and torch.isfinite(t).all()
    assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2, dtype=dtype))
    if R_exp is not None:
        torch.testing.assert_close(R.detach(), R_exp, atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(t.detach(), t_exp, atol=10 * TOL[dtype], rtol=0)


def test_scale_invariance(dtype):
    # Weight scale is irrelevant; a common scale or offset of the points moves t accordingly.
    gen = torch.Generator().manual_seed(5)
    src, dst, w, _, _ = random_problem(gen, 3, 12, dtype)
    dst = dst + torch.randn(dst.shape, generator=gen).to(dtype)
    R, t = weighted_procrustes_2d(src, dst, w)
    for w_scale in (1e-30, 1e30):
        R2, t2 = weighted_procrustes_2d(src, dst, w * w_scale)
        torch.testing.assert_close(R2, R, atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(t2, t, atol=10 * TOL[dtype], rtol=0)
    for xy_scale in (1e-6, 1e6):
        R3, t3 = weighted_procrustes_2d(src * xy_scale, dst * xy_scale, w)
        torch.testing.assert_close(R3, R, atol=10 * TOL[dtype], rtol=0)
        torch.testing.assert_close(t3 / xy_scale, t, atol=100 * TOL[dtype], rtol=0)


def test_large_offset_keeps_precision_float32():
    # UTM-sized coordinates: the float32 inputs are rounded to 0.5 m, but differences to the
    # reference point are exact (Sterbenz), so the fit of *those* inputs is as precise as in
    # float64. A naive centroid would add errors of the order of the 0.5 m ulp.
    gen = torch.Generator().manual_seed(6)
    src, dst, w, _, _ = random_problem(gen, 2, 50, torch.float64)
    offset = torch.tensor([512_345.0, 5_431_234.0], dtype=torch.float64)
    src32, dst32, w32 = (src + offset).float(), (dst + offset).float(), w.float()
    R, t = weighted_procrustes_2d(src32, dst32, w32)
    R64, t64 = weighted_procrustes_2d(src32.double(), dst32.double(), w32.double())
    torch.testing.assert_close(R.double(), R64, atol=1e-6, rtol=0)
    # Residuals of the float32 fit are those of the float64 fit, up to the 0.5 m ulp of t.
    fitted = src32.double() @ R.double().mT + t.double()[:, None]
    fitted64 = src32.double() @ R64.mT + t64[:, None]
    assert (fitted - fitted64).abs().max() < 1.0


def test_non_finite_points_get_zero_weight(dtype):
    gen = torch.Generator().manual_seed(7)
    src, dst, w, _, _ = random_problem(gen, 2, 10, dtype)
    dst = dst + torch.randn(dst.shape, generator=gen).to(dtype)
    R_ref, t_ref = weighted_procrustes_2d(src[:, :7], dst[:, :7], w[:, :7])
    src_bad, dst_bad, w_bad = src.clone(), dst.clone(), w.clone()
    src_bad[:, 7, 0] = float("nan")
    dst_bad[:, 8, 1] = float("inf")
    w_bad[:, 9] = float("nan")
    R, t, grads = grads_finite(src_bad, dst_bad, w_bad)
    torch.testing.assert_close(R.detach(), R_ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(t.detach(), t_ref, atol=10 * TOL[dtype], rtol=0)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all((g[:, 7:] == 0).all() for g in grads)
    # Every point invalid: no evidence, identity and zero translation.
    R_nan, t_nan = weighted_procrustes_2d(src * float("nan"), dst, w)
    torch.testing.assert_close(R_nan, torch.eye(2, dtype=dtype).expand(2, 2, 2))
    torch.testing.assert_close(t_nan, torch.zeros(2, 2, dtype=dtype))


def test_negative_weights_are_clamped():
    gen = torch.Generator().manual_seed(8)
    src, dst, w, _, _ = random_problem(gen, 1, 10, torch.float64)
    dst = dst + torch.randn(dst.shape, generator=gen, dtype=torch.float64)
    w_neg = w.clone()
    w_neg[:, 5:] = -3.0
    w_zero = w.clone()
    w_zero[:, 5:] = 0.0
    R, t = weighted_procrustes_2d(src, dst, w_neg)
    R_ref, t_ref = weighted_procrustes_2d(src, dst, w_zero)
    torch.testing.assert_close(R, R_ref)
    torch.testing.assert_close(t, t_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    gen = torch.Generator().manual_seed(9)
    src, dst, w, R_gt, t_gt = random_problem(gen, 2, 16, torch.float64, spread=2.0)
    R, t = weighted_procrustes_2d(src.to(dtype), dst.to(dtype), w.to(dtype))
    assert R.dtype == t.dtype == torch.float32
    # Only the inputs' rounding (bfloat16: 3 significant digits) limits the accuracy.
    torch.testing.assert_close(R.double(), R_gt, atol=5e-2, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R_ac, t_ac = weighted_procrustes_2d(src.float(), dst.float(), w.float())
    assert R_ac.dtype == t_ac.dtype == torch.float32
    torch.testing.assert_close(R_ac.double(), R_gt, atol=1e-5, rtol=0)
    torch.testing.assert_close(t_ac.double(), t_gt, atol=1e-4, rtol=0)


def test_bool_mask_weights():
    gen = torch.Generator().manual_seed(10)
    src, dst, _, R_gt, t_gt = random_problem(gen, 2, 16, torch.float32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, ::3] = False
    dst[:, ::3] = 1e3  # masked-out outliers
    R, t = weighted_procrustes_2d(src, dst, mask)
    torch.testing.assert_close(R, R_gt, atol=1e-5, rtol=0)
    torch.testing.assert_close(t, t_gt, atol=1e-4, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_points=st.integers(1, 6),
    xy_exp=st.integers(-20, 20),
    w_exp=st.lists(st.integers(-40, 4), min_size=6, max_size=6),
    same_src=st.booleans(),
    dst_is_src=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_fuzz_extreme_scales_stay_finite(
    seed, num_points, xy_exp, w_exp, same_src, dst_is_src, dtype
):
    # Values and point gradients stay finite over 40 decades of coordinates and weights
    # (including float32 denormal weights), whatever the degeneracy.
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(1, num_points, 2, generator=gen, dtype=torch.float64) * 10.0**xy_exp
    dst = torch.randn(1, num_points, 2, generator=gen, dtype=torch.float64) * 10.0**xy_exp
    if same_src:
        src[:] = src[:, :1]
    if dst_is_src:
        dst = src.clone()
    w = 10.0 ** torch.tensor(w_exp[:num_points], dtype=torch.float64)[None]
    R, t, grads = grads_finite(src.to(dtype), dst.to(dtype), w.to(dtype))
    assert torch.isfinite(R).all() and torch.isfinite(t).all()
    assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all()


def test_fixed_rotation_fits_the_weighted_translation_only(dtype):
    # A rotated and shifted point set: the free fit finds the rotation, the fixed one
    # the least-squares translation sum w (dst - src) / sum w with R = I.
    g = torch.Generator().manual_seed(7)
    src = torch.randn(2, 40, 2, generator=g, dtype=dtype) * 10
    R_true = rotation_2d(torch.tensor([0.3, -0.5], dtype=dtype))
    dst = src @ R_true.transpose(1, 2) + torch.tensor([[[2.0, -1.0]], [[0.5, 3.0]]], dtype=dtype)
    w = torch.rand(2, 40, generator=g, dtype=dtype)
    fixed = torch.tensor([True, False])
    R, t = weighted_procrustes_2d(src, dst, w, fixed)
    R_free, t_free = weighted_procrustes_2d(src, dst, w)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(R[0], torch.eye(2, dtype=dtype))
    expected = (w[0, :, None] * (dst[0] - src[0])).sum(0) / w[0].sum()
    torch.testing.assert_close(t[0], expected, **tol)
    torch.testing.assert_close(R[1], R_free[1])  # the free sample is untouched
    torch.testing.assert_close(t[1], t_free[1])
    torch.testing.assert_close(R_free[1], R_true[1], **tol)


def test_fixed_rotation_gradients():
    src = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    dst = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, 6, dtype=torch.float64, requires_grad=True)
    fixed = torch.tensor([True])
    assert torch.autograd.gradcheck(
        lambda s, d, ww: weighted_procrustes_2d(s, d, ww, fixed)[1], (src, dst, w)
    )
    with pytest.raises(ShapeError):
        weighted_procrustes_2d(src, dst, w, torch.tensor([True, False]))


def outlier_problem(dtype: torch.dtype, share: float = 0.3) -> tuple[torch.Tensor, ...]:
    """60 matches of a known motion, a share of them replaced by matches 5-25 units off.

    Drawn in float64 (the same problem for every dtype), returned in ``dtype``.
    """
    out_dtype, dtype = dtype, torch.float64
    g = torch.Generator().manual_seed(11)
    src = torch.randn(2, 60, 2, generator=g, dtype=dtype) * 15
    R_true = rotation_2d(torch.tensor([0.2, -0.4], dtype=dtype))
    t_true = torch.tensor([[3.0, -2.0], [-1.0, 4.0]], dtype=dtype)
    dst = src @ R_true.transpose(1, 2) + t_true[:, None]
    noise = torch.randn(2, 60, 2, generator=g, dtype=dtype) * 0.05
    bad = torch.rand(2, 60, generator=g) < share
    direction = torch.nn.functional.normalize(
        torch.randn(2, 60, 2, generator=g, dtype=dtype), dim=-1
    )
    off = direction * (5 + 20 * torch.rand(2, 60, 1, generator=g, dtype=dtype))
    dst = dst + noise + torch.where(bad[..., None], off, 0.0)
    out = (src, dst, torch.ones(2, 60, dtype=dtype), R_true, t_true)
    return tuple(x.to(out_dtype) for x in out)


def test_robust_fit_without_iterations_is_the_weighted_fit(dtype):
    src, dst, w, _, _ = outlier_problem(dtype)
    *robust, weights = robust_procrustes_2d(src, dst, w, 1.0, 0)
    for got, want in zip(robust, weighted_procrustes_2d(src, dst, w), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(weights, w, rtol=0, atol=0)


def test_robust_fit_recovers_the_motion_that_outliers_bend(dtype):
    src, dst, w, R_true, t_true = outlier_problem(dtype)
    _, t0 = weighted_procrustes_2d(src, dst, w)
    R, t, weights = robust_procrustes_2d(src, dst, w, 1.0, 5)
    err0 = (t0 - t_true).norm(dim=-1)
    err = (t - t_true).norm(dim=-1)
    assert (err0 > 0.3).all() and (err < 0.05).all()  # the outliers bend the plain fit
    angle_err = (rotation_angle_2d(R) - rotation_angle_2d(R_true)).abs()
    assert (angle_err < 2e-3).all()
    # An independent reference: Kabsch on the true inliers alone.
    residual = (dst - (src @ R_true.transpose(1, 2) + t_true[:, None])).norm(dim=-1)
    inlier = (residual < 1.0).double().numpy()
    for b in range(2):
        R_ref, t_ref = kabsch_svd_2d(src[b].double().numpy(), dst[b].double().numpy(), inlier[b])
        np.testing.assert_allclose(R[b].double().numpy(), R_ref, atol=2e-3)
        np.testing.assert_allclose(t[b].double().numpy(), t_ref, atol=0.05)
    # The returned weights: the kernel at the returned fit, computed here independently;
    # the outliers (>= 5 units off, kernel <= exp(-12.5)) fade out, the inliers keep theirs.
    r2 = (dst - (src @ R.transpose(1, 2) + t[:, None])).square().sum(-1)
    torch.testing.assert_close(weights, w * torch.exp(-r2 / 2.0))
    assert (weights[residual > 4.0] < 1e-3).all() and (weights[residual < 0.5] > 0.8).all()


def test_robust_fit_keeps_exact_data_and_a_fixed_rotation(dtype):
    src, dst, w, R_true, t_true = outlier_problem(dtype, share=0.0)
    dst = src @ R_true.transpose(1, 2) + t_true[:, None]  # noise-free
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
    R, t, weights = robust_procrustes_2d(src, dst, w, 0.5, 3)
    torch.testing.assert_close(weights, w, **tol)  # zero residuals: every weight kept
    torch.testing.assert_close(R, R_true, **tol)
    torch.testing.assert_close(t, t_true, **tol)
    fixed = torch.tensor([True, False])
    R_fixed, _, _ = robust_procrustes_2d(src, dst, w, 0.5, 3, fixed)
    torch.testing.assert_close(R_fixed[0], torch.eye(2, dtype=dtype))


def test_robust_fit_without_consensus_keeps_its_weights():
    # A kernel far narrower than every residual would zero all weights: the sample keeps
    # the plain fit's weights (and so its result) instead of losing all evidence.
    src, dst, w, _, _ = outlier_problem(torch.float64, share=0.0)
    dst = dst + torch.randn(dst.shape, generator=torch.Generator().manual_seed(3), dtype=dst.dtype)
    plain = (*weighted_procrustes_2d(src, dst, w), w)
    for got, want in zip(robust_procrustes_2d(src, dst, w, 1e-9, 3), plain, strict=True):
        torch.testing.assert_close(got, want)


def test_robust_fit_started_from_a_shift_keeps_its_consensus(dtype):
    # Heavy, coherently wrong matches (40 % of the points, 10x the weight, all shifted by
    # 7 units) hold most of the weight: the fit started from the plain weighted fit is
    # pulled to them and stays there; started from the true shift, the re-weighting keeps
    # the true matches, and the result is Kabsch on those alone (independent reference).
    g = torch.Generator().manual_seed(11)
    src = (20 * torch.rand(2, 50, 2, generator=g, dtype=torch.float64)).to(dtype)
    t_true = torch.tensor([[1.5, -2.0], [-0.5, 3.0]], dtype=dtype)
    dst = src + t_true[:, None]
    wrong = torch.arange(50) < 20
    dst = torch.where(wrong[None, :, None], dst + torch.tensor([0.0, 7.0], dtype=dtype), dst)
    w = torch.where(wrong, 10.0, 1.0).to(dtype).expand(2, -1).clone()
    _, t_plain, _ = robust_procrustes_2d(src, dst, w, 1.0, 3)
    assert ((t_plain - t_true).norm(dim=-1) > 3.0).all()  # the wrong cluster wins
    start = t_true + torch.tensor([0.8, -0.6], dtype=dtype)  # a coarse shift, 1 unit off
    R, t, weights = robust_procrustes_2d(src, dst, w, 1.0, 3, start_t=start)
    inlier = (~wrong).double().expand(2, -1).numpy()
    for b in range(2):
        R_ref, t_ref = kabsch_svd_2d(src[b].double().numpy(), dst[b].double().numpy(), inlier[b])
        np.testing.assert_allclose(R[b].double().numpy(), R_ref, atol=1e-4)
        np.testing.assert_allclose(t[b].double().numpy(), t_ref, atol=1e-4)
    assert (weights[:, wrong] < 1e-6).all()
    # The start carries no gradient; it needs a re-weighting to act on, and its shape.
    start.requires_grad_()
    robust_procrustes_2d(src, dst, w.requires_grad_(), 1.0, 2, start_t=start)[1].sum().backward()
    assert start.grad is None and w.grad is not None
    with pytest.raises(ValueError, match="iters >= 1"):
        robust_procrustes_2d(src, dst, w, 1.0, 0, start_t=start)
    with pytest.raises(ShapeError):
        robust_procrustes_2d(src, dst, w, 1.0, 2, start_t=start[:1])


def test_robust_fit_gradients_and_bad_settings():
    g = torch.Generator().manual_seed(5)
    src = torch.randn(1, 8, 2, generator=g, dtype=torch.float64, requires_grad=True)
    dst = (
        src.detach() + 0.3 * torch.randn(1, 8, 2, generator=g, dtype=torch.float64)
    ).requires_grad_()
    w = torch.rand(1, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, d, ww: robust_procrustes_2d(s, d, ww, 0.5, 2)[1], (src, dst, w)
    )
    for sigma, iters in ((0.0, 1), (1.0, -1)):
        with pytest.raises(ValueError, match="sigma"):
            robust_procrustes_2d(src, dst, w, sigma, iters)
