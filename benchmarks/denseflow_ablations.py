"""DenseFlow ablations in the layout of the paper's Table 5, on synthetic KITTI, small budget.

Reproduce (about 1.4 h per variant, 8-9 h in all on 2 CPU cores)::

    python benchmarks/denseflow_ablations.py --steps 2000 --pairs 2000

Every variant of the base config (``--config``, default ``denseflow-synth-kitti-small``)
is trained from scratch for ``--steps`` optimizer steps on the same ``--pairs`` fixed
synthetic training pairs (train split, epoch-0 priors, written once to ``--data-dir`` as
``cvloc-pairs/1``; validation on ``--num-val`` val pairs), then evaluated on ``--num-test``
fixed test pairs of the same and of the cross area. The schedule keeps the preset's shape,
scaled to the budget: warm-up over 5 % of the steps, beta / kappa switched after 60 % of
the epochs. Variants (config switches, :data:`VARIANTS`):

- w/o Ground Feature Projection: ``model.denseflow.use_ground_projection=false``
- w/o BEV Feature RefineBlock: ``model.denseflow.use_refine_block=false``
- w/o Matching Loss: ``train.use_matching_loss=false``
- w/o Position Loss: ``train.use_position_loss=false``
- w/o Confidence: ``model.denseflow.use_confidence=false train.use_confidence_loss=false``
- full: the preset unchanged.

Checkpoints go to ``--runs-dir/<variant>/``. Prints Table 5 (location and azimuth mean /
median, same and cross area) and writes ``benchmarks/results/denseflow_ablations.json``
({"settings", "variants": {variant: {"overrides", "steps", "same", "cross"}}}) and ``.md``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from cvloc.config import load_config
from cvloc.evaluate import evaluate
from cvloc.train import train
from denseflow_accuracy import AREAS, DATA_DIR, RESULTS, machine, synthetic_split, write_json

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
        args: the options (``steps``, ``pairs``, ``num_val``, ``threads``).
        batch_size: pairs per step.
        roots: the training and validation pairs directories.
        out_dir: the variant's output directory.

    Returns:
        Dotlist overrides.
    """
    per_epoch = min(args.steps, args.pairs // batch_size)
    epochs = math.ceil(args.steps / per_epoch)
    return [
        "data.dataset=pairs",
        f"data.root={roots[0]}",
        f"data.val_root={roots[1]}",
        f"data.num_val={args.num_val}",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        f"train.epochs={epochs}",
        f"train.steps_per_epoch={per_epoch}",
        f"train.warmup_steps={epochs * per_epoch // 20}",
        f"train.switch_epoch={max(1, round(0.6 * epochs))}",
        f"train.num_threads={args.threads}",
        f"train.log_every={min(50, args.steps)}",
        "train.image_every=0",
        f"train.out_dir={out_dir}",
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
    lines = ["| Model | " + " | ".join(head) + " |", "|:--|" + "--:|" * len(head)]
    for v in variants.values():
        keys = [f"{q}_{s}_{u}" for q, u, _ in COLUMNS for s in stats]
        cells = [f"{v[a][k]:.2f}" for a in AREAS for k in keys]
        lines.append(f"| {v['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="denseflow-synth-kitti-small", help="base config")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per variant")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default: config's)")
    parser.add_argument("--num-val", type=int, default=50, help="validation pairs")
    parser.add_argument("--num-test", type=int, default=200, help="test pairs per area")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="subset"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=2, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs/ablations"), help="checkpoints per variant"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "denseflow_ablations.json", help="results JSON"
    )
    args = parser.parse_args()
    preset = load_config(args.config).data.preset

    def split(name: str, area: str, num: int) -> Any:
        return synthetic_split(preset, name, area, num, args.seed, args.workers, args.data_dir)

    roots = (split("train", "same", args.pairs).root, split("val", "same", args.num_val).root)
    tests = {area: split("test", area, args.num_test) for area in AREAS}
    variants = {name: run_variant(args, name, roots, tests) for name in args.variants}
    text = table(variants)
    print(f"\n**{preset}, {args.steps} steps on {args.pairs} pairs, {args.num_test} test pairs**")
    print(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings.update(machine=machine(), torch=torch.__version__)
    write_json(args.out, {"settings": settings, "variants": variants})
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
