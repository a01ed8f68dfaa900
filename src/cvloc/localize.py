"""Localize your own images: ``Localizer.from_pretrained(name).localize(ground, satellite, ...)``.

:meth:`Localizer.localize` does for one pair of user images what a loader does for a
benchmark. It decodes them (path, PIL image, (H, W, 3) array or (3, H, W) tensor; EXIF
orientation applied; grey / RGBA made RGB) and resizes them to the model's working size, the
sizes of its training data: the ground image exactly, its intrinsics scaled with
:func:`~cvloc.geometry.cameras.scale_intrinsics`; the satellite uniformly, its longer side to
the working size (the shorter one zero-padded at the right / bottom) with ``m_per_px``
divided by the scale, so the tile covers the same metres. The world origin is the input
tile's centre. The pose and the correspondences come back in the input images' pixels.

Unknown heading (no prior yaw): a learned model runs, batched, on heading hypotheses every
clip(2 x its trained heading range, 20, 45) degrees, and the hypothesis of highest
``confidence`` wins; the classical baseline searches all headings itself. Confidence,
uncertainty and correspondences are defined in :mod:`cvloc.localize_quality`.

User errors raise :class:`LocalizeInputError` naming the argument and what is expected;
unreadable image files :class:`cvloc.data.images.SampleError` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry import scale_intrinsics
from cvloc.localize_inputs import (
    ImageInput,
    LocalizeInputError,
    Panorama,
    Pinhole,
    Prior,
    check_search_region,
    checkpoint_training_settings,
    load_image,
    resize_image,
    satellite_resolution,
)
from cvloc.localize_quality import resize_warnings
from cvloc.localize_result import (
    LocalizationResult,
    describe_camera,
    describe_image,
    result_from_prediction,
)
from cvloc.models.heading_search import hypothesis_spacing_deg

__all__ = ["LocalizationResult", "LocalizeInputError", "Localizer", "Panorama", "Pinhole", "Prior"]
NON_LEARNED_GROUND_WIDTH = 512  # working ground width of the baselines (no trained size)


class Localizer:
    """A localization model with its working image sizes and search defaults.

    Build one with :meth:`from_pretrained` (the method the checkpoint's config names) or
    :meth:`classical` / :meth:`prior_baseline`, then call :meth:`localize`.

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        name: the checkpoint or method name, recorded in results.
        camera_model: the one camera model it accepts (``"pinhole"`` / ``"panorama"``);
            None: any.
        ground_size: (W, H) working ground size; None: 512 wide with the input's aspect
            (height a multiple of 8; 2:1 for panoramas).
        sat_size: working satellite side in pixels.
        camera_height_m: default camera height in metres; None: required per call.
        shift_range_m: default search radius in metres (the training prior's range).
        yaw_range_deg: the training prior's heading half-range in degrees: the hypothesis
            spacing, and the classical search range around a given prior heading.
        trained_m_per_px: the training satellite resolution (a warning when the working
            one is far from it), or None.
        searches_heading: the model searches all headings itself when told a heading
            range of 180 (the baselines); False runs heading hypotheses.
        covariance_scale: calibration factor of the reported position covariance.
        yaw_variance_scale: calibration factor of the reported heading variance
            (both fitted on validation pairs by ``cvloc calibrate``, :mod:`cvloc.calibrate`).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        camera_model: str | None = None,
        ground_size: tuple[int, int] | None = None,
        sat_size: int = 256,
        camera_height_m: float | None = None,
        shift_range_m: float = 20.0,
        yaw_range_deg: float = 10.0,
        trained_m_per_px: float | None = None,
        searches_heading: bool = False,
        covariance_scale: float = 1.0,
        yaw_variance_scale: float = 1.0,
    ) -> None:
        self.model = model.eval()
        self.name, self.camera_model, self.ground_size = name, camera_model, ground_size
        self.sat_size, self.camera_height_m = sat_size, camera_height_m
        self.shift_range_m, self.yaw_range_deg = shift_range_m, yaw_range_deg
        self.trained_m_per_px, self.searches_heading = trained_m_per_px, searches_heading
        self.scales = (covariance_scale, yaw_variance_scale)
        self.device = next(iter(model.parameters()), torch.empty(0)).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        refinement: Mapping[str, Any] | None = None,
    ) -> Localizer:
        """Load shipped weights by name, or a ``.safetensors`` / ``.pt`` file.

        The model runs as the weights' test-time settings say
        (:func:`cvloc.models.refinement.refined`: refinement passes, classical refinement),
        unless ``refinement`` replaces some of them.

        Args:
            name_or_path: see :func:`cvloc.checkpoint.resolve_checkpoint`.
            device: where the model runs.
            refinement: :data:`cvloc.models.refinement.REFINE_FIELDS` values to use instead
                of the weights' (e.g. ``{"classical_refine": False}``: the network alone).
                The uncertainty scales stay those calibrated for the weights' own settings.

        Returns:
            The localizer, with the working sizes and defaults of its training data.

        Raises:
            FileNotFoundError: no such file or weights name.
            CheckpointError: the file is corrupt or its training data are unknown.
            ValueError: ``refinement`` names another field or holds an invalid value.
        """
        from cvloc.checkpoint import load_model
        from cvloc.models.refinement import REFINE_FIELDS, refined

        unknown = sorted(set(refinement or {}) - set(REFINE_FIELDS))
        if unknown:
            raise ValueError(f"refinement: unknown fields {unknown}; one of {REFINE_FIELDS}")
        model, cfg = load_model(name_or_path, device)
        settings = dataclasses.replace(cfg.eval, **dict(refinement or {}))
        return cls(
            refined(model, settings),
            str(name_or_path),
            **checkpoint_training_settings(name_or_path, cfg),
            covariance_scale=cfg.eval.covariance_scale,
            yaw_variance_scale=cfg.eval.yaw_variance_scale,
        )

    @classmethod
    def classical(cls) -> Localizer:
        """The classical baseline (:class:`~cvloc.models.baselines.ClassicalBaseline`)."""
        from cvloc.models.baselines import ClassicalBaseline

        return cls(ClassicalBaseline(), "classical", searches_heading=True)

    @classmethod
    def prior_baseline(cls) -> Localizer:
        """The prior as the answer (:class:`~cvloc.models.baselines.PriorBaseline`): the floor."""
        from cvloc.models.baselines import PriorBaseline

        return cls(PriorBaseline(), "prior", searches_heading=True)

    def localize(
        self,
        ground: ImageInput,
        satellite: ImageInput,
        camera: Pinhole | Panorama,
        *,
        m_per_px: float | None = None,
        zoom: float | None = None,
        sat_center_latlon: tuple[float, float] | None = None,
        scale: int = 1,
        prior: Prior | None = None,
        camera_height_m: float | None = None,
        search_radius_m: float | None = None,
    ) -> LocalizationResult:
        """Localize a ground image on a north-up satellite image.

        Args:
            ground: the ground image: path, PIL image, (H, W, 3) array or (3, H, W)
                tensor, uint8 or float in [0, 1].
            satellite: the north-up satellite image, same types.
            camera: ``Pinhole(fov_deg=...)``, ``Pinhole(K=...)`` or ``Panorama()``.
            m_per_px: metres per pixel of the given satellite image.
            zoom: Web Mercator zoom instead of ``m_per_px`` (with ``sat_center_latlon``).
            sat_center_latlon: (lat, lon) of the tile centre: the result gets a lat/lon.
            scale: tile pixel density for ``zoom`` (2 for "retina" tiles).
            prior: prior position and heading; None: the tile centre, unknown heading.
            camera_height_m: camera height above the ground in metres (default: the
                training data's).
            search_radius_m: how far from the prior the camera may be, metres (default:
                the training prior's range); the tile must hold the prior +- this radius.

        Returns:
            The pose, its uncertainty and the correspondences, in input pixels.

        Raises:
            LocalizeInputError: an argument is missing or invalid (the message names it).
            SampleError: an image file is missing or unreadable (the message names it).
        """
        grd, sat = load_image(ground, "ground"), load_image(satellite, "satellite")
        m_in, zoom_geo = satellite_resolution(m_per_px, zoom, sat_center_latlon, scale)
        height = self.camera_height_m if camera_height_m is None else camera_height_m
        radius = self.shift_range_m if search_radius_m is None else search_radius_m
        if height is None or not height > 0:
            raise LocalizeInputError("camera_height_m: needed, the camera height in metres (> 0)")
        if not radius > 0:
            raise LocalizeInputError(f"search_radius_m: expected > 0 metres, got {radius}")
        prior = prior or Prior()
        size = (sat.shape[-1], sat.shape[-2])
        center = ((size[0] - 1) / 2.0, (size[1] - 1) / 2.0)
        prior_uv = center if prior.uv is None else (float(prior.uv[0]), float(prior.uv[1]))
        check_search_region(prior_uv, radius, m_in, size)
        args = (camera, m_in, height, prior_uv, center, radius, prior.yaw_deg)
        batch, frame = self._batch(grd, sat, *args)
        with torch.inference_mode():
            pred = self.model(batch)
        frame["inputs"] = {
            "method": self.name,
            "ground": describe_image(ground),
            "satellite": describe_image(satellite),
            "camera": describe_camera(camera),
            "ground_size": [grd.shape[-1], grd.shape[-2]],
            "sat_size": list(size),
            "m_per_px": m_in,
            "zoom": zoom,
            "scale": scale,
            "sat_center_latlon": None if zoom_geo is None else list(sat_center_latlon),
            "camera_height_m": height,
            "prior": {"uv": list(prior_uv), "yaw_deg": prior.yaw_deg},
            "search_radius_m": radius,
            "yaw_hypotheses_deg": batch["yaw_deg_prior"].tolist(),
            "working": frame["working"],
        }
        frame["geo"] = None if zoom_geo is None else (sat_center_latlon, zoom_geo, scale)
        result = result_from_prediction(pred, batch, frame, self.scales)
        result.ground_image = (grd.permute(1, 2, 0) * 255).round().byte().numpy()
        result.satellite_image = (sat.permute(1, 2, 0) * 255).round().byte().numpy()
        return result

    def _working_ground(
        self, grd: torch.Tensor, camera: Pinhole | Panorama
    ) -> tuple[str, tuple[int, int], torch.Tensor, torch.Tensor]:
        """(camera model, working ground (W, H), resize factors (2,), working K (3, 3))."""
        if not isinstance(camera, (Pinhole, Panorama)):
            raise LocalizeInputError("camera: expected Pinhole(fov_deg= or K=) or Panorama()")
        kind = "panorama" if isinstance(camera, Panorama) else "pinhole"
        if self.camera_model not in (None, kind):
            raise LocalizeInputError(
                f"camera: {self.name} was trained on {self.camera_model} images, got {kind}"
            )
        hg, wg = grd.shape[-2:]
        if kind == "panorama" and abs(wg - 2 * hg) > 1:
            raise LocalizeInputError(
                f"ground: a panorama must be equirectangular, width = 2 x height, got {wg}x{hg}"
            )
        w = NON_LEARNED_GROUND_WIDTH  # height: the input's aspect, a multiple of 8
        h = w // 2 if kind == "panorama" else max(8, round(w * hg / wg / 8) * 8)
        size = self.ground_size or (w, h)
        scale = torch.tensor([size[0] / wg, size[1] / hg], dtype=torch.float64)
        if kind == "panorama":
            return kind, size, scale, torch.zeros(3, 3)
        return kind, size, scale, scale_intrinsics(camera.intrinsics(wg, hg), *scale.tolist())

    def _batch(
        self,
        grd: torch.Tensor,
        sat: torch.Tensor,
        camera: Pinhole | Panorama,
        m_in: float,
        height: float,
        prior_uv: tuple[float, float],
        center: tuple[float, float],
        radius: float,
        prior_yaw: float | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's batch, one row per heading hypothesis, and the input -> working frame."""
        kind, size_g, g_scale, K = self._working_ground(grd, camera)
        hs, ws = sat.shape[-2:]
        side = self.sat_size
        fit = (max(1, round(ws * side / max(ws, hs))), max(1, round(hs * side / max(ws, hs))))
        s_scale = torch.tensor([fit[0] / ws, fit[1] / hs], dtype=torch.float64)
        m_work = m_in / float(s_scale.mean())
        yaws, yaw_range = self._hypotheses(prior_yaw)
        n = len(yaws)

        def rows(x: Any) -> torch.Tensor:  # one row per hypothesis, float32 as the loaders
            t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            return t.expand(n, *t.shape).clone()

        def work(uv: tuple[float, float]) -> torch.Tensor:  # input -> working pixels
            return (torch.tensor(uv, dtype=torch.float64) + 0.5) * s_scale - 0.5

        batch = {
            "ground": rows(resize_image(grd, size_g)),
            "satellite": rows(F.pad(resize_image(sat, fit), (0, side - fit[0], 0, side - fit[1]))),
            "camera_model": kind,
            "K": rows(K),
            "camera_height_m": rows(height),
            "m_per_px": rows(m_work),
            "sat_center_uv": rows(work(center)),
            "camera_uv_prior": rows(work(prior_uv)),
            "yaw_deg_prior": torch.tensor(yaws, dtype=torch.float32, device=self.device),
            "shift_range_m": rows(radius),
            "yaw_range_deg": rows(yaw_range),
        }
        frame = {
            "ground_scale": g_scale,
            "sat_scale": s_scale,
            "center": center,
            "m_per_px": m_in,
            "working": {"ground_size": list(size_g), "sat_size": [side, side], "m_per_px": m_work},
            "warnings": resize_warnings(
                (grd.shape[-1], grd.shape[-2]), size_g, m_work, self.trained_m_per_px, side
            ),
        }
        return batch, frame

    def _hypotheses(self, prior_yaw: float | None) -> tuple[list[float], float]:
        """(prior headings to run, heading range told to the model), see the module doc."""
        if prior_yaw is not None:
            return [float(prior_yaw)], self.yaw_range_deg
        if self.searches_heading:
            return [0.0], 180.0
        n = math.ceil(360.0 / hypothesis_spacing_deg(self.yaw_range_deg))
        return [k * 360.0 / n - 180.0 for k in range(n)], self.yaw_range_deg
