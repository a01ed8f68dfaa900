"""Baselines on the synthetic KITTI benchmark: the prior pose and the classical search.

Evaluates :class:`cvloc.models.baselines.PriorBaseline` and
:class:`cvloc.models.baselines.ClassicalBaseline` (default config) with
:func:`cvloc.evaluate.evaluate` on N ``kitti-small`` test pairs of the same area and of the
cross area (seed 0, the default training world; prior +-20 m, +-10 deg). Pairs are generated
once per area and shared by both methods; ``seconds_per_pair`` is the model's forward time
only, single process, with the torch thread count given by ``--threads``.

Usage::

    python benchmarks/eval_baselines.py [--num 50] [--seed 0] [--threads 1]

Prints DenseFlow's Table 1 layout per area and writes
``benchmarks/results/baselines_kitti_small.json``: {area: {method: metrics JSON}} plus the
settings and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from common import AREAS, RESULTS, machine, write_json
from cvloc.data.synthetic.dataset import SyntheticDataset
from cvloc.evaluate import evaluate
from cvloc.metrics import format_metrics_table
from cvloc.models.baselines import ClassicalBaseline, ClassicalConfig, PriorBaseline

PRESET = "kitti-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=50, help="test pairs per area")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "baselines_kitti_small.json", help="results JSON"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ClassicalConfig()
    models = {"prior": PriorBaseline(), "classical": ClassicalBaseline(config)}
    results: dict = {
        "preset": PRESET,
        "split": "test",
        "num": args.num,
        "seed": args.seed,
        "threads": args.threads,
        "classical_config": dataclasses.asdict(config),
        "machine": f"{machine()} (shared)",
        "torch": torch.__version__,
    }
    for area in AREAS:
        dataset = SyntheticDataset(PRESET, "test", area, args.num, seed=args.seed)
        pairs = [dataset[i] for i in range(len(dataset))]  # generate once for both methods
        results[area] = {
            name: evaluate(model, pairs, progress=False, method=name)
            for name, model in models.items()
        }
        title = f"{PRESET} test, {area} area, {args.num} pairs, seed {args.seed}"
        print(format_metrics_table(results[area], title=title))
        for name, metrics in results[area].items():
            print(f"{name}: {metrics['seconds_per_pair']:.3f} s per pair")
        print()
    write_json(args.out, results)


if __name__ == "__main__":
    main()
