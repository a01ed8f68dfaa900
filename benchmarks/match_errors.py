r"""Where the top-30 match errors come from: failed pairs, occlusion, the matcher.

Reproduce the recorded results (about 5 min on 2 CPU cores)::

    python benchmarks/match_errors.py --num 100

CVFM-style precision judges each model's 30 best-scored matches against the true
satellite pixel of the ground pixel each match stands for (the BEV source lifted into the
ground image at the batch's prior, :func:`cvloc.evaluate.match_gt_sat_uv`). Each checkpoint
runs as its weights say (refinement passes included, the classical refinement left out:
it moves the pose, not the matches) on ``--num`` synthetic ``val`` pairs (never the test
split), and the benchmark reports:

- **By pose error.** The pairs binned by the error of the pose the matches gave, with the
  mean top-30 P@15px of each bin: how much of the precision is lost on pairs where the
  matching as a whole failed.
- **The wrong top-30 matches of well-localised pairs** (pose error below
  ``--good-m``), split in two:

  - *occluded*: the matched source is where the true pose puts it (within 15 px), but
    its ground pixel shows a surface more than ``--occluder-m`` nearer the camera than
    the source (a facade, a car, a hedge in front of it). The BEV cell was placed right;
    the pixel pair reported for it is not a true correspondence, because the camera does
    not see that cell there.
  - *misplaced*: the match itself is wrong.

- **Visibility oracle**: the top-30 P@15px when the occluded matches are left out of the
  ranking (ground truth, not a method): what a perfect visibility test would add.

Writes ``benchmarks/results/match_errors.json`` ({"settings", CHECKPOINT: results}) and
the Markdown tables beside it.
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import (
    add_val_pair_args,
    load_or_exit,
    markdown_table,
    run_settings,
    val_pairs,
    without_classical,
    write_results,
)
from cvloc.data.batch import camera_xy, collate
from cvloc.evaluate import match_gt_sat_uv
from cvloc.metrics import MATCH_TOP_K, match_precision
from cvloc.models.refinement import move_sources

THRESHOLD_PX = 15.0
BINS_M = (0.0, 1.0, 3.0, 10.0, math.inf)


def pair_errors(pred: dict[str, Any], batch: dict[str, Any], occluder_m: float) -> dict[str, Any]:
    """Pose error, top-30 precision and the kind of each wrong top-30 match of one pair.

    Args:
        pred: a localizer's prediction for a batch of one pair, its match sources placed
            at the batch's prior.
        batch: that batch (GT pose and ``gt_sat_uv_grd``).
        occluder_m: how much nearer the camera than the source a ground pixel's true
            point must be for the match to count as occluded.

    Returns:
        ``pose_error_m``, ``p15`` (top-30 P@15px), ``p15_visible`` (the same without the
        occluded matches), ``wrong`` and ``occluded`` (counts among the top 30).
    """
    gt = match_gt_sat_uv(pred, batch, pred.get("match_height_m"))[0].double()
    dst, weight = pred["match_dst_uv"][0].double(), pred["match_weight"][0].double()
    m = float(batch["m_per_px"][0])
    # Where the true pose puts each source, and where the camera truly is (pixels).
    truth = move_sources(
        pred["match_src_uv"], batch["sat_center_uv"], batch["m_per_px"],
        batch["camera_uv_prior"], batch["yaw_deg_prior"], batch["camera_uv_gt"],
        batch["yaw_deg_gt"],
    )[0].double()  # fmt: skip
    camera = batch["camera_uv_gt"][0].double()
    nearer_m = ((truth - camera).norm(dim=-1) - (gt - camera).norm(dim=-1)) * m
    error = (dst - gt).norm(dim=-1)
    placed = (dst - truth).norm(dim=-1) <= THRESHOLD_PX
    occluded = torch.isfinite(gt).all(-1) & placed & (nearer_m > occluder_m)
    judged = torch.isfinite(error)
    order = torch.argsort(-weight[judged], stable=True)[:MATCH_TOP_K]
    top = torch.nonzero(judged).flatten()[order]
    wrong = error[top] > THRESHOLD_PX
    pose_error = (pred["camera_xy_pred"][0] - camera_xy(batch, "gt")[0]).norm()
    key = f"match_precision_{THRESHOLD_PX:g}px"
    return {
        "pose_error_m": float(pose_error),
        "p15": match_precision(dst, gt, weight)[key],
        "p15_visible": match_precision(dst, gt, torch.where(occluded, 0.0, weight))[key],
        "wrong": int(wrong.sum()),
        "occluded": int((wrong & occluded[top]).sum()),
    }


def summarise(pairs: list[dict[str, Any]], good_m: float) -> dict[str, Any]:
    """Bins by pose error and the split of the well-localised pairs' wrong matches."""
    error = np.array([p["pose_error_m"] for p in pairs])
    p15 = np.array([p["p15"] for p in pairs], dtype=float)
    bins = []
    for lo, hi in itertools.pairwise(BINS_M):
        inside = (error >= lo) & (error < hi)
        mean = float(np.nanmean(p15[inside])) if inside.any() else float("nan")
        bins.append({"from_m": lo, "to_m": hi, "pairs": int(inside.sum()), "p15": mean})
    good = [p for p, e in zip(pairs, error, strict=True) if e < good_m]
    wrong = sum(p["wrong"] for p in good)
    occluded = sum(p["occluded"] for p in good)
    return {
        "p15": float(np.nanmean(p15)),
        "p15_visibility_oracle": float(np.nanmean([p["p15_visible"] for p in pairs])),
        "bins": bins,
        "good_pairs": len(good),
        "good_wrong_top30": wrong,
        "good_wrong_occluded": occluded,
        "pairs": pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=["finematch-synth-kitti-small", "denseflow-synth-kitti-small"],
        help="weights names or files",
    )
    parser.add_argument("--good-m", type=float, default=3.0, help="well-localised below this")
    parser.add_argument("--occluder-m", type=float, default=3.0, help="occluder this much nearer")
    add_val_pair_args(parser, "match_errors.json")
    args = parser.parse_args()
    if not args.good_m > 0 or not args.occluder_m > 0:
        raise SystemExit("--good-m and --occluder-m must be positive")
    val = val_pairs(args)
    results: dict[str, Any] = {"settings": run_settings(args)}
    bin_rows, split_rows = [], []
    for checkpoint in args.checkpoints:
        model, cfg = load_or_exit(checkpoint)
        localizer = without_classical(model, cfg.eval)
        pairs = []
        with torch.inference_mode():
            for batch in tqdm(DataLoader(val, batch_size=1, collate_fn=collate), desc=checkpoint):
                pairs.append(pair_errors(localizer(batch), batch, args.occluder_m))
        summary = results[checkpoint] = summarise(pairs, args.good_m)
        cells = [f"{100 * summary['p15']:.1f}"]
        cells += [f"{b['pairs']} / {100 * b['p15']:.1f}" if b["pairs"] else "0 / -"
                  for b in summary["bins"]]  # fmt: skip
        bin_rows.append((checkpoint, cells))
        wrong, occluded = summary["good_wrong_top30"], summary["good_wrong_occluded"]
        share = 100 * occluded / wrong if wrong else float("nan")
        split_rows.append((checkpoint, [
            str(summary["good_pairs"]), str(wrong), f"{occluded} ({share:.0f} %)",
            f"{100 * summary['p15_visibility_oracle']:.1f}",
        ]))  # fmt: skip
        print(f"{checkpoint}: P@15px {cells[0]} %; by pose error {cells[1:]}; "
              f"good pairs' wrong top-30 {wrong}, occluded {occluded}")  # fmt: skip
    names = [f"{lo:g}-{hi:g} m" for lo, hi in itertools.pairwise(BINS_M)]
    head = ["P@15px (%)"] + [f"{n}: pairs / P@15px" for n in names]
    title = (
        f"**{args.preset} val, same area, {args.num} pairs: top-30 P@15px by the pose "
        "error of the matches (classical refinement left out)**\n"
    )
    split_head = [
        f"pairs < {args.good_m:g} m", "wrong top-30", f"occluded (> {args.occluder_m:g} m nearer)",
        "P@15px, occluded left out (%)",
    ]  # fmt: skip
    split_title = "**Their wrong top-30 matches on the well-localised pairs**\n"
    write_results(args.out, results, [
        title + "\n" + markdown_table(head, bin_rows),
        split_title + "\n" + markdown_table(split_head, split_rows),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
