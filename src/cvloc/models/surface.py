"""Surface Model: per-BEV-cell surface height and visibility-aware vertical fusion.

ViewBridge (seed 000, notes section 2) lifts ground features into a metric volume over Z
height bins above every BEV cell, predicts per cell a distribution over the bins, reads a
surface height off it with a cumulative-threshold rule ("Sum >= threshold", Fig. 2b) and
fuses the column into one BEV feature, so that ground features land only where they are
physically visible. The paper gives neither the direction of the cumulation, the
threshold, its relaxation nor the masking; our choices:

- **Distribution.** w = softmax_k over the bins of a small head on the cell's column:
  every bin's feature (and its validity flag) is reduced by a shared 1x1x1 convolution,
  the reduced column is stacked into channels and mixed with the 3x3 neighbourhood (a
  surface is spatially coherent), giving one logit per bin. Invalid bins stay in the
  distribution: a bin outside the ground image may still be where the surface is.
- **Direction: top-down.** C_k = sum_{k' >= k} w_k' is the mass at or above bin k. The
  satellite sees the top-most surface of a column, while a ground camera sees a building
  as a facade spread over every bin below the roof; scanning from the top, the first bin
  whose cumulative mass reaches tau is the top-most occupied one, the surface seen from
  above (a bottom-up scan would stop at the facade's foot). Since C_k falls with k, the
  surface index k* = max{k : C_k >= tau} and
  h = z_0 + sum_{k >= 1} s_k (z_k - z_{k-1}) with s_k = [C_k >= tau].
- **Relaxation.** In training s_k = sigmoid((C_k - tau) / T), a smooth version of the same
  indicator (exact as T -> 0); at inference (``eval()``) the hard step. With tau = 0.5 and
  a unimodal w, h is the distribution's (upper) median.
- **Fusion.** The same s_k marks the bins at or below the surface: bins above it are free
  space seen from above, so m_k = s_k valid_k and
  F_bev = sum_k m_k w_k F_k / sum_k m_k w_k; the normalisation keeps the feature scale
  independent of how much of the column is visible. A cell is valid for matching when a
  kept bin (hard rule, in training too, so validity does not change between training and
  inference) is inside the ground image.
- **Flat ground.** ``num_height_bins = 1`` is the "w/o Surface Model" ablation: one bin
  at 0 m, no head, the flat-ground BEV of DenseFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cvloc.geometry.checks import check_shape


@dataclass(frozen=True)
class SurfaceConfig:
    """Height bins and the surface rule.

    Attributes:
        num_height_bins: Z bins with centres evenly spaced over [0, ``max_height_m``];
            1 is the flat-ground ablation (one bin at 0 m, no height head).
        max_height_m: centre of the top bin, metres above the ground plane.
        threshold: tau of the cumulative rule, in (0, 1).
        temperature: T of the training-time sigmoid relaxation, > 0.
        reduced_dim: channels per bin after the shared 1x1x1 reduction of the head.
        hidden_dim: channels of the head's 3x3 convolution.
    """

    num_height_bins: int = 8
    max_height_m: float = 14.0
    threshold: float = 0.5
    temperature: float = 0.05
    reduced_dim: int = 8
    hidden_dim: int = 32

    def __post_init__(self) -> None:
        if self.num_height_bins < 1 or self.reduced_dim < 1 or self.hidden_dim < 1:
            raise ValueError(f"bins and widths must be positive, got {self}")
        if self.num_height_bins > 1 and not self.max_height_m > 0:
            raise ValueError(f"max_height_m must be positive, got {self.max_height_m}")
        if not 0.0 < self.threshold < 1.0 or not self.temperature > 0:
            raise ValueError(f"need 0 < threshold < 1 and temperature > 0, got {self}")

    def height_bins_m(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bin centres z_0 = 0 < ... < z_{Z-1} = ``max_height_m``.

        Args:
            device: device of the result.

        Returns:
            (Z,) float32 metres.
        """
        if self.num_height_bins == 1:
            return torch.zeros(1, device=device)
        return torch.linspace(0.0, self.max_height_m, self.num_height_bins, device=device)


@dataclass
class SurfaceOutput:
    """What the Surface Model gives per BEV cell (H x W = the satellite feature grid).

    Attributes:
        bev: (B, C, H, W) fused features, zero where ``bev_valid`` is False.
        bev_valid: (B, H, W) bool, a bin at or below the surface is seen by the camera.
        column_valid: (B, H, W) bool, any bin of the column is seen by the camera.
        height_m: (B, H, W) surface height (soft in training, hard in eval mode).
        logits: (B, Z, H, W) height-bin logits (zeros for the flat ground).
    """

    bev: torch.Tensor
    bev_valid: torch.Tensor
    column_valid: torch.Tensor
    height_m: torch.Tensor
    logits: torch.Tensor


def surface_steps(
    cumulative: torch.Tensor, threshold: float, temperature: float | None
) -> torch.Tensor:
    """The indicators s_k = [C_k >= tau] of the top-down rule, or their sigmoid relaxation.

    Args:
        cumulative: (B, Z, H, W) top-down cumulative mass C_k (C_0 = 1).
        threshold: tau.
        temperature: T of the relaxation, or None for the hard step.

    Returns:
        (B, Z, H, W) in [0, 1]; s_0 = 1 exactly (the ground bin is never above the surface).
    """
    if temperature is None:
        steps = (cumulative >= threshold).to(cumulative.dtype)
    else:
        steps = torch.sigmoid((cumulative - threshold) / temperature)
    return torch.cat([torch.ones_like(steps[:, :1]), steps[:, 1:]], dim=1)


def surface_height(steps: torch.Tensor, bins_m: torch.Tensor) -> torch.Tensor:
    """Surface height h = z_0 + sum_{k >= 1} s_k (z_k - z_{k-1}).

    Args:
        steps: (B, Z, H, W) indicators of :func:`surface_steps`.
        bins_m: (Z,) increasing bin centres.

    Returns:
        (B, H, W) metres.
    """
    rise = torch.diff(bins_m, prepend=bins_m[:1])  # 0, z_1 - z_0, ...
    return bins_m[0] + (steps * rise[None, :, None, None]).sum(1)


class SurfaceModel(nn.Module):
    """Height distribution, surface height and vertical fusion of a lifted BEV volume.

    Args:
        config: bins and rule.
        feat_dim: channels C of the lifted ground features.
    """

    def __init__(self, config: SurfaceConfig, feat_dim: int) -> None:
        super().__init__()
        self.config = cfg = config
        Z = cfg.num_height_bins
        self.register_buffer("bins_m", cfg.height_bins_m(), persistent=False)
        self.reduce: nn.Module | None = None
        self.head: nn.Module | None = None
        if Z > 1:
            # + 1 input channel: the bin's validity, so the head knows what it cannot see.
            self.reduce = nn.Sequential(nn.Conv3d(feat_dim + 1, cfg.reduced_dim, 1), nn.ReLU())
            self.head = nn.Sequential(
                nn.Conv2d(cfg.reduced_dim * Z, cfg.hidden_dim, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(cfg.hidden_dim, Z, 1),
            )

    def forward(self, volume: torch.Tensor, valid: torch.Tensor) -> SurfaceOutput:
        """Fuse a lifted volume into BEV features at the predicted surface.

        Args:
            volume: (B, C, Z, H, W) ground features at every cell and height bin
                (:func:`cvloc.geometry.bev.bev_from_prior` with ``heights_m`` =
                ``bins_m``), zero where not valid.
            valid: (B, Z, H, W) bool, the bin's 3-D point is seen by the camera.

        Returns:
            The fused features, validity masks, surface height and logits; the soft rule
            in training mode, the hard one in eval mode.
        """
        cfg = self.config
        check_shape(volume, ["B", "C", cfg.num_height_bins, "H", "W"], "volume")
        check_shape(valid, [volume.shape[0], *volume.shape[2:]], "valid")
        B, _, Z, H, W = volume.shape
        valid_f = valid.to(volume.dtype)
        if self.head is None or self.reduce is None:
            logits = volume.new_zeros(B, Z, H, W)
        else:
            reduced = self.reduce(torch.cat([volume, valid_f[:, None]], dim=1))  # B,c,Z,H,W
            logits = self.head(reduced.reshape(B, -1, H, W))
        weights = torch.softmax(logits.float(), dim=1)
        cumulative = weights.flip(1).cumsum(1).flip(1)  # mass at or above bin k
        hard = surface_steps(cumulative, cfg.threshold, None)
        if self.training:  # the relaxation, for gradients to the height distribution
            steps = surface_steps(cumulative, cfg.threshold, cfg.temperature)
        else:
            steps = hard
        bev_valid = (hard * valid_f).sum(1) > 0
        kept = (steps * weights * valid_f).to(volume.dtype)  # m_k w_k
        fused = (volume * kept[:, None]).sum(2) / kept.sum(1, keepdim=True).clamp_min(1e-6)
        return SurfaceOutput(
            bev=fused * bev_valid[:, None].to(fused.dtype),
            bev_valid=bev_valid,
            column_valid=valid.any(1),
            height_m=surface_height(steps, self.bins_m.to(steps.dtype)),
            logits=logits,
        )
