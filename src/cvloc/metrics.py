"""Evaluation metrics: 3-DoF localisation errors and recalls, CVFM-style match precision.

Localisation follows the HighlyAccurate family (``reference/protocols.md`` section 4.1, as
fixed in ``docs/conventions.md``): with e = pred - gt in metres and f_gt the GT heading's
unit vector, longitudinal = |e . f_gt| and lateral = |e x f_gt|, an exact projection for
any heading. The CCVPE decomposition (section 4.2), which folds e into one quadrant with
absolute values before taking angles, is deliberately not used: it misassigns the split
whenever the heading is off an axis. Recalls count errors *strictly below* a threshold.

Match precision follows CVFM: the share of a sample's top-k scored matches whose predicted
satellite pixel lies *within* (<=) a threshold of the GT one.

All results are plain Python numbers so that they serialise to the metrics JSON directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cvloc.geometry.checks import ShapeError, check_shape
from cvloc.geometry.pose import wrap_deg, yaw_to_forward_xy

ArrayLike = np.ndarray | torch.Tensor
RECALL_THRESHOLDS_M: tuple[int, ...] = (1, 3, 5)
RECALL_THRESHOLDS_DEG: tuple[int, ...] = (1, 3, 5)
MATCH_THRESHOLDS_PX: tuple[float, ...] = (5, 10, 15)
MATCH_TOP_K = 30
# A match scoring at least this is "confident": DenseFlow's confidence (eq. 5) and
# FineMatch's dual-softmax coupling mass are both probabilities in [0, 1].
MATCH_CONFIDENT_SCORE = 0.5
_CONFIDENT = "match_precision_confident_"  # key prefix of the precisions over them


def localization_errors(
    pred_xy_m: ArrayLike, gt_xy_m: ArrayLike, pred_yaw_deg: ArrayLike, gt_yaw_deg: ArrayLike
) -> dict[str, np.ndarray]:
    """Per-sample position and heading errors, in float64.

    Convention: world frame x east, y north (metres); yaw in degrees clockwise from north,
    so f_gt = (sin yaw_gt, cos yaw_gt). Longitudinal = |e . f_gt|, lateral =
    |e_x f_y - e_y f_x| with e = pred - gt; yaw error = |wrap(pred - gt)| in [0, 180].

    Args:
        pred_xy_m: (N, 2) predicted positions (numpy, torch or nested sequences).
        gt_xy_m: (N, 2) ground-truth positions.
        pred_yaw_deg: (N,) predicted headings.
        gt_yaw_deg: (N,) ground-truth headings.

    Returns:
        ``location_m``, ``lateral_m``, ``longitudinal_m``, ``yaw_deg``: (N,) arrays.

    Raises:
        ValueError: (:class:`ShapeError` for shapes) when a shape is wrong, the sample
            counts differ, there are no samples, or a value is NaN or infinite.
    """
    pred_xy = _as_float64(pred_xy_m, ["N", 2], "pred_xy_m")
    gt_xy = _as_float64(gt_xy_m, ["N", 2], "gt_xy_m")
    pred_yaw = _as_float64(pred_yaw_deg, ["N"], "pred_yaw_deg")
    gt_yaw = _as_float64(gt_yaw_deg, ["N"], "gt_yaw_deg")
    counts = {len(pred_xy), len(gt_xy), len(pred_yaw), len(gt_yaw)}
    if len(counts) > 1:
        raise ShapeError(
            "sample counts differ: pred_xy_m, gt_xy_m, pred_yaw_deg, gt_yaw_deg have "
            f"{len(pred_xy)}, {len(gt_xy)}, {len(pred_yaw)}, {len(gt_yaw)} rows"
        )
    if len(pred_xy) == 0:
        raise ValueError("localization metrics need at least one sample, got 0")
    e = pred_xy - gt_xy
    f = yaw_to_forward_xy(gt_yaw)
    # wrap_deg goes through 180 - x, which rounds small angles to ulp(180) ~ 3e-14; apply it
    # only where needed so that in-range differences (the usual case) stay exact and
    # errors at a recall threshold are compared exactly.
    d_yaw = pred_yaw - gt_yaw
    yaw_err = torch.where(d_yaw.abs() <= 180.0, d_yaw, wrap_deg(d_yaw)).abs()
    return {
        "location_m": torch.linalg.vector_norm(e, dim=-1).numpy(),
        "lateral_m": (e[:, 0] * f[:, 1] - e[:, 1] * f[:, 0]).abs().numpy(),
        "longitudinal_m": (e * f).sum(-1).abs().numpy(),
        "yaw_deg": yaw_err.numpy(),
    }


def localization_metrics(
    pred_xy_m: ArrayLike, gt_xy_m: ArrayLike, pred_yaw_deg: ArrayLike, gt_yaw_deg: ArrayLike
) -> dict[str, float | int]:
    """Mean, median and recalls of the localisation errors (metrics-JSON keys).

    Convention: as :func:`localization_errors`. Recalls are fractions in [0, 1] of the
    samples whose error is strictly below 1, 3, 5 m (or degrees); medians average the two
    middle values for an even count (numpy).

    Args:
        pred_xy_m: (N, 2) predicted positions in metres.
        gt_xy_m: (N, 2) ground-truth positions in metres.
        pred_yaw_deg: (N,) predicted headings in degrees.
        gt_yaw_deg: (N,) ground-truth headings in degrees.

    Returns:
        ``num_samples`` (int) and, as floats, ``{location,lateral,longitudinal}_mean_m``,
        ``..._median_m``, ``..._recall_{1,3,5}m``, ``yaw_mean_deg``, ``yaw_median_deg``,
        ``yaw_recall_{1,3,5}deg``. ``location_recall_*`` are extra keys beyond design.md.

    Raises:
        ValueError: as :func:`localization_errors`.
    """
    errors = localization_errors(pred_xy_m, gt_xy_m, pred_yaw_deg, gt_yaw_deg)
    out: dict[str, float | int] = {"num_samples": len(errors["location_m"])}
    groups = (
        ("location", errors["location_m"], "m", RECALL_THRESHOLDS_M),
        ("lateral", errors["lateral_m"], "m", RECALL_THRESHOLDS_M),
        ("longitudinal", errors["longitudinal_m"], "m", RECALL_THRESHOLDS_M),
        ("yaw", errors["yaw_deg"], "deg", RECALL_THRESHOLDS_DEG),
    )
    for name, err, unit, thresholds in groups:
        out[f"{name}_mean_{unit}"] = float(np.mean(err))
        out[f"{name}_median_{unit}"] = float(np.median(err))
        for thr in thresholds:
            out[f"{name}_recall_{thr}{unit}"] = float(np.mean(err < thr))
    return out


def match_precision(
    pred_sat_uv: ArrayLike,
    gt_sat_uv: ArrayLike,
    scores: ArrayLike,
    top_k: int = MATCH_TOP_K,
    thresholds_px: Sequence[float] = MATCH_THRESHOLDS_PX,
    confident_score: float = MATCH_CONFIDENT_SCORE,
) -> dict[str, float | int]:
    """CVFM-style precision of one sample's top-k matches, and of all its confident ones.

    Matches whose ground point has no GT (a NaN or infinite row of ``gt_sat_uv``: the point
    is not visible from above) cannot be judged, so they are removed *before* ranking and
    the top-k is taken among the judgeable ones; ``match_valid_fraction`` reports how many
    of the top-k of *all* matches had a GT, to show what the removal changed. Ties in score
    keep the input order.

    Convention: satellite pixels (u east, v south); a match is correct when its error is
    <= the threshold ("within", as CVFM), unlike localisation recalls, which use <.

    Args:
        pred_sat_uv: (M, 2) predicted satellite pixels of M matches.
        gt_sat_uv: (M, 2) GT satellite pixels of the same ground points, NaN where none.
        scores: (M,) match confidences; higher ranks first.
        top_k: number of matches judged.
        thresholds_px: pixel thresholds.
        confident_score: matches scoring at least this are confident.

    Returns:
        ``match_precision_{T}px`` per threshold T (formatted with ``:g``, e.g. ``5px``),
        ``match_precision_confident_{T}px`` (the same over all judgeable confident
        matches, however many), ``match_valid_fraction``: floats in [0, 1], NaN when
        undefined (no judgeable match, or M = 0); ``match_num_evaluated``: the number of
        top-k matches judged, ``match_num_confident``: of confident matches judged (ints).

    Raises:
        ValueError: on wrong shapes, differing M, non-finite predictions or scores,
            ``top_k`` < 1 or a threshold <= 0.
    """
    pred = _as_float64(pred_sat_uv, ["M", 2], "pred_sat_uv").numpy()
    gt = torch.as_tensor(_to_numpy(gt_sat_uv), dtype=torch.float64)
    check_shape(gt, ["M", 2], "gt_sat_uv")
    score = _as_float64(scores, ["M"], "scores").numpy()
    if not len(pred) == len(gt) == len(score):
        raise ShapeError(
            f"pred_sat_uv, gt_sat_uv, scores have {len(pred)}, {len(gt)}, {len(score)} rows"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if any(not thr > 0 for thr in thresholds_px):
        raise ValueError(f"thresholds_px must be positive, got {tuple(thresholds_px)}")
    gt = gt.numpy()
    has_gt = np.isfinite(gt).all(-1)
    order = np.argsort(-score, kind="stable")
    judged = order[has_gt[order]][:top_k]
    err = np.linalg.norm(pred[judged] - gt[judged], axis=-1)
    out: dict[str, float | int] = {}
    for thr in thresholds_px:
        out[f"match_precision_{thr:g}px"] = _mean_or_nan(err <= thr)
    confident = has_gt & (score >= confident_score)
    err_confident = np.linalg.norm(pred[confident] - gt[confident], axis=-1)
    for thr in thresholds_px:
        out[f"match_precision_confident_{thr:g}px"] = _mean_or_nan(err_confident <= thr)
    out["match_valid_fraction"] = _mean_or_nan(has_gt[order[:top_k]])
    out["match_num_evaluated"] = len(judged)
    out["match_num_confident"] = int(confident.sum())
    return out


def aggregate_match_precision(
    per_sample: Sequence[Mapping[str, float | int]],
) -> dict[str, float | int]:
    """Dataset match precision: the mean of the per-sample values where they are defined.

    Top-k precisions average over the samples with at least one judgeable match: the
    others (NaN precision) are left out rather than counted as 0, and ``match_num_samples``
    says how many were averaged, so abstentions stay visible. ``match_valid_fraction``
    averages over all samples with at least one match (a sample without any GT counts as
    0). The confident precisions pool all confident matches of all samples (a sample
    weighs by its number of them), and ``match_num_confident`` is their mean per sample.

    Args:
        per_sample: outputs of :func:`match_precision`, one per sample.

    Returns:
        ``match_precision_{T}px``, ``match_precision_confident_{T}px`` and
        ``match_valid_fraction`` (NaN when no sample has a defined value),
        ``match_num_samples`` (int) and ``match_num_confident`` (float).

    Raises:
        ValueError: when ``per_sample`` is empty.
    """
    if len(per_sample) == 0:
        raise ValueError("aggregate_match_precision needs at least one sample, got 0")
    names = {k for d in per_sample for k in d if k.startswith("match_precision_")}
    pooled = sorted((k for k in names if k.startswith(_CONFIDENT)), key=_threshold_of)
    keys = sorted(names - set(pooled), key=_threshold_of)
    out: dict[str, float | int] = {}
    for key in [*keys, "match_valid_fraction"]:
        values = [float(d[key]) for d in per_sample if key in d and math.isfinite(d[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    counts = np.array([d.get("match_num_confident", 0) for d in per_sample], dtype=np.float64)
    used, total = counts > 0, counts.sum()
    for key in pooled:
        values = np.array([float(d.get(key, math.nan)) for d in per_sample])
        out[key] = float((values[used] * counts[used]).sum() / total) if total else math.nan
    out["match_num_samples"] = sum(1 for d in per_sample if d.get("match_num_evaluated", 0) > 0)
    if pooled:
        out["match_num_confident"] = float(counts.mean())
    return out


# Table 1 of DenseFlow: (header, key, kind) with kind "m" (2 decimals) or "%" (x100).
_LOCALIZATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Location mean (m)", "location_mean_m", "m"),
    ("Location median (m)", "location_median_m", "m"),
    *((f"Lateral R@{t}m (%)", f"lateral_recall_{t}m", "%") for t in RECALL_THRESHOLDS_M),
    *((f"Longitudinal R@{t}m (%)", f"longitudinal_recall_{t}m", "%") for t in RECALL_THRESHOLDS_M),
    ("Azimuth mean (deg)", "yaw_mean_deg", "m"),
    ("Azimuth median (deg)", "yaw_median_deg", "m"),
    *((f"Azimuth R@{t}deg (%)", f"yaw_recall_{t}deg", "%") for t in RECALL_THRESHOLDS_DEG),
)


def format_metrics_table(
    results: Mapping[str, Mapping[str, float | int]]
    | Sequence[tuple[str, Mapping[str, float | int]]],
    title: str | None = None,
) -> str:
    """Markdown table of several methods' metrics in the layout of DenseFlow's Table 1.

    Rows are methods; columns are location mean/median (m), lateral and longitudinal
    R@1/3/5 m (%), azimuth mean/median (deg) and R@1/3/5 deg (%). Recalls (fractions) are
    shown as percentages, everything with 2 decimals; a missing, None or non-finite value
    shows as "-". When any result has ``match_precision_*`` keys, a second table lists
    them (top-k, then confident; and ``match_valid_fraction``) as percentages, and the
    mean number of confident matches per pair.

    Args:
        results: method name -> metrics dict, or a list of (name, metrics) pairs (keeps
            the order and allows repeated names).
        title: optional bold caption above the tables.

    Returns:
        The Markdown text, ending with a newline.
    """
    rows = list(results.items()) if isinstance(results, Mapping) else list(results)
    blocks = [f"**{title}**"] if title else []
    blocks.append(_markdown_table(rows, _LOCALIZATION_COLUMNS))
    match_keys = sorted(
        {k for _, m in rows for k in m if k.startswith("match_precision_")},
        key=lambda k: (k.startswith(_CONFIDENT), _threshold_of(k)),
    )
    if match_keys:
        columns = [(_match_header(k), k, "%") for k in match_keys]
        if any("match_valid_fraction" in m for _, m in rows):
            columns.append(("Top-k with GT (%)", "match_valid_fraction", "%"))
        if any("match_num_confident" in m for _, m in rows):
            columns.append(("Confident per pair", "match_num_confident", "m"))
        blocks.append(_markdown_table(rows, columns))
    return "\n\n".join(blocks) + "\n"


def _markdown_table(
    rows: Sequence[tuple[str, Mapping[str, float | int]]],
    columns: Sequence[tuple[str, str, str]],
) -> str:
    """One Markdown table: a Method column, then one right-aligned column per metric."""
    lines = [
        "| Method | " + " | ".join(header for header, _, _ in columns) + " |",
        "|:--|" + "--:|" * len(columns),
    ]
    for name, metrics in rows:
        cells = [name.replace("|", "\\|")]  # a literal | would split the row
        cells += [_format_value(metrics.get(key), kind) for _, key, kind in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_value(value: float | int | None, kind: str) -> str:
    """'-' for missing or non-finite, else 2 decimals (of a percentage for kind '%')."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100.0 * value:.2f}" if kind == "%" else f"{value:.2f}"


def _match_header(key: str) -> str:
    """Column header of a ``match_precision_[confident_]{T}px`` key: "[confident ]P@{T}px"."""
    prefix = "confident " if key.startswith(_CONFIDENT) else ""
    return f"{prefix}P@{key.rsplit('_', 1)[1]} (%)"


def _threshold_of(key: str) -> float:
    """Numeric threshold of a ``match_precision_[confident_]{T}px`` key, to sort 5 < 15."""
    try:
        return float(
            key.removeprefix(_CONFIDENT).removeprefix("match_precision_").removesuffix("px")
        )
    except ValueError:
        return math.inf


def _mean_or_nan(flags: np.ndarray) -> float:
    """Mean of a boolean array as a float, NaN when it is empty."""
    return float(np.mean(flags)) if flags.size else math.nan


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor (any device) or sequence."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _as_float64(x: ArrayLike, shape: Sequence[str | int], name: str) -> torch.Tensor:
    """Float64 CPU tensor of ``x`` after checking its shape and that it is finite."""
    t = torch.as_tensor(_to_numpy(x))
    check_shape(t, shape, name)
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name}: {bad} non-finite value(s) (NaN or inf)")
    return t


def metrics_to_json(results: object) -> str:
    """Serialise results (nested dicts and lists) as strict JSON, indented.

    Undefined metrics (NaN, for instance match precision without pixel ground truth) and
    infinities become ``null``, so every JSON reader accepts the file.

    Args:
        results: JSON-ready values (dicts, lists, strings, numbers, None).

    Returns:
        The JSON text, with a final newline.
    """
    return json.dumps(_finite_or_none(results), indent=1) + "\n"


def _finite_or_none(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
