"""Prior refinement: run a localizer again from its own estimate.

Both methods place the ground features on the satellite grid at the prior pose (DenseFlow's
BEV, FineMatch's lifted volume) and then explain the remaining offset. The further the
prior is off, the more of the BEV is sampled from the wrong place: a BEV turned by a few
degrees smears the far cells by metres, which is the error left after one pass.
:class:`PriorRefinement` re-places the BEV at the first estimate and runs the model again,
``passes`` times in all (a coarse-to-fine cascade at test time; no weights change). Each
pass after the first may also narrow the prior's declared noise bounds
(``shift_range_m``, ``yaw_range_deg``): FineMatch then matches only inside the smaller
window (:func:`cvloc.models.matching.prior_window_mask`), DenseFlow's alignment search
looks only that far. A known heading (``yaw_range_deg`` 0) stays known. For FineMatch the
second pass may instead start from the first pass's alignment (``align_shift_m``): the
best rigid shift of its whole BEV, a consensus of all cells that fails less often than
the pose fitted to the per-cell matches when the prior is far off. The alignment shifts
the BEV without turning it, and a BEV lifted at a heading several degrees off aligns
wrongly more often (kitti-small val, first-pass alignment more than 10 m off: 3 of 84 pairs
with the prior heading within 2.5 deg, 12 of 102 beyond 7.5 deg); so the first pass may run
at several headings (``align_headings``) and the alignment is the shift of the best
heading-marginalised score (see :func:`marginal_alignment`).

This is our addition to both papers, off unless asked for (``eval.refine_passes``), and
reported as its own row in the benchmarks.

The last pass's match sources (BEV cells placed at its prior) are moved onto the placement
at the batch's own prior (:func:`move_sources`), so that the correspondence metrics, which
lift sources with the batch's prior (:func:`cvloc.evaluate.lift_matches_to_ground`), see
the ground pixels the model matched. Flows and per-iteration outputs are dropped: they are
relative to the last pass's BEV.

:class:`ClassicalRefinement` ends with the classical search instead
(:class:`cvloc.models.baselines.ClassicalBaseline`: flat-ground BEV of the grey ground
image, gradient features, exhaustive masked NCC) inside a small window around the
localizer's estimate (``eval.classical_refine``). The learned model finds the basin; the
search, which lands within a few decimetres when it succeeds and fails by tens of metres
when it looks over the whole prior range, then only has to align locally. The pose is the
search's; the correspondences stay the localizer's (the search's are its BEV moved
rigidly). Measured on the synthetic world, where ground and satellite share their texture:
on real imagery the NCC of gradients is weaker, so validate the window there before use.
With ``eval.classical_rematch`` the model then runs once more, placed at the search's pose
inside the same window, and reports that pass's matches: its BEV is placed within
decimetres wherever the search aligned, so its correspondences are read where it sees best.
Chosen per model on validation pairs (kitti-small val top-30 P@15px: FineMatch 89.9 ->
92.4 %, DenseFlow 94.7 -> 92.5 %, so DenseFlow's weights keep it off).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import apply_rigid_2d, relative_rigid_2d, wrap_deg
from cvloc.models.baselines import ClassicalBaseline, ClassicalConfig
from cvloc.models.corr import best_shift_camera_uv
from cvloc.models.dense_matches import DenseMatches

# Outputs kept from the last pass; the rest are per-BEV (flows, volumes) and dropped.
POSE_KEYS = ("camera_uv_pred", "camera_xy_pred", "yaw_deg_pred")
MATCH_KEYS = ("match_src_uv", "match_dst_uv", "match_weight", "match_height_m")
# The EvalConfig fields that set the refinement (read by :func:`refined`).
REFINE_FIELDS = (
    "refine_passes",
    "refine_shift_m",
    "refine_yaw_deg",
    "refine_align_shift_m",
    "refine_align_headings",
    "refine_align_temperature",
    "classical_refine",
    "classical_shift_m",
    "classical_yaw_deg",
    "classical_rematch",
    "match_upsample",
)


def move_sources(
    src_uv: torch.Tensor,
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    from_uv: torch.Tensor,
    from_yaw_deg: torch.Tensor,
    to_uv: torch.Tensor,
    to_yaw_deg: torch.Tensor,
) -> torch.Tensor:
    """Move BEV cells placed at one camera pose onto their placement at another.

    A BEV cell is a fixed point of the camera frame; placed at pose (from_uv, from_yaw) it
    lies at ``src_uv`` on the satellite image. Returns where the same camera-frame point
    lies when the BEV is placed at (to_uv, to_yaw).

    Convention: satellite pixels (u right, v down), compass yaw in degrees, the metric frame
    of :func:`cvloc.geometry.geo.pixel_to_world_xy`.

    Args:
        src_uv: (B, N, 2) cells placed at the ``from`` pose.
        sat_center_uv: (B, 2) the satellite image's centre pixel.
        m_per_px: (B,) metres per satellite pixel.
        from_uv: (B, 2) camera pixel of the ``from`` pose.
        from_yaw_deg: (B,).
        to_uv: (B, 2) camera pixel of the ``to`` pose.
        to_yaw_deg: (B,).

    Returns:
        (B, N, 2) the cells placed at the ``to`` pose (float32).
    """
    center, m = sat_center_uv.float(), m_per_px.float()
    from_xy = pixel_to_world_xy(from_uv.float(), center, m)
    to_xy = pixel_to_world_xy(to_uv.float(), center, m)
    R, t = relative_rigid_2d(from_xy, from_yaw_deg.float(), to_xy, to_yaw_deg.float())
    src_xy = pixel_to_world_xy(src_uv.float(), center[:, None], m[:, None])
    moved = apply_rigid_2d(R, t, src_xy)
    return world_xy_to_pixel(moved, center[:, None], m[:, None])


def sources_at_batch_prior(
    src_uv: torch.Tensor, placed: dict[str, Any], batch: dict[str, Any]
) -> torch.Tensor:
    """Match sources of a pass run from ``placed``'s prior, moved to ``batch``'s prior.

    The correspondence metrics lift sources with the batch's own prior
    (:func:`cvloc.evaluate.lift_matches_to_ground`); a later pass placed its BEV elsewhere.

    Args:
        src_uv: (B, N, 2) the sources as that pass placed them.
        placed: the batch that pass ran on (its ``camera_uv_prior``, ``yaw_deg_prior``).
        batch: the original batch.

    Returns:
        (B, N, 2) the same camera-frame points placed at ``batch``'s prior (float32).
    """
    return move_sources(
        src_uv, batch["sat_center_uv"], batch["m_per_px"],
        placed["camera_uv_prior"], placed["yaw_deg_prior"],
        batch["camera_uv_prior"], batch["yaw_deg_prior"],
    )  # fmt: skip


class PriorRefinement(nn.Module):
    """Wrap a localizer: re-run it with the prior replaced by its previous estimate.

    ``forward(batch)`` returns the last pass's pose and matches (:data:`POSE_KEYS`,
    :data:`MATCH_KEYS` where the model has them) and ``refine_passes`` (B,).

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        passes: forward passes in all (1: the model alone).
        shift_range_m: the position noise bound declared to passes after the first
            (never widened beyond the batch's); None keeps the batch's.
        yaw_range_deg: the same for the heading; a known heading (0) stays 0.
        align_shift_m: if set, the second pass starts from the first pass's alignment
            (the best rigid shift of its whole BEV over FineMatch's ``align_scores``) at
            the prior heading (see ``align_headings``), with this position bound and the
            batch's heading bound, instead of from its estimate; the passes after it as
            above. Needs passes >= 2.
        align_headings: n, with ``align_shift_m``: the first pass runs at n prior headings,
            the centres of n equal sectors of the batch's heading range (each told the
            batch's bound), and the second starts from the shift of the best
            heading-marginalised alignment score (:func:`marginal_alignment`) at the
            heading that scores it best. 1: the prior heading alone. No effect without
            ``align_shift_m``.
        align_temperature: t of :func:`marginal_alignment`, in alignment-score units.
    """

    def __init__(
        self,
        model: nn.Module,
        passes: int = 2,
        shift_range_m: float | None = None,
        yaw_range_deg: float | None = None,
        align_shift_m: float | None = None,
        align_headings: int = 1,
        align_temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if passes < 1:
            raise ValueError(f"expected passes >= 1, got {passes}")
        if align_headings < 1 or not align_temperature > 0:
            raise ValueError(
                "expected align_headings >= 1 and align_temperature > 0, got "
                f"{align_headings} and {align_temperature}"
            )
        bounds = (("shift_range_m", shift_range_m), ("yaw_range_deg", yaw_range_deg),
                  ("align_shift_m", align_shift_m))  # fmt: skip
        for name, value in bounds:
            if value is not None and not value > 0:
                raise ValueError(f"expected {name} > 0 or None, got {value}")
        if align_shift_m is not None and passes < 2:
            raise ValueError(f"align_shift_m needs passes >= 2, got {passes}")
        self.model, self.passes = model, passes
        self.shift_range_m, self.yaw_range_deg = shift_range_m, yaw_range_deg
        self.align_shift_m = align_shift_m
        self.align_headings, self.align_temperature = align_headings, align_temperature
        self.required_keys = getattr(model, "required_keys", ())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize a batch in ``passes`` passes.

        Args:
            batch: the wrapped model's inputs (with ``camera_uv_prior``, ``yaw_deg_prior``;
                ``shift_range_m`` / ``yaw_range_deg`` when the bounds are narrowed).

        Returns:
            The last pass's prediction keys and ``refine_passes``.
        """
        if self.align_shift_m is not None:  # the first pass only places the second
            current = self._aligned_prior(batch)
            pred, remaining = self.model(current), self.passes - 2
        else:
            current = batch
            pred, remaining = self.model(current), self.passes - 1
        for _ in range(remaining):
            current = self._next_prior(batch, pred)
            pred = self.model(current)
        out = {key: pred[key] for key in (*POSE_KEYS, *MATCH_KEYS) if key in pred}
        if "match_src_uv" in out and current is not batch:
            out["match_src_uv"] = sources_at_batch_prior(out["match_src_uv"], current, batch)
        out["refine_passes"] = torch.full_like(batch["yaw_deg_prior"], self.passes)
        return out

    def _next_prior(self, batch: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
        """The batch with its prior replaced by ``pred`` and its bounds narrowed."""
        return prior_from_estimate(batch, pred, self.shift_range_m, self.yaw_range_deg)

    def _aligned_prior(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its prior moved to the first pass's alignment.

        The heading stays the prior's, or with ``align_headings`` > 1 becomes the hypothesis
        that scores the chosen shift best; the position bound becomes ``align_shift_m``.
        """
        n = self.align_headings
        headed = n > 1 and bool((batch.get("yaw_range_deg", torch.zeros(1)) > 0).any())
        prior = batch["yaw_deg_prior"]
        if not headed:  # one heading, the prior's
            yaws = [prior]
        else:
            theta = batch["yaw_range_deg"].to(prior)
            yaws = [wrap_deg(prior + (2 * k + 1 - n) / n * theta) for k in range(n)]  # centres
        if not hasattr(self.model, "heading_alignment_scores"):
            raise KeyError(
                "refinement from the alignment (eval.refine_align_shift_m) needs a model that "
                "scores alignments, FineMatch (heading_alignment_scores), and shift_range_m in "
                "the batch"
            )
        scores = self.model.heading_alignment_scores(batch, yaws).float()
        camera_uv, best = marginal_alignment(
            scores, batch["camera_uv_prior"], self.model.config.stride, self.align_temperature
        )
        yaw = torch.stack(yaws, dim=1).gather(1, best[:, None])[:, 0]
        aligned = {"camera_uv_pred": camera_uv, "yaw_deg_pred": yaw}
        return prior_from_estimate(batch, aligned, self.align_shift_m, None)


def marginal_alignment(
    scores: torch.Tensor, camera_uv_prior: torch.Tensor, stride: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best shift of alignment scores marginalised over heading hypotheses.

    Reading exp(score / t) as the likelihood of a shift at a heading, the heading is
    marginalised out under a uniform prior over the hypotheses: log-sum-exp of score / t
    over them. A shift that several neighbouring headings support then beats a single
    sharp peak of one heading, the typical wrong alignment of a turned BEV (kitti-small
    val, first-pass alignment more than 10 m off, 400 pairs: 24 with the prior heading
    alone; 21 with the best single peak of 3 headings; 10 marginalised at t = 4, flat for
    t in [3, 5]; an oracle choice among the 3 would leave 3). With one hypothesis it is
    that hypothesis's best shift.

    Convention: satellite pixels (u, v); maps of :func:`cvloc.models.corr.alignment_scores`
    over the same shifts around the same prior position.

    Args:
        scores: (B, n, 2 r + 1, 2 r + 1) shift scores of n heading hypotheses.
        camera_uv_prior: (B, 2) the camera position at shift 0.
        stride: satellite pixels per cell.
        temperature: t > 0, in score units.

    Returns:
        camera_uv (B, 2), the camera at the chosen shift; best (B,), index of the hypothesis
        that scores that shift highest.
    """
    marginal = torch.logsumexp(scores.float() / temperature, dim=1)
    camera_uv = best_shift_camera_uv(marginal, camera_uv_prior, stride)
    at = marginal.flatten(1).argmax(1)
    best = scores.flatten(2).gather(2, at[:, None, None].expand(-1, scores.shape[1], 1))
    return camera_uv, best[..., 0].argmax(1)


class ClassicalRefinement(nn.Module):
    """Wrap a localizer: finish with the classical NCC search in a window around its pose.

    ``forward(batch)`` returns the localizer's prediction with the pose keys
    (:data:`POSE_KEYS`) replaced by the search's, started from the localizer's estimate
    with the bounds ``shift_range_m`` and ``yaw_range_deg`` (each never wider than the
    batch's own, :func:`prior_from_estimate`; a known heading stays known) and clamped to
    them, plus ``classical_score`` (B,), the search's best NCC (-inf where no shift
    overlapped enough: the localizer's pose is then kept, as the search returns its
    prior). The correspondences and every other key stay the localizer's, relative to the
    batch's own prior; with ``rematch``, the correspondences are instead those of one more
    pass of ``rematch`` placed at the search's pose, inside the same window (its pose is
    not used: the search's is the finer one). Module docstring: why.

    Args:
        model: a localizer with the prediction contract of :mod:`cvloc.models`.
        shift_range_m: the window's position half-range per axis, metres, > 0.
        yaw_range_deg: its heading half-range, degrees, > 0.
        config: the search's settings (default: the classical baseline's).
        rematch: the single-pass model whose matches at the search's pose are returned, or
            None to keep the localizer's.
    """

    def __init__(
        self,
        model: nn.Module,
        shift_range_m: float,
        yaw_range_deg: float,
        config: ClassicalConfig | None = None,
        rematch: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("shift_range_m", shift_range_m), ("yaw_range_deg", yaw_range_deg)):
            if not value > 0:
                raise ValueError(f"expected {name} > 0, got {value}")
        self.model, self.search = model, ClassicalBaseline(config)
        self.shift_range_m, self.yaw_range_deg = shift_range_m, yaw_range_deg
        self.rematch = rematch
        keys = getattr(model, "required_keys", ())
        bounds = ("shift_range_m", "yaw_range_deg")  # the search reads them
        self.required_keys = (*keys, *(k for k in bounds if k not in keys))

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Localize a batch, then align locally.

        Args:
            batch: the wrapped model's inputs and the search's (:class:`ClassicalBaseline`),
                ``shift_range_m`` and ``yaw_range_deg`` (B,) among them.

        Returns:
            The localizer's prediction with the search's pose and ``classical_score``.

        Raises:
            KeyError: the batch lacks the prior's bounds.
        """
        missing = [k for k in ("shift_range_m", "yaw_range_deg") if k not in batch]
        if missing:
            raise KeyError(f"ClassicalRefinement: batch misses keys {missing} (the window)")
        pred = dict(self.model(batch))
        window = prior_from_estimate(batch, pred, self.shift_range_m, self.yaw_range_deg)
        found = self.search(window)
        # The search's local passes may step up to 1.5 cells and 0.75 steps of heading past
        # its range: clamp, so that the window bounds the change for certain.
        start_uv, start_yaw = window["camera_uv_prior"].double(), window["yaw_deg_prior"].double()
        reach_px = (window["shift_range_m"].double() / window["m_per_px"].double())[:, None]
        move = found["camera_uv_pred"].double() - start_uv
        camera_uv = start_uv + torch.maximum(torch.minimum(move, reach_px), -reach_px)
        turn = wrap_deg(found["yaw_deg_pred"].double() - start_yaw)
        reach_deg = window["yaw_range_deg"].double()
        yaw = wrap_deg(start_yaw + torch.maximum(torch.minimum(turn, reach_deg), -reach_deg))
        center, m = batch["sat_center_uv"].double(), batch["m_per_px"].double()
        pred["camera_uv_pred"] = camera_uv.to(pred["camera_uv_pred"])
        pred["camera_xy_pred"] = pixel_to_world_xy(camera_uv, center, m).to(pred["camera_xy_pred"])
        pred["yaw_deg_pred"] = yaw.to(pred["yaw_deg_pred"])
        pred["classical_score"] = found["search_score"]
        if self.rematch is not None:
            pred.update(self._rematch(self.rematch, batch, pred))
        return pred

    def _rematch(
        self, rematch: nn.Module, batch: dict[str, Any], pred: dict[str, Any]
    ) -> dict[str, Any]:
        """The match keys of one ``rematch`` pass at the refined pose, sources moved back."""
        current = prior_from_estimate(batch, pred, self.shift_range_m, self.yaw_range_deg)
        again = rematch(current)
        out = {key: again[key] for key in MATCH_KEYS if key in again}
        if "match_src_uv" not in out:
            raise KeyError("eval.classical_rematch needs a model that returns match_src_uv")
        out["match_src_uv"] = sources_at_batch_prior(out["match_src_uv"], current, batch)
        return out


def prior_from_estimate(
    batch: dict[str, Any],
    pred: dict[str, Any],
    shift_range_m: float | None,
    yaw_range_deg: float | None,
) -> dict[str, Any]:
    """The batch with its prior replaced by an estimate and its bounds narrowed.

    Args:
        batch: the inputs (``camera_uv_prior`` (B, 2), ``yaw_deg_prior`` (B,), optionally
            ``shift_range_m`` and ``yaw_range_deg`` (B,)).
        pred: a prediction (``camera_uv_pred``, ``yaw_deg_pred``).
        shift_range_m: the new position bound, never wider than the batch's (a batch's 0,
            undeclared, :data:`cvloc.data.pairs.META_DEFAULTS`, becomes this bound); None
            keeps the batch's.
        yaw_range_deg: the same for the heading; a known heading (0) stays 0.

    Returns:
        A new batch dict (the other entries shared with ``batch``).
    """
    out = dict(batch)
    out["camera_uv_prior"] = pred["camera_uv_pred"].detach().to(batch["camera_uv_prior"])
    out["yaw_deg_prior"] = pred["yaw_deg_pred"].detach().to(batch["yaw_deg_prior"])
    if shift_range_m is not None and "shift_range_m" in batch:
        bound = batch["shift_range_m"]
        out["shift_range_m"] = torch.where(
            bound > 0, bound.clamp(max=shift_range_m), shift_range_m
        )
    if yaw_range_deg is not None and "yaw_range_deg" in batch:
        # min keeps 0 (a known heading) and never widens the batch's own bound.
        out["yaw_range_deg"] = batch["yaw_range_deg"].clamp(max=yaw_range_deg)
    return out


def refinement_of(eval_config: Any) -> dict[str, Any]:
    """The refinement settings (:data:`REFINE_FIELDS`) of an eval config, as recorded.

    Args:
        eval_config: a :class:`cvloc.config.EvalConfig`.

    Returns:
        Field name -> value, in :data:`REFINE_FIELDS` order.
    """
    return {name: getattr(eval_config, name) for name in REFINE_FIELDS}


def refined(model: nn.Module, eval_config: Any) -> nn.Module:
    """The model as its test-time settings run it.

    Args:
        model: a localizer.
        eval_config: a :class:`cvloc.config.EvalConfig` (its :data:`REFINE_FIELDS`).

    Returns:
        ``model`` itself for one pass without classical refinement or denser matches; else
        the model inside a :class:`PriorRefinement` (more passes), that inside a
        :class:`ClassicalRefinement` (``classical_refine``; with ``classical_rematch``, its
        matches from one more pass of the model at the search's pose), that inside a
        :class:`cvloc.models.dense_matches.DenseMatches` (``match_upsample`` > 1).
    """
    single_pass = model
    if eval_config.refine_passes > 1:
        model = PriorRefinement(
            model,
            eval_config.refine_passes,
            eval_config.refine_shift_m,
            eval_config.refine_yaw_deg,
            eval_config.refine_align_shift_m,
            eval_config.refine_align_headings,
            eval_config.refine_align_temperature,
        )
    if eval_config.classical_refine:
        model = ClassicalRefinement(
            model,
            eval_config.classical_shift_m,
            eval_config.classical_yaw_deg,
            rematch=single_pass if eval_config.classical_rematch else None,
        )
    if eval_config.match_upsample > 1:
        model = DenseMatches(model, eval_config.match_upsample)
    return model
