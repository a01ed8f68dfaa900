"""All-pairs correlation pyramid and its windowed lookup (DenseFlow section 3.2, RAFT).

Every refined BEV cell is compared with every satellite cell by a scaled dot product,
giving a 4-D volume (B, H, W, H2, W2); 2x2 average pooling of the last two dimensions gives
the coarser levels (paper section 3.2). The pyramid is built once per forward pass and
indexed at every GRU iteration around the current match position of each BEV cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.checks import ShapeError, check_shape


class CorrPyramid:
    """Correlation pyramid between BEV and satellite features (plain class, no parameters).

    Level 0 holds corr[b, i, j, k, l] = <bev[b, :, i, j], sat[b, :, k, l]> / sqrt(C);
    level n is level n - 1 average-pooled 2x2 over (k, l), so its cell l covers level-0
    cells 2^n l ... 2^n (l + 1) - 1. Computed in float32 even under autocast.

    Args:
        bev: (B, C, H, W) refined BEV features.
        sat: (B, C, H2, W2) satellite features; H2 and W2 at least 2^(levels - 1).
        levels: number of pyramid levels (4 in the paper).
        radius: lookup radius r; each level contributes a (2r + 1)^2 window (4 in the paper).
    """

    def __init__(self, bev: torch.Tensor, sat: torch.Tensor, levels: int, radius: int) -> None:
        check_shape(bev, ["B", "C", "H", "W"], "bev")
        check_shape(sat, [bev.shape[0], bev.shape[1], "H2", "W2"], "sat")
        if levels < 1 or radius < 0:
            raise ValueError(f"need levels >= 1 and radius >= 0, got {levels}, {radius}")
        B, C, H, W = bev.shape
        H2, W2 = sat.shape[-2:]
        if min(H2, W2) < 2 ** (levels - 1):
            raise ShapeError(f"sat: {H2}x{W2} cells are too few for {levels} pyramid levels")
        self.levels, self.radius = levels, radius
        self.bev_shape = (B, H, W)
        with torch.autocast(device_type=bev.device.type, enabled=False):
            # Scaling the (B, HW, C) factor instead of the (B, HW, H2W2) product saves a
            # pass over the volume (45 ms per pair on one core at stride 4).
            a = bev.float().flatten(2).transpose(1, 2) / math.sqrt(C)  # B,HW,C
            corr = a @ sat.float().flatten(2)  # B,HW,H2W2
        corr = corr.reshape(B * H * W, 1, H2, W2)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            # Pooled as the B H W channels of one image: the same values, and on 2 CPU
            # threads a backward pass 2-3x faster than over B H W one-channel images.
            n, _, h, w = corr.shape
            corr = F.avg_pool2d(corr.view(1, n, h, w), 2, stride=2).view(n, 1, h // 2, w // 2)
            self.pyramid.append(corr)

    @property
    def channels(self) -> int:
        """Channels of a lookup result, levels (2r + 1)^2."""
        return self.levels * (2 * self.radius + 1) ** 2

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Sample a (2r + 1)^2 window of every level around each BEV cell's match.

        Convention: ``coords[b, :, i, j] = (x, y)`` is the position on the satellite
        feature grid matched to BEV cell (i, j), in level-0 cells: x along columns (east),
        y along rows (south), integer values at cell centres. Level n samples at
        (x + 0.5) / 2^n - 0.5 (the exact centre of the pooled cells, where RAFT uses
        x / 2^n), at integer offsets (dx, dy) in [-r, r]^2, bilinearly; positions outside
        the grid interpolate towards zero. Output channel
        n (2r + 1)^2 + (dy + r)(2r + 1) + (dx + r) holds level n at offset (dx, dy).

        Args:
            coords: (B, 2, H, W) match positions in satellite feature cells.

        Returns:
            (B, levels (2r + 1)^2, H, W) correlation features, float32.
        """
        B, H, W = self.bev_shape
        check_shape(coords, [B, 2, H, W], "coords")
        r = self.radius
        with torch.autocast(device_type=coords.device.type, enabled=False):
            offsets = torch.arange(-r, r + 1, dtype=torch.float32, device=coords.device)
            dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
            delta = torch.stack([dx, dy], dim=-1)  # 2r+1,2r+1,2 as (x, y)
            centre = coords.float().permute(0, 2, 3, 1).reshape(B * H * W, 1, 1, 2)
            out = []
            for level, corr in enumerate(self.pyramid):
                # Level position x = (centre + 0.5) / 2^n - 0.5 + dx; align_corners=False
                # maps x to (2x + 1) / size - 1, i.e. (centre + 0.5) 2 / (2^n size) - 1
                # + dx 2 / size: one full-size sum per level instead of five.
                size = delta.new_tensor([corr.shape[-1], corr.shape[-2]])
                grid = ((centre + 0.5) * (2.0 / (2**level * size)) - 1.0) + delta * (2.0 / size)
                window = F.grid_sample(corr, grid, mode="bilinear", align_corners=False)
                out.append(window.reshape(B, H, W, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def shifted_match_scores(
    correlation: torch.Tensor,
    grid_hw: tuple[int, int],
    targets: torch.Tensor,
    weight: torch.Tensor,
    radius: int,
) -> torch.Tensor:
    """Mean correlation of the BEV cells with their targets shifted rigidly, per shift.

    ``scores[b, k]`` = sum_c w[b, c] corr[b, c, targets[b, c] + o_k] / sum_c w[b, c] for
    the (2r + 1)^2 shifts o_k = (dx, dy) in [-r, r]^2 (row-major over dy, then dx). With
    the cells themselves as targets this is template matching of the whole BEV over the
    satellite feature grid; with the ground-truth matches as targets, shift 0 is the
    correct alignment (the positive of :func:`cvloc.losses_aux.alignment_loss`).

    Convention: positions in satellite feature cells, (x, y) = (column, row), integer
    values at cell centres; bilinear sampling, zero outside the grid; float32.

    Args:
        correlation: (B, H W, H2 W2) level-0 correlation (see :class:`CorrPyramid`).
        grid_hw: (H2, W2) of the satellite feature grid.
        targets: (B, 2, H, W) the satellite cell each BEV cell is compared with at shift 0.
        weight: (B, H, W) non-negative weight of every BEV cell (e.g. its visibility).
        radius: r, the largest shift along each axis, in cells.

    Returns:
        (B, (2r + 1)^2) scores; 0 for a sample whose weights are all zero.
    """
    B, H, W = weight.shape
    H2, W2 = grid_hw
    check_shape(correlation, [B, H * W, H2 * W2], "correlation")
    check_shape(targets, [B, 2, H, W], "targets")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    with torch.autocast(device_type=correlation.device.type, enabled=False):
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=targets.device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        centre = targets.float().permute(0, 2, 3, 1).reshape(B * H * W, 1, 1, 2)
        xy = centre + torch.stack([dx, dy], dim=-1)  # BHW,2r+1,2r+1,2
        size = xy.new_tensor([W2, H2])
        grid = (2.0 * xy + 1.0) / size - 1.0
        rows = correlation.float().reshape(B * H * W, 1, H2, W2)
        sampled = F.grid_sample(rows, grid, mode="bilinear", align_corners=False)
        sampled = sampled.reshape(B, H * W, -1)
        w = weight.float().reshape(B, H * W, 1)
        return (sampled * w).sum(1) / w.sum(1).clamp(min=1e-6)


def alignment_scores(
    correlation: torch.Tensor,
    weight: torch.Tensor,
    reach_m: torch.Tensor,
    m_per_px: torch.Tensor,
    stride: int,
) -> torch.Tensor:
    """Score of every rigid whole-cell shift of the BEV over a BEV-satellite score matrix.

    Template matching: every shift of the BEV (placed at the prior, on the satellite
    feature grid) by whole cells up to r = ``ceil(reach_m / (m_per_px stride))`` along each
    axis is scored by :func:`shifted_match_scores` (the weighted mean score of the BEV
    cells at their shifted cells). Not differentiable (no_grad).

    Convention: the BEV grid is the satellite feature grid (cell n = i W + j); the map is
    indexed [dy + r, dx + r] by the shift (dx, dy) in cells (columns, rows).

    Args:
        correlation: (B, H W, H W) scores of BEV cell n against satellite cell m.
        weight: (B, H, W) non-negative weight of every BEV cell (its visibility).
        reach_m: (B,) the largest shift searched, metres (the batch's largest is used).
        m_per_px: (B,) ground sampling distance.
        stride: satellite pixels per cell.

    Returns:
        (B, 2 r + 1, 2 r + 1) scores (float32).
    """
    B, H, W = weight.shape
    reach = reach_m.float() / (m_per_px.float() * stride)
    radius = math.ceil(float(reach.max())) if B else 0
    cells = satellite_grid_uv(H, W, dtype=torch.float32, device=weight.device)
    cells = cells.permute(2, 0, 1)[None].expand(B, -1, -1, -1)  # zero flow: a cell itself
    with torch.no_grad():
        scores = shifted_match_scores(correlation.detach(), (H, W), cells, weight, radius)
    return scores.reshape(B, 2 * radius + 1, 2 * radius + 1)


def best_shift_camera_uv(
    scores: torch.Tensor, camera_uv_prior: torch.Tensor, stride: int
) -> torch.Tensor:
    """Camera position moved by the best shift of a shift-score map.

    Convention: satellite pixels (u, v); the map of :func:`alignment_scores`.

    Args:
        scores: (B, 2 r + 1, 2 r + 1) scores of the shifts around the prior.
        camera_uv_prior: (B, 2) the camera position at shift 0.
        stride: satellite pixels per cell.

    Returns:
        (B, 2) camera positions in satellite pixels (float32).
    """
    side = scores.shape[-1]
    radius = (side - 1) // 2
    best = scores.flatten(1).argmax(1)
    shift = torch.stack([best % side - radius, best // side - radius], dim=-1)
    return camera_uv_prior.float() + shift.float() * stride


def alignment_camera_uv(
    correlation: torch.Tensor,
    weight: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    reach_m: torch.Tensor,
    m_per_px: torch.Tensor,
    stride: int,
) -> torch.Tensor:
    """Camera position of the best rigid shift of the BEV over a BEV-satellite score matrix.

    The best of :func:`alignment_scores` (:func:`best_shift_camera_uv`); rotation is not
    searched. Not differentiable (argmax).

    Convention: satellite pixels (u, v), integer pixel centres; the BEV grid is the
    satellite feature grid (cell n = i W + j).

    Args:
        correlation: (B, H W, H W) scores of BEV cell n against satellite cell m.
        weight: (B, H, W) non-negative weight of every BEV cell (its visibility).
        camera_uv_prior: (B, 2) the prior camera position.
        reach_m: (B,) the largest shift searched, metres (the batch's largest is used).
        m_per_px: (B,) ground sampling distance.
        stride: satellite pixels per cell.

    Returns:
        (B, 2) camera positions in satellite pixels.
    """
    scores = alignment_scores(correlation, weight, reach_m, m_per_px, stride)
    return best_shift_camera_uv(scores, camera_uv_prior, stride)
