"""Recurrent flow update: motion encoder, ConvGRU, flow / confidence / mask heads (RAFT).

DenseFlow (paper section 3.2) refines the BEV-to-satellite matches with RAFT's update
operator: the correlation features around the current match and the current flow are
encoded, a GRU updates its hidden state from them and the context features, and heads
predict the flow increment, a per-match score S (the match confidence of eq. 3 and 5) and
the weights of RAFT's convex 8x upsampling.

The GRU is RAFT's separable SepConvGRU (a 1x5 then a 5x1 gated update) rather than a 3x3
ConvGRU: at about the same cost per iteration it reaches 2 cells further in each
direction, which helps the large BEV-satellite displacements (a +-20 m prior at 0.2 m/px
and stride 8 is +-12 cells, plus the rotation error) propagate in 12 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.checks import check_shape


@dataclass(frozen=True)
class UpdateConfig:
    """Widths of the update operator (defaults: RAFT's BasicUpdateBlock).

    Attributes:
        corr_dims: channels of the two convolutions encoding the correlation features.
        flow_dims: channels of the two convolutions encoding the current flow.
        motion_dim: channels of the motion features (the current flow included).
        head_dim: hidden channels of the flow, confidence and mask heads.
    """

    corr_dims: tuple[int, int] = (256, 192)
    flow_dims: tuple[int, int] = (128, 64)
    motion_dim: int = 128
    head_dim: int = 256

    def __post_init__(self) -> None:
        widths = (*self.corr_dims, *self.flow_dims, self.head_dim)
        if len(self.corr_dims) != 2 or len(self.flow_dims) != 2 or min(widths) < 1:
            raise ValueError(f"update widths must be 2 + 2 positive channels, got {self}")
        if self.motion_dim < 3:
            raise ValueError(f"motion_dim must be > 2 (it includes the flow), got {self}")


class UpdateOutput(NamedTuple):
    """One GRU step's results, at the feature resolution (h, w).

    Attributes:
        hidden: (B, hidden_dim, h, w) new GRU state.
        delta_flow: (B, 2, h, w) flow increment in feature cells.
        confidence: (B, 1, h, w) match score in [0, 1], or None without a confidence head.
        mask: (B, 9 s^2, h, w) convex upsampling logits.
    """

    hidden: torch.Tensor
    delta_flow: torch.Tensor
    confidence: torch.Tensor | None
    mask: torch.Tensor


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_dim, 3, padding=1),
    )


class MotionEncoder(nn.Module):
    """Encode correlation features and the current flow (RAFT's BasicMotionEncoder).

    Args:
        corr_channels: channels of the correlation lookup, levels (2r + 1)^2.
        config: widths.
    """

    def __init__(self, corr_channels: int, config: UpdateConfig) -> None:
        super().__init__()
        c0, c1 = config.corr_dims
        f0, f1 = config.flow_dims
        self.convc1 = nn.Conv2d(corr_channels, c0, 1)
        self.convc2 = nn.Conv2d(c0, c1, 3, padding=1)
        self.convf1 = nn.Conv2d(2, f0, 7, padding=3)
        self.convf2 = nn.Conv2d(f0, f1, 3, padding=1)
        self.conv = nn.Conv2d(c1 + f1, config.motion_dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        """Motion features.

        Args:
            flow: (B, 2, h, w) current flow in feature cells.
            corr: (B, corr_channels, h, w) correlation features.

        Returns:
            (B, motion_dim, h, w), the last two channels the flow itself.
        """
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([c, f], dim=1)))
        return torch.cat([out, flow.to(out.dtype)], dim=1)


class SepConvGRU(nn.Module):
    """Convolutional GRU with separable 1x5 and 5x1 kernels, applied in sequence (RAFT).

    Args:
        hidden_dim: channels of the hidden state.
        input_dim: channels of the input.
    """

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        dims = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(dims, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(dims, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(dims, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(dims, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(dims, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(dims, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _step(
        h: torch.Tensor, x: torch.Tensor, convz: nn.Module, convr: nn.Module, convq: nn.Module
    ) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One GRU update.

        Args:
            h: (B, hidden_dim, h, w) hidden state.
            x: (B, input_dim, h, w) input.

        Returns:
            (B, hidden_dim, h, w) new hidden state.
        """
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class UpdateBlock(nn.Module):
    """Motion encoder, SepConvGRU, and the flow, confidence and mask heads.

    Args:
        hidden_dim: channels of the GRU state.
        context_dim: channels of the context features.
        corr_channels: channels of the correlation lookup.
        scale: upsampling factor s of the convex mask (the feature stride, 8 or 4).
        use_confidence: whether to build the confidence head.
        config: widths.
    """

    def __init__(
        self,
        hidden_dim: int,
        context_dim: int,
        corr_channels: int,
        scale: int,
        use_confidence: bool,
        config: UpdateConfig,
    ) -> None:
        super().__init__()
        self.encoder = MotionEncoder(corr_channels, config)
        self.gru = SepConvGRU(hidden_dim, context_dim + config.motion_dim)
        self.flow_head = _head(hidden_dim, config.head_dim, 2)
        self.confidence_head = _head(hidden_dim, config.head_dim, 1) if use_confidence else None
        self.mask_head = nn.Sequential(
            nn.Conv2d(hidden_dim, config.head_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.head_dim, 9 * scale * scale, 1),
        )

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> UpdateOutput:
        """One refinement step.

        Args:
            hidden: (B, hidden_dim, h, w) GRU state.
            context: (B, context_dim, h, w) context features.
            corr: (B, corr_channels, h, w) correlation lookup at the current matches.
            flow: (B, 2, h, w) current flow in feature cells.

        Returns:
            The new state, the flow increment, the confidence and the upsampling mask.
        """
        motion = self.encoder(flow, corr)
        hidden = self.gru(hidden, torch.cat([context, motion], dim=1))
        confidence = None
        if self.confidence_head is not None:
            confidence = torch.sigmoid(self.confidence_head(hidden))
        # RAFT scales the mask logits by 0.25 to balance their gradients.
        mask = 0.25 * self.mask_head(hidden)
        return UpdateOutput(hidden, self.flow_head(hidden), confidence, mask)


def convex_upsample(x: torch.Tensor, mask: torch.Tensor, scale: int) -> torch.Tensor:
    """Upsample by convex combinations of each cell's 3x3 neighbourhood (RAFT).

    Every fine pixel (s i + a, s j + b) is a softmax-weighted average of the coarse 3x3
    neighbourhood of cell (i, j). Unlike RAFT, the border is replicate-padded rather than
    zero-padded, so a constant field upsamples to the same constant everywhere and values in
    [0, 1] stay in [0, 1]. Computed in float32 even under autocast.

    Convention: mask channel k s^2 + a s + b weighs neighbour k (row-major in the 3x3 window)
    for the fine pixel at row offset a and column offset b inside the cell; fine pixel
    centres follow the coarse cell centres, (j + 0.5) s - 0.5.

    Args:
        x: (B, C, h, w) coarse field.
        mask: (B, 9 s^2, h, w) combination logits.
        scale: upsampling factor s.

    Returns:
        (B, C, s h, s w) float32.
    """
    check_shape(x, ["B", "C", "h", "w"], "x")
    B, C, h, w = x.shape
    check_shape(mask, [B, 9 * scale * scale, h, w], "mask")
    with torch.autocast(device_type=x.device.type, enabled=False):
        weights = mask.float().view(B, 1, 9, scale, scale, h, w).softmax(dim=2)
        patches = F.unfold(F.pad(x.float(), (1, 1, 1, 1), mode="replicate"), 3)  # B,C*9,h*w
        out = (weights * patches.view(B, C, 9, 1, 1, h, w)).sum(dim=2)  # B,C,s,s,h,w
    return out.permute(0, 1, 4, 2, 5, 3).reshape(B, C, scale * h, scale * w)


def upsample_flow(flow: torch.Tensor, mask: torch.Tensor, scale: int) -> torch.Tensor:
    """Convex-upsample a flow field and convert it to fine pixels.

    Convention: a displacement of d coarse cells is s d fine pixels (the coarse grid has
    stride s); here feature cells to full-resolution satellite pixels, (x, y) = (u, v).

    Args:
        flow: (B, 2, h, w) flow in coarse cells.
        mask: (B, 9 s^2, h, w) combination logits.
        scale: upsampling factor s.

    Returns:
        (B, 2, s h, s w) flow in fine pixels, float32.
    """
    check_shape(flow, ["B", 2, "h", "w"], "flow")
    return convex_upsample(flow.float() * scale, mask, scale)
