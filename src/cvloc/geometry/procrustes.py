"""Weighted 2-D rigid fitting (Procrustes in the plane) in closed form, without SVD.

This is the pose solver of DenseFlow (paper eq. 3 and appendix A, eq. 8-12) and of the
fine-grained matching method: given matched points and per-match confidences, find the
rotation and translation that best align them in the weighted least-squares sense.
"""

from __future__ import annotations

import torch

from cvloc.geometry.checks import ShapeError, check_shape
from cvloc.geometry.pose import rotation_2d

# |H01 - H10| + |H00 + H11| at or below this many ulps of sum_i w_i |a_i| |b_i| is rounding
# noise: the rotation is then undetermined and the identity is returned.
_NOISE_ULPS = 8.0


def weighted_procrustes_2d(
    src_xy: torch.Tensor,
    dst_xy: torch.Tensor,
    weights: torch.Tensor,
    fixed_rotation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid transform minimising sum_i w_i |R src_i + t - dst_i|^2, in closed form.

    Derivation (DenseFlow appendix A, eq. 8-12, specialised to 2-D). With the weighted
    centroids g_src = sum w src / sum w and g_dst, the optimal translation is
    t = g_dst - R g_src (eq. 12), and substituting it leaves the centred problem of eq. 9
    on a_i = src_i - g_src, b_i = dst_i - g_dst: minimise sum w |R a_i - b_i|^2, i.e.
    maximise sum w b_i^T R a_i = tr(R H) with H = sum w a_i b_i^T (eq. 10). In 2-D,
    R = [[cos th, -sin th], [sin th, cos th]] and tr(R H) = cos(th) S_c + sin(th) S_s with
    S_c = H00 + H11 = sum w (a_x b_x + a_y b_y) and S_s = H01 - H10 = sum w (a_x b_y - a_y b_x),
    which is maximal at th = atan2(S_s, S_c). This replaces the SVD of eq. 11, always gives
    a proper rotation (det +1, no reflection fix needed) and has a stable gradient. The
    paper's appendix swaps roles in eq. 11-12 (R = U V^T and t = g' - R g_hat); the result
    here is the one consistent with its objective, eq. 8 (R = V U^T for H = U S V^T).

    Convention: any consistent unit (metres or pixels) for both point sets; R acts on column
    vectors, dst ~ R src + t; the angle th is counter-clockwise positive in a right-handed
    frame with x east and y north (so it *decreases* compass yaw, see
    :func:`cvloc.geometry.pose.compose_pose_with_rigid_2d`). Fed satellite pixels (u east,
    v south) instead, th turns +u towards +v, i.e. clockwise as the image is displayed.

    Degenerate inputs. R and t are finite for any finite input, and so are the gradients
    with respect to the points. Gradients with respect to the weights are the true
    derivatives, of size ~ (coordinate spread) / (largest weight), so they overflow only
    where that exceeds the dtype's range (float32 weights ~1e-37 with coordinates ~1e10).

    - Points whose ``src``, ``dst`` or weight is NaN or infinite get zero weight and do
      not affect the result or receive gradient. Negative weights are clamped to zero.
    - No weight at all (N = 0, all weights zero, or the largest weight below the smallest
      normal number of the compute dtype): R = identity, t = 0 ("no evidence, no motion";
      callers that place ``src`` with a prior pose thus keep the prior).
    - One weighted point, or all weighted src (or all weighted dst) identical, or any
      configuration whose H is at rounding level (e.g. dst a mirror image of src): the
      rotation is undetermined, R = identity and t = g_dst - g_src.
    - Collinear points determine the rotation and need no special case.

    The solution is exact otherwise: weights are used only relative to the largest one and
    points relative to the weighted point with the largest weight, so tiny weight scales
    and huge common offsets (e.g. UTM-sized coordinates) cost no precision in the centred
    sums and the rotation; t inherits the rounding of the coordinates themselves.

    Args:
        src_xy: (B, N, 2) source points, floating point.
        dst_xy: (B, N, 2) matched destination points, floating point.
        weights: (B, N) non-negative confidences (any real dtype, e.g. a bool mask);
            only their ratios matter.
        fixed_rotation: optional (B,) bool: where True the rotation is known to be the
            identity and only t is fitted, t = g_dst - g_src (the least-squares
            translation; e.g. a pose whose heading is known).

    Returns:
        R: (B, 2, 2) proper rotations, and t: (B, 2) translations, in float64 if any
        input is float64, else float32 (half and bfloat16 inputs are computed and returned
        in float32, also under autocast: no op here is autocast-eligible).

    Raises:
        ShapeError: when the shapes do not match (B, N, 2), (B, N, 2), (B, N).
        TypeError: when the points are not floating point or an input is complex.
    """
    check_shape(src_xy, ["B", "N", 2], "src_xy")
    check_shape(dst_xy, ["B", "N", 2], "dst_xy")
    check_shape(weights, ["B", "N"], "weights")
    if dst_xy.shape != src_xy.shape or weights.shape != src_xy.shape[:2]:
        raise ShapeError(
            "src_xy (B, N, 2), dst_xy (B, N, 2) and weights (B, N) must agree, got "
            f"{tuple(src_xy.shape)}, {tuple(dst_xy.shape)}, {tuple(weights.shape)}"
        )
    dtype = _compute_dtype(src_xy, dst_xy, weights)
    src, dst, w = src_xy.to(dtype), dst_xy.to(dtype), weights.to(dtype)
    B, N = w.shape
    if N == 0:
        # One zero-weight point makes the reductions below well defined (and keeps R, t
        # connected to the inputs' graph) without a separate code path.
        src = torch.cat([src, src.new_zeros(B, 1, 2)], 1)
        dst = torch.cat([dst, dst.new_zeros(B, 1, 2)], 1)
        w = torch.cat([w, w.new_zeros(B, 1)], 1)
    src, dst, w = _sanitize(src, dst, w)

    # Only weight ratios matter, so normalise by the (detached) largest weight: the result
    # is invariant to that scale, so its gradient is exact, and sum w >= 1 below.
    w_max = w.amax(-1).detach()
    has_weight = w_max >= torch.finfo(dtype).tiny
    w = torch.where(has_weight[:, None], w / torch.where(has_weight, w_max, 1.0)[:, None], 0.0)

    # Centre on a reference point (the heaviest one, detached: the centroids do not depend
    # on it) so that identical points give exactly zero offsets and large common offsets
    # cancel before any rounding.
    ref = w.argmax(-1)[:, None, None].expand(B, 1, 2)
    src_ref, dst_ref = src.detach().gather(1, ref), dst.detach().gather(1, ref)  # B,1,2
    d, e = src - src_ref, dst - dst_ref  # B,N,2
    w_sum = torch.where(has_weight, w.sum(-1), 1.0)[:, None]  # B,1
    d_mean = (w[..., None] * d).sum(1) / w_sum  # B,2
    e_mean = (w[..., None] * e).sum(1) / w_sum
    weighted = (w > 0)[..., None]
    a = torch.where(weighted, d - d_mean[:, None], 0.0)  # eq. 9 centring, B,N,2
    b = torch.where(weighted, e - e_mean[:, None], 0.0)

    theta = _optimal_angle(a, b, w)
    if fixed_rotation is not None:
        check_shape(fixed_rotation, [B], "fixed_rotation")
        theta = torch.where(fixed_rotation.to(theta.device), theta.new_zeros(()), theta)
    R = rotation_2d(theta)  # B,2,2
    src_mean = src_ref[:, 0] + d_mean
    dst_mean = dst_ref[:, 0] + e_mean
    # eq. 12 with the roles of eq. 8; R @ v written elementwise to stay out of autocast.
    t = dst_mean - (R * src_mean[:, None, :]).sum(-1)
    t = torch.where(has_weight[:, None], t, 0.0)
    return R, t


# A re-weighting that keeps less than this share of the original weight (every match far
# from the previous fit) has found no consensus: the sample keeps its previous weights.
_MIN_KEPT_WEIGHT = 1e-6


def robust_procrustes_2d(
    src_xy: torch.Tensor,
    dst_xy: torch.Tensor,
    weights: torch.Tensor,
    sigma: float,
    iters: int,
    fixed_rotation: torch.Tensor | None = None,
    start_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted rigid fit robust to outliers: a Welsch M-estimator by reweighted least squares.

    Starts from :func:`weighted_procrustes_2d` (or from the translation ``start_t``) and
    re-fits ``iters`` times with the weights
    w_i exp(-r_i^2 / (2 sigma^2)), r_i = |R src_i + t - dst_i| the residual to the previous
    fit: matches far from the consensus fade out, with no sampling and no threshold (a
    RANSAC-free, differentiable alternative to RANSAC's inlier refit). A sample whose
    re-weighting keeps less than 1e-6 of its weight (no match near the fit) keeps its
    previous weights, so it is never left without evidence. ``iters = 0`` is the weighted
    fit itself; exact data is a fixed point (zero residuals change no weight).

    The weights come back too, re-weighted by the residuals to the returned fit (what a
    next iteration would fit with): each match's inlier weight, the M-estimator's
    counterpart of RANSAC's inlier set.

    Convention: as :func:`weighted_procrustes_2d` (dst ~ R src + t); ``sigma`` in the unit
    of the points.

    Args:
        src_xy: (B, N, 2) source points.
        dst_xy: (B, N, 2) matched destination points.
        weights: (B, N) non-negative confidences.
        sigma: residual scale of the kernel, > 0.
        iters: re-weighted fits after the first, >= 0.
        fixed_rotation: optional (B,) bool: where True only the translation is fitted.
        start_t: optional (B, 2): the first residuals are taken to dst ~ src + start_t
            instead of to the weighted fit, so that a consensus found otherwise (a rigid
            shift of all points, not swayed by a few heavy outliers) picks the inliers;
            no gradient flows through it. Needs ``iters`` >= 1.

    Returns:
        R: (B, 2, 2) and t: (B, 2), as :func:`weighted_procrustes_2d`; weights (B, N):
        w_i exp(-r_i^2 / (2 sigma^2)) at that fit, the previous weights where that keeps
        less than 1e-6 of the weight (``iters = 0``: ``weights`` with NaN as 0).

    Raises:
        ValueError: ``sigma`` <= 0 or ``iters`` < 0.
        ShapeError, TypeError: as :func:`weighted_procrustes_2d`.
    """
    if not sigma > 0 or iters < 0:
        raise ValueError(f"expected sigma > 0 and iters >= 0, got {sigma}, {iters}")
    if start_t is not None and iters < 1:
        raise ValueError("start_t needs iters >= 1: the start is only used to re-weight")
    R, t = weighted_procrustes_2d(src_xy, dst_xy, weights, fixed_rotation)  # checks inputs
    if start_t is not None:
        check_shape(start_t, [src_xy.shape[0], 2], "start_t")
        R = torch.eye(2, dtype=R.dtype, device=R.device).expand_as(R)
        t = start_t.detach().to(t)
    base = torch.nan_to_num(weights.to(R.dtype)).clamp_min(0.0)
    if iters == 0:
        return R, t, base
    src, dst = src_xy.to(R.dtype), dst_xy.to(R.dtype)
    total = base.sum(-1, keepdim=True)
    w = base
    for i in range(iters + 1):
        moved = (R[:, None] * src[:, :, None, :]).sum(-1) + t[:, None]  # R src + t, B,N,2
        r2 = torch.nan_to_num((moved - dst).square().sum(-1), nan=torch.inf)
        new = base * torch.exp(-r2 / (2.0 * sigma**2))
        kept = new.sum(-1, keepdim=True) >= _MIN_KEPT_WEIGHT * total
        w = torch.where(kept, new, w)
        if i < iters:  # the last pass only weighs the matches at the returned fit
            R, t = weighted_procrustes_2d(src, dst, w, fixed_rotation)
    return R, t, w


def rotation_angle_2d(R: torch.Tensor) -> torch.Tensor:
    """Angle of 2-D rotation matrices.

    Convention: counter-clockwise positive in a right-handed x-east/y-north frame, R acting
    on column vectors (inverse of :func:`cvloc.geometry.pose.rotation_2d`); radians in
    (-pi, pi].

    Args:
        R: (*, 2, 2) rotation matrices.

    Returns:
        (*,) angles in radians.
    """
    check_shape(R, ["*", 2, 2], "R")
    return torch.atan2(R[..., 1, 0], R[..., 0, 0])


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Float32 or float64 compute dtype of the inputs (half precision is raised)."""
    if not (tensors[0].is_floating_point() and tensors[1].is_floating_point()):
        raise TypeError(
            f"src_xy and dst_xy must be floating point, got {tensors[0].dtype}, {tensors[1].dtype}"
        )
    if any(t.is_complex() for t in tensors):
        raise TypeError("complex inputs are not supported")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sanitize(
    src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero the weight and coordinates of non-finite points; clamp weights at zero.

    ``torch.where`` (not multiplication by a mask) keeps NaN out of both the values and
    the gradients.
    """
    valid = torch.isfinite(src).all(-1) & torch.isfinite(dst).all(-1) & torch.isfinite(w)
    w = torch.where(valid, w.clamp(min=0.0), 0.0)
    src = torch.where(valid[..., None], src, 0.0)
    dst = torch.where(valid[..., None], dst, 0.0)
    return src, dst, w


def _optimal_angle(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Optimal angle atan2(H01 - H10, H00 + H11) of centred points, 0 where undetermined.

    Args:
        a: (B, N, 2) centred source points (zero where w = 0).
        b: (B, N, 2) centred destination points (zero where w = 0).
        w: (B, N) weights in [0, 1].

    Returns:
        (B,) angles in radians.
    """
    dtype = a.dtype
    # The angle is invariant to a common scale of a and b, so scale both into [-1, 1]
    # (detached, hence exact gradients): no overflow for huge, no underflow for tiny ones.
    scale = torch.maximum(a.detach().abs().amax((1, 2)), b.detach().abs().amax((1, 2)))
    scale = torch.where(scale > 0, scale, 1.0)[:, None, None]
    a, b = a / scale, b / scale
    ax, ay = a.unbind(-1)
    bx, by = b.unbind(-1)
    s_cos = (w * (ax * bx + ay * by)).sum(-1)  # H00 + H11 = max of tr(RH) at th = 0
    s_sin = (w * (ax * by - ay * bx)).sum(-1)  # H01 - H10
    with torch.no_grad():
        magnitude = s_cos.abs() + s_sin.abs()
        noise = (w * a.norm(dim=-1) * b.norm(dim=-1)).sum(-1) * torch.finfo(dtype).eps
        # The floor keeps 1 / magnitude far from overflow in contrived cases (all spread
        # carried by weights ~1e-30 of the largest).
        floor = torch.finfo(dtype).tiny ** 0.5
        determined = magnitude > torch.clamp(_NOISE_ULPS * noise, min=floor)
        # atan2 is invariant to a positive scale of both arguments; dividing by the detached
        # magnitude bounds its backward (x / (x^2 + y^2) would underflow for tiny H).
        inv = torch.where(determined, magnitude, 1.0).reciprocal()
    # atan2(0, 0) has a NaN gradient: undetermined rows use atan2(0, 1) = 0 instead, and the
    # where-masks route no gradient into their (zero) sums.
    x = torch.where(determined, s_cos * inv, 1.0)
    y = torch.where(determined, s_sin * inv, 0.0)
    return torch.atan2(y, x)
