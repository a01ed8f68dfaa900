"""BEV feature RefineBlock (DenseFlow paper section 3.1, eq. 2).

The flat-ground projection is wrong for everything above the ground plane and stretches
distant cells; the RefineBlock re-mixes the projected BEV features with a large receptive
field: a 7x7 convolution, a 3x3 residual block for local detail, and a 1x1 convolution for
channel interaction, F_g2s = RefineBlock(F_g, p') (eq. 2).
"""

from __future__ import annotations

import torch
from torch import nn

from cvloc.models.encoders import BasicBlock


class RefineBlock(nn.Module):
    """7x7 conv + ReLU, 3x3 residual block, 1x1 conv (eq. 2); or the identity.

    Args:
        dim: channels C of the BEV features (kept).
        enabled: False makes the block the identity (ablation "w/o BEV Feature
            RefineBlock", paper table 5).
        norm: normalisation of the residual block, see
            :func:`cvloc.models.encoders.make_norm`.
    """

    def __init__(self, dim: int, enabled: bool = True, norm: str = "batch") -> None:
        super().__init__()
        self.block: nn.Module = nn.Identity()
        if enabled:
            self.block = nn.Sequential(
                nn.Conv2d(dim, dim, 7, padding=3),  # large receptive field
                nn.ReLU(inplace=True),
                BasicBlock(dim, dim, 1, norm),  # local detail
                nn.Conv2d(dim, dim, 1),  # channel interaction
            )

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """Refine BEV features.

        Args:
            bev: (B, C, H, W) projected ground features on the satellite feature grid.

        Returns:
            (B, C, H, W) refined features F_g2s.
        """
        return self.block(bev)
