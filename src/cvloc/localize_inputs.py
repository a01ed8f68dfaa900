"""Inputs of :mod:`cvloc.localize`: camera and prior types, images of any kind, resolution.

Everything here turns what a user has (a photo path, an array, a field of view, a Web
Mercator zoom) into what a model needs, and rejects what cannot work with a
:class:`LocalizeInputError` that names the argument and what is expected.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from cvloc.data.images import load_rgb
from cvloc.geometry import intrinsics_from_hfov
from cvloc.geometry.geo import EQUATOR_M_PER_PX_ZOOM0, meters_per_pixel

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


class LocalizeInputError(ValueError):
    """An invalid user input; the message names the argument and what is expected."""


@dataclass(frozen=True)
class Pinhole:
    """A pinhole ground camera, given by exactly one of a horizontal FoV or intrinsics.

    Attributes:
        fov_deg: horizontal field of view in degrees (square pixels, centred principal point).
        K: (3, 3) intrinsics in the pixels of the given ground image (OpenCV, pixel centres
            at integers): nested lists, an array or a tensor.
    """

    fov_deg: float | None = None
    K: Any = None

    def __post_init__(self) -> None:
        if (self.fov_deg is None) == (self.K is None):
            raise LocalizeInputError("camera: give Pinhole(fov_deg=...) or Pinhole(K=...)")
        if self.fov_deg is not None and not 0.0 < self.fov_deg < 180.0:
            raise LocalizeInputError(f"fov_deg: expected (0, 180) degrees, got {self.fov_deg}")
        if self.K is not None:
            try:
                K = np.asarray(self.K, dtype=np.float64)
            except (TypeError, ValueError):
                K = np.zeros(0)
            valid = K.shape == (3, 3) and np.isfinite(K).all()
            if not (valid and K[0, 0] > 0 < K[1, 1] and np.allclose(K[2], [0.0, 0.0, 1.0])):
                raise LocalizeInputError(
                    "K: expected a 3x3 matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with "
                    f"fx, fy > 0, got {np.asarray(self.K, dtype=object).tolist()!r}"
                )

    def intrinsics(self, width: int, height: int) -> torch.Tensor:
        """The intrinsics of this camera for a ``width`` x ``height`` image.

        Args:
            width: image width W in pixels.
            height: image height H in pixels.

        Returns:
            K: (3, 3) float64.
        """
        if self.K is None:
            return intrinsics_from_hfov(float(self.fov_deg), width, height, torch.float64)
        return torch.as_tensor(np.asarray(self.K, dtype=np.float64))


@dataclass(frozen=True)
class Panorama:
    """An equirectangular 360-degree ground panorama: W = 2 H, the centre column forward."""


@dataclass(frozen=True)
class Prior:
    """Where to search.

    Attributes:
        uv: (u, v) prior position in the pixels of the given satellite image (u east,
            v south); None: the tile centre.
        yaw_deg: prior heading, degrees clockwise from north; None: unknown (all searched).
    """

    uv: tuple[float, float] | None = None
    yaw_deg: float | None = None

    def __post_init__(self) -> None:
        values = [*(self.uv if self.uv is not None else ()), self.yaw_deg or 0.0]
        if (self.uv is not None and len(self.uv) != 2) or not np.isfinite(values).all():
            raise LocalizeInputError(f"prior: expected uv=(u, v) and yaw_deg numbers, got {self}")


def load_image(image: ImageInput, name: str) -> torch.Tensor:
    """Decode an image to RGB in [0, 1], as the model sees it.

    Paths go through :func:`cvloc.data.images.load_rgb` (EXIF orientation, any mode to
    RGB), PIL images get their EXIF orientation applied; arrays are (H, W) or (H, W, C),
    tensors (H, W) or (C, H, W), with C = 1 (grey, repeated), 3, or 4 (alpha dropped),
    uint8 or float in [0, 1].

    Args:
        image: the image.
        name: the argument's name, for error messages.

    Returns:
        (3, H, W) float32 tensor.

    Raises:
        SampleError: a file is missing or cannot be decoded (the message names it).
        LocalizeInputError: an array or tensor of another shape or dtype, or another type.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image, f"{name}: an image file")[0]
    elif isinstance(image, Image.Image):
        image = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(np.array(image))  # a copy: decoded arrays are read-only
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1) if x.ndim == 3 else x
    elif isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        x = x[None] if x.ndim == 2 else x
    else:
        raise LocalizeInputError(
            f"{name}: expected a path, PIL image, array or tensor, got {type(image).__name__}"
        )
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4) or min(x.shape[1:]) < 1:
        raise LocalizeInputError(
            f"{name}: expected an (H, W, 3) array or a (3, H, W) tensor (1 or 4 channels "
            f"are converted), got shape {tuple(image.shape)}"
        )
    x = x[:3].expand(3, -1, -1)  # grey -> RGB, RGBA -> RGB
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise LocalizeInputError(f"{name}: expected uint8 or float pixels, got {x.dtype}")
    if x.numel() and float(x.max()) > 1.0 + 1e-3:  # 0-255 values in a float array
        raise LocalizeInputError(f"{name}: float pixels must be in [0, 1], max is {x.max():g}")
    return x.float().clamp(0.0, 1.0)


def resize_image(image: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """Resize bilinearly (antialiased when shrinking); the same size returns the input.

    Convention: pixel centres at integers (``align_corners=False``): a point at u lands at
    (u + 0.5) W' / W - 0.5, as :func:`cvloc.geometry.cameras.scale_intrinsics` assumes.

    Args:
        image: (3, H, W).
        size_wh: (W', H').

    Returns:
        (3, H', W').
    """
    if (image.shape[-1], image.shape[-2]) == tuple(size_wh):
        return image
    out = F.interpolate(
        image[None], size=(size_wh[1], size_wh[0]), mode="bilinear", antialias=True
    )
    return out[0].clamp(0.0, 1.0)


def satellite_resolution(
    m_per_px: float | None,
    zoom: float | None,
    center_latlon: tuple[float, float] | None,
    scale: int = 1,
) -> tuple[float, float | None]:
    """Metres per pixel of a satellite image, and the zoom that geo-references it.

    Convention: Web Mercator (:func:`cvloc.geometry.geo.meters_per_pixel`); given
    ``m_per_px`` and a centre, the (fractional) zoom with that resolution at the centre's
    latitude geo-references the tile.

    Args:
        m_per_px: metres per pixel, or None (then ``zoom`` and ``center_latlon``).
        zoom: Web Mercator zoom, or None.
        center_latlon: (lat, lon) of the tile centre in degrees, or None.
        scale: tile pixel density (2 for "retina" tiles).

    Returns:
        m_per_px; the zoom for lat/lon, None without ``center_latlon``.

    Raises:
        LocalizeInputError: neither or both of m_per_px and zoom, or bad values.
    """
    if (m_per_px is None) == (zoom is None):
        raise LocalizeInputError(
            "m_per_px / zoom: give the satellite resolution as m_per_px, or as zoom with "
            "sat_center_latlon (Web Mercator), exactly one of them"
        )
    if not scale >= 1:
        raise LocalizeInputError(f"scale: expected a tile pixel density >= 1, got {scale}")
    if center_latlon is not None:
        lat, lon = (float(x) for x in center_latlon)
        if not (-85.06 < lat < 85.06 and -180.0 <= lon <= 180.0):
            raise LocalizeInputError(
                f"sat_center_latlon: expected lat in (-85, 85), lon in [-180, 180], got "
                f"{lat}, {lon}"
            )
    if zoom is not None:
        if center_latlon is None:
            raise LocalizeInputError("zoom: needs sat_center_latlon (the latitude sets m/px)")
        m_per_px = meters_per_pixel(lat, zoom, scale)
    if not (m_per_px > 0 and math.isfinite(m_per_px)):
        raise LocalizeInputError(f"m_per_px: expected a positive number, got {m_per_px}")
    if center_latlon is None:
        return m_per_px, None
    zoom = math.log2(EQUATOR_M_PER_PX_ZOOM0 * math.cos(math.radians(lat)) / m_per_px / scale)
    return m_per_px, zoom


def check_search_region(
    prior_uv: tuple[float, float], radius_m: float, m_per_px: float, size_wh: tuple[int, int]
) -> None:
    """Refuse a satellite tile that does not contain the prior +- the search radius.

    Convention: satellite pixels with integer pixel centres: the tile spans
    [-0.5, W - 0.5] x [-0.5, H - 0.5].

    Args:
        prior_uv: (u, v) prior position, pixels.
        radius_m: search radius (half-width of the search square), metres.
        m_per_px: metres per pixel.
        size_wh: (W, H) of the tile.

    Raises:
        LocalizeInputError: the search square leaves the tile.
    """
    r = radius_m / m_per_px
    (u, v), (w, h) = prior_uv, size_wh
    if u - r < -0.5 or v - r < -0.5 or u + r > w - 0.5 or v + r > h - 0.5:
        raise LocalizeInputError(
            f"satellite: the {w}x{h} px tile ({w * m_per_px:.1f} x {h * m_per_px:.1f} m) "
            f"must contain the prior ({u:.1f}, {v:.1f}) +- the search radius {radius_m:g} m "
            f"({r:.1f} px): use a larger tile around the prior or a smaller search radius"
        )


def training_settings(cfg: Any) -> dict[str, Any]:
    """Working sizes and search defaults of the data a checkpoint's config trained on.

    Args:
        cfg: the checkpoint's :class:`cvloc.config.ExperimentConfig`.

    Returns:
        Keyword arguments of :class:`cvloc.localize.Localizer`.

    Raises:
        CheckpointError: it trained on pairs whose directory is not here.
    """
    from cvloc.checkpoint import CheckpointError
    from cvloc.data.synthetic.presets import get_preset

    if cfg.data.dataset == "synthetic":
        p = get_preset(cfg.data.preset)
        meta = {
            "camera_model": p.camera_model,
            "ground_size": p.ground_size,
            "sat_size": p.sat_size,
            "camera_height_m": p.camera_height_m,
            "m_per_px": p.m_per_px,
            "shift_range_m": p.prior.shift_range_m,
            "yaw_range_deg": p.prior.yaw_range_deg,
        }
    else:
        metas = sorted(Path(cfg.data.root).glob("samples/*/meta.json"))
        if not metas:
            raise CheckpointError(
                f"trained on pairs in {cfg.data.root}, not found here: its image sizes are unknown"
            )
        meta = json.loads(metas[0].read_text())
    yaw = cfg.data.yaw_range_deg
    return {
        "camera_model": meta["camera_model"],
        "ground_size": tuple(meta["ground_size"]),
        "sat_size": max(meta["sat_size"]),
        "camera_height_m": float(meta["camera_height_m"]),
        "shift_range_m": float(meta.get("shift_range_m") or 20.0),
        "yaw_range_deg": float(meta.get("yaw_range_deg", 0.0) if yaw is None else yaw),
        "trained_m_per_px": float(meta["m_per_px"]),
    }


def checkpoint_training_settings(name_or_path: str | os.PathLike, cfg: Any) -> dict[str, Any]:
    """The :func:`training_settings` a weights file records, else those of its config.

    Args:
        name_or_path: the checkpoint or weights (name or path).
        cfg: its :class:`cvloc.config.ExperimentConfig`.

    Returns:
        Keyword arguments of :class:`cvloc.localize.Localizer`.

    Raises:
        CheckpointError: neither the file nor the config's data say (pairs not here).
    """
    from cvloc.checkpoint import stored_training_data

    settings = stored_training_data(name_or_path) or training_settings(cfg)
    if settings.get("ground_size") is not None:  # JSON stores it as a list
        settings["ground_size"] = tuple(settings["ground_size"])
    return settings


def readable_training_settings(cfg: Any) -> dict[str, Any] | None:
    """:func:`training_settings`, or None where the config's data cannot be read here.

    Args:
        cfg: an :class:`cvloc.config.ExperimentConfig`.

    Returns:
        Keyword arguments of :class:`cvloc.localize.Localizer`, or None.
    """
    from cvloc.checkpoint import CheckpointError

    try:
        return training_settings(cfg)
    except (CheckpointError, OSError, KeyError, ValueError):
        return None
