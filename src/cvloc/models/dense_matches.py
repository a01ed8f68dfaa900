"""Denser correspondences: a model's match field interpolated between its sources.

A localizer's matches are samples of a field: the source grid (BEV cells placed on the
satellite image) and, at each source, its matched satellite pixel and weight. DenseFlow
samples its flow, upsampled to satellite pixels by its learned convex combination, every
``pose_stride`` = 2 pixels (about 1,200 judged matches per kitti-small pair); FineMatch
matches one BEV cell per 8-pixel feature cell (about 50). The CVFM-style precision judges
the 30 best-scored matches of each pair, so a sparse matcher must rank a large share of
its matches, a dense one only its best few: the two are compared on unequal terms.

:class:`DenseMatches` makes any localizer's matches denser (``factor`` 4 gives FineMatch
DenseFlow's 2-pixel spacing): the field is interpolated bilinearly between the sources,
``factor`` - 1 new sources between two neighbours along each axis (the grid's corners stay;
nothing is extrapolated beyond the outermost sources). A new source moves by the
weight-normalised interpolation of its neighbours' displacements (match minus source; a
neighbour without weight, e.g. an unseen cell, does not pull it), its weight is the plain
interpolation of theirs, and its surface height (``match_height_m``) the weight-normalised
one. Where the weights are equal, an affine match field is reproduced exactly. Nothing is
estimated anew: the pose, and every other key, stay the model's. Off unless asked for
(``eval.match_upsample``); ``training/README.md`` records FineMatch's precision with and
without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.checks import check_shape


def source_grid_hw(num_sources: int, satellite_hw: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) grid of ``num_sources`` row-major sources covering a satellite image.

    Args:
        num_sources: N, the number of sources.
        satellite_hw: (Hs, Ws) of the satellite image.

    Returns:
        (H, W) with H W = N and H / W = Hs / Ws (sources evenly spaced on both axes).

    Raises:
        ValueError: no such grid: the sources are not a regular grid over the image.
    """
    Hs, Ws = satellite_hw
    spacing = math.sqrt(Hs * Ws / max(num_sources, 1))
    H = max(round(Hs / spacing), 1)
    if num_sources % H or H * (num_sources // H) != num_sources:
        raise ValueError(
            f"{num_sources} match sources are not a regular grid over a {Hs} x {Ws} satellite "
            "image: upsampling the matches needs a model whose sources are one per grid cell"
        )
    return H, num_sources // H


def upsample_matches(
    src_uv: torch.Tensor,
    dst_uv: torch.Tensor,
    weight: torch.Tensor,
    grid_hw: tuple[int, int],
    factor: int,
    height_m: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Interpolate a grid of matches ``factor`` times more densely along each axis.

    Convention: sources in row-major order (n = i W + j) on an evenly spaced grid, any
    pixel frame (the sources may be a rotated, rigidly moved grid: bilinear interpolation
    reproduces an affine grid exactly).

    Args:
        src_uv: (B, N, 2) sources, N = H W.
        dst_uv: (B, N, 2) their matches.
        weight: (B, N) their weights, >= 0.
        grid_hw: (H, W), both >= 2.
        factor: f >= 1, new points per source spacing.
        height_m: (B, N) per-source surface heights, or None.

    Returns:
        src_uv, dst_uv: (B, N', 2), weight: (B, N') and height_m (B, N') or None, with
        N' = ((H - 1) f + 1) ((W - 1) f + 1), row-major. A point whose neighbours all have
        weight 0 gets weight 0 and its own source as match.

    Raises:
        ShapeError: on inconsistent shapes.
        ValueError: ``factor`` < 1, or a grid side below 2.
    """
    H, W = grid_hw
    check_shape(src_uv, ["B", H * W, 2], "src_uv")
    check_shape(dst_uv, ["B", H * W, 2], "dst_uv")
    check_shape(weight, ["B", H * W], "weight")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if min(H, W) < 2:
        raise ValueError(f"the source grid must be at least 2 x 2, got {H} x {W}")
    if factor == 1:
        return src_uv, dst_uv, weight, height_m
    size = ((H - 1) * factor + 1, (W - 1) * factor + 1)

    def up(x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N', C), float32
        grid = x.float().unflatten(1, grid_hw).permute(0, 3, 1, 2)
        fine = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
        return fine.flatten(2).transpose(1, 2)

    w = weight.float().clamp(min=0.0)[..., None]
    fine_src = up(src_uv)
    fine_w = up(w)
    has_weight = fine_w > 0
    denom = torch.where(has_weight, fine_w, 1.0)
    # The displacement, not the match, is interpolated: a point beside a weightless
    # neighbour then moves as its weighted neighbours do, from where it is.
    flow = up(w * (dst_uv.float() - src_uv.float())) / denom
    fine_dst = fine_src + torch.where(has_weight, flow, 0.0)
    fine_height = None
    if height_m is not None:
        check_shape(height_m, ["B", H * W], "height_m")
        plain = up(height_m[..., None])
        weighted = up(w * height_m.float()[..., None]) / denom
        fine_height = torch.where(has_weight, weighted, plain)[..., 0]
    return fine_src, fine_dst, fine_w[..., 0], fine_height


class DenseMatches(nn.Module):
    """Wrap a localizer: its matches interpolated ``factor`` times more densely.

    ``forward(batch)`` returns the wrapped model's prediction with ``match_src_uv``,
    ``match_dst_uv``, ``match_weight`` and ``match_height_m`` (where present) replaced by
    :func:`upsample_matches` of them; the sources' grid is read from their number and the
    satellite image's size (:func:`source_grid_hw`). Module docstring: why.

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        factor: f >= 2.
    """

    def __init__(self, model: nn.Module, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"expected factor >= 2, got {factor}")
        self.model, self.factor = model, factor
        self.required_keys = getattr(model, "required_keys", ())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize a batch; the matches densified.

        Args:
            batch: the wrapped model's inputs (with ``satellite`` (B, 3, Hs, Ws)).

        Returns:
            The wrapped model's prediction, its match keys densified.

        Raises:
            KeyError: the model returns no matches.
        """
        pred = dict(self.model(batch))
        if "match_src_uv" not in pred:
            raise KeyError("eval.match_upsample needs a model that returns match_src_uv")
        src = pred["match_src_uv"]
        grid_hw = source_grid_hw(src.shape[1], tuple(batch["satellite"].shape[-2:]))
        fine = upsample_matches(
            src, pred["match_dst_uv"], pred["match_weight"], grid_hw, self.factor,
            pred.get("match_height_m"),
        )  # fmt: skip
        keys = ("match_src_uv", "match_dst_uv", "match_weight", "match_height_m")
        pred.update({k: v for k, v in zip(keys, fine, strict=True) if v is not None})
        return pred
