"""Non-learned reference methods: the prior pose, and a classical BEV-to-satellite search.

Both follow the model contract (``forward(batch) -> dict`` with ``camera_uv_pred``,
``camera_xy_pred``, ``yaw_deg_pred``), so :func:`cvloc.evaluate.evaluate` scores them like
any learned model. :class:`PriorBaseline` is the floor every method must beat.
:class:`ClassicalBaseline` projects the ground image to a bird's-eye view on flat ground
(:func:`cvloc.geometry.bev.bev_from_prior`), compares gradient images of the BEV and the
satellite image by masked normalised cross-correlation (Padfield, "Masked object
registration in the Fourier domain", TIP 2012), searches every translation at once with
FFTs and every heading on a grid, and refines the best cell to sub-cell precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cvloc.geometry.bev import bev_from_prior, satellite_grid_uv
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import wrap_deg

# A template renderer: (yaw offsets (N,) deg, camera shift (2,) grid cells) -> templates
# (N, C, H, W) and masks (N, H, W).
Renderer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
FEATURES = ("magnitude", "orientation")
_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


class PriorBaseline(nn.Module):
    """Returns the prior pose unchanged: the error every localizer starts from."""

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Copy the prior pose into the prediction keys.

        Args:
            batch: dict with ``camera_uv_prior`` (B, 2), ``yaw_deg_prior`` (B,),
                ``sat_center_uv`` (B, 2) and ``m_per_px`` (B,).

        Returns:
            ``camera_uv_pred`` (B, 2), ``camera_xy_pred`` (B, 2), ``yaw_deg_pred`` (B,).
        """
        uv = batch["camera_uv_prior"]
        return {
            "camera_uv_pred": uv.clone(),
            "camera_xy_pred": pixel_to_world_xy(uv, batch["sat_center_uv"], batch["m_per_px"]),
            "yaw_deg_pred": batch["yaw_deg_prior"].clone(),
        }


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of :class:`ClassicalBaseline`.

    Attributes:
        cell_m: search cell size in metres (the resolution scale); a sample's stride, in
            satellite pixels per cell, is the nearest integer to cell_m / m_per_px, >= 1.
        supersample: BEV samples per cell and axis, averaged (anti-aliasing of the near
            field, where a BEV cell covers many ground-image pixels).
        feature: ``"magnitude"`` (Sobel magnitude) or ``"orientation"`` (polarity-free
            doubled-angle gradient orientation, 2 channels); both contrast-normalised.
        yaw_step_deg: heading grid step.
        coarse_yaw_step_deg: step of a first, coarse pass used when the heading range
            exceeds ``coarse_above_deg`` (e.g. unknown heading, range 180).
        coarse_above_deg: heading half-range above which the search is coarse-to-fine.
        default_shift_range_m: position half-range per axis for samples whose
            ``shift_range_m`` is 0 (undeclared, see :data:`cvloc.data.pairs.META_DEFAULTS`).
            A ``yaw_range_deg`` of 0 means a known heading: only the prior heading is tried.
        max_distance_m: ignore BEV cells farther than this from the camera as placed for
            the template (the flat-ground BEV smears everything that is not ground more
            with distance); None keeps all.
        min_overlap: a shift counts only if at least this fraction of the template's
            cells overlaps the satellite image.
        refine_iters: local passes re-rendered at the current estimate, each with half
            the previous heading step (see :func:`correlation_search`).
    """

    cell_m: float = 0.4
    supersample: int = 1
    feature: str = "orientation"
    yaw_step_deg: float = 1.0
    coarse_yaw_step_deg: float = 6.0
    coarse_above_deg: float = 45.0
    default_shift_range_m: float = 20.0
    max_distance_m: float | None = None
    min_overlap: float = 0.5
    refine_iters: int = 2

    def __post_init__(self) -> None:
        if not self.cell_m > 0 or self.supersample < 1 or self.refine_iters < 0:
            raise ValueError(f"need cell_m > 0, supersample >= 1, refine_iters >= 0: {self}")
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {self.feature!r}")
        if not (self.yaw_step_deg > 0 and self.coarse_yaw_step_deg >= self.yaw_step_deg):
            raise ValueError("need 0 < yaw_step_deg <= coarse_yaw_step_deg")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")


class ClassicalBaseline(nn.Module):
    """Classical localizer: flat-ground BEV, gradient images, exhaustive NCC search.

    Per sample: (1) the satellite image is averaged to a grid of cells of about
    ``config.cell_m`` metres (an integer stride of satellite pixels) and turned into
    gradient features; (2) for every candidate heading yaw_prior + d, the grey ground image
    is projected to the same grid on flat ground with the camera at the prior position
    (equivalently, the prior BEV rotated about the prior camera by d, but sampled once,
    without a second interpolation); (3) masked NCC over all shifts within the prior's
    range picks (d, t), refined at the estimate (:func:`correlation_search`); (4) the pose
    is the prior moved by t with heading yaw_prior + d. If the camera truly is at c_gt with
    heading yaw_gt, the template for d = yaw_gt - yaw_prior shows the satellite content of
    cell q + (c_gt - c_prior), so t estimates c_gt - c_prior. Ranges come from the batch
    (``shift_range_m``, 0 meaning undeclared: the config default; ``yaw_range_deg``, 0
    meaning a known heading). When no shift has enough visible overlap the prior is
    returned.

    The correspondences are the prior BEV's cells (satellite pixels placed with the prior
    pose) moved by the estimated rigid motion, the same form as DenseFlow's ``match_*``
    keys. Their scores are in [0, 1] like the learned methods' confidences: the cell's
    gradient strength relative to the strongest visible cell, times the search's best
    NCC clamped to [0, 1] (the method's own confidence in the alignment), so a match is
    confident (:data:`cvloc.metrics.MATCH_CONFIDENT_SCORE`) only where both are high.

    Args:
        config: search settings; the default searches 0.4 m cells at 1-degree steps.
    """

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ClassicalConfig()

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize every sample of a batch.

        Args:
            batch: dict of the :mod:`cvloc.data.batch` schema; reads ``ground``
                (B, 3, Hg, Wg), ``satellite`` (B, 3, Hs, Ws), ``camera_model``, ``K``
                (B, 3, 3), ``camera_height_m``, ``m_per_px`` (B,), ``sat_center_uv``,
                ``camera_uv_prior`` (B, 2), ``yaw_deg_prior``, ``shift_range_m``,
                ``yaw_range_deg`` (B,).

        Returns:
            ``camera_uv_pred`` (B, 2), ``camera_xy_pred`` (B, 2), ``yaw_deg_pred`` (B,),
            ``match_src_uv`` / ``match_dst_uv`` (B, N, 2), ``match_weight`` (B, N) with
            N = (Hs // stride) (Ws // stride) (stride from ``config.cell_m``, so samples of
            a batch must share ``m_per_px``), and ``search_score`` (B,) the best NCC.
        """
        models = batch["camera_model"]
        outputs = [
            self._localize(
                {k: v[b : b + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)},
                models if isinstance(models, str) else models[b],
            )
            for b in range(batch["ground"].shape[0])
        ]
        out = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        out["camera_xy_pred"] = pixel_to_world_xy(
            out["camera_uv_pred"], batch["sat_center_uv"], batch["m_per_px"]
        )
        return out

    def _localize(self, sample: dict[str, torch.Tensor], camera_model: str) -> dict[str, Any]:
        """One sample (tensors with B = 1) -> its prediction tensors (B = 1)."""
        cfg = self.config
        s = max(1, round(cfg.cell_m / float(sample["m_per_px"])))
        sat = sample["satellite"]
        grid_hw = (sat.shape[-2] // s, sat.shape[-1] // s)
        sat_grey = F.avg_pool2d(_grey(sat[..., : grid_hw[0] * s, : grid_hw[1] * s]), s)
        image, _ = gradient_features(sat_grey.float(), None, cfg.feature)
        render = self._renderer(sample, camera_model, grid_hw, s)
        m_per_px = float(sample["m_per_px"])
        shift_range_m = float(sample["shift_range_m"]) or cfg.default_shift_range_m
        yaw_range_deg = float(sample["yaw_range_deg"])
        max_shift = math.ceil(shift_range_m / m_per_px / s)
        found = correlation_search(render, image[0], yaw_range_deg, max_shift, cfg)
        uv_prior = sample["camera_uv_prior"].double()
        yaw_prior = sample["yaw_deg_prior"].double()
        offset = found.yaw_offset_deg  # 0 with zero shift when the search found nothing
        camera_uv = uv_prior + found.shift_uv.to(sat.device)[None] * s
        # Correspondences: prior-BEV cells moved by the estimated rigid motion. d is a
        # compass (clockwise) angle; on the v-down satellite image that is the matrix
        # [[cos, -sin], [sin, cos]] acting on (u, v).
        features, mask = render(torch.zeros(1), torch.zeros(2))
        src = satellite_grid_uv(*grid_hw, float(s), torch.float64, sat.device).reshape(1, -1, 2)
        d = math.radians(offset)
        M = src.new_tensor([[math.cos(d), -math.sin(d)], [math.sin(d), math.cos(d)]])
        dst = camera_uv[:, None] + (src - uv_prior[:, None]) @ M.T
        # sum-of-squares: vector_norm over the channel dimension is slow on CPU.
        strength = features.square().sum(1).sqrt().flatten(1) * mask.flatten(1)
        ncc = min(max(found.score, 0.0), 1.0)  # -inf when nothing was found: no confidence
        weight = strength / strength.amax().clamp_min(torch.finfo(strength.dtype).tiny) * ncc
        dtype = sample["camera_uv_prior"].dtype
        return {
            "camera_uv_pred": camera_uv.to(dtype),
            "yaw_deg_pred": wrap_deg(yaw_prior + offset).to(dtype),
            "match_src_uv": src.to(dtype),
            "match_dst_uv": dst.to(dtype),
            "match_weight": weight.to(dtype),
            "search_score": torch.tensor([found.score], dtype=dtype, device=sat.device),
        }

    def _renderer(
        self,
        sample: dict[str, torch.Tensor],
        camera_model: str,
        grid_hw: tuple[int, int],
        stride: int,
    ) -> Renderer:
        """The BEV gradient template of one sample on its (H, W) grid of ``stride`` pixels."""
        cfg = self.config
        ss = cfg.supersample
        # Rendering runs in float32 (coordinates of a few hundred pixels need no more);
        # the correlation sums are float64.
        ground = _grey(sample["ground"]).float()
        ground_size = (ground.shape[-1], ground.shape[-2])
        device = ground.device
        cell_uv = satellite_grid_uv(*grid_hw, float(stride), torch.float32, device)
        max_distance_px = (cfg.max_distance_m or math.inf) / float(sample["m_per_px"])

        def render(
            offsets: torch.Tensor, shift: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            n = len(offsets)
            offsets = offsets.to(device, torch.float32)
            camera_uv = sample["camera_uv_prior"].float() + shift.to(device).float() * stride

            def rep(x: torch.Tensor) -> torch.Tensor:
                return x.float().expand(n, *x.shape[1:])

            bev, valid = bev_from_prior(
                rep(ground),
                rep(sample["K"]) if camera_model == "pinhole" else None,
                camera_model,
                ground_size,
                rep(sample["sat_center_uv"]),
                rep(sample["m_per_px"]),
                camera_uv.expand(n, 2),
                sample["yaw_deg_prior"].float() + offsets,
                rep(sample["camera_height_m"]),
                (grid_hw[0] * ss, grid_hw[1] * ss),
                stride / ss,
            )
            # A cell counts only if all its sub-samples are visible.
            covered = F.avg_pool2d(valid[:, None].float(), ss)[:, 0] > 1.0 - 1e-6
            near = torch.linalg.vector_norm(cell_uv - camera_uv[0], dim=-1) <= max_distance_px
            return gradient_features(F.avg_pool2d(bev, ss), covered & near, cfg.feature)

        return render


class SearchResult(NamedTuple):
    """Best alignment found by :func:`correlation_search`.

    Attributes:
        yaw_offset_deg: heading offset of the best template (sub-step refined), degrees.
        shift_uv: (2,) shift (du, dv) in grid cells (sub-cell refined): the template at
            cell q matches the image at q + shift.
        score: the normalised cross-correlation at the best alignment (the vertex of the
            parabolas through the best cell), about [-1, 1]; -inf when nothing overlapped.
    """

    yaw_offset_deg: float
    shift_uv: torch.Tensor
    score: float


def gradient_features(
    image: torch.Tensor, mask: torch.Tensor | None, feature: str = "orientation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrast-normalised gradient images for cross-modal correlation.

    Sobel gradients (replicate border) of a grey image; a cell keeps its value only if its
    whole 3 x 3 neighbourhood is valid, so the edge of a BEV's visible area is no edge.
    The magnitude is divided by its mean over the valid cells, then compressed with
    log(1 + m) so a few strong edges cannot dominate the correlation. ``"orientation"``
    returns that value times (cos 2 theta, sin 2 theta): the doubled angle makes a
    dark-to-bright and a bright-to-dark edge of the same direction agree.

    Convention: image rows v (south) and columns u (east), theta = atan2(dv, du).

    Args:
        image: (N, 1, H, W) grey image.
        mask: (N, H, W) bool valid cells, or None (all valid).
        feature: ``"magnitude"`` or ``"orientation"``.

    Returns:
        features: (N, C, H, W) with C = 1 or 2, zero outside the mask.
        mask: (N, H, W) bool, the eroded mask.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    sobel_u = image.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    kernels = torch.stack([sobel_u, sobel_u.T])[:, None]  # 2,1,3,3
    g = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernels)  # N,2,H,W
    if mask is None:
        mask = torch.ones_like(image[:, 0], dtype=torch.bool)
    mask = -F.max_pool2d(-mask[:, None].to(image.dtype), 3, 1, 1)[:, 0] > 0.5  # erode
    magnitude = torch.hypot(g[:, 0], g[:, 1])[:, None] * mask[:, None]  # fast 2-channel norm
    mean = magnitude.sum((1, 2, 3), keepdim=True) / mask.sum((1, 2))[:, None, None, None]
    strength = torch.log1p(magnitude / mean.clamp(min=1e-6))
    if feature == "magnitude":
        return strength, mask
    gu, gv = g.unbind(1)
    angle2 = 2.0 * torch.atan2(gv, gu)[:, None]
    return strength * torch.cat([torch.cos(angle2), torch.sin(angle2)], dim=1), mask


def masked_ncc(
    templates: torch.Tensor,
    template_mask: torch.Tensor,
    image: torch.Tensor,
    max_shift: int,
    min_overlap: float = 0.5,
) -> torch.Tensor:
    """Masked normalised cross-correlation of templates with an image, for all shifts, by FFT.

    For shift t = (du, dv), the score is the Pearson correlation of template(q) and
    image(q + t) over the cells q inside the template mask whose shifted cell lies inside
    the image, all channels pooled (Padfield 2012, eq. 12 with a full image mask). Zero
    padding to (H + s, W + s) keeps the circular FFT correlation exact for |t| <= s.
    Computed in float64.

    Convention: template and image share one grid, (H, W) = (rows v, columns u); the
    result's entry [n, s + dv, s + du] is the score of shift (du, dv).

    Args:
        templates: (N, C, H, W) template features.
        template_mask: (N, H, W) bool cells of each template to use.
        image: (C, H, W) image features.
        max_shift: s, the largest |du| and |dv| in cells.
        min_overlap: shifts where fewer than this fraction of the template's cells land
            inside the image, or where a side has no variance, score -inf.

    Returns:
        scores: (N, 2 s + 1, 2 s + 1) in [-1, 1], or -inf.
    """
    C, H, W = templates.shape[1:]
    size = (H + max_shift, W + max_shift)
    m_t = template_mask.to(torch.float64)[:, None]  # N,1,H,W
    t = templates.to(torch.float64) * m_t
    i = image.to(torch.float64)[None]  # 1,C,H,W

    def spectrum(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x, s=size)

    def correlate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sum_q a(q) b(q + t) = IFFT(conj(A) B), summed over channels.
        full = torch.fft.irfft2((a.conj() * b).sum(1), s=size)  # N,*size
        rolled = torch.roll(full, (max_shift, max_shift), dims=(-2, -1))
        return rolled[:, : 2 * max_shift + 1, : 2 * max_shift + 1]

    f_mt, f_ones = spectrum(m_t), spectrum(torch.ones_like(i[:, :1]))
    count = C * correlate(f_mt, f_ones)
    sum_t = correlate(spectrum(t.sum(1, keepdim=True)), f_ones)
    sum_tt = correlate(spectrum((t * t).sum(1, keepdim=True)), f_ones)
    sum_i = correlate(f_mt, spectrum(i.sum(1, keepdim=True)))
    sum_ii = correlate(f_mt, spectrum((i * i).sum(1, keepdim=True)))
    sum_ti = correlate(spectrum(t), spectrum(i))
    n = count.clamp(min=1.0)
    var = (sum_tt - sum_t**2 / n) * (sum_ii - sum_i**2 / n)
    scores = (sum_ti - sum_t * sum_i / n) / var.clamp(min=1e-30).sqrt()
    full_count = C * template_mask.flatten(1).sum(1).to(torch.float64)[:, None, None]
    # FFT rounding leaves ~1e-12 relative noise in the sums: treat such variances as none.
    scale = (sum_tt.abs() * sum_ii.abs()).clamp(min=1e-300)
    ok = (count >= min_overlap * full_count - 0.5) & (var > 1e-9 * scale)
    return torch.where(ok, scores.clamp(-1.0, 1.0), -math.inf)


def yaw_offsets(half_range_deg: float, step_deg: float, center_deg: float = 0.0) -> torch.Tensor:
    """A heading grid center + k step covering [center - half_range, center + half_range].

    Convention: degrees; a half-range of 180 or more covers the circle once, [-180, 180).

    Args:
        half_range_deg: half-width of the searched interval, >= 0.
        step_deg: grid step, > 0.
        center_deg: centre of the interval.

    Returns:
        (N,) float64 offsets.
    """
    if half_range_deg >= 180.0:
        n = max(1, round(360.0 / step_deg))
        return center_deg - 180.0 + torch.arange(n, dtype=torch.float64) * (360.0 / n)
    k = math.floor(half_range_deg / step_deg + 1e-9)
    return center_deg + torch.arange(-k, k + 1, dtype=torch.float64) * step_deg


def correlation_search(
    render: Renderer,
    image: torch.Tensor,
    yaw_range_deg: float,
    max_shift: int,
    config: ClassicalConfig,
) -> SearchResult:
    """Exhaustive heading x translation search of a rendered template against an image.

    1. Global pass: every heading offset on the grid of :func:`yaw_offsets` (coarse-to-fine
       above ``config.coarse_above_deg``) is rendered and correlated with the image over
       all shifts within ``max_shift`` (:func:`masked_ncc`); headings are compared by their
       sub-cell peak heights (:func:`_peak_2d`).
    2. ``config.refine_iters`` local passes: the template is re-rendered with the camera
       moved to the current estimate (sub-cell), at headings within one step of it, the step
       halving every pass, and the residual shift within one cell is measured. Rendering at
       the estimate removes the bias of integer shifts: a rotation about the camera moves
       the visible sector sideways and so mimics a sub-cell translation.

    Convention: ``render(offsets, shift)`` returns the template of a camera moved by
    ``shift`` (2,) grid cells (du, dv) with heading offsets ``offsets`` (N,) degrees, on the
    grid of ``image``; the returned shift is in grid cells, the template at q matching the
    image at q + shift.

    Args:
        render: (offsets (N,), shift (2,)) -> templates (N, C, H, W), masks (N, H, W) bool.
        image: (C, H, W) image features.
        yaw_range_deg: half-range of heading offsets searched (0 = known heading, 180 =
            any heading).
        max_shift: largest |shift| per axis, in cells.
        config: step sizes, refinement passes and the overlap requirement.

    Returns:
        The best alignment; score -inf (and zero motion) when no shift had enough overlap.
    """
    no_shift = torch.zeros(2, dtype=torch.float64)
    center, fine_range = 0.0, yaw_range_deg
    if yaw_range_deg > config.coarse_above_deg:
        coarse = yaw_offsets(yaw_range_deg, config.coarse_yaw_step_deg)
        k = _best_heading(render, coarse, no_shift, image, max_shift, config)[0]
        center = float(coarse[k])
        fine_range = config.coarse_yaw_step_deg
    offsets = yaw_offsets(fine_range, config.yaw_step_deg, center)
    yaw, shift, score = _search_once(render, offsets, no_shift, image, max_shift, config)
    step = config.yaw_step_deg
    if not math.isfinite(score):
        return SearchResult(0.0, no_shift, -math.inf)
    for _ in range(config.refine_iters):
        step /= 2.0
        offsets = yaw_offsets(step if yaw_range_deg > 0 else 0.0, step, yaw)
        refined = _search_once(render, offsets, shift, image, 1, config)
        if not math.isfinite(refined[2]):
            break  # the moved template lost its overlap: keep the last estimate
        yaw, shift, score = refined[0], shift + refined[1], refined[2]
    return SearchResult(yaw, shift, score)


def _best_heading(
    render: Renderer,
    offsets: torch.Tensor,
    camera_shift: torch.Tensor,
    image: torch.Tensor,
    max_shift: int,
    config: ClassicalConfig,
) -> tuple[int, torch.Tensor, list[tuple[float, float, float]]]:
    """Index of the best heading offset, the peak heights per heading and their peaks."""
    templates, masks = render(offsets, camera_shift)
    scores = masked_ncc(templates, masks, image, max_shift, config.min_overlap)  # N,S,S
    peaks = [_peak_2d(x) for x in scores]
    heights = torch.tensor([p[2] for p in peaks], dtype=torch.float64)
    return int(heights.argmax()), heights, peaks


def _search_once(
    render: Renderer,
    offsets: torch.Tensor,
    camera_shift: torch.Tensor,
    image: torch.Tensor,
    max_shift: int,
    config: ClassicalConfig,
) -> tuple[float, torch.Tensor, float]:
    """(heading offset, shift in cells relative to ``camera_shift``, score) of one pass."""
    k, heights, peaks = _best_heading(render, offsets, camera_shift, image, max_shift, config)
    du, dv, value = peaks[k]
    step = float(offsets[1] - offsets[0]) if len(offsets) > 1 else 0.0
    yaw = float(offsets[k]) + step * _parabola_peak(heights[k - 1 : k + 2] if k else heights[:0])
    return yaw, torch.tensor([du - max_shift, dv - max_shift], dtype=torch.float64), value


def _peak_2d(scores: torch.Tensor) -> tuple[float, float, float]:
    """Sub-cell (column, row, height) of the maximum of a (S, S) map by separable parabolas."""
    iv, iu = divmod(int(scores.argmax()), scores.shape[1])
    value = float(scores[iv, iu])
    out = [float(iu), float(iv)]
    for axis, line in enumerate((scores[iv, iu - 1 : iu + 2], scores[iv - 1 : iv + 2, iu])):
        delta = _parabola_peak(line)
        out[axis] += delta
        if delta:
            value += 0.25 * float(line[2] - line[0]) * delta  # the parabola's vertex height
    return out[0], out[1], value


def _parabola_peak(values: torch.Tensor) -> float:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through 3 samples around a max.

    Returns 0 when there are not 3 finite samples or they do not bend down.
    """
    if values.numel() != 3 or not bool(torch.isfinite(values).all()):
        return 0.0
    left, mid, right = (float(x) for x in values)
    curvature = left - 2.0 * mid + right
    if curvature >= 0.0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (left - right) / curvature))


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma."""
    return torch.einsum("bchw,c->bhw", rgb, rgb.new_tensor(_GRAY))[:, None]
