"""FineMatch ablations (Surface Model, SimRefiner) on synthetic pairs, small training budget.

Reproduce (a long run: about 2 s per step and variant at batch 4, 1.1 h per 2,000 steps)::

    python benchmarks/finematch_ablations.py --steps 2000 --pairs 2000

Quick check of the script (a few minutes; writes into a scratch place)::

    python benchmarks/finematch_ablations.py --steps 3 --pairs 4 --num-val 1 --num-test 4
        --runs-dir /tmp/fm-ablations --out /tmp/fm-ablations/finematch_ablations.json

Every variant of the base config (``--config``, default ``finematch-synth-kitti-small``) is
trained from scratch (or from ``--init-from`` weights, see below) for ``--steps`` optimizer
steps on the same ``--pairs`` synthetic training pairs (train split, generator indices
0 .. pairs - 1, epoch-0 priors every epoch; generated on the fly and not cached, so that the
items keep ``sat_height_m`` for the height loss), validated on ``--num-val`` val pairs,
then evaluated on ``--num-test`` fixed test pairs per area (generated once, in memory). The
schedule keeps the preset's shape, scaled to the budget (warm-up over 5 % of the steps).
Variants (config switches, :data:`VARIANTS`):

- full: the preset unchanged; also evaluated with the RANSAC pose solver (same weights).
- w/o Surface Model: ``model.finematch.surface.num_height_bins=1`` (flat ground).
- w/o SimRefiner: ``model.finematch.refiner.mode=none``.
- SimRefiner local only / global only: ``model.finematch.refiner.mode=local`` / ``global``.

``--init-from WEIGHTS`` starts every variant from those weights (``train.init_from``);
``--init-modules`` fills only the named sub-modules (``train.init_modules``, ``NAME`` or
``DST=SRC``), e.g. the encoders of a feature pre-training.

Prints a table (location and yaw mean / median, CVFM match precision at 5 / 10 / 15 px,
per area) and writes ``benchmarks/results/finematch_ablations.json`` ({"settings",
"variants": {variant: {"label", "overrides", "steps", "train_seconds", area: metrics
JSON}}}) and the table as ``.md`` beside it. Checkpoints go to ``--runs-dir/<variant>/``.
Both are rewritten after every variant; ``--resume`` keeps the variants already there (when
the budget, data and resolved base config match) and runs only the others, so a run cut
short goes on where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    ABLATION_KEYS,
    AREAS,
    ablation_overrides,
    ablation_settings,
    add_ablation_args,
    finish,
    finished_variants,
    markdown_table,
    save_ablation,
)
from cvloc.config import load_config
from cvloc.data.synthetic.dataset import SyntheticDataset
from cvloc.evaluate import evaluate
from cvloc.models import FineMatch
from cvloc.train import train

VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "full": ("FineMatch (full)", ()),
    "no-surface": ("w/o Surface Model", ("model.finematch.surface.num_height_bins=1",)),
    "no-simrefiner": ("w/o SimRefiner", ("model.finematch.refiner.mode=none",)),
    "simrefiner-local": ("SimRefiner local only", ("model.finematch.refiner.mode=local",)),
    "simrefiner-global": ("SimRefiner global only", ("model.finematch.refiner.mode=global",)),
}
COLUMNS = (
    ("location_mean_m", "loc mean (m)", "{:.2f}"),
    ("location_median_m", "loc med (m)", "{:.2f}"),
    ("yaw_mean_deg", "yaw mean (deg)", "{:.2f}"),
    ("yaw_median_deg", "yaw med (deg)", "{:.2f}"),
    ("match_precision_5px", "P@5px", "{:.1%}"),
    ("match_precision_10px", "P@10px", "{:.1%}"),
    ("match_precision_15px", "P@15px", "{:.1%}"),
)


def budget_overrides(args: argparse.Namespace, batch_size: int, out_dir: Path) -> list[str]:
    """Config overrides for the data and schedule of a ``--steps`` budget.

    Args:
        args: the options (:func:`common.add_ablation_args`).
        batch_size: pairs per step.
        out_dir: the variant's output directory.

    Returns:
        Dotlist overrides.
    """
    return [
        "data.dataset=synthetic",
        f"data.num_train={args.pairs}",
        f"data.seed={args.seed}",
        f"data.num_workers={args.workers}",
        "data.resample_each_epoch=false",
        "data.cache_train=false",
        *ablation_overrides(args, batch_size, out_dir),
    ]


def run_variant(
    args: argparse.Namespace, name: str, tests: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Train one variant and evaluate it on the test splits (the full one also with RANSAC).

    Args:
        args: the options.
        name: a key of :data:`VARIANTS`.
        tests: area -> test items.

    Returns:
        result name -> {"label", "overrides", "steps", "train_seconds", area: metrics}.
    """
    label, switches = VARIANTS[name]
    batch_size = args.batch_size or load_config(args.config).data.batch_size
    overrides = [*budget_overrides(args, batch_size, args.runs_dir / name), *switches]
    print(f"\n== {label}: {' '.join(switches) or 'the preset'}")
    cfg = load_config(args.config, overrides)
    started = time.perf_counter()
    result = train(cfg)
    common = {"overrides": overrides, "steps": result.state.step}
    common["train_seconds"] = time.perf_counter() - started
    models = {name: (label, result.model)}
    if name == "full":
        matching = dataclasses.replace(cfg.model.finematch.matching, solver="ransac")
        ransac = FineMatch(dataclasses.replace(cfg.model.finematch, matching=matching))
        ransac.load_state_dict(result.model.state_dict())
        models["full-ransac"] = (f"{label} + RANSAC", ransac)
    out = {}
    for key, (title, model) in models.items():
        out[key] = {"label": title, **common}
        for area, items in tests.items():
            out[key][area] = evaluate(model, items, args.eval_batch, progress=False, method=title)
    return out


def table(variants: dict[str, dict[str, Any]], areas: tuple[str, ...]) -> str:
    """Markdown table: one row per result, the :data:`COLUMNS` of every area."""
    head = [f"{area} {title}" for area in areas for _, title, _ in COLUMNS]

    def cells(v: dict[str, Any]) -> list[str]:
        return [
            "n/a" if v[area].get(key) is None else fmt.format(v[area][key])
            for area in areas
            for key, _, fmt in COLUMNS
        ]

    return markdown_table(head, [(v["label"], cells(v)) for v in variants.values()])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_ablation_args(
        parser,
        "finematch-synth-kitti-small",
        "runs/finematch-ablations",
        list(VARIANTS),
        out="finematch_ablations.json",
    )
    parser.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS), help="test")
    parser.add_argument("--eval-batch", type=int, default=4, help="pairs per evaluation pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_config(args.config).data.preset
    tests = {}
    for area in args.areas:
        dataset = SyntheticDataset(preset, "test", area, args.num_test, seed=args.seed)
        tests[area] = [dataset[i] for i in range(len(dataset))]  # once, for every variant
    settings = ablation_settings(args)
    variants = finished_variants(args, settings, (*ABLATION_KEYS, "areas"))
    for name in args.variants:
        if name not in variants:
            variants.update(run_variant(args, name, tests))
            save_ablation(args, settings, variants, table(variants, tuple(args.areas)))
    finish(args, preset, table(variants, tuple(args.areas)))


if __name__ == "__main__":
    main()
