"""How sure a localization is: match scores, residuals, confidence, covariance, warnings.

Used by :class:`cvloc.localize.Localizer` on the prediction of every heading hypothesis
(all in metres; the sources p_i are BEV cells the model placed with the prior camera
c_prior, the q_i their satellite matches, in the model's ``match_*`` keys):

- score s_i: the ``match_weight``, divided by the largest when that exceeds 1 (weights that
  are not probabilities, e.g. the classical baseline's gradient strengths).
- residual r_i = R(th) (p_i - c_prior) + c - q_i: the source moved by the estimated pose
  change (th = yaw_prior - yaw counter-clockwise, camera c) minus its match.
- ``confidence`` = sum_i s_i [|r_i| < 2 m] / (number of visible sources): the score mass of
  matches agreeing with the pose, in [0, 1]. For a model reporting a ``search_score`` (the
  classical NCC, no residuals) that score clipped to [0, 1]. It also picks the best heading
  hypothesis. It ranks the poses of one model well, but its scale is the model's (FineMatch's
  dual-softmax scores are far smaller than DenseFlow's confidences): compare it only
  between runs of the same weights (``benchmarks/confidence.py`` measures each's).
  ``num_confident_matches``: visible matches with s_i >= 0.5.
- ``covariance_m2``: the sandwich (robust) covariance of the weighted least squares in
  (th, c): kappa A^-1 B A^-1, A = sum s_i J_i^T J_i, B = sum s_i^2 J_i^T r_i r_i^T J_i,
  J_i = dr_i / d(th, c) = [R(th + 90 deg)(p_i - c_prior), I_2], over the visible matches.
  kappa = max(1, (8 / spacing)^2) is the number of matches per 8 x 8-pixel feature cell
  (spacing = sqrt(Hs Ws / N) pixels for N sources): matches denser than the encoders'
  stride interpolate one estimate and are not independent. The c block is ``covariance_m2``
  (x east, y north), the th entry gives ``yaw_std_deg``. None with fewer than 3 matches or
  a weighted RMS residual below 1 mm: no evidence (the classical matches are its BEV moved
  rigidly, so only its ``search_score`` speaks for it). The matches' errors are correlated,
  so this raw estimate is too small: :class:`cvloc.localize.Localizer` scales it by the
  factors :mod:`cvloc.calibrate` fitted on validation pairs. A known heading (the batch's
  ``yaw_range_deg`` 0, which the pose heads keep) is no parameter: the fit is in c alone,
  J_i = I_2, and ``yaw_std_deg`` is 0.
- warnings: a ground image whose aspect, or a working satellite whose m/px, differs more
  than 1.5x from the training data's (:func:`resize_warnings`).

A source is visible when its ground pixel, the BEV cell lifted through the prior camera on
flat ground or at the predicted ``match_height_m``
(:func:`cvloc.evaluate.lift_matches_to_ground`), lies in the ground image: that pixel and
the match form a correspondence. The model's own pairing, not a reprojection through the
estimated pose, so that wrong matches show as such.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from cvloc.evaluate import lift_matches_to_ground
from cvloc.geometry import pixel_to_world_xy, relative_rigid_2d
from cvloc.models.inputs import known_heading

INLIER_M = 2.0  # a match agrees with the pose when its residual is below this
FEATURE_STRIDE_PX = 8  # the encoders' output stride: the resolution of a model's estimates
ZERO_RESIDUAL_M = 1e-3  # weighted RMS residual below which there is no evidence
MAX_RESIZE_RATIO = 1.5  # warn when the aspect or the m/px changes more than this


class MatchQuality(NamedTuple):
    """Quality of B heading hypotheses with N match sources each (module docstring).

    Attributes:
        scores: (B, N) s_i in [0, 1].
        ground_uv: (B, N, 2) ground pixels of the sources (working ground image).
        visible: (B, N) bool, the source's ground pixel lies in the ground image.
        rel_xy: (B, N, 2) sources minus the prior camera, metres.
        residual_xy: (B, N, 2) residuals r_i, metres.
        rotation: (B, 2, 2) R(th).
        confidence: (B,) in [0, 1].
        known_heading: (B,) bool, the hypothesis' heading was given exactly.
    """

    scores: torch.Tensor
    ground_uv: torch.Tensor
    visible: torch.Tensor
    rel_xy: torch.Tensor
    residual_xy: torch.Tensor
    rotation: torch.Tensor
    confidence: torch.Tensor
    known_heading: torch.Tensor


def match_quality(
    pred: dict[str, Any],
    batch: dict[str, Any],
    camera_model: str,
    ground_size: tuple[int, int],
) -> MatchQuality:
    """Scores, ground pixels, residuals and confidence of every hypothesis of a prediction.

    Convention: satellite pixels of the working image (north-up, integer pixel centres),
    world frame x east, y north, origin ``sat_center_uv``; computed in float64.

    Args:
        pred: the model's output for B hypotheses: ``camera_xy_pred`` (B, 2),
            ``yaw_deg_pred`` (B,), optionally ``match_src_uv`` / ``match_dst_uv`` (B, N, 2),
            ``match_weight`` (B, N), ``match_height_m`` (B, N), ``search_score`` (B,).
        batch: the batch it ran on (:mod:`cvloc.data.batch` keys).
        camera_model: ``"pinhole"`` or ``"panorama"``.
        ground_size: (W, H) of the working ground image.

    Returns:
        The quality; N = 0 and confidence 0 for a model without matches.
    """
    prior_uv = batch["camera_uv_prior"].double()
    B = prior_uv.shape[0]
    src = pred.get("match_src_uv", prior_uv.new_zeros(B, 0, 2)).double()
    score = pred.get("search_score")
    known = known_heading(batch)
    known = prior_uv.new_zeros(B, dtype=torch.bool) if known is None else known.to(torch.bool)
    if src.shape[1] == 0:
        none = prior_uv.new_zeros(B, 0)
        eye = torch.eye(2, dtype=torch.float64, device=prior_uv.device).expand(B, 2, 2)
        confidence = prior_uv.new_zeros(B) if score is None else score.double().clamp(0, 1)
        return MatchQuality(none, src, none.bool(), src, src, eye, confidence, known)
    weight = pred["match_weight"].double().clamp(min=0.0)
    top = weight.amax(1, keepdim=True)
    scores = torch.where(top > 1.0, weight / top, weight)
    heights = pred.get("match_height_m")
    ground_uv, visible = lift_matches_to_ground(
        src,
        batch["sat_center_uv"],
        batch["m_per_px"],
        prior_uv,
        batch["yaw_deg_prior"],
        batch["camera_height_m"],
        camera_model,
        ground_size,
        batch["K"],
        None if heights is None else heights.double(),
    )
    center, m = batch["sat_center_uv"].double(), batch["m_per_px"].double()
    prior_xy = pixel_to_world_xy(prior_uv, center, m)
    xy, yaw = pred["camera_xy_pred"].double(), pred["yaw_deg_pred"].double()
    R, _ = relative_rigid_2d(prior_xy, batch["yaw_deg_prior"].double(), xy, yaw)
    rel = pixel_to_world_xy(src, center[:, None], m[:, None]) - prior_xy[:, None]
    dst = pixel_to_world_xy(pred["match_dst_uv"].double(), center[:, None], m[:, None])
    residual = rel @ R.transpose(1, 2) + xy[:, None] - dst  # B,N,2
    agree = visible & (torch.linalg.vector_norm(residual, dim=-1) < INLIER_M)
    confidence = (scores * agree).sum(1) / visible.sum(1).clamp(min=1)
    if score is not None:
        confidence = score.double().clamp(0.0, 1.0)
    return MatchQuality(scores, ground_uv, visible, rel, residual, R, confidence, known)


def pose_covariance(
    rel_xy: torch.Tensor,
    residual_xy: torch.Tensor,
    rotation: torch.Tensor,
    scores: torch.Tensor,
    num_sources: int,
    sat_hw: tuple[int, int],
    known_heading: bool = False,
) -> tuple[np.ndarray | None, float | None]:
    """Sandwich covariance of the camera position and heading (module docstring).

    Convention: metres, x east, y north; th counter-clockwise.

    Args:
        rel_xy: (M, 2) the used sources minus the prior camera, metres.
        residual_xy: (M, 2) their residuals, metres.
        rotation: (2, 2) R(th) of the pose change.
        scores: (M,) their scores.
        num_sources: N, all the hypothesis' match sources (their density sets kappa).
        sat_hw: (Hs, Ws) of the working satellite image.
        known_heading: the heading is exact (not estimated): the fit is in c alone.

    Returns:
        covariance_m2: (2, 2) or None; yaw_std_deg (0 for a known heading) or None.
    """
    s = scores.double().cpu().numpy()
    r = residual_xy.double().cpu().numpy()
    # Residuals of a millimetre are rounding: such matches carry no evidence.
    if len(s) < 3 or float(s @ (r**2).sum(1)) <= ZERO_RESIDUAL_M**2 * float(s.sum()):
        return None, None
    turned = rel_xy.double().cpu().numpy() @ rotation.double().cpu().numpy().T  # R(th) p
    J = np.zeros((len(s), 2, 3))  # d(r_x, r_y) / d(th, c_x, c_y)
    J[:, 0, 0], J[:, 1, 0] = -turned[:, 1], turned[:, 0]  # R(90 deg) R(th) p
    J[:, 0, 1] = J[:, 1, 2] = 1.0
    if known_heading:
        J = J[:, :, 1:]  # d(r_x, r_y) / d(c_x, c_y)
    A = np.einsum("n,nij,nik->jk", s, J, J)
    g = s[:, None] * np.einsum("nij,ni->nj", J, r)  # s_i J_i^T r_i
    kappa = max(1.0, FEATURE_STRIDE_PX**2 * num_sources / (sat_hw[0] * sat_hw[1]))
    A_inv = np.linalg.pinv(A)
    cov = kappa * A_inv @ (g.T @ g) @ A_inv
    if known_heading:
        return cov, 0.0
    return cov[1:, 1:], math.degrees(math.sqrt(max(cov[0, 0], 0.0)))


def usable_matches(quality: MatchQuality, b: int) -> torch.Tensor:
    """(N,) bool: hypothesis ``b``'s matches that are visible and have a score."""
    return quality.visible[b] & (quality.scores[b] > 0)


def hypothesis_covariance(
    quality: MatchQuality, b: int, sat_hw: tuple[int, int]
) -> tuple[np.ndarray | None, float | None]:
    """Sandwich covariance of hypothesis ``b`` over its :func:`usable_matches`.

    Args:
        quality: the hypotheses' :func:`match_quality`.
        b: the hypothesis.
        sat_hw: (Hs, Ws) of the working satellite image.

    Returns:
        covariance_m2: (2, 2) or None; yaw_std_deg or None (:func:`pose_covariance`).
    """
    keep = usable_matches(quality, b)
    return pose_covariance(
        quality.rel_xy[b][keep],
        quality.residual_xy[b][keep],
        quality.rotation[b],
        quality.scores[b][keep],
        quality.scores.shape[1],
        sat_hw,
        known_heading=bool(quality.known_heading[b]),
    )


def resize_warnings(
    ground_wh: tuple[int, int],
    working_wh: tuple[int, int],
    m_work: float,
    trained_m_per_px: float | None,
    sat_size: int,
) -> list[str]:
    """Inputs far from the training data's aspect or resolution: accuracy may suffer.

    Args:
        ground_wh: (W, H) of the input ground image.
        working_wh: (W, H) of the working ground image.
        m_work: metres per pixel of the working satellite image.
        trained_m_per_px: that of the training data, or None (no check).
        sat_size: working satellite side in pixels.

    Returns:
        One message per problem.
    """
    out = []
    stretch = (working_wh[0] / working_wh[1]) / (ground_wh[0] / ground_wh[1])
    if max(stretch, 1.0 / stretch) > MAX_RESIZE_RATIO:
        out.append(
            f"ground: resized from {ground_wh[0]}x{ground_wh[1]} to the working "
            f"{working_wh[0]}x{working_wh[1]} (aspect changed {stretch:.2f}x); crop it to "
            "that aspect for best results"
        )
    trained = trained_m_per_px
    if trained and max(m_work / trained, trained / m_work) > MAX_RESIZE_RATIO:
        out.append(
            f"satellite: {m_work:.3f} m/px at the working size, the model was trained at "
            f"{trained:.3f} m/px: crop the tile to about {trained * sat_size:.0f} m around "
            "the prior for best results"
        )
    return out
