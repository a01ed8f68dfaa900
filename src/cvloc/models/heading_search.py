"""Heading search: localize from a prior heading noisier than the model was trained for.

A localizer trained with heading noise +-r (its training prior's ``yaw_range_deg``) turns
the BEV by about that much at most. For a prior heading known only within +-theta,
theta > r, :class:`HeadingSearch` runs the model from n = ceil(2 theta / s) prior
headings, the centres of n equal sectors of [prior - theta, prior + theta] (the whole
circle for theta >= 180), s = :func:`hypothesis_spacing_deg` (2 r, within [20, 45] deg),
so that every heading in the range is within s / 2 of a hypothesis; each hypothesis is told
the trained range r. Per pair the hypothesis with the highest match confidence wins
(:func:`cvloc.localize_quality.match_quality`: the score mass of the matches that agree
with their pose), as :class:`cvloc.localize.Localizer` picks among the headings it tries
when none is given. With theta <= s / 2 the model runs once, unchanged.

The winner's match sources (BEV cells placed at its hypothesis heading) are turned about
the prior camera into the placement at the pair's own prior heading, so that the
correspondence metrics, which lift sources with the batch's prior
(:func:`cvloc.evaluate.lift_matches_to_ground`), see the ground pixels the model matched.
Flows and per-iteration outputs are dropped: they are relative to the winner's BEV, not to
the batch's, and no flow metric can be computed from them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cvloc.data.batch import one_camera_model
from cvloc.geometry.pose import wrap_deg
from cvloc.localize_quality import match_quality
from cvloc.models.refinement import MATCH_KEYS, POSE_KEYS, move_sources

MIN_SPACING_DEG = 20.0  # finer than this costs many forward passes for little
MAX_SPACING_DEG = 45.0  # coarser than this leaves headings the model cannot reach


def hypothesis_spacing_deg(trained_range_deg: float) -> float:
    """Spacing of heading hypotheses for a model trained with heading noise +-r.

    Args:
        trained_range_deg: r, half-width of the training prior's heading noise.

    Returns:
        2 r, clamped to [20, 45] degrees.
    """
    return min(max(2.0 * trained_range_deg, MIN_SPACING_DEG), MAX_SPACING_DEG)


def heading_hypotheses(
    center_deg: float, half_range_deg: float, spacing_deg: float
) -> list[float]:
    """Prior headings covering [center - theta, center + theta] at a given spacing.

    Convention: compass degrees, wrapped to (-180, 180].

    Args:
        center_deg: the prior heading.
        half_range_deg: theta; >= 180 covers the whole circle.
        spacing_deg: the largest gap between neighbouring hypotheses (> 0).

    Returns:
        The centres of n = ceil(2 theta / spacing) equal sectors (one for a small theta).

    Raises:
        ValueError: a negative range or a non-positive spacing.
    """
    if not half_range_deg >= 0 or not spacing_deg > 0:
        raise ValueError(
            f"expected range >= 0 and spacing > 0, got {half_range_deg}, {spacing_deg}"
        )
    span = 2.0 * min(half_range_deg, 180.0)
    n = max(1, math.ceil(span / spacing_deg - 1e-9))
    start = center_deg - span / 2.0
    angles = torch.tensor([start + (k + 0.5) * span / n for k in range(n)], dtype=torch.float64)
    return wrap_deg(angles).tolist()


class HeadingSearch(nn.Module):
    """Wrap a localizer: heading hypotheses over each pair's ``yaw_range_deg``.

    ``forward(batch)`` takes the wrapped model's batch (with ``yaw_range_deg`` (B,), the
    prior's heading noise) and returns the winning hypothesis' pose and matches
    (:data:`POSE_KEYS`, :data:`MATCH_KEYS` where the model has them) plus
    ``heading_hypotheses`` (B,), the number tried, and ``search_confidence`` (B,).

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        trained_range_deg: r, the heading noise it was trained with.
        chunk: at most this many hypotheses per forward pass (memory bound).
    """

    def __init__(self, model: nn.Module, trained_range_deg: float, chunk: int = 16) -> None:
        super().__init__()
        if not trained_range_deg >= 0 or chunk < 1:
            raise ValueError(
                f"expected a range >= 0 and chunk >= 1, got {trained_range_deg}, {chunk}"
            )
        self.model, self.trained_range_deg, self.chunk = model, float(trained_range_deg), chunk
        self.spacing_deg = hypothesis_spacing_deg(trained_range_deg)
        self.required_keys = getattr(model, "required_keys", ())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize every pair of a batch from its heading hypotheses.

        Args:
            batch: the wrapped model's inputs, with ``yaw_deg_prior`` and ``yaw_range_deg``.

        Returns:
            The winners' prediction keys, ``heading_hypotheses`` and ``search_confidence``.
        """
        B = batch["yaw_deg_prior"].shape[0]
        index, headings = [], []
        for b in range(B):
            hyps = heading_hypotheses(
                float(batch["yaw_deg_prior"][b]),
                float(batch["yaw_range_deg"][b]),
                self.spacing_deg,
            )
            index += [b] * len(hyps)
            headings += hyps
        best: list[dict[str, Any]] = [{} for _ in range(B)]
        for start in range(0, len(index), self.chunk):
            rows = index[start : start + self.chunk]
            hyp = _select(batch, rows, B)
            hyp["yaw_deg_prior"] = torch.tensor(
                headings[start : start + self.chunk], dtype=batch["yaw_deg_prior"].dtype
            ).to(batch["yaw_deg_prior"].device)
            hyp["yaw_range_deg"] = torch.full_like(hyp["yaw_deg_prior"], self.trained_range_deg)
            pred = self.model(hyp)
            ground_wh = (hyp["ground"].shape[-1], hyp["ground"].shape[-2])
            quality = match_quality(pred, hyp, one_camera_model(hyp["camera_model"]), ground_wh)
            for j, b in enumerate(rows):
                confidence = float(quality.confidence[j])
                if not best[b] or confidence > best[b]["search_confidence"]:
                    best[b] = _winner(pred, hyp, j, batch, b, confidence)
        counts = torch.bincount(torch.tensor(index), minlength=B)
        out = {k: torch.stack([w[k] for w in best]) for k in best[0] if k != "search_confidence"}
        out["search_confidence"] = torch.tensor([w["search_confidence"] for w in best])
        out["heading_hypotheses"] = counts
        return out


def _select(batch: dict[str, Any], rows: list[int], B: int) -> dict[str, Any]:
    """The batch's samples ``rows`` (repeats allowed): tensors and lists of length B."""
    idx = torch.tensor(rows)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == B:
            out[key] = value[idx.to(value.device)]
        elif isinstance(value, list) and len(value) == B:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def _winner(
    pred: dict[str, Any],
    hyp: dict[str, Any],
    j: int,
    batch: dict[str, Any],
    b: int,
    confidence: float,
) -> dict[str, Any]:
    """Hypothesis j's pose and matches, its match sources placed at pair b's prior heading."""
    out: dict[str, Any] = {k: pred[k][j] for k in (*POSE_KEYS, *MATCH_KEYS) if k in pred}
    out["search_confidence"] = confidence
    if "match_src_uv" in out:
        # The BEV placed at the hypothesis heading, moved onto its placement at the pair's
        # prior heading (same camera position).
        uv = batch["camera_uv_prior"][b : b + 1]
        out["match_src_uv"] = move_sources(
            out["match_src_uv"][None], batch["sat_center_uv"][b : b + 1],
            batch["m_per_px"][b : b + 1], uv, hyp["yaw_deg_prior"][j : j + 1], uv,
            batch["yaw_deg_prior"][b : b + 1],
        )[0]  # fmt: skip
    return out
