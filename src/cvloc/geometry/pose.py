"""3-DoF poses: yaw conventions, camera extrinsics, and 2-D rigid transforms.

A 3-DoF pose is the camera position on the satellite image (or metric ``camera_xy``)
plus the heading ``yaw_deg``: compass degrees of the optical axis, clockwise from north,
wrapped to (-180, 180]. The metric world frame of a sample has x east, y north, z up.
"""

from __future__ import annotations

import torch

from cvloc.geometry.checks import check_shape


def wrap_deg(angle_deg: torch.Tensor) -> torch.Tensor:
    """Wrap angles to (-180, 180].

    Convention: degrees; -180 maps to +180. Angles already in (-180, 180] are returned
    unchanged (bit-exact), so thresholds on small errors are not perturbed by rounding.

    Args:
        angle_deg: (*,) any real angles.

    Returns:
        (*,) wrapped angles.
    """
    inside = (angle_deg > -180.0) & (angle_deg <= 180.0)
    return torch.where(inside, angle_deg, 180.0 - torch.remainder(180.0 - angle_deg, 360.0))


def yaw_to_forward_xy(yaw_deg: torch.Tensor) -> torch.Tensor:
    """Unit forward vector of a heading in the metric world frame.

    Convention: x east, y north; yaw clockwise from north, so forward = (sin yaw, cos yaw).

    Args:
        yaw_deg: (*,).

    Returns:
        (*, 2).
    """
    yaw = torch.deg2rad(yaw_deg)
    return torch.stack([torch.sin(yaw), torch.cos(yaw)], dim=-1)


def yaw_to_forward_uv(yaw_deg: torch.Tensor) -> torch.Tensor:
    """Unit forward vector of a heading on the satellite image.

    Convention: u east (columns), v south (rows), so forward = (sin yaw, -cos yaw).

    Args:
        yaw_deg: (*,).

    Returns:
        (*, 2).
    """
    yaw = torch.deg2rad(yaw_deg)
    return torch.stack([torch.sin(yaw), -torch.cos(yaw)], dim=-1)


def forward_xy_to_yaw(forward_xy: torch.Tensor) -> torch.Tensor:
    """Heading of a (not necessarily unit) forward vector in the world frame.

    Convention: inverse of :func:`yaw_to_forward_xy`: yaw = atan2(x, y) in degrees,
    in (-180, 180]; a zero vector gives 0 (north).

    Args:
        forward_xy: (*, 2).

    Returns:
        (*,) yaw in degrees.
    """
    return wrap_deg(torch.rad2deg(torch.atan2(forward_xy[..., 0], forward_xy[..., 1])))


def world_to_cam_from_pose(
    camera_xy: torch.Tensor,
    yaw_deg: torch.Tensor,
    camera_height_m: torch.Tensor | float,
    pitch_deg: torch.Tensor | float = 0.0,
    roll_deg: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Extrinsics of a ground camera at a 3-DoF pose and known height.

    Convention: world x east, y north, z up (ground z = 0); camera frame x right,
    y down, z forward (OpenCV), ``X_cam = world_to_cam @ X_world``. A level camera
    (pitch = roll = 0) looks along forward = (sin yaw, cos yaw, 0) with x_cam =
    (cos yaw, -sin yaw, 0) and y_cam = (0, 0, -1). Pitch rotates about x_cam (positive
    looks up), then roll about z_cam (positive turns the image clockwise as seen by the
    camera), both applied in the camera frame.

    Args:
        camera_xy: (B, 2) metres.
        yaw_deg: (B,).
        camera_height_m: (B,) or scalar, camera centre height above ground.
        pitch_deg: (B,) or scalar.
        roll_deg: (B,) or scalar.

    Returns:
        world_to_cam: (B, 4, 4).
    """
    check_shape(camera_xy, ["B", 2], "camera_xy")
    B = camera_xy.shape[0]
    dt, dev = camera_xy.dtype, camera_xy.device

    def _as_batch(v: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(v, dtype=dt, device=dev).expand(B)

    yaw = torch.deg2rad(_as_batch(yaw_deg))
    s, c = torch.sin(yaw), torch.cos(yaw)
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    # Rows are the camera axes expressed in the world frame.
    R_level = torch.stack(
        [
            torch.stack([c, -s, zero], -1),
            torch.stack([zero, zero, -one], -1),
            torch.stack([s, c, zero], -1),
        ],
        dim=-2,
    )
    p = torch.deg2rad(_as_batch(pitch_deg))
    r = torch.deg2rad(_as_batch(roll_deg))
    cp, sp, cr, sr = torch.cos(p), torch.sin(p), torch.cos(r), torch.sin(r)
    # Pitch up about x_cam: forward tilts towards -y_cam (up).
    R_pitch = torch.stack(
        [
            torch.stack([one, zero, zero], -1),
            torch.stack([zero, cp, sp], -1),
            torch.stack([zero, -sp, cp], -1),
        ],
        dim=-2,
    )
    R_roll = torch.stack(
        [
            torch.stack([cr, sr, zero], -1),
            torch.stack([-sr, cr, zero], -1),
            torch.stack([zero, zero, one], -1),
        ],
        dim=-2,
    )
    R = R_roll @ R_pitch @ R_level
    center = torch.cat([camera_xy, _as_batch(camera_height_m)[:, None]], dim=-1)
    t = -(R @ center[..., None])[..., 0]
    T = torch.zeros(B, 4, 4, dtype=dt, device=dev)
    T[:, :3, :3] = R
    T[:, :3, 3] = t
    T[:, 3, 3] = 1.0
    return T


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous rigid transform to 3-D points.

    Convention: ``T`` maps the points' frame to the target frame, p' = R p + t.

    Args:
        T: (B, 4, 4).
        points: (B, N, 3).

    Returns:
        (B, N, 3).
    """
    check_shape(T, ["B", 4, 4], "T")
    check_shape(points, ["B", "N", 3], "points")
    return points @ T[:, :3, :3].transpose(-1, -2) + T[:, None, :3, 3]


def rotation_2d(angle_rad: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise 2-D rotation matrices.

    Convention: R = [[cos, -sin], [sin, cos]] acting on column vectors (x east, y north),
    so a positive angle turns east towards north (counter-clockwise seen from above),
    i.e. it *decreases* compass yaw by the same amount.

    Args:
        angle_rad: (*,).

    Returns:
        (*, 2, 2).
    """
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], dim=-2)


def apply_rigid_2d(R: torch.Tensor, t: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Apply x -> R x + t to 2-D points.

    Convention: R (B, 2, 2) acts on column vectors.

    Args:
        R: (B, 2, 2).
        t: (B, 2).
        xy: (B, N, 2).

    Returns:
        (B, N, 2).
    """
    check_shape(R, ["B", 2, 2], "R")
    check_shape(t, ["B", 2], "t")
    check_shape(xy, ["B", "N", 2], "xy")
    return xy @ R.transpose(-1, -2) + t[:, None, :]


def compose_pose_with_rigid_2d(
    R: torch.Tensor, t: torch.Tensor, camera_xy: torch.Tensor, yaw_deg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a 3-DoF pose by a world-frame rigid transform x -> R x + t.

    This turns a correction estimated between points placed with the prior pose and
    their matched locations into a pose: a camera at ``camera_xy`` with heading
    ``yaw_deg`` ends at R camera_xy + t with heading yaw_deg - angle(R) (R is
    counter-clockwise, yaw clockwise).

    Convention: world frame x east, y north, metres; yaw in degrees, wrapped.

    Args:
        R: (B, 2, 2) proper rotations.
        t: (B, 2) metres.
        camera_xy: (B, 2).
        yaw_deg: (B,).

    Returns:
        camera_xy': (B, 2), yaw_deg': (B,).
    """
    check_shape(R, ["B", 2, 2], "R")
    check_shape(camera_xy, ["B", 2], "camera_xy")
    new_xy = (R @ camera_xy[..., None])[..., 0] + t
    angle_deg = torch.rad2deg(torch.atan2(R[..., 1, 0], R[..., 0, 0]))
    return new_xy, wrap_deg(yaw_deg - angle_deg)


def relative_rigid_2d(
    from_xy: torch.Tensor,
    from_yaw_deg: torch.Tensor,
    to_xy: torch.Tensor,
    to_yaw_deg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The world-frame rigid transform that moves one 3-DoF pose onto another.

    Convention: inverse of :func:`compose_pose_with_rigid_2d`: returns (R, t) with
    to_xy = R from_xy + t and to_yaw = from_yaw - angle(R).

    Args:
        from_xy: (B, 2) metres.
        from_yaw_deg: (B,).
        to_xy: (B, 2) metres.
        to_yaw_deg: (B,).

    Returns:
        R: (B, 2, 2), t: (B, 2).
    """
    angle = torch.deg2rad(from_yaw_deg - to_yaw_deg)
    R = rotation_2d(angle)
    t = to_xy - (R @ from_xy[..., None])[..., 0]
    return R, t
