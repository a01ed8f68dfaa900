"""The result of :meth:`cvloc.localize.Localizer.localize`: pose, uncertainty, matches, files.

``pose.json`` holds the pose, its confidence and uncertainty (:mod:`cvloc.localize_quality`)
and the inputs used; ``correspondences.csv`` one row per visible match, strongest first:
``ground_u, ground_v, sat_u, sat_v, score`` in the pixels of the input images.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvloc.geometry import pixel_to_world_xy
from cvloc.geometry.geo import pixel_to_latlon
from cvloc.localize_inputs import Panorama
from cvloc.localize_quality import hypothesis_covariance, match_quality, usable_matches
from cvloc.metrics import MATCH_CONFIDENT_SCORE

CSV_HEADER = ("ground_u", "ground_v", "sat_u", "sat_v", "score")


@dataclass
class LocalizationResult:
    """A localized pair, in input pixels (definitions: :mod:`cvloc.localize_quality`).

    Attributes:
        camera_uv: (2,) camera position on the input satellite image (u east, v south).
        camera_xy_m: (2,) the same in metres east and north of the tile centre.
        yaw_deg: heading, degrees clockwise from north, in (-180, 180].
        latlon: (lat, lon) degrees when the tile is geo-referenced, else None.
        confidence: in [0, 1].
        num_confident_matches: visible matches with a score >= 0.5.
        covariance_m2: (2, 2) position covariance, m^2, x east / y north; or None.
        yaw_std_deg: 1-sigma heading uncertainty in degrees, or None.
        ground_uv: (N, 2) correspondences on the input ground image, strongest first.
        sat_uv: (N, 2) their input satellite pixels.
        scores: (N,) their scores in [0, 1].
        inputs: the settings used (JSON-ready).
        warnings: things worth checking (e.g. a tile far from the trained resolution).
        ground_image: (Hg, Wg, 3) uint8 input ground image, for figures.
        satellite_image: (Hs, Ws, 3) uint8 input satellite image, for figures.
    """

    camera_uv: np.ndarray
    camera_xy_m: np.ndarray
    yaw_deg: float
    latlon: tuple[float, float] | None
    confidence: float
    num_confident_matches: int
    covariance_m2: np.ndarray | None
    yaw_std_deg: float | None
    ground_uv: np.ndarray
    sat_uv: np.ndarray
    scores: np.ndarray
    inputs: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    ground_image: np.ndarray | None = field(default=None, repr=False)
    satellite_image: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> str:
        """The ``pose.json`` content (``sigma_m``: the 1-sigma ellipse's semi-axes).

        Returns:
            Indented JSON text.
        """
        cov = self.covariance_m2
        sigma = None
        if cov is not None:
            major, minor, heading = ellipse_1sigma(cov)
            sigma = {"major": major, "minor": minor, "major_heading_deg": heading}
        pose = {
            "format": "cvloc-pose/1",
            "conventions": "camera_uv: input satellite pixels (u east, v south); camera_xy_m"
            ": metres east, north of the tile centre; yaw_deg: clockwise from north",
            "camera_uv": self.camera_uv.tolist(),
            "camera_xy_m": self.camera_xy_m.tolist(),
            "yaw_deg": self.yaw_deg,
            "latlon": None if self.latlon is None else list(self.latlon),
            "confidence": self.confidence,
            "num_confident_matches": self.num_confident_matches,
            "num_matches": len(self.scores),
            "covariance_m2": None if cov is None else cov.tolist(),
            "sigma_m": sigma,
            "yaw_std_deg": self.yaw_std_deg,
            "warnings": self.warnings,
            "inputs": self.inputs,
        }
        return json.dumps(pose, indent=1)

    def save(self, out_dir: str | os.PathLike, visualization: bool = True) -> Path:
        """Write ``pose.json``, ``correspondences.csv`` and ``visualization.png``.

        Args:
            out_dir: output directory (created).
            visualization: also draw the figure (:mod:`cvloc.localize_viz`), when the
                result holds its images.

        Returns:
            The directory.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pose.json").write_text(self.to_json() + "\n")
        with open(out / "correspondences.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            rows = np.concatenate([self.ground_uv, self.sat_uv, self.scores[:, None]], 1)
            writer.writerows([f"{x:.3f}" for x in row[:4]] + [f"{row[4]:.4f}"] for row in rows)
        if visualization and self.ground_image is not None and self.satellite_image is not None:
            from cvloc.localize_viz import save_visualization

            save_visualization(self, out / "visualization.png")
        return out


def ellipse_1sigma(covariance_m2: np.ndarray) -> tuple[float, float, float]:
    """Semi-axes of the 1-sigma ellipse of a 2-D covariance, and the major axis' heading.

    Convention: x east, y north; heading in degrees clockwise from north, in [0, 180).

    Args:
        covariance_m2: (2, 2) covariance in m^2.

    Returns:
        (major, minor) in metres, heading of the major axis in degrees.
    """
    values, vectors = np.linalg.eigh(np.asarray(covariance_m2, dtype=np.float64))
    heading = math.degrees(math.atan2(vectors[0, 1], vectors[1, 1])) % 180.0
    return math.sqrt(max(values[1], 0.0)), math.sqrt(max(values[0], 0.0)), heading


def result_from_prediction(
    pred: dict[str, Any],
    batch: dict[str, Any],
    frame: dict[str, Any],
    scales: tuple[float, float] = (1.0, 1.0),
) -> LocalizationResult:
    """The best heading hypothesis of a prediction, in the pixels of the input images.

    Convention: working pixel u maps back to input pixel (u + 0.5) / s - 0.5 for the
    resize factor s of its axis (pixel centres at integers).

    Args:
        pred: the model's output for B heading hypotheses.
        batch: the batch it ran on (working images).
        frame: ``ground_scale`` / ``sat_scale`` (2,) resize factors (working / input),
            ``center`` (2,) input tile centre, ``m_per_px`` of the input tile, ``geo``
            ((lat, lon), zoom, scale) or None, ``inputs`` and ``warnings``.
        scales: calibration factors of the position covariance and the heading variance
            (:mod:`cvloc.calibrate`).

    Returns:
        The result, without the images.
    """
    ground_wh = (batch["ground"].shape[-1], batch["ground"].shape[-2])
    quality = match_quality(pred, batch, batch["camera_model"], ground_wh)
    b = int(quality.confidence.argmax())  # the best heading hypothesis
    keep = usable_matches(quality, b)
    covariance, yaw_std = hypothesis_covariance(quality, b, tuple(batch["satellite"].shape[-2:]))
    if covariance is not None and yaw_std is not None:
        covariance = covariance * scales[0]
        yaw_std = yaw_std * math.sqrt(scales[1])

    def to_input(uv: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # working -> input
        return (uv.double().cpu() + 0.5) / scale - 0.5

    uv = to_input(pred["camera_uv_pred"][b], frame["sat_scale"])
    center = torch.tensor(frame["center"], dtype=torch.float64)
    # Correspondences: visible matches whose satellite pixel lies on the (input) tile.
    dst = to_input(pred.get("match_dst_uv", quality.ground_uv)[b], frame["sat_scale"])
    on_tile = ((dst >= -0.5) & (dst <= 2.0 * center + 0.5)).all(-1).to(keep.device)
    scores, order = torch.sort(quality.scores[b][keep & on_tile], descending=True)
    latlon = None
    if frame["geo"] is not None:
        center_latlon, zoom, scale = frame["geo"]
        ll = pixel_to_latlon(
            uv, torch.tensor(center_latlon, dtype=torch.float64), center, zoom, scale
        )
        latlon = (float(ll[0]), float(ll[1]))
    chosen = (keep & on_tile).cpu()
    return LocalizationResult(
        camera_uv=uv.numpy(),
        camera_xy_m=pixel_to_world_xy(uv, center, frame["m_per_px"]).numpy(),
        yaw_deg=float(pred["yaw_deg_pred"][b]),
        latlon=latlon,
        confidence=float(quality.confidence[b]),
        num_confident_matches=int((scores >= MATCH_CONFIDENT_SCORE).sum()),
        covariance_m2=covariance,
        yaw_std_deg=yaw_std,
        ground_uv=to_input(quality.ground_uv[b], frame["ground_scale"])[chosen][order].numpy(),
        sat_uv=dst[chosen][order].numpy(),
        scores=scores.cpu().numpy(),
        inputs=frame["inputs"],
        warnings=frame["warnings"],
    )


def describe_image(image: Any) -> str:
    """An image argument for ``pose.json``: its path, or its type and shape.

    Args:
        image: a path, PIL image, array or tensor.

    Returns:
        The description.
    """
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"<{type(image).__name__} {tuple(getattr(image, 'shape', getattr(image, 'size', ())))}>"


def describe_camera(camera: Any) -> dict[str, Any]:
    """A camera argument for ``pose.json``.

    Args:
        camera: a :class:`~cvloc.localize_inputs.Pinhole` or ``Panorama``.

    Returns:
        ``{"model": ..., "fov_deg" or "K": ...}``.
    """
    if isinstance(camera, Panorama):
        return {"model": "panorama"}
    if camera.K is None:
        return {"model": "pinhole", "fov_deg": camera.fov_deg}
    return {"model": "pinhole", "K": camera.intrinsics(1, 1).tolist()}
