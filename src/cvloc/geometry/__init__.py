"""Geometry: cameras, satellite geo-referencing, poses, BEV lifting, 2-D rigid fitting.

Every function documents its frames and units in a ``Convention:`` block; the summary is
in ``docs/conventions.md``.
"""

from cvloc.geometry.bev import (
    bev_from_prior,
    ego_grid_xy,
    ego_to_world_xy,
    lift_to_ground_image,
    satellite_grid_uv,
    warp_to_bev,
)
from cvloc.geometry.cameras import (
    intrinsics_from_hfov,
    panorama_angles_to_uv,
    panorama_project,
    panorama_unproject,
    panorama_uv_to_angles,
    pinhole_project,
    pinhole_unproject,
    scale_intrinsics,
)
from cvloc.geometry.checks import ShapeError, check_shape
from cvloc.geometry.geo import (
    latlon_to_mercator_px,
    latlon_to_pixel,
    mercator_px_to_latlon,
    meters_per_pixel,
    pixel_to_latlon,
    pixel_to_world_xy,
    world_xy_to_pixel,
)
from cvloc.geometry.pose import (
    apply_rigid_2d,
    compose_pose_with_rigid_2d,
    forward_xy_to_yaw,
    relative_rigid_2d,
    rotation_2d,
    transform_points,
    world_to_cam_from_pose,
    wrap_deg,
    yaw_to_forward_uv,
    yaw_to_forward_xy,
)
from cvloc.geometry.procrustes import rotation_angle_2d, weighted_procrustes_2d

__all__ = [
    "ShapeError",
    "apply_rigid_2d",
    "bev_from_prior",
    "check_shape",
    "compose_pose_with_rigid_2d",
    "ego_grid_xy",
    "ego_to_world_xy",
    "forward_xy_to_yaw",
    "intrinsics_from_hfov",
    "latlon_to_mercator_px",
    "latlon_to_pixel",
    "lift_to_ground_image",
    "mercator_px_to_latlon",
    "meters_per_pixel",
    "panorama_angles_to_uv",
    "panorama_project",
    "panorama_unproject",
    "panorama_uv_to_angles",
    "pinhole_project",
    "pinhole_unproject",
    "pixel_to_latlon",
    "pixel_to_world_xy",
    "relative_rigid_2d",
    "rotation_2d",
    "rotation_angle_2d",
    "satellite_grid_uv",
    "scale_intrinsics",
    "transform_points",
    "warp_to_bev",
    "weighted_procrustes_2d",
    "world_to_cam_from_pose",
    "world_xy_to_pixel",
    "wrap_deg",
    "yaw_to_forward_uv",
    "yaw_to_forward_xy",
]
