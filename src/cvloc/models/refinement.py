"""Prior refinement: run a localizer again from its own estimate.

Both methods place the ground features on the satellite grid at the prior pose (DenseFlow's
BEV, FineMatch's lifted volume) and then explain the remaining offset. The further the
prior is off, the more of the BEV is sampled from the wrong place: a BEV turned by a few
degrees smears the far cells by metres, which is the error left after one pass.
:class:`PriorRefinement` re-places the BEV at the first estimate and runs the model again,
``passes`` times in all (a coarse-to-fine cascade at test time; no weights change). Each
pass after the first may also narrow the prior's declared noise bounds
(``shift_range_m``, ``yaw_range_deg``): FineMatch then matches only inside the smaller
window (:func:`cvloc.models.matching.prior_window_mask`), DenseFlow's alignment search
looks only that far. A known heading (``yaw_range_deg`` 0) stays known.

This is our addition to both papers, off unless asked for (``eval.refine_passes``), and
reported as its own row in the benchmarks.

The last pass's match sources (BEV cells placed at its prior) are moved onto the placement
at the batch's own prior (:func:`move_sources`), so that the correspondence metrics, which
lift sources with the batch's prior (:func:`cvloc.evaluate.lift_matches_to_ground`), see
the ground pixels the model matched. Flows and per-iteration outputs are dropped: they are
relative to the last pass's BEV.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import apply_rigid_2d, relative_rigid_2d

# Outputs kept from the last pass; the rest are per-BEV (flows, volumes) and dropped.
POSE_KEYS = ("camera_uv_pred", "camera_xy_pred", "yaw_deg_pred")
MATCH_KEYS = ("match_src_uv", "match_dst_uv", "match_weight", "match_height_m")
# The EvalConfig fields that set the passes (read by :func:`refined`).
REFINE_FIELDS = ("refine_passes", "refine_shift_m", "refine_yaw_deg")


def move_sources(
    src_uv: torch.Tensor,
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    from_uv: torch.Tensor,
    from_yaw_deg: torch.Tensor,
    to_uv: torch.Tensor,
    to_yaw_deg: torch.Tensor,
) -> torch.Tensor:
    """Move BEV cells placed at one camera pose onto their placement at another.

    A BEV cell is a fixed point of the camera frame; placed at pose (from_uv, from_yaw) it
    lies at ``src_uv`` on the satellite image. Returns where the same camera-frame point
    lies when the BEV is placed at (to_uv, to_yaw).

    Convention: satellite pixels (u right, v down), compass yaw in degrees, the metric frame
    of :func:`cvloc.geometry.geo.pixel_to_world_xy`.

    Args:
        src_uv: (B, N, 2) cells placed at the ``from`` pose.
        sat_center_uv: (B, 2) the satellite image's centre pixel.
        m_per_px: (B,) metres per satellite pixel.
        from_uv: (B, 2) camera pixel of the ``from`` pose.
        from_yaw_deg: (B,).
        to_uv: (B, 2) camera pixel of the ``to`` pose.
        to_yaw_deg: (B,).

    Returns:
        (B, N, 2) the cells placed at the ``to`` pose (float32).
    """
    center, m = sat_center_uv.float(), m_per_px.float()
    from_xy = pixel_to_world_xy(from_uv.float(), center, m)
    to_xy = pixel_to_world_xy(to_uv.float(), center, m)
    R, t = relative_rigid_2d(from_xy, from_yaw_deg.float(), to_xy, to_yaw_deg.float())
    src_xy = pixel_to_world_xy(src_uv.float(), center[:, None], m[:, None])
    moved = apply_rigid_2d(R, t, src_xy)
    return world_xy_to_pixel(moved, center[:, None], m[:, None])


class PriorRefinement(nn.Module):
    """Wrap a localizer: re-run it with the prior replaced by its previous estimate.

    ``forward(batch)`` returns the last pass's pose and matches (:data:`POSE_KEYS`,
    :data:`MATCH_KEYS` where the model has them) and ``refine_passes`` (B,).

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        passes: forward passes in all (1: the model alone).
        shift_range_m: the position noise bound declared to passes after the first
            (never widened beyond the batch's); None keeps the batch's.
        yaw_range_deg: the same for the heading; a known heading (0) stays 0.
    """

    def __init__(
        self,
        model: nn.Module,
        passes: int = 2,
        shift_range_m: float | None = None,
        yaw_range_deg: float | None = None,
    ) -> None:
        super().__init__()
        if passes < 1:
            raise ValueError(f"expected passes >= 1, got {passes}")
        for name, value in (("shift_range_m", shift_range_m), ("yaw_range_deg", yaw_range_deg)):
            if value is not None and not value > 0:
                raise ValueError(f"expected {name} > 0 or None, got {value}")
        self.model, self.passes = model, passes
        self.shift_range_m, self.yaw_range_deg = shift_range_m, yaw_range_deg
        self.required_keys = getattr(model, "required_keys", ())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize a batch in ``passes`` passes.

        Args:
            batch: the wrapped model's inputs (with ``camera_uv_prior``, ``yaw_deg_prior``;
                ``shift_range_m`` / ``yaw_range_deg`` when the bounds are narrowed).

        Returns:
            The last pass's prediction keys and ``refine_passes``.
        """
        current = batch
        pred = self.model(current)
        for _ in range(self.passes - 1):
            current = self._next_prior(batch, pred)
            pred = self.model(current)
        out = {key: pred[key] for key in (*POSE_KEYS, *MATCH_KEYS) if key in pred}
        if "match_src_uv" in out and current is not batch:
            out["match_src_uv"] = move_sources(
                out["match_src_uv"], batch["sat_center_uv"], batch["m_per_px"],
                current["camera_uv_prior"], current["yaw_deg_prior"],
                batch["camera_uv_prior"], batch["yaw_deg_prior"],
            )  # fmt: skip
        out["refine_passes"] = torch.full_like(batch["yaw_deg_prior"], self.passes)
        return out

    def _next_prior(self, batch: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
        """The batch with its prior replaced by ``pred`` and its bounds narrowed."""
        out = dict(batch)
        out["camera_uv_prior"] = pred["camera_uv_pred"].detach().to(batch["camera_uv_prior"])
        out["yaw_deg_prior"] = pred["yaw_deg_pred"].detach().to(batch["yaw_deg_prior"])
        bounds = {"shift_range_m": self.shift_range_m, "yaw_range_deg": self.yaw_range_deg}
        for key, bound in bounds.items():
            if bound is not None and key in batch:
                # min keeps 0 (a known heading) and never widens the batch's own bound.
                out[key] = torch.clamp(batch[key], max=bound)
        return out


def refined(model: nn.Module, eval_config: Any) -> nn.Module:
    """The model as its test-time settings run it.

    Args:
        model: a localizer.
        eval_config: a :class:`cvloc.config.EvalConfig` (``refine_passes``,
            ``refine_shift_m``, ``refine_yaw_deg``).

    Returns:
        ``model`` itself for one pass, else a :class:`PriorRefinement` around it.
    """
    if eval_config.refine_passes == 1:
        return model
    return PriorRefinement(
        model, eval_config.refine_passes, eval_config.refine_shift_m, eval_config.refine_yaw_deg
    )
