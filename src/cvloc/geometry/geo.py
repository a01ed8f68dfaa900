"""Satellite geo-referencing: Web Mercator resolution, lat/lon <-> pixel, pixel <-> metres.

Satellite images are north-up: pixel (u, v) = (column east, row south), integer
coordinates at pixel centres. The metric world frame of a sample has its origin at the
satellite pixel ``sat_center_uv = (cu, cv)``: x = (u - cu) m_per_px, y = -(v - cv) m_per_px.
"""

from __future__ import annotations

import math

import torch

# Web Mercator ground resolution at the equator for zoom 0 and 256-px tiles:
# 2 pi 6378137 m / 256 px.
EQUATOR_M_PER_PX_ZOOM0 = 2.0 * math.pi * 6378137.0 / 256.0
TILE_SIZE_PX = 256


def meters_per_pixel(lat_deg: float, zoom: int, scale: int = 1) -> float:
    """Ground resolution of a Web Mercator tile.

    Convention: m/px = 156543.03392... * cos(lat) / 2^zoom / scale (scale 2 = "retina"
    tiles, as KITTI's satellite maps: latitude 49.015, zoom 18, scale 2 -> 0.19583 m/px).

    Args:
        lat_deg: latitude in degrees.
        zoom: tile zoom level.
        scale: pixel density factor of the tile service.

    Returns:
        metres per pixel.
    """
    return EQUATOR_M_PER_PX_ZOOM0 * math.cos(math.radians(lat_deg)) / (2.0**zoom) / scale


def latlon_to_mercator_px(
    lat_deg: torch.Tensor, lon_deg: torch.Tensor, zoom: int, scale: int = 1
) -> torch.Tensor:
    """Global Web Mercator pixel coordinates.

    Convention: x grows east from lon -180, y grows south from the top of the world map;
    the map is 256 * 2^zoom * scale pixels wide. Use float64 for street-level precision.

    Args:
        lat_deg: (*,) latitude in degrees.
        lon_deg: (*,) longitude in degrees.
        zoom: zoom level.
        scale: pixel density factor.

    Returns:
        (*, 2) global (x, y) pixels.
    """
    size = TILE_SIZE_PX * (2.0**zoom) * scale
    lat = torch.deg2rad(lat_deg)
    x = (lon_deg + 180.0) / 360.0 * size
    y = (1.0 - torch.log(torch.tan(lat) + 1.0 / torch.cos(lat)) / math.pi) / 2.0 * size
    return torch.stack([x, y], dim=-1)


def mercator_px_to_latlon(xy: torch.Tensor, zoom: int, scale: int = 1) -> torch.Tensor:
    """Inverse of :func:`latlon_to_mercator_px`.

    Convention: as :func:`latlon_to_mercator_px`.

    Args:
        xy: (*, 2) global pixels.
        zoom: zoom level.
        scale: pixel density factor.

    Returns:
        (*, 2) (lat, lon) in degrees.
    """
    size = TILE_SIZE_PX * (2.0**zoom) * scale
    lon = xy[..., 0] / size * 360.0 - 180.0
    n = math.pi * (1.0 - 2.0 * xy[..., 1] / size)
    lat = torch.rad2deg(torch.atan(torch.sinh(n)))
    return torch.stack([lat, lon], dim=-1)


def latlon_to_pixel(
    latlon_deg: torch.Tensor,
    center_latlon_deg: torch.Tensor,
    center_uv: torch.Tensor,
    zoom: int,
    scale: int = 1,
) -> torch.Tensor:
    """Pixel of a lat/lon on a north-up tile of known centre.

    Convention: the tile's pixel ``center_uv`` (usually ((W - 1) / 2, (H - 1) / 2), the
    geometric centre with integer pixel centres) shows ``center_latlon_deg``; u east,
    v south.

    Args:
        latlon_deg: (*, 2) (lat, lon).
        center_latlon_deg: (*, 2) the tile centre's (lat, lon).
        center_uv: (*, 2) the tile centre's pixel.
        zoom: zoom level.
        scale: pixel density factor.

    Returns:
        (*, 2) pixel (u, v).
    """
    p = latlon_to_mercator_px(latlon_deg[..., 0], latlon_deg[..., 1], zoom, scale)
    c = latlon_to_mercator_px(center_latlon_deg[..., 0], center_latlon_deg[..., 1], zoom, scale)
    return center_uv + (p - c)


def pixel_to_latlon(
    uv: torch.Tensor,
    center_latlon_deg: torch.Tensor,
    center_uv: torch.Tensor,
    zoom: int,
    scale: int = 1,
) -> torch.Tensor:
    """Lat/lon of a pixel on a north-up tile of known centre.

    Convention: inverse of :func:`latlon_to_pixel`.

    Args:
        uv: (*, 2) pixels.
        center_latlon_deg: (*, 2) the tile centre's (lat, lon).
        center_uv: (*, 2) the tile centre's pixel.
        zoom: zoom level.
        scale: pixel density factor.

    Returns:
        (*, 2) (lat, lon) in degrees.
    """
    c = latlon_to_mercator_px(center_latlon_deg[..., 0], center_latlon_deg[..., 1], zoom, scale)
    return mercator_px_to_latlon(c + (uv - center_uv), zoom, scale)


def pixel_to_world_xy(
    uv: torch.Tensor, sat_center_uv: torch.Tensor, m_per_px: torch.Tensor | float
) -> torch.Tensor:
    """Satellite pixel to the metric world frame of the sample.

    Convention: x = (u - cu) m_per_px (east), y = -(v - cv) m_per_px (north).
    Per-sample ``sat_center_uv`` (B, 2) and ``m_per_px`` (B,) align with the LEADING
    dimensions of ``uv``, so they apply to points (B, N, 2) or grids (B, H, W, 2) as is.

    Args:
        uv: (B, ..., 2) satellite pixels (or (..., 2) with unbatched centre and scale).
        sat_center_uv: (B, 2) or (2,), the pixel of the world origin.
        m_per_px: (B,) or scalar, metres per pixel.

    Returns:
        (B, ..., 2) metres.
    """
    center, m = _align_leading(uv, sat_center_uv, m_per_px)
    d = uv - center
    return torch.stack([d[..., 0], -d[..., 1]], dim=-1) * m


def world_xy_to_pixel(
    xy: torch.Tensor, sat_center_uv: torch.Tensor, m_per_px: torch.Tensor | float
) -> torch.Tensor:
    """Metric world frame to satellite pixel.

    Convention: inverse of :func:`pixel_to_world_xy`: u = cu + x / m, v = cv - y / m;
    per-sample centre and scale align with the leading dimensions of ``xy``.

    Args:
        xy: (B, ..., 2) metres (or (..., 2) with unbatched centre and scale).
        sat_center_uv: (B, 2) or (2,), the pixel of the world origin.
        m_per_px: (B,) or scalar, metres per pixel.

    Returns:
        (B, ..., 2) pixels.
    """
    center, m = _align_leading(xy, sat_center_uv, m_per_px)
    return center + torch.stack([xy[..., 0], -xy[..., 1]], dim=-1) / m


def _align_leading(
    points: torch.Tensor, center: torch.Tensor, m_per_px: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape per-sample (B, 2) centres and (B,) scales to broadcast over (B, ..., 2) points.

    Trailing-dimension broadcasting would pair B with the point dimension instead (silently
    wrong when N == B), so singleton dimensions are inserted after the leading ones.
    """
    center = torch.as_tensor(center, dtype=points.dtype, device=points.device)
    m = torch.as_tensor(m_per_px, dtype=points.dtype, device=points.device)
    extra = points.dim() - center.dim()
    if extra > 0:
        center = center.reshape(*center.shape[:-1], *([1] * extra), 2)
    extra = points.dim() - m.dim()
    return center, m.reshape(*m.shape, *([1] * extra)) if m.dim() > 0 else m
