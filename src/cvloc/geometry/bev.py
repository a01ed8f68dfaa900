"""Ground-to-BEV lifting: BEV grids, their projection into the ground image, feature warping.

The BEV is a grid of world points (x east, y north, metres) at one or more heights above
the ground plane (z up, z = 0 the ground). :func:`lift_to_ground_image` projects every
cell at every height into the ground image (pinhole or equirectangular panorama) and
:func:`warp_to_bev` samples a ground feature map there. DenseFlow (paper section 3.1)
uses the flat ground, height 0, on the satellite feature grid (:func:`bev_from_prior`);
the surface model of the fine-grained matcher (viewbridge notes section 2) lifts the
same grid at several height bins and weighs them per cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvloc.geometry.cameras import panorama_project, pinhole_project
from cvloc.geometry.checks import check_same_batch, check_shape
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import transform_points, world_to_cam_from_pose, yaw_to_forward_xy

CAMERA_MODELS = ("pinhole", "panorama")
# uv given to cells that fail the depth test: outside every image, and finite.
_INVALID_UV = -1.0


def satellite_grid_uv(
    height: int,
    width: int,
    stride: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Satellite-pixel coordinates of the cell centres of a feature grid.

    Convention: the grid covers a north-up satellite image with ``stride`` image pixels per
    cell (a feature map at 1 / stride resolution); integer pixel coordinates are pixel
    centres, so cell (i, j) is centred at u = (j + 0.5) stride - 0.5 (east),
    v = (i + 0.5) stride - 0.5 (south). With stride 1 this is every pixel centre.

    Args:
        height: number of grid rows H.
        width: number of grid columns W.
        stride: satellite image pixels per grid cell, > 0.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        uv: (H, W, 2) satellite pixels (u, v).
    """
    _check_grid_size(height, width)
    if not stride > 0:
        raise ValueError(f"stride must be positive, got {stride}")
    u = (torch.arange(width, dtype=dtype, device=device) + 0.5) * stride - 0.5
    v = (torch.arange(height, dtype=dtype, device=device) + 0.5) * stride - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def ego_grid_xy(
    height: int,
    width: int,
    m_per_cell: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ego-centric metric grid in the camera's horizontal frame.

    Convention: x right, y forward (metres) of a level camera, the camera at the grid
    centre; row 0 is the farthest forward and column 0 the farthest left, so the grid
    displays like a north-up map when the camera faces north:
    x = (j - (W - 1) / 2) m_per_cell, y = ((H - 1) / 2 - i) m_per_cell.

    Args:
        height: number of rows H.
        width: number of columns W.
        m_per_cell: metres per cell, > 0.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        xy: (H, W, 2) metres.
    """
    _check_grid_size(height, width)
    if not m_per_cell > 0:
        raise ValueError(f"m_per_cell must be positive, got {m_per_cell}")
    x = (torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2.0) * m_per_cell
    y = ((height - 1) / 2.0 - torch.arange(height, dtype=dtype, device=device)) * m_per_cell
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def ego_to_world_xy(
    ego_xy: torch.Tensor, camera_xy: torch.Tensor, yaw_deg: torch.Tensor
) -> torch.Tensor:
    """Place an ego-centric grid at a 3-DoF pose in the world frame.

    Convention: world x east, y north (metres); yaw in degrees clockwise from north, so
    forward = (sin yaw, cos yaw) and right = (cos yaw, -sin yaw);
    world = camera_xy + x right + y forward.

    Args:
        ego_xy: (B, H, W, 2) or (H, W, 2) ego coordinates (x right, y forward), metres.
        camera_xy: (B, 2) camera position, metres.
        yaw_deg: (B,) heading.

    Returns:
        world_xy: (B, H, W, 2) metres.
    """
    check_shape(camera_xy, ["B", 2], "camera_xy")
    check_shape(yaw_deg, ["B"], "yaw_deg")
    check_same_batch(("camera_xy", camera_xy), ("yaw_deg", yaw_deg))
    if ego_xy.dim() == 3:
        ego_xy = ego_xy.unsqueeze(0).expand(camera_xy.shape[0], -1, -1, -1)
    check_shape(ego_xy, ["B", "H", "W", 2], "ego_xy")
    check_same_batch(("ego_xy", ego_xy), ("camera_xy", camera_xy))
    forward = yaw_to_forward_xy(yaw_deg)[:, None, None]  # B,1,1,2
    right = torch.stack([forward[..., 1], -forward[..., 0]], dim=-1)
    return camera_xy[:, None, None] + ego_xy[..., :1] * right + ego_xy[..., 1:] * forward


def lift_to_ground_image(
    points_xy: torch.Tensor,
    heights_m: torch.Tensor,
    world_to_cam: torch.Tensor,
    camera_model: str,
    ground_size: tuple[int, int],
    K: torch.Tensor | None = None,
    min_depth_m: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-image location of every BEV cell at every height.

    Convention: world x east, y north, z up (z = 0 the ground; the camera height is inside
    ``world_to_cam``, e.g. from :func:`cvloc.geometry.pose.world_to_cam_from_pose`), the
    point of cell (i, j) at height k is (points_xy[i, j], heights_m[k]). Pixels (u, v) of
    the ground image at integer pixel centres. A cell is valid when it is in front of the
    camera by more than ``min_depth_m`` (pinhole: camera z; panorama: sqrt(x^2 + z^2) in
    the camera frame, the distance from the panorama's pole axis) and its projection lies
    in the image, u in [-0.5, W - 0.5] and v in [-0.5, H - 0.5]. Cells failing the depth
    test get uv = (-1, -1) (outside the image, finite, no gradient); cells in front but
    outside the image keep their projection. Computed in at least fp32, autocast off.

    Args:
        points_xy: (B, H, W, 2) world positions of the BEV cells, metres.
        heights_m: (Z,) or (B, Z) heights above the ground plane, metres.
        world_to_cam: (B, 4, 4) extrinsics, ``X_cam = world_to_cam @ X_world``.
        camera_model: ``"pinhole"`` or ``"panorama"``.
        ground_size: (W, H) of the ground image in pixels (W = 2 H for a panorama).
        K: (B, 3, 3) intrinsics in ground-image pixels; required for ``"pinhole"``,
            ignored for ``"panorama"``.
        min_depth_m: minimum depth (pinhole) or horizontal distance (panorama), metres.

    Returns:
        uv: (B, Z, H, W, 2) ground-image pixels.
        valid: (B, Z, H, W) bool.

    Raises:
        ValueError: unknown camera model, missing K, or a bad ground size.
        ShapeError: an argument does not have the documented shape.
    """
    check_shape(points_xy, ["B", "H", "W", 2], "points_xy")
    check_shape(world_to_cam, ["B", 4, 4], "world_to_cam")
    check_same_batch(("points_xy", points_xy), ("world_to_cam", world_to_cam))
    width, height = _check_ground_size(ground_size)
    pinhole = _is_pinhole(camera_model)
    B, H, W, _ = points_xy.shape
    if pinhole:
        if K is None:
            raise ValueError("K is required for a pinhole camera")
        check_shape(K, [B, 3, 3], "K")
    dtype = _float_at_least_32(points_xy, world_to_cam, heights_m)
    with torch.autocast(device_type=points_xy.device.type, enabled=False):
        heights = _heights_per_batch(heights_m, B, dtype, points_xy.device)  # B,Z
        Z = heights.shape[1]
        xy = points_xy.to(dtype)[:, None].expand(B, Z, H, W, 2)
        z = heights[:, :, None, None, None].expand(B, Z, H, W, 1)
        points_cam = transform_points(world_to_cam.to(dtype), torch.cat([xy, z], -1).flatten(1, 3))
        if pinhole:
            in_front = points_cam[..., 2] > min_depth_m
        else:
            in_front = torch.hypot(points_cam[..., 0], points_cam[..., 2]) > min_depth_m
        # Project a harmless point for rejected cells: no inf / NaN in values or gradients.
        safe = torch.where(in_front[..., None], points_cam, points_cam.new_tensor([0, 0, 1.0]))
        if pinhole:
            uv, _ = pinhole_project(safe, K.to(dtype))
        else:
            uv, _ = panorama_project(safe, width, height)
        u, v = uv.unbind(-1)
        inside = (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
        uv = torch.where(in_front[..., None], uv, uv.new_tensor(_INVALID_UV))
    return uv.reshape(B, Z, H, W, 2), (in_front & inside).reshape(B, Z, H, W)


def warp_to_bev(
    features: torch.Tensor,
    uv: torch.Tensor,
    valid: torch.Tensor,
    ground_size: tuple[int, int],
    panorama: bool = False,
    feature_offset_px: float = 0.0,
) -> torch.Tensor:
    """Bilinearly sample a ground feature map at ground-image pixel locations.

    Convention: ``features`` covers the whole ground image at any resolution h x w (e.g.
    1/8); ground pixel u maps to x_n = (u + 0.5) / W 2 - 1 (v likewise with H) under
    ``align_corners=False``, which is the pixel-centre convention at every feature
    resolution. Samples within half a feature pixel of the image border read the border
    value (``padding_mode="border"``); invalid cells are exactly zero and pass no gradient.
    For a panorama the horizontal axis is periodic: u is wrapped to [-0.5, W - 0.5) and
    one feature column is padded circularly on each side, so the seam interpolates between
    the last and the first column. Sampling runs in at least fp32 with autocast off
    (fp16 / bf16 features are sampled in fp32); the result has the dtype of ``features``.
    ``feature_offset_px`` moves every feature cell by that many ground pixels along u and
    v: cell (i, j) is read as describing pixel ((j + 0.5) W / w - 0.5 + o, (i + 0.5) H / h
    - 0.5 + o), so the map is sampled at uv - o.

    Args:
        features: (B, C, h, w) ground feature map.
        uv: (B, Z, H, W, 2) ground-image pixels, e.g. from :func:`lift_to_ground_image`.
        valid: (B, Z, H, W) bool mask of the cells to sample.
        ground_size: (W, H) of the ground image in pixels (the frame of ``uv``).
        panorama: whether the ground image is an equirectangular panorama.
        feature_offset_px: o, the offset of the feature cells from the pixel-centre
            convention, ground pixels.

    Returns:
        bev: (B, C, Z, H, W) sampled features, zero where not valid.

    Raises:
        ShapeError: an argument does not have the documented shape.
        ValueError: a bad ground size.
    """
    check_shape(features, ["B", "C", "h", "w"], "features")
    check_shape(uv, ["B", "Z", "H", "W", 2], "uv")
    check_shape(valid, list(uv.shape[:-1]), "valid")
    check_same_batch(("features", features), ("uv", uv))
    width, height = _check_ground_size(ground_size)
    B, C, _, w = features.shape
    _, Z, H, W, _ = uv.shape
    dtype = _float_at_least_32(features, uv)
    valid = valid.to(torch.bool)
    with torch.autocast(device_type=features.device.type, enabled=False):
        feats = features.to(dtype)
        u, v = (uv.to(dtype) - feature_offset_px).unbind(-1)
        if panorama:
            feats = torch.cat([feats[..., -1:], feats, feats[..., :1]], dim=-1)
            # Feature column of u is (u + 0.5) w / W - 0.5, one more in the padded map.
            u_wrapped = torch.remainder(u + 0.5, width)
            x_n = (u_wrapped * (w / width) + 1.0) / (w + 2) * 2.0 - 1.0
        else:
            x_n = (u + 0.5) / width * 2.0 - 1.0
        y_n = (v + 0.5) / height * 2.0 - 1.0
        grid = torch.where(valid[..., None], torch.stack([x_n, y_n], -1), x_n.new_zeros(()))
        bev = F.grid_sample(
            feats,
            grid.reshape(B, Z * H, W, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )  # B,C,Z*H,W
        bev = bev.reshape(B, C, Z, H, W) * valid[:, None].to(dtype)
    return bev.to(features.dtype)


def bev_from_prior(
    features: torch.Tensor,
    K: torch.Tensor | None,
    camera_model: str,
    ground_size: tuple[int, int],
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    yaw_deg_prior: torch.Tensor,
    camera_height_m: torch.Tensor,
    grid_hw: tuple[int, int],
    stride: float,
    heights_m: torch.Tensor | None = None,
    samples_per_cell: int = 1,
    feature_offset_px: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground features on the satellite feature grid, assuming the camera is at the prior.

    DenseFlow's ground feature projection (paper section 3.1, eq. 1): every cell of the
    satellite feature grid is the world point of its centre (:func:`satellite_grid_uv`
    then :func:`cvloc.geometry.geo.pixel_to_world_xy`), projected into the ground image of
    a level camera at the prior pose and height and sampled there.

    Convention: satellite north-up, pixel centres at integers; world x east, y north,
    origin at ``sat_center_uv``; yaw clockwise from north; a level camera
    (:func:`cvloc.geometry.pose.world_to_cam_from_pose` with pitch = roll = 0). Without
    ``heights_m`` the flat ground (height 0) is used and the height axis is dropped.
    With ``samples_per_cell`` n > 1 each cell is the mean of n x n points on a regular
    sub-grid of its footprint (the cell centres of the grid at ``stride / n``), over the
    points that are visible; a cell is valid when any of them is. The eq. 1 point sample
    aliases near the camera, where one cell covers many ground-image pixels: the mean is
    the cell's area average, as a satellite feature is.

    Args:
        features: (B, C, h, w) ground feature map covering the whole ground image.
        K: (B, 3, 3) intrinsics in ground-image pixels (pinhole), or None (panorama).
        camera_model: ``"pinhole"`` or ``"panorama"``.
        ground_size: (W, H) of the ground image in pixels.
        sat_center_uv: (B, 2) satellite pixel of the world origin.
        m_per_px: (B,) satellite metres per pixel.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        yaw_deg_prior: (B,) prior heading.
        camera_height_m: (B,) camera height above the ground.
        grid_hw: (H, W) of the satellite feature grid.
        stride: satellite image pixels per grid cell.
        heights_m: optional (Z,) or (B, Z) heights above ground to lift at, metres.
        samples_per_cell: n, points per cell along each axis (>= 1).
        feature_offset_px: see :func:`warp_to_bev`.

    Returns:
        bev: (B, C, H, W), or (B, C, Z, H, W) with ``heights_m``; zero where not valid.
        valid: (B, H, W), or (B, Z, H, W) with ``heights_m``, bool.

    Raises:
        ValueError: ``samples_per_cell`` < 1.
    """
    if samples_per_cell < 1:
        raise ValueError(f"samples_per_cell must be >= 1, got {samples_per_cell}")
    check_shape(sat_center_uv, ["B", 2], "sat_center_uv")
    check_shape(m_per_px, ["B"], "m_per_px")
    check_shape(camera_uv_prior, ["B", 2], "camera_uv_prior")
    check_shape(yaw_deg_prior, ["B"], "yaw_deg_prior")
    check_shape(camera_height_m, ["B"], "camera_height_m")
    check_same_batch(
        ("features", features),
        ("sat_center_uv", sat_center_uv),
        ("m_per_px", m_per_px),
        ("camera_uv_prior", camera_uv_prior),
        ("yaw_deg_prior", yaw_deg_prior),
        ("camera_height_m", camera_height_m),
    )
    dtype = _float_at_least_32(sat_center_uv, m_per_px, camera_uv_prior, yaw_deg_prior)
    device = sat_center_uv.device
    n = samples_per_cell
    with torch.autocast(device_type=device.type, enabled=False):
        center, m = sat_center_uv.to(dtype), m_per_px.to(dtype)
        # The n x n sub-cells of cell (i, j) are rows i n .. i n + n - 1 and columns likewise
        # of the grid at stride / n: their centres average to the cell's centre.
        grid_uv = satellite_grid_uv(grid_hw[0] * n, grid_hw[1] * n, stride / n, dtype, device)
        points_xy = pixel_to_world_xy(grid_uv[None], center[:, None, None], m[:, None, None])
        camera_xy = pixel_to_world_xy(camera_uv_prior.to(dtype), center, m)
        world_to_cam = world_to_cam_from_pose(
            camera_xy, yaw_deg_prior.to(dtype), camera_height_m.to(dtype)
        )
    flat = heights_m is None
    heights = torch.zeros(1, dtype=dtype, device=device) if flat else heights_m
    uv, valid = lift_to_ground_image(
        points_xy, heights, world_to_cam, camera_model, ground_size, K
    )
    panorama = camera_model == "panorama"
    bev = warp_to_bev(features, uv, valid, ground_size, panorama, feature_offset_px)
    if n > 1:
        bev, valid = _cell_means(bev, valid, n)
    if flat:
        return bev[:, :, 0], valid[:, 0]
    return bev, valid


def _cell_means(
    bev: torch.Tensor, valid: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, Z, H n, W n) samples -> (B, C, Z, H, W) means over the valid ones, validity."""
    B, C, Z, Hn, Wn = bev.shape
    total = F.avg_pool2d(bev.reshape(B, C * Z, Hn, Wn), n)  # invalid samples are zero
    count = F.avg_pool2d(valid.to(bev.dtype).reshape(B, Z, Hn, Wn), n)
    H, W = count.shape[-2:]
    mean = total.reshape(B, C, Z, H, W) / count.clamp_min(1.0 / (n * n))[:, None]
    return mean, count > 0


def _check_grid_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"grid size must be positive, got {height}x{width}")


def _check_ground_size(ground_size: tuple[int, int]) -> tuple[int, int]:
    if len(ground_size) != 2 or min(ground_size) <= 0:
        raise ValueError(f"ground_size must be (W, H) with positive sizes, got {ground_size}")
    return int(ground_size[0]), int(ground_size[1])


def _is_pinhole(camera_model: str) -> bool:
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    return camera_model == "pinhole"


def _float_at_least_32(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _heights_per_batch(
    heights_m: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    heights = torch.as_tensor(heights_m, dtype=dtype, device=device)
    if heights.dim() == 1:
        heights = heights.unsqueeze(0).expand(batch, -1)
    check_shape(heights, [batch, "Z"], "heights_m")
    return heights
