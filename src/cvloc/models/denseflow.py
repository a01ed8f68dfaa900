"""DenseFlow: dense BEV-to-satellite flow and least-squares pose (Song et al., NeurIPS 2023).

Composition only; every stage lives in its own module: encoders (:mod:`.encoders`), the
ground-to-BEV projection at the prior pose (:func:`cvloc.geometry.bev.bev_from_prior`),
the RefineBlock (:mod:`.refine`), the correlation pyramid (:mod:`.corr`), the recurrent
update (:mod:`.update`) and the pose from the flow (:mod:`.pose_head`).

Two options beyond the paper sharpen the projection without changing any weight's shape
(:class:`DenseFlowConfig`): ``ground_stride=4`` computes the ground and context features
at twice the density of a stride-8 satellite grid, and ``bev_samples=n`` makes each BEV
cell the mean of n x n projected points over its footprint instead of one point at its
centre. Both default to the paper's projection.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.bev import satellite_grid_uv
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.models.corr import CorrPyramid, alignment_camera_uv
from cvloc.models.encoders import (
    OUTPUT_STRIDE,
    OUTPUT_STRIDES,
    EncoderConfig,
    ResNetEncoder,
    load_pretrained,
)
from cvloc.models.inputs import (
    LOCALIZER_INPUT_KEYS,
    bev_at_prior,
    check_batch,
    cuda_autocast,
    ground_sampling,
    known_heading,
)
from cvloc.models.pose_head import pose_from_flow
from cvloc.models.refine import RefineBlock
from cvloc.models.update import UpdateBlock, UpdateConfig, convex_upsample, upsample_flow

AMP_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class DenseFlowConfig:
    """DenseFlow hyper-parameters (defaults: the paper, section 4.3, and RAFT).

    Attributes:
        encoder: backbone of the ground, satellite and context encoders (ResNet-18).
        update: widths of the motion encoder and heads.
        out_dim: channels of the ground / satellite features (256).
        hidden_dim: channels of the GRU state (128).
        context_dim: channels of the context features (128).
        corr_levels: correlation pyramid levels (4).
        corr_radius: correlation lookup radius (4).
        iters: GRU iterations (12).
        stride: satellite (and image) pixels per feature cell of the encoders: 8 (the
            paper) or 4 (dilated, :class:`~cvloc.models.encoders.ResNetEncoder`; the
            paper's metric cell size on coarser satellite images).
        ground_stride: output stride of the ground and context encoders, 8 or 4 and at
            most ``stride``; None: ``stride``. A denser ground map than the satellite grid
            (the same weights, dilated) gives each BEV sample a feature computed where it
            falls instead of one interpolated between coarse cells. The encoder's cell j
            is centred on image pixel ``ground_stride j`` (its convolutions are padded
            symmetrically), not on the pixel-centre convention's ``ground_stride (j +
            0.5) - 0.5``; weights trained at ``stride`` learned that convention's offset
            of (stride - 1) / 2 pixels, so the denser map is read with the same offset
            (:func:`cvloc.models.inputs.ground_sampling`).
        bev_samples: points averaged per BEV cell along each axis (1: eq. 1's one point
            at the cell centre; :func:`cvloc.geometry.bev.bev_from_prior`).
        use_ground_projection: False replaces the geometric projection by a bilinear resize
            of the ground feature map onto the satellite feature grid, every cell visible
            (ablation "w/o Ground Feature Projection", table 5).
        use_refine_block: False makes the RefineBlock the identity (ablation, table 5).
        use_confidence: False drops the confidence head; the pose weights are the
            visibility only and ``confidence_iters`` are all ones (ablation, table 5).
        mixed_precision: autocast the CNNs and the GRU on CUDA (the geometry, correlation,
            upsampling and pose stay in float32). No effect on CPU.
        amp_dtype: ``"bfloat16"`` (no loss scaling needed) or ``"float16"``.
        pose_stride: the pose head uses every ``pose_stride``-th full-resolution pixel.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    out_dim: int = 256
    hidden_dim: int = 128
    context_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 4
    iters: int = 12
    stride: int = OUTPUT_STRIDE
    ground_stride: int | None = None
    bev_samples: int = 1
    use_ground_projection: bool = True
    use_refine_block: bool = True
    use_confidence: bool = True
    mixed_precision: bool = False
    amp_dtype: str = "bfloat16"
    pose_stride: int = 1

    def __post_init__(self) -> None:
        if self.stride not in OUTPUT_STRIDES:
            raise ValueError(f"stride must be one of {OUTPUT_STRIDES}, got {self.stride}")
        ground_sampling(self.stride, self.ground_stride, self.bev_samples)
        sizes = (self.out_dim, self.hidden_dim, self.context_dim, self.corr_levels)
        if min(sizes) < 1 or self.iters < 1 or self.pose_stride < 1 or self.corr_radius < 0:
            raise ValueError(f"sizes, iters and pose_stride must be positive, got {self}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")


class DenseFlow(nn.Module):
    """Ground + satellite images and a prior pose -> dense flow, confidence and 3-DoF pose.

    ``forward(batch)`` reads the keys of :attr:`required_keys` (schema:
    :mod:`cvloc.data.batch`; never the ground-truth pose or extrinsics) and returns a new
    dict; s = stride, Hs x Ws the satellite size:

    - ``flow_iters``: list of ``iters`` (B, 2, Hs, Ws) flows in satellite pixels: BEV pixel
      (u, v), placed with the prior pose, matches satellite pixel (u, v) + flow.
    - ``confidence_iters``: list of ``iters`` (B, 1, Hs, Ws) match scores in [0, 1].
    - ``bev_valid``: (B, 1, Hs, Ws) float 0/1, BEV cells seen by the ground camera.
    - ``camera_uv_pred`` (B, 2), ``camera_xy_pred`` (B, 2), ``yaw_deg_pred`` (B,): the pose.
    - ``match_src_uv``, ``match_dst_uv`` (B, N, 2), ``match_weight`` (B, N): the
      correspondences of the pose head (N = (Hs / pose_stride) (Ws / pose_stride)).

    Args:
        config: hyper-parameters; the default is the paper's model.
    """

    required_keys: ClassVar[tuple[str, ...]] = LOCALIZER_INPUT_KEYS

    def __init__(self, config: DenseFlowConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else DenseFlowConfig()
        # Ground pixels from the pixel-centre convention to where the ground encoder's cells
        # are read (ground_stride's docstring above); 0 when ground_stride == stride.
        ground_stride, self.ground_offset_px = ground_sampling(
            cfg.stride, cfg.ground_stride, cfg.bev_samples
        )
        self.ground_encoder = ResNetEncoder(cfg.encoder, cfg.out_dim, ground_stride)
        self.satellite_encoder = ResNetEncoder(cfg.encoder, cfg.out_dim, cfg.stride)
        self.context_encoder = ResNetEncoder(
            cfg.encoder, cfg.hidden_dim + cfg.context_dim, ground_stride
        )
        if cfg.encoder.pretrained_path is not None:
            for encoder in (self.ground_encoder, self.satellite_encoder, self.context_encoder):
                load_pretrained(encoder, cfg.encoder.pretrained_path)
        self.refine = RefineBlock(cfg.out_dim, cfg.use_refine_block, cfg.encoder.norm)
        corr_channels = cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2
        self.update = UpdateBlock(
            cfg.hidden_dim,
            cfg.context_dim,
            corr_channels,
            cfg.stride,
            cfg.use_confidence,
            cfg.update,
        )

    def forward(self, batch: dict[str, Any], correlation_only: bool = False) -> dict[str, Any]:
        """Estimate the flow, the confidence and the pose of a batch.

        Args:
            batch: dict with :attr:`required_keys`: ``ground`` (B, 3, Hg, Wg) and
                ``satellite`` (B, 3, Hs, Ws) in [0, 1] with all sizes divisible by 8,
                ``camera_model`` (one model for the batch), ``K`` (B, 3, 3),
                ``camera_height_m`` (B,), ``m_per_px`` (B,), ``sat_center_uv`` (B, 2),
                ``camera_uv_prior`` (B, 2), ``yaw_deg_prior`` (B,).
            correlation_only: stop after the correlation (feature pre-training,
                ``train.objective=features``): no context encoder, GRU or flow; the pose
                is the prior shifted by the best rigid alignment of the BEV over the
                satellite features (:meth:`align_pose`), the heading is the prior's.

        Returns:
            The prediction dict described in the class docstring (with
            ``correlation_only``: only ``correlation``, ``feature_valid`` and the pose).

        Raises:
            KeyError: required keys are missing.
            ShapeError: an image has the wrong shape or size.
        """
        ground, satellite = check_batch(batch, self.required_keys, "DenseFlow")
        cfg = self.config
        grid_hw = (satellite.shape[-2] // cfg.stride, satellite.shape[-1] // cfg.stride)
        if correlation_only:
            return self._correlate(batch, ground, satellite, grid_hw)
        with self._autocast(satellite.device):
            # 1. Feature encoders CNN_g, CNN_s and the context encoder (sections 3.1, 3.2).
            f_grd = self.ground_encoder(ground)
            f_sat = self.satellite_encoder(satellite)
            c_grd = self.context_encoder(ground)
            # 2. Ground features and context to the BEV on the satellite feature grid at the
            #    prior pose (eq. 1, flat ground), with the visibility of every cell.
            bev, valid = self._to_bev(torch.cat([f_grd, c_grd], dim=1), batch, grid_hw)
            f_bev, hidden, context = bev.split([cfg.out_dim, cfg.hidden_dim, cfg.context_dim], 1)
            # 3. RefineBlock: F_g2s (eq. 2).
            f_g2s = self.refine(f_bev)
            # 4. All-pairs correlation pyramid, built once (section 3.2).
            corr = CorrPyramid(f_g2s, f_sat, cfg.corr_levels, cfg.corr_radius)
            # 5. GRU iterations from zero flow, upsampled to satellite pixels.
            flow_iters, confidence_iters = self._iterate(
                corr, torch.tanh(hidden), torch.relu(context), grid_hw
            )
        bev_valid = F.interpolate(valid[:, None].float(), scale_factor=cfg.stride)
        # 6. Least-squares pose from the final flow, weights S = visibility x score (eq. 3).
        pose = pose_from_flow(
            flow_iters[-1],
            bev_valid[:, 0] * confidence_iters[-1][:, 0],
            *(batch[k] for k in ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior")),
            stride=cfg.pose_stride,
            known_heading=known_heading(batch),
        )
        return {
            "flow_iters": flow_iters,
            "confidence_iters": confidence_iters,
            "bev_valid": bev_valid,
            "camera_uv_pred": pose.camera_uv,
            "camera_xy_pred": pose.camera_xy,
            "yaw_deg_pred": pose.yaw_deg,
            "match_src_uv": pose.src_uv,
            "match_dst_uv": pose.dst_uv,
            "match_weight": pose.weight,
            # Level-0 correlation (B, HW, H2W2) and cell visibility (B, H, W), for the
            # optional auxiliary losses.
            "correlation": _level0(corr),
            "feature_valid": valid,
        }

    def _correlate(
        self,
        batch: dict[str, Any],
        ground: torch.Tensor,
        satellite: torch.Tensor,
        grid_hw: tuple[int, int],
    ) -> dict[str, Any]:
        """Stages 1-4 without the context: correlation, visibility and the alignment pose."""
        with self._autocast(satellite.device):
            f_bev, valid = self._to_bev(self.ground_encoder(ground), batch, grid_hw)
            f_sat = self.satellite_encoder(satellite)
            corr = CorrPyramid(self.refine(f_bev), f_sat, 1, 0)
        correlation = _level0(corr)
        camera_uv = self.align_pose(correlation, valid, batch)
        center, m = batch["sat_center_uv"], batch["m_per_px"]
        return {
            "correlation": correlation,
            "feature_valid": valid,
            "camera_uv_pred": camera_uv,
            "camera_xy_pred": pixel_to_world_xy(camera_uv, center, m),
            "yaw_deg_pred": batch["yaw_deg_prior"].float(),
        }

    def align_pose(
        self, correlation: torch.Tensor, valid: torch.Tensor, batch: dict[str, Any]
    ) -> torch.Tensor:
        """Camera position of the best rigid shift of the BEV over the satellite features.

        Template matching on the correlation volume: every shift of the BEV (placed at
        the prior) by whole feature cells up to the prior's position bound along each axis
        (east, north), ``ceil(shift_range_m / (m_per_px stride))`` cells, is scored by
        :func:`cvloc.models.corr.shifted_match_scores` over the visible cells; the camera
        moves with the best one (:func:`cvloc.models.corr.alignment_camera_uv`). Rotation is
        not searched. Not differentiable (argmax).

        Convention: satellite pixels (u, v), integer pixel centres.

        Args:
            correlation: (B, H W, H2 W2) level-0 correlation.
            valid: (B, H, W) visible BEV cells.
            batch: the batch (``camera_uv_prior``, ``shift_range_m``, ``m_per_px``).

        Returns:
            (B, 2) camera positions in satellite pixels.
        """
        return alignment_camera_uv(
            correlation, valid, batch["camera_uv_prior"], batch["shift_range_m"],
            batch["m_per_px"], self.config.stride,
        )  # fmt: skip

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        return cuda_autocast(self.config.mixed_precision, self.config.amp_dtype, device)

    def _to_bev(
        self, features: torch.Tensor, batch: dict[str, Any], grid_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground features (B, C, h, w) -> BEV (B, C, H, W) and visibility (B, H, W)."""
        if not self.config.use_ground_projection:
            bev = F.interpolate(features, size=grid_hw, mode="bilinear", align_corners=False)
            return bev, torch.ones_like(bev[:, 0], dtype=torch.bool)
        return bev_at_prior(
            features,
            batch,
            grid_hw,
            samples_per_cell=self.config.bev_samples,
            feature_offset_px=self.ground_offset_px,
        )

    def _iterate(
        self,
        corr: CorrPyramid,
        hidden: torch.Tensor,
        context: torch.Tensor,
        grid_hw: tuple[int, int],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """RAFT's refinement loop; returns the upsampled flows and confidences."""
        s = self.config.stride
        B, device = hidden.shape[0], hidden.device
        # Match positions in satellite feature cells, (x, y) = (column, row); the BEV grid
        # is the satellite grid, so the initial matches are the cells themselves.
        coords0 = _cell_coords(B, grid_hw, device)
        coords1 = coords0
        flows, confidences = [], []
        for _ in range(self.config.iters):
            coords1 = coords1.detach()
            step = self.update(hidden, context, corr.lookup(coords1), coords1 - coords0)
            hidden = step.hidden
            coords1 = coords1 + step.delta_flow.float()  # F(t+1) = F(t) + delta(t)
            flows.append(upsample_flow(coords1 - coords0, step.mask, s))
            if step.confidence is None:
                confidences.append(flows[-1].new_ones(B, 1, *flows[-1].shape[-2:]))
            else:
                confidences.append(convex_upsample(step.confidence, step.mask, s))
        return flows, confidences


def _level0(corr: CorrPyramid) -> torch.Tensor:
    """The pyramid's level 0 as (B, H W, H2 W2)."""
    level0 = corr.pyramid[0]
    return level0.reshape(corr.bev_shape[0], -1, level0.shape[-2] * level0.shape[-1])


def _cell_coords(batch: int, grid_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Every satellite feature cell's own position, (B, 2, H, W) as (x, y) = (column, row).

    The BEV grid is the satellite grid, so these are the matches of zero flow.
    """
    coords = satellite_grid_uv(*grid_hw, dtype=torch.float32, device=device)
    return coords.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)
