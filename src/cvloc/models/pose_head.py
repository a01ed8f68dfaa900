"""Least-squares pose regression from a dense BEV-to-satellite flow (DenseFlow section 3.3).

The BEV is laid on the satellite grid with the camera at its prior pose, so BEV pixel p'
(a satellite pixel centre) shows what the camera would see there if the prior were right.
The flow moves p' to its match p_hat = p' + flow on the satellite image. Both are points of
the sample's metric world frame; the weighted rigid fit p_hat ~ R p' + t (eq. 3, appendix
A eq. 8-12) is the correction that moves the prior pose onto the estimated one.
:func:`flow_from_pose` is the inverse: the flow a pose implies, the ground truth of the
matching loss (eq. 4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.checks import check_same_batch, check_shape
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import (
    apply_rigid_2d,
    compose_pose_with_rigid_2d,
    relative_rigid_2d,
)
from cvloc.geometry.procrustes import weighted_procrustes_2d


class PoseFromFlow(NamedTuple):
    """The pose estimated from a flow and the correspondences it used.

    Attributes:
        camera_xy: (B, 2) camera position in metres (world frame).
        yaw_deg: (B,) heading, degrees clockwise from north, in (-180, 180].
        camera_uv: (B, 2) camera position in satellite pixels.
        src_uv: (B, N, 2) BEV pixels p' (satellite pixel centres placed at the prior).
        dst_uv: (B, N, 2) their matches p_hat = p' + flow on the satellite image.
        weight: (B, N) the weights S of eq. 3.
    """

    camera_xy: torch.Tensor
    yaw_deg: torch.Tensor
    camera_uv: torch.Tensor
    src_uv: torch.Tensor
    dst_uv: torch.Tensor
    weight: torch.Tensor


def _dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Float64 if any input is float64, else float32 (geometry never runs in half)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pose_args(
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv: torch.Tensor,
    yaw_deg: torch.Tensor,
) -> None:
    check_shape(sat_center_uv, ["B", 2], "sat_center_uv")
    check_shape(m_per_px, ["B"], "m_per_px")
    check_shape(camera_uv, ["B", 2], "camera_uv")
    check_shape(yaw_deg, ["B"], "yaw_deg")
    check_same_batch(
        ("sat_center_uv", sat_center_uv),
        ("m_per_px", m_per_px),
        ("camera_uv", camera_uv),
        ("yaw_deg", yaw_deg),
    )


def pose_from_flow(
    flow: torch.Tensor,
    weights: torch.Tensor,
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    yaw_deg_prior: torch.Tensor,
    stride: int = 1,
    known_heading: torch.Tensor | None = None,
) -> PoseFromFlow:
    """Camera pose from a dense flow by weighted least squares (eq. 3).

    Convention: BEV pixel (i, j) is the satellite pixel centre (u, v) = (j, i) (north-up,
    integer pixel centres), placed with the camera at the prior pose; ``flow[:, :, i, j]``
    = (du, dv) moves it to its satellite match. World frame x east, y north, metres, origin
    at ``sat_center_uv``; yaw clockwise from north. Computed in float32 (float64 if an
    input is float64) with autocast off. Without any weight the prior pose is returned.

    Args:
        flow: (B, 2, H, W) flow in satellite pixels.
        weights: (B, H, W) non-negative weights S (visibility x confidence).
        sat_center_uv: (B, 2) satellite pixel of the world origin.
        m_per_px: (B,) satellite metres per pixel.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        yaw_deg_prior: (B,) prior heading.
        stride: use every ``stride``-th pixel in each direction (from offset stride // 2).
        known_heading: optional (B,) bool, samples whose prior heading is exact (a prior
            ``yaw_range_deg`` of 0): their pose keeps it and only the position is fitted.

    Returns:
        The estimated pose and the N = ceil((H - stride // 2) / stride) x (same for W)
        correspondences used.
    """
    check_shape(flow, ["B", 2, "H", "W"], "flow")
    check_shape(weights, [flow.shape[0], flow.shape[2], flow.shape[3]], "weights")
    _check_pose_args(sat_center_uv, m_per_px, camera_uv_prior, yaw_deg_prior)
    check_same_batch(("flow", flow), ("sat_center_uv", sat_center_uv))
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    B, _, H, W = flow.shape
    dtype = _dtype(flow, weights, sat_center_uv, m_per_px, camera_uv_prior, yaw_deg_prior)
    start = stride // 2
    with torch.autocast(device_type=flow.device.type, enabled=False):
        grid = satellite_grid_uv(H, W, 1.0, dtype, flow.device)[start::stride, start::stride]
        src_uv = grid.reshape(1, -1, 2).expand(B, -1, -1)  # B,N,2
        sub = flow.to(dtype)[:, :, start::stride, start::stride]
        dst_uv = src_uv + sub.flatten(2).transpose(1, 2)  # B,N,2
        weight = weights.to(dtype)[:, start::stride, start::stride].flatten(1)  # B,N
        center, m = sat_center_uv.to(dtype), m_per_px.to(dtype)
        src_xy = pixel_to_world_xy(src_uv, center[:, None], m[:, None])
        dst_xy = pixel_to_world_xy(dst_uv, center[:, None], m[:, None])
        R, t = weighted_procrustes_2d(src_xy, dst_xy, weight, known_heading)  # eq. 8-12
        prior_xy = pixel_to_world_xy(camera_uv_prior.to(dtype), center, m)
        camera_xy, yaw_deg = compose_pose_with_rigid_2d(R, t, prior_xy, yaw_deg_prior.to(dtype))
        camera_uv = world_xy_to_pixel(camera_xy, center, m)
    return PoseFromFlow(camera_xy, yaw_deg, camera_uv, src_uv, dst_uv, weight)


def flow_from_pose(
    sat_hw: tuple[int, int],
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    yaw_deg_prior: torch.Tensor,
    camera_uv: torch.Tensor,
    yaw_deg: torch.Tensor,
) -> torch.Tensor:
    """The flow implied by a pose: where each BEV pixel placed at the prior truly lies.

    Every BEV pixel p' is moved by the rigid motion that carries the prior pose onto the
    given pose (:func:`cvloc.geometry.pose.relative_rigid_2d`); the flow is its new
    satellite pixel minus p'. With the ground-truth pose this is the flow ground truth of
    the matching loss (eq. 4), and :func:`pose_from_flow` inverts it exactly.

    Convention: as :func:`pose_from_flow`; float32 (float64 if an input is float64),
    autocast off.

    Args:
        sat_hw: (H, W) of the full-resolution BEV / satellite grid.
        sat_center_uv: (B, 2) satellite pixel of the world origin.
        m_per_px: (B,) satellite metres per pixel.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        yaw_deg_prior: (B,) prior heading.
        camera_uv: (B, 2) target camera position (e.g. ground truth), satellite pixels.
        yaw_deg: (B,) target heading.

    Returns:
        flow: (B, 2, H, W) in satellite pixels.
    """
    _check_pose_args(sat_center_uv, m_per_px, camera_uv_prior, yaw_deg_prior)
    _check_pose_args(sat_center_uv, m_per_px, camera_uv, yaw_deg)
    H, W = sat_hw
    B = sat_center_uv.shape[0]
    inputs = (sat_center_uv, m_per_px, camera_uv_prior, yaw_deg_prior, camera_uv, yaw_deg)
    dtype = _dtype(*inputs)
    center, m, uv_prior, yaw_prior, uv, yaw = (x.to(dtype) for x in inputs)
    with torch.autocast(device_type=center.device.type, enabled=False):
        R, t = relative_rigid_2d(
            pixel_to_world_xy(uv_prior, center, m),
            yaw_prior,
            pixel_to_world_xy(uv, center, m),
            yaw,
        )
        grid = satellite_grid_uv(H, W, 1.0, dtype, center.device).reshape(1, -1, 2)
        src_xy = pixel_to_world_xy(grid, center[:, None], m[:, None])  # B,N,2
        dst_uv = world_xy_to_pixel(apply_rigid_2d(R, t, src_xy), center[:, None], m[:, None])
    return (dst_uv - grid).transpose(1, 2).reshape(B, 2, H, W)
