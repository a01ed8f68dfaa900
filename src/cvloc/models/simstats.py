"""Row and column statistics of a similarity matrix: context of the SimRefiner and dustbin.

A BEV cell's row of the similarity (its scores against every satellite cell) and a
satellite cell's column (against every seen BEV cell) are summarised by their max,
logsumexp - log(count), mean and std: a peaked row is a confident match, a flat one an
ambiguous cell. The SimRefiner's global residual and confidence gate (:mod:`.simrefiner`)
and the adaptive dustbin (:mod:`.matching`) read them through small MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cvloc.geometry.checks import check_shape

NUM_STATS = 4  # max, normalised logsumexp, mean, std
# Masked entries of the column statistics: far below any similarity, finite in float32.
_MASKED = -1.0e4


@torch.no_grad()
def similarity_stats(
    similarity: torch.Tensor, row_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column statistics of a similarity matrix, as constant context features.

    Rows (BEV cells) are described over all M satellite cells; columns over the valid rows
    only. Statistics: max, logsumexp - log(count), mean, std. A column of a sample without
    valid rows gets zeros. No gradient flows through them: the heads that read them still
    learn, and the second-order signal through the statistics would double the cost of
    these B N M reductions.

    Args:
        similarity: (B, N, M) scores.
        row_valid: (B, N) bool, the BEV cells to use.

    Returns:
        rows: (B, N, 4) and columns: (B, M, 4).
    """
    check_shape(similarity, ["B", "N", "M"], "similarity")
    check_shape(row_valid, list(similarity.shape[:2]), "row_valid")
    S = similarity
    rows = torch.stack(
        [S.amax(2), S.logsumexp(2) - math.log(S.shape[2]), S.mean(2), S.std(2, correction=0)], -1
    )
    w = row_valid.to(S.dtype)[..., None]  # B,N,1
    count = w.sum(1)  # B,1
    masked = torch.where(row_valid[..., None], S, S.new_tensor(_MASKED))
    mean = (S * w).sum(1) / count.clamp_min(1.0)
    var = (((S - mean[:, None]) * w) ** 2).sum(1) / count.clamp_min(1.0)
    lse = masked.logsumexp(1) - count.clamp_min(1.0).log()
    cols = torch.stack([masked.amax(1), lse, mean, var.sqrt()], -1)
    return rows, torch.where(count[..., None] > 0, cols, 0.0)


def stats_mlp(hidden: int, out_dim: int) -> nn.Sequential:
    """Two-layer MLP on the 4 statistics of :func:`similarity_stats`.

    Args:
        hidden: hidden width.
        out_dim: output width.

    Returns:
        (*, 4) -> (*, out_dim) module.
    """
    return nn.Sequential(
        nn.Linear(NUM_STATS, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )
