r"""The window of the classical refinement (:class:`cvloc.models.refinement.ClassicalRefinement`).

Reproduce the recorded choice (about 15 min on 2 CPU cores)::

    python benchmarks/classical_window.py --checkpoint denseflow-synth-kitti-small --val-num 200

The checkpoint runs on ``--val-num`` synthetic ``val`` pairs (same area; never the test
split; with the heading noise the model trained with, as ``cvloc calibrate`` draws them,
e.g. +-10 deg for ``denseflow-synth-vigor-small`` on the known-heading ``vigor-small``
preset) as its weights' test-time settings say, once without the classical refinement and
once per ``--settings`` window ``SHIFT_M,YAW_DEG`` (half-ranges around the localizer's
estimate). The window of lowest median location error wins; a tie goes to the window listed
first (the smaller search). ``cvloc calibrate --classical-refine --classical-shift-m ...
--classical-yaw-deg ...`` records it in the weights (``training/README.md``); the test
split is reported by ``benchmarks/method_comparison.py``, with and without it.

Writes ``benchmarks/results/classical_window.json`` ({"settings", "val": {run: metrics},
"chosen"}) and the Markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common import (
    DATA_DIR,
    RESULTS,
    evaluate_candidates,
    load_or_exit,
    lowest_median,
    run_settings,
    synthetic_split,
    write_results,
)
from cvloc.data.synthetic.dataset import SyntheticDataset
from cvloc.data.synthetic.presets import get_preset
from cvloc.metrics import format_metrics_table
from cvloc.models.refinement import refined

DEFAULT_SETTINGS = ("1,1", "2,1", "2,2", "3,2", "3,3")


def parse_window(text: str) -> tuple[float, float]:
    """``SHIFT_M,YAW_DEG`` -> (shift, yaw), both > 0.

    Args:
        text: the option value.

    Returns:
        The window.

    Raises:
        SystemExit: malformed or not positive.
    """
    try:
        shift, yaw = (float(part) for part in text.split(","))
    except ValueError as exc:
        raise SystemExit(f"--settings {text!r}: expected SHIFT_M,YAW_DEG ({exc})") from exc
    if not (shift > 0 and yaw > 0):
        raise SystemExit(f"--settings {text!r}: both half-ranges must be > 0")
    return shift, yaw


def val_pairs(args: argparse.Namespace, yaw_range_deg: float | None) -> tuple[Any, str]:
    """The validation pairs, with the model's training heading noise where it set one.

    Args:
        args: the options (``preset``, ``val_num``, ``seed``, ``workers``, ``data_dir``).
        yaw_range_deg: the model's ``data.yaw_range_deg`` (None: the preset's prior).

    Returns:
        The pairs (the preset's: written once under ``--data-dir``; another prior's:
        generated here, held in memory) and a description of their heading noise.
    """
    preset = get_preset(args.preset)
    if yaw_range_deg is None or yaw_range_deg == preset.prior.yaw_range_deg:
        pairs = synthetic_split(args.preset, "val", "same", args.val_num, args.seed,
                                args.workers, args.data_dir)  # fmt: skip
        return pairs, f"heading noise +-{preset.prior.yaw_range_deg:g} deg"
    preset = preset.with_prior(yaw_range_deg=yaw_range_deg)
    generated = SyntheticDataset(preset, "val", "same", args.val_num, args.seed)
    items = [generated[i] for i in tqdm(range(len(generated)), desc="pairs", unit="pair")]
    return items, f"heading noise +-{yaw_range_deg:g} deg (the model's training prior)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="weights name or file")
    parser.add_argument("--preset", default="kitti-small", help="synthetic preset")
    parser.add_argument("--val-num", type=int, default=200, help="val pairs for the choice")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="SHIFT_M,YAW_DEG"
    )
    parser.add_argument("--workers", type=int, default=1, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "classical_window.json", help="results JSON"
    )
    args = parser.parse_args()
    windows = {text: parse_window(text) for text in args.settings}
    torch.set_num_threads(args.threads)
    model, cfg = load_or_exit(args.checkpoint)
    val, heading = val_pairs(args, cfg.data.yaw_range_deg)
    runs = {"without": dataclasses.replace(cfg.eval, classical_refine=False)}
    for text, (shift, yaw) in windows.items():
        runs[f"window {text}"] = dataclasses.replace(
            cfg.eval, classical_refine=True, classical_shift_m=shift, classical_yaw_deg=yaw
        )
    results: dict[str, Any] = {"settings": run_settings(args)}
    results["val"] = evaluate_candidates(
        {name: refined(model, settings) for name, settings in runs.items()}, val
    )
    chosen = lowest_median(results["val"], [f"window {t}" for t in windows]).removeprefix(
        "window "
    )
    results["chosen"] = chosen
    print(f"chosen on val: {chosen}")
    title = (
        f"{args.checkpoint}, {args.preset} val, same area, {args.val_num} pairs, {heading}: "
        f"classical refinement windows SHIFT_M,YAW_DEG (chosen: {chosen})"
    )
    write_results(args.out, results, [format_metrics_table(results["val"], title=title)])


if __name__ == "__main__":
    main()
