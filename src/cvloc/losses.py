"""Training losses of DenseFlow (paper section 3.4, eq. 4-7), and the loss of each method.

:func:`loss_for_method` picks the training loss of ``model.method``: :func:`denseflow_loss`
here, :func:`cvloc.losses_finematch.finematch_loss` for FineMatch.

Units: flows, flow errors and the translation part of the position loss are in satellite
pixels of the input satellite image; the heading part is in degrees. The position loss
measures translation in pixels rather than metres so that it shares the matching loss's
unit: the balance beta sets between eq. 6 and eq. 4 then does not change with the
dataset's metres per pixel (0.2 m/px for KITTI tiles, 0.4 m/px for ``kitti-small``).

Averaging: eq. 4 and 5 sum over the BEV points; we average over the *visible* BEV pixels
(``bev_valid``) of each sample and then over the batch, so that the loss scale does not
depend on the image size or on how much of the BEV the camera sees (a sample without
visible pixels contributes 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cvloc.config import TrainConfig
from cvloc.geometry.pose import wrap_deg
from cvloc.losses_aux import auxiliary_losses, features_loss, ground_truth_flow, masked_mean
from cvloc.losses_finematch import finematch_loss

LossFn = Callable[
    [dict[str, Any], dict[str, Any], TrainConfig, int],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]
# Below this spread the flow errors of a sample are treated as all equal (eq. 5 guard).
_STD_EPS = 1e-6


def loss_schedule(cfg: TrainConfig, epoch: int) -> tuple[float, float]:
    """The position-loss weight beta and the confidence temperature kappa of an epoch.

    Args:
        cfg: training configuration (``beta_*``, ``kappa_*``, ``switch_epoch``).
        epoch: 0-based epoch index.

    Returns:
        (beta, kappa): the initial values before ``switch_epoch``, the final ones after.
    """
    if epoch < cfg.switch_epoch:
        return cfg.beta_initial, cfg.kappa_initial
    return cfg.beta_final, cfg.kappa_final


def standardize(d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(d - mean(d)) / std(d) with the statistics of each sample's valid pixels (eq. 5).

    Args:
        d: (B, 1, H, W) per-pixel values.
        valid: (B, 1, H, W) 0/1 mask.

    Returns:
        (B, 1, H, W); 0 wherever a sample's valid values are all equal (std 0).
    """
    count = valid.flatten(1).sum(1).clamp_min(1.0).view(-1, 1, 1, 1)
    mean = (d * valid).sum((1, 2, 3), keepdim=True) / count
    var = (((d - mean) * valid) ** 2).sum((1, 2, 3), keepdim=True) / count
    return (d - mean) / var.sqrt().clamp_min(_STD_EPS)


def confidence_loss(
    confidence: torch.Tensor, error: torch.Tensor, valid: torch.Tensor, kappa: float
) -> torch.Tensor:
    """Eq. 5: high confidence S where the flow error is below average, low where above.

    With z = standardised error / kappa, each pixel costs S sigmoid(z) + (1 - S)
    sigmoid(-z) (the two fractions of eq. 5), which is minimised by S = 1 for z < 0.

    Args:
        confidence: (B, 1, H, W) predicted S in [0, 1].
        error: (B, 1, H, W) per-pixel flow error d (gradients are not propagated).
        valid: (B, 1, H, W) 0/1 visibility mask.
        kappa: temperature.

    Returns:
        () scalar loss averaged as :func:`masked_mean`.
    """
    z = standardize(error.detach(), valid) / kappa
    per_pixel = confidence * torch.sigmoid(z) + (1.0 - confidence) * torch.sigmoid(-z)
    return masked_mean(per_pixel, valid)


def position_loss(
    pred: dict[str, Any], batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 6: |wrap(yaw_pred - yaw_gt)| in degrees + |uv_pred - uv_gt|_1 in pixels.

    Args:
        pred: prediction with ``yaw_deg_pred`` (B,) and ``camera_uv_pred`` (B, 2).
        batch: batch with ``yaw_deg_gt`` (B,) and ``camera_uv_gt`` (B, 2).

    Returns:
        (loss, yaw part, translation part): batch means, () each.
    """
    yaw = wrap_deg(pred["yaw_deg_pred"] - batch["yaw_deg_gt"]).abs().mean()
    uv = (pred["camera_uv_pred"] - batch["camera_uv_gt"]).abs().sum(-1).mean()
    return yaw + uv, yaw, uv


def denseflow_loss(
    pred: dict[str, Any], batch: dict[str, Any], cfg: TrainConfig, epoch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DenseFlow's total loss, eq. 7: beta L_p + sum_i w_i (L_m^i + alpha L_c^i).

    w_i = ``iter_gamma`` ^ (n - 1 - i) over the n GRU iterations (1 everywhere: the
    paper's plain sum). A disabled term (``use_*_loss``) contributes 0.

    Args:
        pred: :class:`cvloc.models.DenseFlow` output: ``flow_iters`` (list of
            (B, 2, Hs, Ws)), ``confidence_iters`` (list of (B, 1, Hs, Ws)), ``bev_valid``
            (B, 1, Hs, Ws), ``camera_uv_pred`` (B, 2), ``yaw_deg_pred`` (B,).
        batch: the batch (ground-truth and prior poses, geo-referencing).
        cfg: training configuration (weights, schedule, ablation switches).
        epoch: 0-based epoch index (selects beta and kappa).

    Returns:
        (total, parts): the differentiable scalar loss and detached scalars ``loss``,
        ``matching`` (eq. 4, iteration-weighted sum), ``confidence`` (eq. 5, likewise,
        before alpha), ``position`` (eq. 6), ``position_yaw_deg``, ``position_uv_px``,
        ``epe_final_px`` (mean end-point error of the last flow over visible pixels),
        ``beta`` and ``kappa``.
    """
    beta, kappa = loss_schedule(cfg, epoch)
    flows, confidences = pred["flow_iters"], pred["confidence_iters"]
    valid = pred["bev_valid"].float()
    gt_flow = ground_truth_flow(batch, tuple(flows[-1].shape[-2:]))
    n = len(flows)
    matching = flows[-1].new_zeros(())
    confidence = flows[-1].new_zeros(())
    for i, (flow, conf) in enumerate(zip(flows, confidences, strict=True)):
        weight = cfg.iter_gamma ** (n - 1 - i)
        error = (flow.float() - gt_flow).abs().sum(1, keepdim=True)  # B,1,H,W, eq. 4's L1
        matching = matching + weight * masked_mean(error, valid)
        confidence = confidence + weight * confidence_loss(conf.float(), error, valid, kappa)
    position, yaw_part, uv_part = position_loss(pred, batch)
    total = flows[-1].new_zeros(())
    corr_term = total
    align_term = total
    if cfg.corr_loss_weight > 0 or cfg.align_loss_weight > 0:
        corr_term, align_term = auxiliary_losses(pred, gt_flow, cfg)
        total = total + cfg.corr_loss_weight * corr_term + cfg.align_loss_weight * align_term
    if cfg.use_matching_loss:
        total = total + matching
    if cfg.use_confidence_loss:
        total = total + cfg.alpha * confidence
    if cfg.use_position_loss:
        total = total + beta * position
    with torch.no_grad():
        epe = masked_mean(
            torch.linalg.vector_norm(flows[-1] - gt_flow, dim=1, keepdim=True), valid
        )
    parts = {
        "loss": total.detach(),
        "matching": matching.detach(),
        "confidence": confidence.detach(),
        "position": position.detach(),
        "position_yaw_deg": yaw_part.detach(),
        "position_uv_px": uv_part.detach(),
        "epe_final_px": epe,
        "correlation": corr_term.detach(),
        "alignment": align_term.detach(),
        "beta": torch.tensor(beta),
        "kappa": torch.tensor(kappa),
    }
    return total, parts


def loss_for_method(method: str, objective: str = "localizer") -> LossFn:
    """The training loss of a model method and training objective.

    Args:
        method: ``model.method`` (``"denseflow"`` or ``"finematch"``).
        objective: ``train.objective``: ``"localizer"`` (the method's own loss) or
            ``"features"`` (:func:`cvloc.losses_aux.features_loss`, DenseFlow only).

    Returns:
        ``(pred, batch, train_cfg, epoch) -> (total, parts)``; ``parts`` always holds the
        detached ``loss`` and ``epe_final_px`` (the final matches' end-point error).

    Raises:
        ValueError: no loss for that method and objective.
    """
    if objective == "features":
        if method != "denseflow":
            raise ValueError(f"train.objective=features trains DenseFlow's encoders, not {method}")
        return features_loss
    losses: dict[str, LossFn] = {"denseflow": denseflow_loss, "finematch": finematch_loss}
    if method not in losses:
        raise ValueError(f"no training loss for model.method {method!r}; one of {sorted(losses)}")
    return losses[method]
