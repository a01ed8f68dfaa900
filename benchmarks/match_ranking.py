r"""How much of the top-30 match precision is ranking? A diagnosis on validation pairs.

Reproduce the recorded results (about 6 min on 2 CPU cores)::

    python benchmarks/match_ranking.py --num 100

CVFM-style precision judges each model's 30 best-scored matches. A model can miss because
its scores rank wrong matches first, or because it has too few right matches to rank. Each
checkpoint runs as its weights say (refinement passes included; the classical refinement,
which moves the pose and not the matches, left out) on ``--num`` synthetic ``val`` pairs
(never the test split), and its matches are judged under three rankings:

- ``model``: its own scores (``match_weight``), what every other benchmark reports;
- ``pose-consistent``: the score times exp(-r^2 / 2 sigma^2), r the match's residual in
  satellite pixels to the rigid fit of all its matches (the verification a matcher could
  add after its RANSAC-free pose; ``--sigma-px``);
- ``oracle``: the true error, among the matches scoring above ``--oracle-min-score``. An
  upper bound that reads the ground truth, not a method: no ranking of these matches does
  better.

Writes ``benchmarks/results/match_ranking.json`` ({"settings", CHECKPOINT: {ranking:
metrics}}) and the Markdown table beside it.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from common import (
    add_val_pair_args,
    load_or_exit,
    markdown_table,
    run_settings,
    val_pairs,
    without_classical,
    write_results,
)
from cvloc.evaluate import evaluate, match_gt_sat_uv
from cvloc.geometry.pose import apply_rigid_2d
from cvloc.geometry.procrustes import weighted_procrustes_2d

RANKINGS = ("model", "pose-consistent", "oracle")
THRESHOLDS = ("5px", "10px", "15px")


class Reranked(nn.Module):
    """A localizer whose ``match_weight`` is replaced by another ranking's score.

    Args:
        model: a localizer returning ``match_src_uv`` / ``match_dst_uv`` / ``match_weight``.
        ranking: one of :data:`RANKINGS`.
        sigma_px: the pose-consistent ranking's residual scale, satellite pixels.
        oracle_min_score: the oracle ranks only matches scoring above this.
    """

    def __init__(
        self, model: nn.Module, ranking: str, sigma_px: float, oracle_min_score: float
    ) -> None:
        super().__init__()
        self.model, self.ranking = model, ranking
        self.sigma_px, self.oracle_min_score = sigma_px, oracle_min_score
        self.required_keys = getattr(model, "required_keys", ())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The wrapped model's prediction with the ranking's ``match_weight`` (B, N)."""
        pred = dict(self.model(batch))
        src, dst = pred["match_src_uv"].float(), pred["match_dst_uv"].float()
        weight = pred["match_weight"].float()
        if self.ranking == "pose-consistent":
            # Convention: the fit dst ~ R src + t in satellite pixels, as the pose heads'.
            R, t = weighted_procrustes_2d(src, dst, weight)
            residual2 = (dst - apply_rigid_2d(R, t, src)).square().sum(-1)
            pred["match_weight"] = weight * torch.exp(-residual2 / (2 * self.sigma_px**2))
        elif self.ranking == "oracle":
            error = (dst - match_gt_sat_uv(pred, batch, pred.get("match_height_m"))).norm(dim=-1)
            keep = torch.isfinite(error) & (weight > self.oracle_min_score)
            pred["match_weight"] = torch.where(keep, 1.0 / (1.0 + error.nan_to_num(0.0)), 0.0)
        return pred


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
    parser.add_argument("--sigma-px", type=float, default=4.0, help="pose-consistent scale")
    parser.add_argument("--oracle-min-score", type=float, default=1e-3, help="oracle floor")
    add_val_pair_args(parser, "match_ranking.json")
    args = parser.parse_args()
    if not args.sigma_px > 0:
        raise SystemExit(f"--sigma-px must be positive, got {args.sigma_px}")
    val = val_pairs(args)
    results: dict[str, Any] = {"settings": run_settings(args)}
    rows = []
    for checkpoint in args.checkpoints:
        model, cfg = load_or_exit(checkpoint)
        localizer = without_classical(model, cfg.eval)
        results[checkpoint] = {}
        for ranking in RANKINGS:
            wrapped = Reranked(localizer, ranking, args.sigma_px, args.oracle_min_score)
            metrics = evaluate(wrapped, val, progress=False, method=ranking)
            results[checkpoint][ranking] = metrics
            cells = [f"{100 * metrics[f'match_precision_{t}']:.1f}" for t in THRESHOLDS]
            rows.append((f"{checkpoint}, {ranking}", cells))
            print(f"{checkpoint} {ranking}: P@{'/'.join(THRESHOLDS)} {' / '.join(cells)} %")
    head = [f"P@{t} (%)" for t in THRESHOLDS]
    title = f"**{args.preset} val, same area, {args.num} pairs: top-30 precision by ranking**\n"
    write_results(args.out, results, [title + "\n" + markdown_table(head, rows)])


if __name__ == "__main__":
    main()
