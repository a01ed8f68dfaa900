"""FineMatch ablations (Surface Model, SimRefiner) on synthetic pairs, small training budget.

Reproduce (a long run: about 2 s per step and variant at batch 4, 1.1 h per 2,000 steps)::

    python benchmarks/finematch_ablations.py --steps 2000 --pairs 2000

Quick check of the script (a few minutes; writes into a scratch place)::

    python benchmarks/finematch_ablations.py --steps 3 --pairs 4 --num-val 1 --num-test 4
        --runs-dir /tmp/fm-ablations --out /tmp/fm-ablations/finematch_ablations.json

Every variant of the base config (``--config``, default ``finematch-synth-kitti-small``) is
trained from scratch for ``--steps`` optimizer steps on the same ``--pairs`` synthetic
training pairs (train split, generator indices 0 .. pairs - 1, epoch-0 priors every epoch;
generated on the fly and not cached, so that the items keep ``sat_height_m`` for the height
loss), validated on ``--num-val`` val pairs, then evaluated on ``--num-test`` fixed test
pairs per area (generated once, in memory). The schedule keeps the preset's shape, scaled
to the budget (warm-up over 5 % of the steps). Variants (config switches, :data:`VARIANTS`):

- full: the preset unchanged; also evaluated with the RANSAC pose solver (same weights).
- w/o Surface Model: ``model.finematch.surface.num_height_bins=1`` (flat ground).
- w/o SimRefiner: ``model.finematch.refiner.mode=none``.
- SimRefiner local only / global only: ``model.finematch.refiner.mode=local`` / ``global``.

Prints a table (location and yaw mean / median, CVFM match precision at 5 / 10 / 15 px,
per area) and writes ``benchmarks/results/finematch_ablations.json`` ({"settings",
"variants": {variant: {"label", "overrides", "steps", "train_seconds", area: metrics
JSON}}}) and the table as ``.md`` beside it. Checkpoints go to ``--runs-dir/<variant>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from cvloc.config import load_config
from cvloc.data.synthetic.dataset import SyntheticDataset
from cvloc.evaluate import evaluate
from cvloc.models import FineMatch
from cvloc.train import train

RESULTS = Path(__file__).parent / "results" / "finematch_ablations.json"
AREAS = ("same", "cross")
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
        args: the options (``steps``, ``pairs``, ``num_val``, ``seed``, ``workers``,
            ``threads``).
        batch_size: pairs per step.
        out_dir: the variant's output directory.

    Returns:
        Dotlist overrides.
    """
    per_epoch = max(1, min(args.steps, args.pairs // batch_size))
    epochs = math.ceil(args.steps / per_epoch)
    return [
        "data.dataset=synthetic",
        f"data.num_train={args.pairs}",
        f"data.num_val={args.num_val}",
        f"data.seed={args.seed}",
        f"data.batch_size={batch_size}",
        f"data.num_workers={args.workers}",
        "data.resample_each_epoch=false",
        "data.cache_train=false",
        f"train.epochs={epochs}",
        f"train.steps_per_epoch={per_epoch}",
        f"train.warmup_steps={epochs * per_epoch // 20}",
        f"train.num_threads={args.threads}",
        f"train.log_every={min(50, args.steps)}",
        "train.image_every=0",
        f"train.out_dir={out_dir}",
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
    lines = ["| Model | " + " | ".join(head) + " |", "|:--|" + "--:|" * len(head)]
    for v in variants.values():
        cells = [
            "n/a" if v[area].get(key) is None else fmt.format(v[area][key])
            for area in areas
            for key, _, fmt in COLUMNS
        ]
        lines.append(f"| {v['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The CPU model and the logical CPU count, for the results file."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} logical CPUs"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON (NaN and inf, undefined metrics, become null)."""
    plain = json.loads(json.dumps(data), parse_constant=lambda _: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="finematch-synth-kitti-small", help="base config")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per variant")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default: config's)")
    parser.add_argument("--num-val", type=int, default=50, help="validation pairs")
    parser.add_argument("--num-test", type=int, default=200, help="test pairs per area")
    parser.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS), help="test")
    parser.add_argument("--eval-batch", type=int, default=4, help="pairs per evaluation pass")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="subset"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=1, help="training data workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs/finematch-ablations"), help="checkpoints"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_config(args.config).data.preset
    tests = {}
    for area in args.areas:
        dataset = SyntheticDataset(preset, "test", area, args.num_test, seed=args.seed)
        tests[area] = [dataset[i] for i in range(len(dataset))]  # once, for every variant
    variants: dict[str, dict[str, Any]] = {}
    for name in args.variants:
        variants.update(run_variant(args, name, tests))
    text = table(variants, tuple(args.areas))
    print(f"\n**{preset}, {args.steps} steps on {args.pairs} pairs, {args.num_test} test pairs**")
    print(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings.update(machine=machine(), torch=torch.__version__)
    write_json(args.out, {"settings": settings, "variants": variants})
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
