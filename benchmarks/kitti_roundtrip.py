"""The KITTI round trip: the same synthetic pairs through cvloc-pairs/1 and the KITTI loader.

Reproduce the recorded results (about 5 min on 2 CPU cores)::

    python benchmarks/kitti_roundtrip.py --num 200

Writes N synthetic ``kitti-small`` same-area test pairs twice: as ``cvloc-pairs/1`` (the
directory the other benchmarks share) and in the KITTI cross-view layout with
``cvloc synth --format kitti`` (satellite tiles re-rendered around the GPS position, split
file ``test1_files.txt`` carrying the fixed prior noise). Both are evaluated with one
checkpoint (default: the shipped ``denseflow-synth-kitti-small``), the KITTI copy through
:class:`cvloc.data.kitti.KittiDataset` with the loader options the export records. The
metrics must agree within the resampling tolerance: the KITTI tile is a different crop of
the same scene, so individual poses move a little. The check: the paired bootstrap 95 %
interval of the difference in median location error (``--bootstraps`` resamples of the
pairs, seeded) contains 0; the script exits with status 1 when it does not.

Writes ``benchmarks/results/kitti_roundtrip.json``: both metrics JSONs, the per-metric
differences, the per-pair location differences and the interval.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import (
    DATA_DIR,
    RESULTS,
    load_or_exit,
    machine,
    synthetic_split,
    write_json,
)
from cvloc.data.kitti import KittiDataset
from cvloc.demo import WEIGHTS
from cvloc.evaluate import evaluate

COMPARED = (
    "location_median_m",
    "location_mean_m",
    "lateral_recall_1m",
    "longitudinal_recall_1m",
    "yaw_median_deg",
    "yaw_recall_1deg",
)


def export_kitti_layout(num: int, seed: int, root: Path) -> Path:
    """Write the same-area test pairs in the KITTI layout with the documented command.

    Args:
        num: number of pairs (indices 0 .. num - 1, as the pairs directory).
        seed: world seed.
        root: the KITTI root to write (kept and reused when complete).

    Returns:
        ``root``.
    """
    if (root / "cvloc_export.json").is_file():
        return root
    command = [
        sys.executable, "-m", "cvloc", "synth", "--preset", "kitti-small", "--split", "test",
        "--area", "same", "--num", str(num), "--seed", str(seed), "--format", "kitti",
        "--out", str(root),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=WEIGHTS, help="weights name or file")
    parser.add_argument("--num", type=int, default=200, help="test pairs")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--bootstraps", type=int, default=10000, help="resamples for the median's interval"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "kitti_roundtrip.json", help="results JSON"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_or_exit(args.checkpoint)
    pairs = synthetic_split("kitti-small", "test", "same", args.num, args.seed, 1, args.data_dir)
    root = export_kitti_layout(
        args.num,
        args.seed,
        args.data_dir / f"kitti-small-test-same-s{args.seed}-n{args.num}-kitti",
    )
    options = json.loads((root / "cvloc_export.json").read_text())["KittiDataset"]
    kitti = KittiDataset(root, "test1", **options)
    if len(kitti) != len(pairs):
        sys.exit(f"{root}: {len(kitti)} KITTI frames for {len(pairs)} pairs")
    results: dict[str, Any] = {
        "settings": {
            "preset": "kitti-small",
            "area": "same",
            "num": args.num,
            "seed": args.seed,
            "checkpoint": args.checkpoint,
            "kitti_loader_options": options,
            "machine": machine(),
            "torch": torch.__version__,
        },
        "pairs": evaluate(
            model, pairs, method="DenseFlow", checkpoint=args.checkpoint, per_sample=True
        ),
        "kitti": evaluate(
            model, kitti, method="DenseFlow", checkpoint=args.checkpoint, per_sample=True
        ),
    }
    results["difference"] = {k: results["kitti"][k] - results["pairs"][k] for k in COMPARED}
    errors_pairs = np.asarray(results["pairs"]["per_sample"]["location_error_m"])
    errors_kitti = np.asarray(results["kitti"]["per_sample"]["location_error_m"])
    per_pair = np.abs(errors_kitti - errors_pairs)
    results["per_pair_location_difference_m"] = {
        "median": float(np.median(per_pair)),
        "p90": float(np.percentile(per_pair, 90)),
        "max": float(per_pair.max()),
    }
    low, high = median_difference_interval(errors_pairs, errors_kitti, args.bootstraps)
    results["median_difference_interval95_m"] = [low, high]
    for key in COMPARED:
        print(
            f"{key:24s} pairs {results['pairs'][key]:8.3f}  kitti {results['kitti'][key]:8.3f}"
            f"  difference {results['difference'][key]:+.3f}"
        )
    print("per-pair |location error difference| (m):", results["per_pair_location_difference_m"])
    agree = low <= 0.0 <= high
    print(
        f"median difference, paired bootstrap 95 % interval: [{low:+.3f}, {high:+.3f}] m: "
        + ("the two paths agree" if agree else "the two paths DISAGREE")
    )
    write_json(args.out, results)
    if not agree:
        sys.exit(1)


def median_difference_interval(
    first: np.ndarray, second: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap 95 % interval of median(second) - median(first).

    Args:
        first: (N,) per-pair errors of one path.
        second: (N,) the same pairs' errors through the other.
        resamples: bootstrap resamples of the N pairs (with replacement, pairs kept together).
        seed: the resampling generator's seed.

    Returns:
        (2.5th, 97.5th) percentiles of the resampled differences.
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(first), size=(resamples, len(first)))
    differences = np.median(second[index], axis=1) - np.median(first[index], axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


if __name__ == "__main__":
    main()
