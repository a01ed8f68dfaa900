"""DenseFlow ablations in the layout of the paper's Table 5, on synthetic KITTI, small budget.

Reproduce (about 1.4 h per variant, 8-9 h in all on 2 CPU cores)::

    python benchmarks/denseflow_ablations.py --steps 2000 --pairs 2000

Every variant of the base config (``--config``, default ``denseflow-synth-kitti-small``) is
trained from scratch (or from ``--init-from`` weights, see below) for ``--steps`` optimizer
steps on the same ``--pairs`` fixed synthetic training pairs (train split, epoch-0 priors,
written once to ``--data-dir`` as ``cvloc-pairs/1``; validation on ``--num-val`` val
pairs), then evaluated on ``--num-test`` fixed test pairs of the same and of the cross
area. The schedule keeps the preset's shape, scaled to the budget: warm-up over 5 % of the
steps, beta / kappa switched after 60 % of the epochs. Variants (config switches,
:data:`VARIANTS`):

- w/o Ground Feature Projection: ``model.denseflow.use_ground_projection=false``
- w/o BEV Feature RefineBlock: ``model.denseflow.use_refine_block=false``
- w/o Matching Loss: ``train.use_matching_loss=false``
- w/o Position Loss: ``train.use_position_loss=false``
- w/o Confidence: ``model.denseflow.use_confidence=false train.use_confidence_loss=false``
- full: the preset unchanged.

``--init-from WEIGHTS`` starts every variant from those weights (``train.init_from``);
``--init-modules`` fills only the named sub-modules (``train.init_modules``), e.g. the
stage-1 feature pre-training with ``--init-from
training/denseflow-synth-kitti-small-features/weights.safetensors --init-modules
ground_encoder satellite_encoder``, so that variants whose architecture differs (no
RefineBlock) still start from the same pre-trained encoders.

Checkpoints go to ``--runs-dir/<variant>/``. Prints Table 5 (location and azimuth mean /
median, same and cross area) and writes ``benchmarks/results/denseflow_ablations.json``
({"settings", "variants": {variant: {"label", "overrides", "steps", "same", "cross"}}}) and
``.md``. Both are rewritten after every variant; ``--resume`` keeps the variants already there
(when the budget, data and resolved base config match) and runs only the others, so a run
cut short goes on where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import (
    AREAS,
    DATA_DIR,
    ablation_overrides,
    ablation_settings,
    add_ablation_args,
    budget_schedule,
    finish,
    finished_variants,
    markdown_table,
    save_ablation,
    synthetic_split,
)
from cvloc.config import load_config
from cvloc.evaluate import evaluate
from cvloc.train import train

VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "no-ground-projection": (
        "w/o Ground Feature Projection",
        ("model.denseflow.use_ground_projection=false",),
    ),
    "no-refine-block": (
        "w/o BEV Feature RefineBlock",
        ("model.denseflow.use_refine_block=false",),
    ),
    "no-matching-loss": ("w/o Matching Loss", ("train.use_matching_loss=false",)),
    "no-position-loss": ("w/o Position Loss", ("train.use_position_loss=false",)),
    "no-confidence": (
        "w/o Confidence",
        ("model.denseflow.use_confidence=false", "train.use_confidence_loss=false"),
    ),
    "full": ("Ours (full)", ()),
}
COLUMNS = (("location", "m", "location"), ("yaw", "deg", "azimuth"))  # key, unit, header


def budget_overrides(
    args: argparse.Namespace, batch_size: int, roots: tuple[Path, Path], out_dir: Path
) -> list[str]:
    """Config overrides for the data and the schedule of a ``--steps`` budget.

    Args:
        args: the options (:func:`common.add_ablation_args`).
        batch_size: pairs per step.
        roots: the training and validation pairs directories.
        out_dir: the variant's output directory.

    Returns:
        Dotlist overrides.
    """
    epochs, _ = budget_schedule(args, batch_size)
    return [
        "data.dataset=pairs",
        f"data.root={roots[0]}",
        f"data.val_root={roots[1]}",
        "data.num_workers=0",
        *ablation_overrides(args, batch_size, out_dir),
        f"train.switch_epoch={max(1, round(0.6 * epochs))}",
    ]


def run_variant(
    args: argparse.Namespace, name: str, roots: tuple[Path, Path], tests: dict[str, Any]
) -> dict[str, Any]:
    """Train one variant and evaluate it on the test splits.

    Args:
        args: the options.
        name: a key of :data:`VARIANTS`.
        roots: the training and validation pairs directories.
        tests: area -> test pairs.

    Returns:
        {"label", "overrides", "steps", "train_seconds", area: metrics JSON}.
    """
    label, switches = VARIANTS[name]
    batch_size = args.batch_size or load_config(args.config).data.batch_size
    overrides = [*budget_overrides(args, batch_size, roots, args.runs_dir / name), *switches]
    print(f"\n== {label}: {' '.join(switches) or 'the preset'}")
    result = train(load_config(args.config, overrides))
    out: dict[str, Any] = {"label": label, "overrides": overrides, "steps": result.state.step}
    for area, pairs in tests.items():
        out[area] = evaluate(result.model, pairs, progress=False, method=label)
    return out


def table(variants: dict[str, dict[str, Any]]) -> str:
    """Table 5: location / azimuth mean and median per area, one row per variant."""
    stats = ("mean", "median")
    head = [f"{a} {h} {s} ({u})" for a in AREAS for _, u, h in COLUMNS for s in stats]
    keys = [f"{q}_{s}_{u}" for q, u, _ in COLUMNS for s in stats]
    rows = [
        (v["label"], [f"{v[a][k]:.2f}" for a in AREAS for k in keys]) for v in variants.values()
    ]
    return markdown_table(head, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_ablation_args(
        parser,
        "denseflow-synth-kitti-small",
        "runs/ablations",
        list(VARIANTS),
        out="denseflow_ablations.json",
        workers=2,
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    args = parser.parse_args()
    preset = load_config(args.config).data.preset

    def split(name: str, area: str, num: int) -> Any:
        return synthetic_split(preset, name, area, num, args.seed, args.workers, args.data_dir)

    roots = (split("train", "same", args.pairs).root, split("val", "same", args.num_val).root)
    tests = {area: split("test", area, args.num_test) for area in AREAS}
    settings = ablation_settings(args)
    variants = finished_variants(args, settings)
    for name in args.variants:
        if name not in variants:
            variants[name] = run_variant(args, name, roots, tests)
            save_ablation(args, settings, variants, table(variants))
    finish(args, preset, table(variants))


if __name__ == "__main__":
    main()
