"""SimRefiner: local-global residual correction of the BEV-satellite similarity matrix.

ViewBridge (seed 000, notes section 3, Fig. 2c) refines the similarity S between N BEV
cells and M satellite cells with a Local Refine head (Delta_local), a Global Refine head
(Delta_global) and a Conf Head (alpha), S' = S + alpha * Delta. The layers are not
published; ours:

- **Local residual: translation-consistent neighbourhood consensus.** Entry (n, m)
  hypothesises that BEV cell n lies on satellite cell m; if so, BEV neighbour n + d lies
  near m + d (the BEV is laid out north-up at the prior pose, so only the prior's yaw
  error, +-10 deg on KITTI, 0 on VIGOR, turns the offsets: 0.25 cell at d = 1.4 cells).
  The support of (n, m) is therefore S(n + d, m + d) over displacements d in
  [-r, r]^2: the diagonal taps of a 4-D (2r + 1)^4 convolution. A per-entry MLP
  (T = (2r + 1)^2 taps -> c, ReLU -> 1) turns them into Delta_local. We first built the
  separable 4-D convolution (3x3 over satellite neighbours, then 3x3 over BEV
  neighbours, as VCN and DCCNet); on the CPU it cost 3.6 s per refinement round at batch 4
  (1024 x 1024 cells; convolutions of 4096 one-channel maps), the diagonal taps 0.5 s.
  Unseen BEV rows count as zero similarity (they support nothing). Limitation: under an
  unknown heading (prior yaw error up to 180 deg) the diagonal is the wrong neighbourhood.
- **Global residual: row and column context.** The statistics of row n and of column m
  (:mod:`.simstats`: max, logsumexp, mean, std) go through small MLPs to r_n and c_m in
  R^h; the entry's residual is v . relu(a S_nm + r_n + c_m) + b, an MLP on [S_nm, stats
  of row n, stats of column m] whose first layer is split so that it broadcasts. It can
  learn ratio-test and mutual-nearest-neighbour corrections that no local window sees.
- **Blocks.** Both residuals run over blocks of BEV rows: their temporaries stay small,
  which on the CPU halved the time of one pass over all B N M entries at once.
- **Confidence alpha** = sigmoid(a' S + u_l Delta_l + u_g Delta_g + r'_n + c'_m + b'),
  element-wise, from the same statistics.
- **Iterations.** ``iters`` rounds S <- S + alpha Delta with shared weights (RAFT-style
  weight tying; the paper does not say). The residual heads' last layers start at zero,
  so an untrained refiner is the identity and training starts from the raw similarity.
- **Ablations.** ``mode``: ``"both"``, ``"local"``, ``"global"`` or ``"none"`` (the
  identity, no parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.checks import check_shape
from cvloc.models.simstats import similarity_stats, stats_mlp

MODES = ("both", "local", "global", "none")
# Similarity entries per block of the residual heads: their temporaries stay below ~10 MB,
# where CPU allocations are recycled (larger ones are fresh, page-faulted mappings each time).
_BLOCK_ENTRIES = 1 << 18


@dataclass(frozen=True)
class SimRefinerConfig:
    """Which residuals, how wide, how many rounds.

    Attributes:
        mode: ``"both"``, ``"local"``, ``"global"`` or ``"none"``.
        iters: refinement rounds (shared weights), >= 1.
        local_channels: c, hidden channels of the local residual.
        local_radius: r, the local residual's taps are the (2r + 1)^2 displacements.
        global_hidden: h, hidden width of the per-entry global MLP.
        stats_hidden: hidden width of the row / column statistics MLPs.
    """

    mode: str = "both"
    iters: int = 2
    local_channels: int = 4
    local_radius: int = 1
    global_hidden: int = 8
    stats_hidden: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if min(self.iters, self.local_channels, self.global_hidden, self.stats_hidden) < 1 or (
            self.local_radius < 0
        ):
            raise ValueError(f"iters and widths must be positive, got {self}")


def _blocks(batch: int, grid_hw: tuple[int, int], num_cols: int) -> list[tuple[int, int, int]]:
    """(sample, first BEV grid row, end row) blocks of about ``_BLOCK_ENTRIES`` entries."""
    H, W = grid_hw
    rows = max(1, _BLOCK_ENTRIES // (W * num_cols))
    return [(b, i, min(H, i + rows)) for b in range(batch) for i in range(0, H, rows)]


class LocalResidual(nn.Module):
    """Translation-consistent neighbourhood consensus (see the module docstring).

    Args:
        channels: c, hidden channels of the per-entry MLP over the taps.
        radius: r, the taps are the (2r + 1)^2 displacements d in [-r, r]^2.
    """

    def __init__(self, channels: int, radius: int) -> None:
        super().__init__()
        self.radius = radius
        self.taps = nn.Linear((2 * radius + 1) ** 2, channels)
        self.out = nn.Linear(channels, 1)
        nn.init.zeros_(self.out.weight)  # identity refiner at initialisation
        nn.init.zeros_(self.out.bias)

    def forward(
        self, similarity: torch.Tensor, grid_hw: tuple[int, int], row_valid: torch.Tensor
    ) -> torch.Tensor:
        """Delta_local, evaluated in blocks of BEV rows.

        Args:
            similarity: (B, N, M) with N = M = H W (BEV and satellite share the grid).
            grid_hw: (H, W) of both grids; cell index n = i W + j.
            row_valid: (B, N) bool; unseen BEV rows count as zero similarity.

        Returns:
            (B, N, M) residual.
        """
        B, N, M = similarity.shape
        H, W = grid_hw
        r = self.radius
        offsets = [(di, dj) for di in range(2 * r + 1) for dj in range(2 * r + 1)]
        S4 = (similarity * row_valid[..., None]).reshape(B, H, W, H, W)
        blocks = []
        for b, i0, i1 in _blocks(B, grid_hw, M):
            # Zero padding: taps beyond either grid support nothing.
            padded = F.pad(
                S4[b, max(0, i0 - r) : i1 + r], (r,) * 6 + (r - min(r, i0), max(0, i1 + r - H))
            )
            # Tap d: S[(i + di, j + dj), (k + di, l + dj)] for every entry of the block.
            taps = torch.stack(
                [
                    padded[di : di + i1 - i0, dj : dj + W, di : di + H, dj : dj + W]
                    for di, dj in offsets
                ]
            ).reshape(len(offsets), -1)  # T,rows*W*M
            hidden = torch.relu(torch.addmm(self.taps.bias[:, None], self.taps.weight, taps))
            blocks.append(torch.addmm(self.out.bias[:, None], self.out.weight, hidden))
        return torch.cat(blocks, dim=1).reshape(B, N, M)


class GlobalResidual(nn.Module):
    """Row / column context residual (see the module docstring).

    Args:
        hidden: h, width of the per-entry MLP.
        stats_hidden: hidden width of the statistics MLPs.
    """

    def __init__(self, hidden: int, stats_hidden: int) -> None:
        super().__init__()
        self.row_mlp = stats_mlp(stats_hidden, hidden)
        self.col_mlp = stats_mlp(stats_hidden, hidden)
        self.entry_scale = nn.Parameter(torch.ones(hidden))
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)  # identity refiner at initialisation
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        similarity: torch.Tensor,
        grid_hw: tuple[int, int],
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Delta_global, evaluated in blocks of BEV rows.

        Args:
            similarity: (B, N, M), N = H W.
            grid_hw: (H, W) of the BEV grid.
            rows: (B, N, 4) row statistics (:func:`similarity_stats`).
            cols: (B, M, 4) column statistics.

        Returns:
            (B, N, M) residual.
        """
        B, N, M = similarity.shape
        W = grid_hw[1]
        r = self.row_mlp(rows).transpose(1, 2)[..., None]  # B,h,N,1
        c = self.col_mlp(cols).transpose(1, 2)[:, :, None]  # B,h,1,M
        scale = self.entry_scale[:, None, None]
        blocks = []
        for b, i0, i1 in _blocks(B, grid_hw, M):
            n0, n1 = i0 * W, i1 * W
            pre = torch.addcmul(r[b, :, n0:n1] + c[b], scale, similarity[b, None, n0:n1])
            hidden = torch.relu(pre).flatten(1)  # h,rows*W*M
            blocks.append(torch.addmm(self.out.bias[:, None], self.out.weight, hidden))
        return torch.cat(blocks, dim=1).reshape(B, N, M)


class ConfidenceHead(nn.Module):
    """Element-wise gate alpha in [0, 1] (see the module docstring).

    Args:
        stats_hidden: hidden width of the statistics MLPs.
    """

    def __init__(self, stats_hidden: int) -> None:
        super().__init__()
        self.row_mlp = stats_mlp(stats_hidden, 1)
        self.col_mlp = stats_mlp(stats_hidden, 1)
        # Weights of S, Delta_local and Delta_global; the bias sits in the MLPs.
        self.mix = nn.Parameter(torch.zeros(3))

    def forward(
        self,
        similarity: torch.Tensor,
        deltas: tuple[torch.Tensor, torch.Tensor],
        rows: torch.Tensor,
        cols: torch.Tensor,
    ) -> torch.Tensor:
        """Alpha.

        Args:
            similarity: (B, N, M).
            deltas: (Delta_local, Delta_global), (B, N, M) each (zeros when disabled).
            rows: (B, N, 4) row statistics.
            cols: (B, M, 4) column statistics.

        Returns:
            (B, N, M) gate in [0, 1].
        """
        a, u_l, u_g = self.mix
        logit = a * similarity + u_l * deltas[0] + u_g * deltas[1]
        logit = logit + self.row_mlp(rows) + self.col_mlp(cols).transpose(1, 2)
        return torch.sigmoid(logit)


class SimRefiner(nn.Module):
    """S' = S + alpha * (Delta_local + Delta_global), ``iters`` times.

    Args:
        config: residual switches, widths and rounds.
    """

    def __init__(self, config: SimRefinerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        use_local = cfg.mode in ("both", "local")
        use_global = cfg.mode in ("both", "global")
        self.local = LocalResidual(cfg.local_channels, cfg.local_radius) if use_local else None
        self.global_ = GlobalResidual(cfg.global_hidden, cfg.stats_hidden) if use_global else None
        self.confidence = ConfidenceHead(cfg.stats_hidden) if cfg.mode != "none" else None

    def forward(
        self, similarity: torch.Tensor, grid_hw: tuple[int, int], row_valid: torch.Tensor
    ) -> torch.Tensor:
        """Refine a similarity matrix (float32, autocast off).

        Args:
            similarity: (B, N, M) BEV x satellite scores, N = M = H W.
            grid_hw: (H, W) of the shared cell grid (cell n = i W + j).
            row_valid: (B, N) bool, the BEV cells seen by the camera.

        Returns:
            (B, N, M) refined scores; the input itself when ``mode == "none"``.
        """
        check_shape(similarity, ["B", grid_hw[0] * grid_hw[1], grid_hw[0] * grid_hw[1]], "S")
        check_shape(row_valid, list(similarity.shape[:2]), "row_valid")
        if self.confidence is None:
            return similarity
        S = similarity.float()
        with torch.autocast(device_type=S.device.type, enabled=False):
            for _ in range(self.config.iters):
                rows, cols = similarity_stats(S, row_valid)
                zero = S.new_zeros(())
                d_local = zero if self.local is None else self.local(S, grid_hw, row_valid)
                d_global = zero if self.global_ is None else self.global_(S, grid_hw, rows, cols)
                alpha = self.confidence(S, (d_local, d_global), rows, cols)
                S = S + alpha * (d_local + d_global)
        return S
