"""``cvloc demo``: the main job on the embedded synthetic default.

Until the localizers are trained, the demo exercises the geometry core end to end: random
3-DoF poses, matches from the prior-placed points to their true locations with outliers,
the RANSAC-free weighted Procrustes pose, and the benchmark metrics table.
"""

from __future__ import annotations

import argparse

import torch

from cvloc.geometry import compose_pose_with_rigid_2d, relative_rigid_2d, weighted_procrustes_2d
from cvloc.metrics import format_metrics_table, localization_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--num", type=int, default=100, help="number of samples")


def _toy_case(num: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """KITTI-like priors (+-20 m, +-10 deg) and noisy matches with 30 % outliers."""
    gt_xy = torch.zeros(num, 2, dtype=torch.float64)
    gt_yaw = (torch.rand(num, generator=g, dtype=torch.float64) - 0.5) * 360
    prior_xy = gt_xy + (torch.rand(num, 2, generator=g, dtype=torch.float64) - 0.5) * 40
    prior_yaw = gt_yaw + (torch.rand(num, generator=g, dtype=torch.float64) - 0.5) * 20
    R, t = relative_rigid_2d(prior_xy, prior_yaw, gt_xy, gt_yaw)
    src = (
        prior_xy[:, None] + (torch.rand(num, 500, 2, generator=g, dtype=torch.float64) - 0.5) * 50
    )
    dst = src @ R.transpose(-1, -2) + t[:, None] + torch.randn(src.shape, generator=g) * 0.3
    outlier = torch.rand(num, 500, generator=g) < 0.3
    dst = torch.where(outlier[..., None], dst + torch.randn(src.shape, generator=g) * 15, dst)
    weights = torch.where(outlier, 0.05, 1.0).to(torch.float64)
    return {"gt_xy": gt_xy, "gt_yaw": gt_yaw, "prior_xy": prior_xy, "prior_yaw": prior_yaw,
            "src": src, "dst": dst, "weights": weights}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the metrics table.

    Args:
        args: parsed options.

    Returns:
        Exit status.
    """
    g = torch.Generator().manual_seed(args.seed)
    c = _toy_case(args.num, g)
    R, t = weighted_procrustes_2d(c["src"], c["dst"], c["weights"])
    pred_xy, pred_yaw = compose_pose_with_rigid_2d(R, t, c["prior_xy"], c["prior_yaw"])
    results = {
        "prior": localization_metrics(c["prior_xy"], c["gt_xy"], c["prior_yaw"], c["gt_yaw"]),
        "weighted Procrustes": localization_metrics(pred_xy, c["gt_xy"], pred_yaw, c["gt_yaw"]),
    }
    print(format_metrics_table(results, title=f"Toy matches, {args.num} samples"))
    return 0
