"""Training priors near the truth: the regime of the refinement passes.

At test time a localizer may run again from its own estimate
(:class:`cvloc.models.refinement.PriorRefinement`): the later passes start a few metres and
degrees from the truth and are told so (narrowed ``shift_range_m`` / ``yaw_range_deg``,
FineMatch's matching window). A model trained only on the data's prior (+-20 m, +-10 deg on
kitti-small) has never seen that regime. :func:`redraw_near_prior` replaces the prior of a
random share of a training batch's items by the truth plus uniform noise within small
bounds, and declares those bounds; every target is computed from the batch's prior at loss
time, so the losses follow. Off unless asked for (``train.near_prior_fraction``).
"""

from __future__ import annotations

from typing import Any

import torch

from cvloc.geometry.pose import wrap_deg


def redraw_near_prior(
    batch: dict[str, Any],
    fraction: float,
    shift_m: float,
    yaw_deg: float,
    generator: torch.Generator,
) -> dict[str, Any]:
    """The batch with the prior of about ``fraction`` of its items redrawn near the truth.

    Convention: satellite pixels (u east, v south), compass degrees; the noise is uniform
    in [-shift_m, shift_m] metres per axis and [-yaw_deg, yaw_deg] degrees, as the data's.

    Args:
        batch: ``camera_uv_gt``, ``camera_uv_prior`` (B, 2), ``yaw_deg_gt``,
            ``yaw_deg_prior``, ``m_per_px``, ``shift_range_m``, ``yaw_range_deg`` (B,).
        fraction: probability that an item is redrawn, in [0, 1].
        shift_m: position noise half-width and the declared bound, metres, > 0.
        yaw_deg: heading noise half-width and bound, degrees, > 0; an item with a known
            heading (``yaw_range_deg`` 0) keeps its heading and its bound 0.
        generator: the random source (CPU).

    Returns:
        A new batch dict (the other entries shared with ``batch``).
    """
    uv_gt = batch["camera_uv_gt"]
    B = uv_gt.shape[0]
    redraw = torch.rand(B, generator=generator) < fraction
    if not redraw.any():
        return batch
    shift = (torch.rand(B, 2, generator=generator) * 2 - 1) * shift_m
    turn = (torch.rand(B, generator=generator) * 2 - 1) * yaw_deg
    device = uv_gt.device
    redraw, shift, turn = redraw.to(device), shift.to(device), turn.to(device)
    m = batch["m_per_px"].to(uv_gt.dtype)
    near_uv = uv_gt + shift.to(uv_gt.dtype) / m[:, None]
    known = batch["yaw_range_deg"] == 0
    yaw_gt = batch["yaw_deg_gt"]
    near_yaw = torch.where(known, batch["yaw_deg_prior"], wrap_deg(yaw_gt + turn.to(yaw_gt)))
    out = dict(batch)
    out["camera_uv_prior"] = torch.where(redraw[:, None], near_uv, batch["camera_uv_prior"])
    out["yaw_deg_prior"] = torch.where(redraw, near_yaw, batch["yaw_deg_prior"])
    bound = batch["shift_range_m"]
    out["shift_range_m"] = torch.where(redraw, torch.full_like(bound, shift_m), bound)
    yaw_bound = batch["yaw_range_deg"]
    near_bound = torch.where(known, yaw_bound, torch.full_like(yaw_bound, yaw_deg))
    out["yaw_range_deg"] = torch.where(redraw, near_bound, yaw_bound)
    return out
