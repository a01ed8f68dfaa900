"""DenseFlow accuracy on the synthetic KITTI benchmark, beside the prior and classical search.

Reproduce the recorded results (about 30 min on 2 CPU cores, most of it the classical search)::

    python benchmarks/denseflow_accuracy.py --num 500 --workers 2

Evaluates a checkpoint (default: the shipped ``denseflow-synth-kitti-small`` weights; any
``.pt`` / ``.safetensors`` path works) and both baselines on N synthetic ``kitti-small`` test
pairs of the same area and of the cross area (seed 0, prior +-20 m, +-10 deg), DenseFlow's
Table 1 protocol. The pairs are written once per area to ``--data-dir`` as ``cvloc-pairs/1``
(:func:`cvloc.demo.write_synthetic_pairs`, reused by later runs); DenseFlow runs at batch 1
with ``--threads`` torch threads, the classical search in ``--workers`` single-thread
processes (:func:`cvloc.demo.evaluate_classical`).

``--methods`` runs a subset (e.g. ``--methods prior DenseFlow`` for a new checkpoint, with
``--out`` naming another file). Prints Table 1 per area and writes
``benchmarks/results/denseflow_accuracy.json`` ({"settings", "same": {method: metrics
JSON}, "cross": ...}) and the Markdown tables beside it (``.md``). The helpers it uses
(paths, pairs, model loading, the results file) are in ``common.py``, shared by the
benchmark scripts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from common import (
    AREAS,
    DATA_DIR,
    RESULTS,
    baseline_metrics,
    load_or_exit,
    machine,
    synthetic_split,
    write_results,
)
from cvloc.demo import WEIGHTS
from cvloc.evaluate import evaluate
from cvloc.metrics import format_metrics_table

METHODS = ("prior", "classical", "DenseFlow")


def run_method(
    name: str, pairs: Any, model: torch.nn.Module, args: argparse.Namespace
) -> dict[str, Any]:
    """The metrics JSON of one method of :data:`METHODS` on a pairs directory's dataset.

    Args:
        name: ``prior``, ``classical`` or ``DenseFlow``.
        pairs: the :class:`cvloc.data.pairs.PairsDataset`.
        model: the DenseFlow model.
        args: the options (``workers``, ``checkpoint``).

    Returns:
        The method's metrics.
    """
    if name != "DenseFlow":
        return baseline_metrics(name, pairs, args.workers)
    return evaluate(model, pairs, method="DenseFlow", checkpoint=args.checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=WEIGHTS, help="weights name or file")
    parser.add_argument("--num", type=int, default=500, help="test pairs per area")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=2, help="processes: pairs, classical")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for DenseFlow")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="subset to run"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "denseflow_accuracy.json", help="results JSON"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_or_exit(args.checkpoint)
    results: dict[str, Any] = {
        "settings": {
            "preset": "kitti-small",
            "split": "test",
            "num": args.num,
            "seed": args.seed,
            "checkpoint": args.checkpoint,
            "checkpoint_preset": cfg.data.preset,
            "threads": args.threads,
            "classical_workers": args.workers,
            "methods": args.methods,
            "machine": machine(),
            "torch": torch.__version__,
        }
    }
    tables = []
    for area in AREAS:
        pairs = synthetic_split(
            "kitti-small", "test", area, args.num, args.seed, args.workers, args.data_dir
        )
        results[area] = {
            name: run_method(name, pairs, model, args) for name in METHODS if name in args.methods
        }
        title = f"kitti-small test, {area} area, {args.num} pairs, seed {args.seed}"
        tables.append(format_metrics_table(results[area], title=title))
        print(tables[-1])
        for name, metrics in results[area].items():
            print(f"{name}: {metrics['seconds_per_pair']:.3f} s per pair")
    write_results(args.out, results, tables)


if __name__ == "__main__":
    main()
