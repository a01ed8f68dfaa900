r"""How far to trust ``cvloc localize``'s confidence: its scale and its ranking, per weights.

Reproduce the recorded results (about 5 min on 2 CPU cores)::

    python benchmarks/confidence.py --num 100 --workers 2

``confidence`` (:func:`cvloc.localize_quality.match_quality`) is the score mass of the
matches agreeing with the pose over the number of visible match sources. Its scale is the
model's: a FineMatch score is a dual-softmax probability spread over many cells (and the
dense matches over 16 sources per cell), a DenseFlow score its confidence map, so the same
number means different things for different weights. Each weights file runs as it says
(refinement passes, classical refinement) on ``--num`` synthetic ``val`` pairs of its own
preset (same area, never the test split), and each pair's confidence and number of
confident matches (as ``cvloc localize`` reports them) are set against its position error:

- ``auc``: the probability that a pair localised within ``--good-m`` scores a higher
  confidence than one beyond (ties count half): how well the confidence ranks poses;
- the median confidence of the good and the bad pairs: its scale;
- ``threshold``: the lowest confidence above which at least ``--precision`` of the pairs
  are good (on these pairs), and ``coverage``, the share of all pairs above it. A reading
  aid for the README, not a calibrated probability.

Writes ``benchmarks/results/confidence.json`` ({"settings", WEIGHTS: {...}}) and the
Markdown table beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import (
    DATA_DIR,
    RESULTS,
    load_or_exit,
    markdown_table,
    run_settings,
    synthetic_split,
    write_results,
)
from cvloc.data.batch import collate
from cvloc.localize_inputs import checkpoint_training_settings
from cvloc.localize_result import result_from_prediction
from cvloc.models.refinement import refined

DEFAULT_WEIGHTS = (
    "denseflow-synth-kitti-small",
    "finematch-synth-kitti-small",
    "denseflow-synth-vigor-small",
    "finematch-synth-vigor-small",
)


def pair_confidence(
    pred: dict[str, Any], batch: dict[str, Any], camera_model: str
) -> tuple[float, int]:
    """Confidence and confident matches of a one-pair prediction, as ``cvloc localize`` has them.

    :func:`cvloc.localize_result.result_from_prediction` itself, with the pair's images as
    the inputs (working pixels = input pixels).

    Args:
        pred: the localizer's output for a batch of one pair.
        batch: that batch.
        camera_model: ``"pinhole"`` or ``"panorama"``.

    Returns:
        (``confidence`` in [0, 1], ``num_confident_matches``).
    """
    identity = torch.ones(2, dtype=torch.float64)
    frame = {
        "ground_scale": identity,
        "sat_scale": identity,
        "center": tuple(float(c) for c in batch["sat_center_uv"][0]),
        "m_per_px": float(batch["m_per_px"][0]),
        "geo": None,
        "inputs": {},
        "warnings": [],
    }
    result = result_from_prediction(pred, dict(batch, camera_model=camera_model), frame)
    return result.confidence, result.num_confident_matches


def ranking_auc(score: np.ndarray, good: np.ndarray) -> float:
    """P(score of a good pair > score of a bad one), ties half; NaN without both kinds."""
    pos, neg = score[good], score[~good]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None]).mean()
    ties = (pos[:, None] == neg[None]).mean()
    return float(above + 0.5 * ties)


def precision_threshold(
    score: np.ndarray, good: np.ndarray, precision: float
) -> tuple[float, float]:
    """The lowest score above which (inclusive) at least ``precision`` of the pairs are good.

    Args:
        score: (N,) confidences.
        good: (N,) bool, the pair is localised well.
        precision: the share of good pairs asked for, in (0, 1].

    Returns:
        (threshold, coverage: the share of all pairs at or above it); (NaN, 0) when no
        threshold reaches the precision.
    """
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(good[order]) / np.arange(1, len(score) + 1)
    # The deepest cut whose pairs at or above are still precise enough, ending on a tie's last.
    ok = [k for k in range(len(score)) if hits[k] >= precision
          and (k + 1 == len(score) or score[order[k + 1]] < score[order[k]])]  # fmt: skip
    if not ok:
        return float("nan"), 0.0
    k = ok[-1]
    return float(score[order[k]]), (k + 1) / len(score)


def measure(
    weights: str, args: argparse.Namespace
) -> tuple[dict[str, Any], list[tuple[str, list[str]]]]:
    """Run one weights file on its preset's val pairs; its results entry and table row."""
    model, cfg = load_or_exit(weights)
    localizer = refined(model, cfg.eval).eval()
    camera_model = checkpoint_training_settings(weights, cfg)["camera_model"]
    preset = cfg.data.preset
    pairs = synthetic_split(preset, "val", "same", args.num, args.seed, args.workers,
                            args.data_dir)  # fmt: skip
    errors, confidences, confident = [], [], []
    with torch.inference_mode():
        for batch in DataLoader(pairs, batch_size=1, collate_fn=collate):
            pred = localizer(batch)
            error_px = (pred["camera_uv_pred"] - batch["camera_uv_gt"]).double().norm(dim=-1)
            errors.append(float(error_px[0] * batch["m_per_px"][0].double()))
            c, n = pair_confidence(pred, batch, camera_model)
            confidences.append(c)
            confident.append(n)
    error, conf, count = np.array(errors), np.array(confidences), np.array(confident, float)
    good = error < args.good_m
    threshold, coverage = precision_threshold(conf, good, args.precision)

    def median(values: np.ndarray) -> float:
        return float(np.median(values)) if len(values) else float("nan")

    entry = {
        "preset": preset,
        "camera_model": camera_model,
        "pairs": len(error),
        "good_fraction": float(good.mean()),
        "auc": ranking_auc(conf, good),
        "auc_confident_matches": ranking_auc(count, good),
        "confidence_median_good": median(conf[good]),
        "confidence_median_bad": median(conf[~good]),
        "confident_matches_median_good": median(count[good]),
        "confident_matches_median_bad": median(count[~good]),
        "threshold": threshold,
        "coverage": coverage,
        "confidence": confidences,
        "confident_matches": confident,
        "position_error_m": errors,
    }
    cells = [
        f"{100 * entry['good_fraction']:.0f} %",
        f"{entry['auc']:.3f}",
        f"{entry['confidence_median_good']:.4f} / {entry['confidence_median_bad']:.4f}",
        f"{entry['auc_confident_matches']:.3f}",
        f"{entry['confident_matches_median_good']:g} / {entry['confident_matches_median_bad']:g}",
        f"{threshold:.4f} ({100 * coverage:.0f} %)",
    ]
    print(f"{weights} ({preset}): " + ", ".join(cells), flush=True)
    return entry, [(f"{weights} ({preset})", cells)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", nargs="+", default=list(DEFAULT_WEIGHTS),
                        help="weights names or files")  # fmt: skip
    parser.add_argument("--num", type=int, default=100, help="val pairs per preset")
    parser.add_argument("--good-m", type=float, default=1.0, help="a good pose: error below")
    parser.add_argument("--precision", type=float, default=0.9, help="threshold's precision")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=1, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "confidence.json", help="JSON")
    args = parser.parse_args()
    if args.num < 1 or not args.good_m > 0 or not 0 < args.precision <= 1:
        raise SystemExit("expected --num >= 1, --good-m > 0 and 0 < --precision <= 1")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"settings": run_settings(args)}
    rows = []
    for weights in args.weights:
        results[weights], row = measure(weights, args)
        rows += row
    head = [
        f"within {args.good_m:g} m",
        "AUC",
        "confidence, median good / bad",
        "AUC of confident matches",
        "confident matches, median good / bad",
        f"confidence for {100 * args.precision:.0f} % good (pairs above)",
    ]
    title = (f"**Confidence against position error, {args.num} val pairs per preset "
             f"(same area), the weights' own pipelines**\n")  # fmt: skip
    write_results(args.out, results, [title + "\n" + markdown_table(head, rows)])


if __name__ == "__main__":
    main()
