"""Ground camera models: pinhole (OpenCV) and equirectangular panorama.

Both share one camera frame: x right, y down, z forward (the optical axis, i.e. the
heading for a level camera). Pixel coordinates are (u, v) = (column, row) and integer
coordinates are pixel centres, so an image of width W spans u in [-0.5, W - 0.5].
"""

from __future__ import annotations

import math

import torch

from cvloc.geometry.checks import check_shape

_EPS_DEPTH = 1e-6


def intrinsics_from_hfov(
    hfov_deg: float, width: int, height: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Pinhole intrinsics of a W x H image with square pixels and a horizontal FoV.

    Convention: pixel centres at integers, so the principal point of a centred camera is
    ((W - 1) / 2, (H - 1) / 2); fx = fy = (W / 2) / tan(hfov / 2), the image edges
    u = -0.5 and u = W - 0.5 lying exactly at -hfov/2 and +hfov/2.

    Args:
        hfov_deg: horizontal field of view in degrees, in (0, 180).
        width: image width W in pixels.
        height: image height H in pixels.
        dtype: dtype of the result.

    Returns:
        K: (3, 3).
    """
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return torch.tensor(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=dtype,
    )


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Intrinsics of the same camera after resizing its image by (sx, sy).

    Convention: pixel centres at integers, so a point at u in the old image is at
    (u + 0.5) * sx - 0.5 in the new one: fx' = fx * sx, cx' = (cx + 0.5) * sx - 0.5
    (and likewise for y). Skew scales with sx.

    Args:
        K: (*, 3, 3).
        sx: new width / old width.
        sy: new height / old height.

    Returns:
        K': (*, 3, 3).
    """
    check_shape(K, ["*", 3, 3], "K")
    S = K.new_tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return S @ K


def pinhole_project(
    points_cam: torch.Tensor, K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points with a pinhole camera.

    Convention: OpenCV camera frame (x right, y down, z forward); u = fx x / z + s y / z
    + cx, v = fy y / z + cy; pixel centres at integers. Points with z <= 1e-6 are behind
    the camera: their uv is computed with z clamped (finite) and must be masked with
    ``depth > 0``.

    Args:
        points_cam: (*, N, 3) camera-frame points in metres.
        K: (*, 3, 3), broadcast over the batch dimensions of ``points_cam``.

    Returns:
        uv: (*, N, 2) pixel coordinates.
        depth: (*, N) z of each point (positive in front of the camera).
    """
    check_shape(points_cam, ["*", "N", 3], "points_cam")
    check_shape(K, ["*", 3, 3], "K")
    depth = points_cam[..., 2]
    z = depth.clamp(min=_EPS_DEPTH)
    xn = points_cam[..., 0] / z
    yn = points_cam[..., 1] / z
    Kb = K.unsqueeze(-3)  # *,1,3,3 to broadcast over N
    u = Kb[..., 0, 0] * xn + Kb[..., 0, 1] * yn + Kb[..., 0, 2]
    v = Kb[..., 1, 1] * yn + Kb[..., 1, 2]
    return torch.stack([u, v], dim=-1), depth


def pinhole_unproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift pixels with known depth (z) to camera-frame points.

    Convention: inverse of :func:`pinhole_project`; ``depth`` is the z coordinate, not
    the ray length.

    Args:
        uv: (*, N, 2) pixel coordinates.
        depth: (*, N) z in metres.
        K: (*, 3, 3).

    Returns:
        points_cam: (*, N, 3).
    """
    check_shape(uv, ["*", "N", 2], "uv")
    check_shape(K, ["*", 3, 3], "K")
    Kb = K.unsqueeze(-3)
    y = (uv[..., 1] - Kb[..., 1, 2]) / Kb[..., 1, 1]
    x = (uv[..., 0] - Kb[..., 0, 2] - Kb[..., 0, 1] * y) / Kb[..., 0, 0]
    return torch.stack([x * depth, y * depth, depth], dim=-1)


def panorama_uv_to_angles(
    uv: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equirectangular pixel to (azimuth, elevation) in degrees.

    Convention (design.md): phi = ((u + 0.5) / W) * 360 - 180, azimuth relative to the
    heading, clockwise seen from above (the centre column looks forward, +90 looks
    right); el = 90 - ((v + 0.5) / H) * 180 (top row looks up).

    Args:
        uv: (*, 2) pixel coordinates.
        width: W; must equal 2 H.
        height: H.

    Returns:
        azimuth_deg: (*,), elevation_deg: (*,).
    """
    _check_panorama_size(width, height)
    phi = (uv[..., 0] + 0.5) / width * 360.0 - 180.0
    el = 90.0 - (uv[..., 1] + 0.5) / height * 180.0
    return phi, el


def panorama_angles_to_uv(
    azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, width: int, height: int
) -> torch.Tensor:
    """Inverse of :func:`panorama_uv_to_angles`.

    Convention: azimuth is wrapped into [-180, 180) before the mapping, so the result's
    u lies in [-0.5, W - 0.5).

    Args:
        azimuth_deg: (*,) degrees, clockwise from the heading seen from above.
        elevation_deg: (*,) degrees, positive up.
        width: W (= 2 H).
        height: H.

    Returns:
        uv: (*, 2).
    """
    _check_panorama_size(width, height)
    phi = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0
    u = (phi + 180.0) / 360.0 * width - 0.5
    v = (90.0 - elevation_deg) / 180.0 * height - 0.5
    return torch.stack([u, v], dim=-1)


def panorama_project(
    points_cam: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points into an equirectangular panorama.

    Convention: camera frame x right, y down, z forward (= heading); azimuth
    phi = atan2(x, z) (clockwise from forward seen from above), elevation
    el = atan2(-y, sqrt(x^2 + z^2)); then the mapping of :func:`panorama_angles_to_uv`.
    A point on the camera's vertical axis (x = z = 0) has a finite uv but undefined
    azimuth: its gradient is NaN (atan2(0, 0)), so callers that differentiate must mask
    such points first, as :mod:`cvloc.geometry.bev` does.

    Args:
        points_cam: (*, N, 3) camera-frame points.
        width: W (= 2 H).
        height: H.

    Returns:
        uv: (*, N, 2) pixel coordinates.
        range_m: (*, N) distance from the camera centre.
    """
    check_shape(points_cam, ["*", "N", 3], "points_cam")
    x, y, z = points_cam.unbind(-1)
    horiz = torch.sqrt(x * x + z * z)
    phi = torch.rad2deg(torch.atan2(x, z))
    el = torch.rad2deg(torch.atan2(-y, horiz))
    return panorama_angles_to_uv(phi, el, width, height), points_cam.norm(dim=-1)


def panorama_unproject(uv: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Unit viewing rays of equirectangular pixels in the camera frame.

    Convention: inverse of :func:`panorama_project`: ray = (sin phi cos el, -sin el,
    cos phi cos el) with x right, y down, z forward.

    Args:
        uv: (*, 2) pixel coordinates.
        width: W (= 2 H).
        height: H.

    Returns:
        rays: (*, 3) unit vectors.
    """
    phi, el = panorama_uv_to_angles(uv, width, height)
    phi, el = torch.deg2rad(phi), torch.deg2rad(el)
    return torch.stack(
        [torch.sin(phi) * torch.cos(el), -torch.sin(el), torch.cos(phi) * torch.cos(el)], dim=-1
    )


def _check_panorama_size(width: int, height: int) -> None:
    if width != 2 * height:
        raise ValueError(f"an equirectangular panorama has W = 2 H, got {width}x{height}")
