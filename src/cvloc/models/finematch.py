"""FineMatch: fine-grained cross-view matching with a Surface Model and a SimRefiner.

Our implementation of ViewBridge (seed 000, ``papers/viewbridge-notes.md``), CPU-sized.
Composition only; every stage lives in its own module: encoders (:mod:`.encoders`), the
ground-to-BEV lifting over height bins at the prior pose
(:func:`cvloc.geometry.bev.bev_from_prior`), the Surface Model (:mod:`.surface`), the BEV
RefineBlock (:mod:`.refine`), descriptors, similarity, adaptive dustbin, matches and pose
(:mod:`.matching`), and the SimRefiner (:mod:`.simrefiner`). Unlike the paper (frozen
DINOv2, a 6-layer deformable-attention lifting), the backbone is the trainable ResNet of
DenseFlow and the lifting is geometric, so the two methods differ only in what follows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from cvloc.geometry.bev import satellite_grid_uv
from cvloc.models.corr import alignment_scores, best_shift_camera_uv
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
from cvloc.models.matching import (
    NO_MATCH_SCORE,
    AdaptiveDustbin,
    DescriptorHead,
    MatchingConfig,
    extract_matches,
    pose_from_matches,
    prior_window_mask,
    similarity,
)
from cvloc.models.refine import RefineBlock
from cvloc.models.simrefiner import SimRefiner, SimRefinerConfig
from cvloc.models.surface import SurfaceConfig, SurfaceModel, SurfaceOutput
from cvloc.models.visibility import VisibilityHead

AMP_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class FineMatchConfig:
    """FineMatch hyper-parameters (defaults: ours; FG2's 128-d descriptors and tau 0.1).

    Attributes:
        encoder: backbone of the ground and satellite encoders.
        surface: height bins and the surface rule (``num_height_bins=1``: the "w/o
            Surface Model" ablation, flat ground).
        refiner: SimRefiner switches (``mode="none"``: the "w/o SimRefiner" ablation).
        matching: similarity temperature, dustbin, match window and pose solver.
        feat_dim: channels of the encoder features lifted to the BEV.
        desc_dim: descriptor dimension D.
        stride: satellite pixels per cell, the encoders' stride: 8 or 4 (dilated).
        ground_stride: the ground encoder's stride, at most ``stride``; None: ``stride``.
            As DenseFlow's (:class:`cvloc.models.denseflow.DenseFlowConfig`): a denser
            map with the same weights, read with the offset they were trained with.
        bev_samples: points averaged per BEV cell along each axis, at every height bin
            (:func:`cvloc.geometry.bev.bev_from_prior`).
        visibility: a visibility head (:mod:`.visibility`, ours) whose probability that
            a cell's lifted ground pixel sees it multiplies the cell's match weight.
        visibility_hidden: channels of its hidden convolutions.
        mixed_precision: autocast the CNNs on CUDA (similarity, refiner, coupling and
            pose stay in float32). No effect on CPU.
        amp_dtype: ``"bfloat16"`` or ``"float16"``.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    surface: SurfaceConfig = field(default_factory=SurfaceConfig)
    refiner: SimRefinerConfig = field(default_factory=SimRefinerConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    feat_dim: int = 128
    desc_dim: int = 128
    stride: int = OUTPUT_STRIDE
    ground_stride: int | None = None
    bev_samples: int = 1
    visibility: bool = False
    visibility_hidden: int = 32
    mixed_precision: bool = False
    amp_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.stride not in OUTPUT_STRIDES:
            raise ValueError(f"stride must be one of {OUTPUT_STRIDES}, got {self.stride}")
        ground_sampling(self.stride, self.ground_stride, self.bev_samples)
        if min(self.feat_dim, self.desc_dim, self.visibility_hidden) < 1:
            raise ValueError(f"feat_dim and desc_dim must be positive, got {self}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")


class _Matched(NamedTuple):
    """One prior's BEV-to-satellite similarity and what it was built from."""

    sim: torch.Tensor  # (B, N, M) refined similarity S', not yet windowed
    surface: SurfaceOutput
    row_valid: torch.Tensor  # (B, N) bool: the cell's surface is seen
    seen_logits: torch.Tensor | None  # (B, 1, H, W) visibility logits
    seen: torch.Tensor | None  # (B, 1, H, W) visibility probability, float32
    window: torch.Tensor | None  # (B, N, M) bool prior window


class FineMatch(nn.Module):
    """Ground + satellite images and a prior pose -> matches, surface heights and pose.

    ``forward(batch)`` reads the keys of :attr:`required_keys` (schema
    :mod:`cvloc.data.batch`; never the ground truth) and returns a new dict. The BEV is the
    satellite feature grid (Hf x Wf = Hs / s x Ws / s at the stride s, N = M = Hf Wf cells,
    n = i Wf + j) placed with the camera at the prior pose:

    - ``camera_uv_pred`` (B, 2), ``camera_xy_pred`` (B, 2), ``yaw_deg_pred`` (B,): the pose.
    - ``match_src_uv`` (B, N, 2): BEV cell centres in satellite pixels; ``match_dst_uv``
      (B, N, 2): their matched satellite pixels; ``match_weight`` (B, N): the weight of
      each match in the pose fit (as DenseFlow's are its pose head's): its coupling mass,
      times its inlier weight with ``matching.robust_iters`` > 0 (the re-weighting started
      from ``align_uv_pred`` with ``matching.robust_start="alignment"``); ``match_height_m``
      (B, N): the predicted surface height of each BEV cell, with which a match is lifted
      to its ground-image pixel.
    - ``surface_height_m`` (B, 1, Hf, Wf), ``height_logits`` (B, Z, Hf, Wf),
      ``height_bins_m`` (Z,): the Surface Model.
    - ``similarity`` (B, N, M): the refined similarity S', ``NO_MATCH_SCORE`` outside
      the prior window; ``coupling``
      (B, N + 1, M + 1): the dual-softmax coupling with the dustbin at index N / M.
    - ``bev_valid`` (B, 1, Hf, Wf): float 0/1, a cell's surface is seen by the camera;
      ``column_valid`` (B, 1, Hf, Wf): any height of the cell is seen.
    - ``visibility`` (B, 1, Hf, Wf) and ``visibility_logits``, with ``config.visibility``:
      the probability that the cell's lifted ground pixel sees the cell; it multiplies
      the cell's match weight.
    - ``align_uv_pred`` (B, 2), with ``shift_range_m`` in the batch: the camera moved by
      the best whole-cell shift of the BEV over the refined similarity, up to the prior's
      position bound along each axis (:func:`cvloc.models.corr.alignment_camera_uv`; seen cells,
      weighted by their visibility). Rotation is not searched. ``align_scores``
      (B, 2r + 1, 2r + 1): the score of every shift (dx, dy) of the search, at
      [dy + r, dx + r] (:func:`cvloc.models.corr.alignment_scores`), with which
      :class:`cvloc.models.refinement.PriorRefinement` weighs heading hypotheses (scored
      together, sharing the encoders, by :meth:`heading_alignment_scores`).

    Args:
        config: hyper-parameters.
    """

    required_keys: ClassVar[tuple[str, ...]] = LOCALIZER_INPUT_KEYS

    def __init__(self, config: FineMatchConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else FineMatchConfig()
        ground_stride, self.ground_offset_px = ground_sampling(
            cfg.stride, cfg.ground_stride, cfg.bev_samples
        )
        self.ground_encoder = ResNetEncoder(cfg.encoder, cfg.feat_dim, ground_stride)
        self.satellite_encoder = ResNetEncoder(cfg.encoder, cfg.feat_dim, cfg.stride)
        if cfg.encoder.pretrained_path is not None:
            for encoder in (self.ground_encoder, self.satellite_encoder):
                load_pretrained(encoder, cfg.encoder.pretrained_path)
        self.surface = SurfaceModel(cfg.surface, cfg.feat_dim)
        # Spatial mixing compensates the stretched, sparse far-range BEV (DenseFlow eq. 2).
        self.bev_refine = RefineBlock(cfg.feat_dim, True, cfg.encoder.norm)
        self.bev_descriptor = DescriptorHead(cfg.feat_dim, cfg.desc_dim, cfg.encoder.norm)
        self.sat_descriptor = DescriptorHead(cfg.feat_dim, cfg.desc_dim, cfg.encoder.norm)
        self.refiner = SimRefiner(cfg.refiner)
        self.dustbin = AdaptiveDustbin(cfg.matching.dustbin_hidden, cfg.matching.dustbin_init)
        self.visibility: VisibilityHead | None = None
        if cfg.visibility:
            bins = cfg.surface.num_height_bins
            self.visibility = VisibilityHead(cfg.feat_dim, bins, cfg.visibility_hidden)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Match, lift and localize a batch.

        Args:
            batch: dict with :attr:`required_keys`: ``ground`` (B, 3, Hg, Wg) and
                ``satellite`` (B, 3, Hs, Ws) in [0, 1] with all sizes divisible by 8,
                ``camera_model`` (one model for the batch), ``K`` (B, 3, 3),
                ``camera_height_m`` (B,), ``m_per_px`` (B,), ``sat_center_uv`` (B, 2),
                ``camera_uv_prior`` (B, 2), ``yaw_deg_prior`` (B,).

        Returns:
            The prediction dict described in the class docstring.

        Raises:
            KeyError: required keys are missing.
            ShapeError: an image has the wrong shape or size.
        """
        ground, satellite = check_batch(batch, self.required_keys, "FineMatch")
        cfg = self.config
        f_grd, d_sat = self._encode(ground, satellite)
        grid_hw = (d_sat.shape[-2], d_sat.shape[-1])
        m = self._match(f_grd, d_sat, batch)
        # 6. The best rigid shift of the whole BEV over it: a coarse pose (optional use).
        extra = self._align(m.sim, m.window, m.row_valid, m.seen, batch, grid_hw)
        # 7. Adaptive dustbin + dual softmax, inside the prior's window.
        coupling = self.dustbin(m.sim, m.row_valid, m.window)
        sim = m.sim
        if m.window is not None:  # the losses see what the coupling saw
            sim = torch.where(m.window, sim, sim.new_tensor(NO_MATCH_SCORE))
        # 8. Windowed expected match of every BEV cell (weighted by its visibility);
        # weighted Procrustes, prior composed.
        start_uv = extra.get("align_uv_pred") if cfg.matching.robust_start == "alignment" else None
        pred = self._localize(coupling.probs, batch, grid_hw, m.seen, start_uv)
        if m.seen is not None:
            extra.update(visibility=m.seen, visibility_logits=m.seen_logits)
        surface = m.surface
        return {
            **pred,
            **extra,
            "match_height_m": surface.height_m.flatten(1),
            "surface_height_m": surface.height_m[:, None],
            "height_logits": surface.logits,
            "height_bins_m": self.surface.bins_m,
            "similarity": sim,
            "coupling": coupling.probs,
            "bev_valid": surface.bev_valid[:, None].float(),
            "column_valid": surface.column_valid[:, None].float(),
        }

    @torch.no_grad()
    def heading_alignment_scores(
        self, batch: dict[str, Any], yaw_deg_priors: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """``align_scores`` at several prior headings, sharing what does not turn.

        The same maps as ``forward(dict(batch, yaw_deg_prior=yaw))["align_scores"]`` for
        each heading, without the work they do not need: both encoders and the satellite
        descriptors run once (they do not depend on the prior), the dustbin, matches and
        pose fit not at all. Only the lifting, Surface Model, BEV descriptors, visibility
        and SimRefiner run per heading. Inference only (no gradients).

        Args:
            batch: as :meth:`forward`, with ``shift_range_m`` (the search's bound).
            yaw_deg_priors: n tensors (B,), the prior heading of each hypothesis (degrees).

        Returns:
            (B, n, 2 r + 1, 2 r + 1) the shift scores of each hypothesis.

        Raises:
            KeyError: required keys or ``shift_range_m`` are missing.
            ValueError: no heading was given.
        """
        ground, satellite = check_batch(batch, self.required_keys, "FineMatch")
        if "shift_range_m" not in batch:
            raise KeyError("FineMatch.heading_alignment_scores needs shift_range_m in the batch")
        if not yaw_deg_priors:
            raise ValueError("FineMatch.heading_alignment_scores needs at least one heading")
        f_grd, d_sat = self._encode(ground, satellite)
        grid_hw = (d_sat.shape[-2], d_sat.shape[-1])
        maps = []
        for yaw in yaw_deg_priors:
            hypothesis = dict(batch, yaw_deg_prior=yaw)
            m = self._match(f_grd, d_sat, hypothesis)
            align = self._align(m.sim, m.window, m.row_valid, m.seen, hypothesis, grid_hw)
            maps.append(align["align_scores"])
        return torch.stack(maps, dim=1)

    def _encode(
        self, ground: torch.Tensor, satellite: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1. Ground features (B, C, h, w) and L2-normalised satellite descriptors (B, D, H, W)."""
        with self._autocast(satellite.device):
            f_grd = self.ground_encoder(ground)
            d_sat = self.sat_descriptor(self.satellite_encoder(satellite))
        return f_grd, d_sat

    def _match(self, f_grd: torch.Tensor, d_sat: torch.Tensor, batch: dict[str, Any]) -> _Matched:
        """Steps 2-5 at the batch's prior: lifting, surface, BEV descriptors, similarity."""
        cfg = self.config
        grid_hw = (d_sat.shape[-2], d_sat.shape[-1])
        with self._autocast(d_sat.device):
            # 2. Ground features lifted over the height bins of every BEV cell (prior pose).
            volume, valid = self._lift(f_grd, batch, grid_hw)
            # 3. Surface Model: height distribution, surface height, visible-only fusion.
            surface = self.surface(volume, valid)
            # 4. L2-normalised BEV descriptors.
            bev = self.bev_refine(surface.bev)
            d_bev = self.bev_descriptor(bev)
            # 4b. Whether each cell's lifted ground pixel sees it (optional head).
            seen_logits = self._visibility(bev, surface.logits, valid, batch)
        row_valid = surface.bev_valid.flatten(1)
        # 5. Similarity S = D_bev^T D_sat / tau, refined by the SimRefiner (float32).
        sim = self.refiner(similarity(d_bev, d_sat, cfg.matching.temperature), grid_hw, row_valid)
        seen = None if seen_logits is None else torch.sigmoid(seen_logits.float())
        window = self._window(batch, grid_hw)
        return _Matched(sim, surface, row_valid, seen_logits, seen, window)

    def _localize(
        self,
        probs: torch.Tensor,
        batch: dict[str, Any],
        grid_hw: tuple[int, int],
        seen: torch.Tensor | None,
        start_uv: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Coupling (B, N + 1, M + 1) -> pose and matches.

        ``seen``: the visibility (B, 1, H, W) or None; ``start_uv``: (B, 2) the camera at
        the alignment, where the robust fit starts (``matching.robust_start``), or None.
        """
        cfg = self.config
        dst_uv, weight = extract_matches(
            probs[:, :-1, :-1], grid_hw, cfg.stride, cfg.matching.window_radius
        )
        if seen is not None:  # learned from its own target only, not through the pose
            weight = weight * seen.detach().flatten(1)
        src_uv = satellite_grid_uv(*grid_hw, cfg.stride, dst_uv.dtype, dst_uv.device)
        src_uv = src_uv.reshape(1, -1, 2).expand(probs.shape[0], -1, -1)
        geo = (batch[k] for k in ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior"))
        camera_xy, yaw_deg, camera_uv, fit_weight = pose_from_matches(
            src_uv, dst_uv, weight, *geo, config=cfg.matching,
            known_heading=known_heading(batch), start_uv=start_uv,
        )  # fmt: skip
        return {
            "camera_uv_pred": camera_uv,
            "camera_xy_pred": camera_xy,
            "yaw_deg_pred": yaw_deg,
            "match_src_uv": src_uv,
            "match_dst_uv": dst_uv,
            "match_weight": fit_weight,
        }

    def _window(self, batch: dict[str, Any], grid_hw: tuple[int, int]) -> torch.Tensor | None:
        """The prior window (B, N, M), or None when ``matching.prior_window`` is off."""
        if not self.config.matching.prior_window:
            return None
        keys = ("camera_uv_prior", "m_per_px", "shift_range_m", "yaw_range_deg")
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(
                f"FineMatch with matching.prior_window needs batch keys {missing} "
                "(the prior's noise bounds); set model.finematch.matching.prior_window=false "
                "to match against the whole map"
            )
        return prior_window_mask(grid_hw, self.config.stride, *(batch[k] for k in keys))

    def _align(
        self,
        sim: torch.Tensor,
        window: torch.Tensor | None,
        row_valid: torch.Tensor,
        seen: torch.Tensor | None,
        batch: dict[str, Any],
        grid_hw: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """``align_uv_pred``, ``align_scores``: rigid shifts of the BEV over the similarity.

        A coarse pose that a refinement pass can start from
        (:class:`cvloc.models.refinement.PriorRefinement`); {} without ``shift_range_m``.
        Entries outside a cell's prior window count 0, no evidence, as cells beyond the
        grid do: the heading bound widens a far cell's window, so a shift is judged only
        where the prior allows each cell to be (validated on 100 kitti-small val pairs
        with the earlier sqrt(2)-wide search, 10 m bound: top-30 P@15px 80.1 % with the
        raw similarity, 82.8 % so).
        """
        if "shift_range_m" not in batch:
            return {}
        if window is not None:
            sim = torch.where(window, sim, 0.0)
        weight = row_valid.unflatten(1, grid_hw).float()
        if seen is not None:
            weight = weight * seen[:, 0]
        # The prior's bound is per axis (east, north): shifts beyond it are ruled out.
        stride = self.config.stride
        scores = alignment_scores(sim, weight, batch["shift_range_m"], batch["m_per_px"], stride)
        camera_uv = best_shift_camera_uv(scores, batch["camera_uv_prior"], stride)
        return {"align_uv_pred": camera_uv, "align_scores": scores}

    def _visibility(
        self,
        bev: torch.Tensor,
        height_logits: torch.Tensor,
        bin_valid: torch.Tensor,
        batch: dict[str, Any],
    ) -> torch.Tensor | None:
        """Visibility logits (B, 1, H, W), or None without the head."""
        if self.visibility is None:
            return None
        H, W = bev.shape[-2:]
        stride = self.config.stride
        cells = satellite_grid_uv(H, W, stride, torch.float32, bev.device)  # H,W,2
        offset = cells[None] - batch["camera_uv_prior"].float()[:, None, None]
        range_cells = offset.norm(dim=-1)[:, None] / (stride * max(H, W))
        return self.visibility(bev, height_logits, bin_valid, range_cells)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        return cuda_autocast(self.config.mixed_precision, self.config.amp_dtype, device)

    def _lift(
        self, features: torch.Tensor, batch: dict[str, Any], grid_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground features (B, C, h, w) -> volume (B, C, Z, H, W), validity (B, Z, H, W)."""
        return bev_at_prior(
            features,
            batch,
            grid_hw,
            heights_m=self.surface.bins_m,
            samples_per_cell=self.config.bev_samples,
            feature_offset_px=self.ground_offset_px,
        )
