"""Calibrated uncertainty: fit a localizer's covariance scales on validation pairs.

:func:`cvloc.localize_quality.pose_covariance` is the sandwich covariance of the weighted
least squares over a prediction's matches. It treats their errors as independent (beyond
one estimate per feature cell), but they are not: neighbouring matches share features, and
a BEV placed slightly wrong (a wrong height, a wrong heading) moves many matches alike, a
shared bias that the residuals cannot show. The raw covariance is therefore too small, by a
factor that belongs to the model and its data rather than to a pair. We fit that factor on
validation pairs (never a test split):

- position: d_i^2 = e_i^T C_i^-1 e_i, with e_i the position error (metres, x east, y north)
  and C_i the raw covariance of pair i. For a calibrated Gaussian d^2 ~ chi^2(2), whose
  median is 2 ln 2; the scale is k = median_i(d_i^2) / (2 ln 2), so that the ellipse
  k C_i of probability 1/2 holds half of the validation pairs.
- heading: z_i^2 = (yaw error_i / sigma_i)^2 ~ chi^2(1), median Phi^-1(3/4)^2 = 0.455; the
  heading variance scale is k_yaw = median_i(z_i^2) / 0.455.

Medians rather than means: the gross failures (the wrong street, 10 m off) would dominate a
mean, and no Gaussian covariance describes them. The 95 % coverage (d^2 <= -2 ln 0.05, the
chi^2(2) 95 % quantile) before and after the scaling shows how well one factor fits. Where
the errors are heavy-tailed (a pipeline that lands within centimetres or fails by metres), no
one factor makes both the 50 % and the 95 % ellipse right; ``quantile`` q fits another
level instead of the median: k = Q_q(d^2) / F^-1_chi2(2)(q) (and likewise for the heading),
so that the ellipse of probability q holds a share q of the validation pairs (q = 0.95:
honest 95 % ellipses, wider than needed for the typical pair). Pairs
without a covariance (fewer than 3 matches or no residual) are counted and left out; pairs
with a known heading (``yaw_range_deg`` 0: no heading is estimated) count for the position
only, and with no estimated heading at all k_yaw stays 1.

The scales are stored in the weights' config (``eval.covariance_scale``,
``eval.yaw_variance_scale``, read by :class:`cvloc.localize.Localizer`) with the fit's
summary as the ``calibration`` metadata entry (:func:`write_calibrated_weights`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cvloc.checkpoint import (
    checkpoint_metadata,
    load_checkpoint,
    read_model_state,
    weights_metadata,
    write_weights,
)
from cvloc.config import config_from_dict, config_to_dict
from cvloc.data.batch import camera_xy, collate, one_camera_model
from cvloc.evaluate import to_device
from cvloc.geometry.pose import wrap_deg
from cvloc.localize_quality import hypothesis_covariance, match_quality


def chi2_2dof_quantile(q: float) -> float:
    """The q-quantile of chi^2(2), whose CDF is 1 - exp(-x / 2): -2 ln(1 - q)."""
    return -2.0 * math.log1p(-q)


def chi2_1dof_quantile(q: float) -> float:
    """The q-quantile of chi^2(1) = Z^2: Phi^-1((1 + q) / 2)^2."""
    return NormalDist().inv_cdf((1.0 + q) / 2.0) ** 2


CHI2_2DOF_MEDIAN = chi2_2dof_quantile(0.5)
CHI2_1DOF_MEDIAN = chi2_1dof_quantile(0.5)
CHI2_2DOF_95 = chi2_2dof_quantile(0.95)
CHI2_1DOF_95 = chi2_1dof_quantile(0.95)


@dataclass(frozen=True)
class Calibration:
    """Fitted covariance scales and how well they fit (module docstring).

    Attributes:
        covariance_scale: k, the factor on the position covariance.
        yaw_variance_scale: k_yaw, the factor on the heading variance.
        num_pairs: validation pairs with a covariance (those the fit used).
        num_without_covariance: pairs left out (no covariance).
        position_coverage95_raw: fraction with d^2 within the 95 % ellipse, raw covariance.
        position_coverage95: the same with k C.
        yaw_coverage95_raw: fraction with z^2 within the 95 % interval, raw variance
            (None without an estimated heading).
        yaw_coverage95: the same with k_yaw sigma^2.
        quantile: q, the level whose ellipse the scales fit (0.5: the median).
    """

    covariance_scale: float
    yaw_variance_scale: float
    num_pairs: int
    num_without_covariance: int
    position_coverage95_raw: float
    position_coverage95: float
    yaw_coverage95_raw: float | None
    yaw_coverage95: float | None
    quantile: float = 0.5


def normalized_errors(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Squared normalised position and heading errors under the raw covariance.

    Convention: position errors in metres, x east, y north; yaw errors wrapped to
    (-180, 180] degrees; one heading hypothesis per pair (the dataset's prior), as
    :meth:`cvloc.localize.Localizer.localize` runs with a known prior heading.

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        dataset: pairs with ground truth (``camera_uv_gt``, ``yaw_deg_gt``).
        batch_size: pairs per forward pass.
        device: where the model runs.
        progress: show a progress bar.

    Returns:
        d2: (P,) e^T C^-1 e, for the P pairs with a covariance; z2: (Q,)
        (yaw error / sigma)^2, for the Q <= P of them whose heading was estimated (not
        known); and the number of pairs without a covariance.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("calibrate: the dataset is empty")
    device = torch.device(device)
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    d2: list[float] = []
    z2: list[float] = []
    missing = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="calibrate", unit="batch", disable=not progress):
            batch = to_device(batch, device)
            pred = model(batch)
            ground_wh = (batch["ground"].shape[-1], batch["ground"].shape[-2])
            quality = match_quality(
                pred, batch, one_camera_model(batch["camera_model"]), ground_wh
            )
            error_xy = (pred["camera_xy_pred"].double() - camera_xy(batch, "gt").double()).cpu()
            error_yaw = wrap_deg(pred["yaw_deg_pred"].double() - batch["yaw_deg_gt"].double())
            sat_hw = tuple(batch["satellite"].shape[-2:])
            for b in range(len(error_xy)):
                cov, yaw_std = hypothesis_covariance(quality, b, sat_hw)
                known = bool(quality.known_heading[b])
                if cov is None or yaw_std is None or not (known or yaw_std > 0):
                    missing += 1
                    continue
                e = error_xy[b].numpy()
                d2.append(float(e @ np.linalg.pinv(cov) @ e))
                if not known:
                    z2.append(float(error_yaw[b]) ** 2 / yaw_std**2)
    return np.asarray(d2), np.asarray(z2), missing


def fit_calibration(
    d2: np.ndarray, z2: np.ndarray, num_without_covariance: int = 0, quantile: float = 0.5
) -> Calibration:
    """The scales that make a quantile of the normalised errors that of a Gaussian.

    Args:
        d2: (P,) squared Mahalanobis position errors under the raw covariance.
        z2: (Q,) squared normalised heading errors under the raw variance, Q <= P (pairs
            with a known heading have none; Q = 0 leaves k_yaw at 1).
        num_without_covariance: pairs that had no covariance, for the record.
        quantile: q in (0, 1), the level fitted (0.5: the median, module docstring).

    Returns:
        The calibration.

    Raises:
        ValueError: no pair, more heading than position errors, non-finite or negative
            values, or q outside (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    d2, z2 = np.asarray(d2, dtype=np.float64), np.asarray(z2, dtype=np.float64)
    if d2.ndim != 1 or z2.ndim != 1 or len(z2) > len(d2):
        raise ValueError(f"d2 and z2 must be 1-D, z2 not longer, got {d2.shape}, {z2.shape}")
    if len(d2) == 0:
        raise ValueError("no pair with a covariance: nothing to calibrate on")
    both = np.concatenate([d2, z2])
    if not (np.isfinite(both).all() and (both >= 0).all()):
        raise ValueError("normalised errors must be finite and non-negative")
    # A zero quantile (that many pairs exact) would make the covariance vanish: keep the raw one.
    k = float(np.quantile(d2, quantile)) / chi2_2dof_quantile(quantile) or 1.0
    k_yaw = float(np.quantile(z2, quantile)) / chi2_1dof_quantile(quantile) if len(z2) else 0.0
    k_yaw = k_yaw or 1.0
    return Calibration(
        covariance_scale=k,
        yaw_variance_scale=k_yaw,
        num_pairs=len(d2),
        num_without_covariance=num_without_covariance,
        position_coverage95_raw=float(np.mean(d2 <= CHI2_2DOF_95)),
        position_coverage95=float(np.mean(d2 / k <= CHI2_2DOF_95)),
        yaw_coverage95_raw=float(np.mean(z2 <= CHI2_1DOF_95)) if len(z2) else None,
        yaw_coverage95=float(np.mean(z2 / k_yaw <= CHI2_1DOF_95)) if len(z2) else None,
        quantile=quantile,
    )


def write_calibrated_weights(
    name_or_path: str | os.PathLike,
    out: str | os.PathLike,
    calibration: Calibration,
    data: str,
    training_data: dict[str, Any] | None = None,
    eval_settings: dict[str, Any] | None = None,
    config_overrides: Sequence[str] = (),
) -> Path:
    """Write a weights file whose config carries the calibration's scales.

    The tensors, config and metadata are those of the input (a ``.pt`` checkpoint is
    exported as :func:`cvloc.checkpoint.export_weights` does), with ``eval.covariance_scale``
    and ``eval.yaw_variance_scale`` set and a ``calibration`` entry (the fit and its data).
    ``config_overrides`` (the ``--set`` of the fitted model, :func:`cvloc.checkpoint.load_model`)
    are applied to the stored config: the scales hold for the model they describe.

    Args:
        name_or_path: the weights (name or path) or training checkpoint that was fitted.
        out: the ``.safetensors`` file to write (may be the input itself).
        calibration: the fit.
        data: a description of the validation pairs.
        training_data: the ``training_data`` entry to record where the input has none
            (:func:`cvloc.checkpoint.checkpoint_metadata`), e.g. for a model trained on a
            pairs directory that is not here.
        eval_settings: further ``eval`` entries the fit was made with (the refinement
            passes of :mod:`cvloc.models.refinement`), recorded with the scales.
        config_overrides: ``key=value`` changes of the stored config the fit was made with.

    Returns:
        The written path.
    """
    path, state, config = read_model_state(name_or_path)
    if path.suffix == ".safetensors":
        metadata = dict(weights_metadata(path))
    else:
        metadata = checkpoint_metadata(load_checkpoint(path))
    if config_overrides:
        config = config_to_dict(config_from_dict(config, str(path), config_overrides))
    config = {**config, "eval": {**config.get("eval", {}), **(eval_settings or {})}}
    config["eval"]["covariance_scale"] = calibration.covariance_scale
    config["eval"]["yaw_variance_scale"] = calibration.yaw_variance_scale
    metadata["config"] = config
    if not metadata.get("training_data"):
        metadata["training_data"] = training_data
    metadata["calibration"] = {**asdict(calibration), "data": data, "source": str(path)}
    if config_overrides:
        metadata["calibration"]["config_overrides"] = list(config_overrides)
    return write_weights(out, state, metadata, source=str(path))
