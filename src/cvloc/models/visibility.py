"""Visibility head: does the ground pixel a BEV cell is lifted to see that cell?

FineMatch reports each match as a ground pixel <-> satellite pixel pair: the BEV cell
lifted at its predicted surface height through the prior camera. Where a nearer surface (a
facade, a car, a hedge) stands between the camera and the cell, that pixel shows the
occluder, and the pair is no true correspondence, however right the cell's placement
(the SimRefiner's local consensus carries a hidden cell with its neighbours). On the
synthetic kitti-small val pairs these were 71 % of FineMatch's wrong top-30 matches on
well-localised pairs (``benchmarks/match_errors.py``). A line of sight over the predicted
top-surface heights does not find them (tree canopies stand over visible ground; see
``training/README.md``), so the head learns it.

Ours, not in the paper (whose Surface Model fuses only visible bins but scores every
cell). Per cell, a logit from the refined BEV features, the height distribution, the
per-bin validity and the distance to the camera, through two 3 x 3 convolutions (the
second dilated: the occluder lies a few cells nearer) and a 1 x 1 one. Its probability
multiplies the cell's match weight (:class:`cvloc.models.finematch.FineMatch`); the
target (:func:`cvloc.losses_finematch.visibility_targets`) says whether the lifted pixel's
true satellite location lies near the cell's.
"""

from __future__ import annotations

import torch
from torch import nn

# Initial logit: sigmoid(4) = 0.98, so an untrained head leaves the match weights as
# they were (and the confident-match threshold meaningful).
INITIAL_LOGIT = 4.0


class VisibilityHead(nn.Module):
    """BEV features, height distribution, validity, range -> visibility logit per cell.

    Args:
        feat_dim: channels C of the refined BEV features.
        num_bins: Z height bins.
        hidden: channels of the hidden convolutions.
    """

    def __init__(self, feat_dim: int, num_bins: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(feat_dim + 2 * num_bins + 1, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, INITIAL_LOGIT)

    def forward(
        self,
        bev: torch.Tensor,
        height_logits: torch.Tensor,
        bin_valid: torch.Tensor,
        range_cells: torch.Tensor,
    ) -> torch.Tensor:
        """Visibility logits.

        Args:
            bev: (B, C, H, W) refined BEV features.
            height_logits: (B, Z, H, W) the Surface Model's bin logits.
            bin_valid: (B, Z, H, W) bool, the bin's point is inside the ground image.
            range_cells: (B, 1, H, W) horizontal distance of each cell from the prior
                camera, in cells, divided by the grid's larger side.

        Returns:
            (B, 1, H, W) logits; sigmoid gives the probability that the cell is seen.
        """
        heights = torch.softmax(height_logits.float(), dim=1).to(bev.dtype)
        x = torch.cat([bev, heights, bin_valid.to(bev.dtype), range_cells.to(bev.dtype)], 1)
        return self.net(x)
