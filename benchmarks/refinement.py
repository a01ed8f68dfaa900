r"""Prior refinement (:mod:`cvloc.models.refinement`): choose it on val, report it on test.

Reproduce the recorded results (about 25 min on 2 CPU cores)::

    python benchmarks/refinement.py --checkpoint finematch-synth-kitti-small \\
        --preset kitti-small --num 500
    python benchmarks/refinement.py --checkpoint finematch-synth-vigor-small \\
        --preset vigor-small --num 200 --out benchmarks/results/refinement_vigor.json

1. **Choice, on validation pairs** (``--val-num`` synthetic ``val`` pairs, same area; never
   the test split): every ``--settings`` entry ``PASSES,SHIFT_M,YAW_DEG`` (``-`` keeps the
   data's bound) runs; the one of lowest median location error wins, one pass included.
2. **Report, on test pairs** (``--num`` per area, same and cross, the fixed pairs of the
   other benchmarks): one pass against the chosen setting, every metric of ``design.md``.

The chosen setting is what ``cvloc calibrate --refine-passes ... --refine-shift-m ...
--refine-yaw-deg ...`` records in the shipped weights (``training/README.md``).

Writes ``benchmarks/results/refinement.json`` ({"settings", "val": {setting: metrics},
"chosen", AREA: {"1 pass": metrics, "chosen": metrics}}) and the Markdown table beside it.
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
    evaluate_candidates,
    load_or_exit,
    lowest_median,
    run_settings,
    synthetic_split,
    write_results,
)
from cvloc.evaluate import evaluate
from cvloc.metrics import format_metrics_table
from cvloc.models.refinement import PriorRefinement

DEFAULT_SETTINGS = (
    "1,-,-",
    "2,-,-",
    "2,8,5",
    "2,5,3",
    "2,3,2",
    "2,2,1",
    "3,5,3",
    "3,3,2",
)


def parse_setting(text: str) -> tuple[int, float | None, float | None]:
    """``PASSES,SHIFT_M,YAW_DEG`` (``-`` for None) -> (passes, shift, yaw).

    Args:
        text: the option value.

    Returns:
        The setting.

    Raises:
        SystemExit: malformed.
    """
    parts = text.split(",")
    try:
        passes = int(parts[0])
        shift, yaw = (None if p == "-" else float(p) for p in parts[1:])
    except ValueError as exc:
        raise SystemExit(f"--settings {text!r}: expected PASSES,SHIFT_M,YAW_DEG ({exc})") from exc
    return passes, shift, yaw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="weights name or file")
    parser.add_argument("--preset", default="kitti-small", help="synthetic preset")
    parser.add_argument("--num", type=int, default=500, help="test pairs per area")
    parser.add_argument("--val-num", type=int, default=100, help="val pairs for the choice")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="PASSES,SHIFT_M,YAW_DEG"
    )
    parser.add_argument("--workers", type=int, default=2, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "refinement.json", help="JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_or_exit(args.checkpoint)
    settings = {text: parse_setting(text) for text in args.settings}
    results: dict[str, Any] = {"settings": run_settings(args)}
    val = synthetic_split(args.preset, "val", "same", args.val_num, args.seed, args.workers,
                          args.data_dir)  # fmt: skip
    results["val"] = evaluate_candidates(
        {text: PriorRefinement(model, *setting) for text, setting in settings.items()}, val
    )
    chosen = lowest_median(results["val"], list(settings))
    results["chosen"] = chosen
    print(f"chosen on val: {chosen}")
    tables = []
    for area in AREAS:
        test = synthetic_split(
            args.preset, "test", area, args.num, args.seed, args.workers, args.data_dir
        )
        runs = {"1 pass": (1, None, None), f"refined {chosen}": settings[chosen]}
        results[area] = {
            name: evaluate(PriorRefinement(model, *s), test, progress=False, method=name)
            for name, s in runs.items()
        }
        title = f"{args.checkpoint}, {args.preset} test, {area} area, {args.num} pairs"
        tables.append(format_metrics_table(results[area], title=title))
        print(tables[-1])
    write_results(args.out, results, tables)


if __name__ == "__main__":
    main()
