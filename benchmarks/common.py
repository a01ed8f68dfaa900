"""Helpers the benchmark scripts share: paths, the machine, results files, splits, ablations.

The scripts run as ``python benchmarks/NAME.py``, which puts this directory first on
``sys.path``, so they import these as ``from common import ...``. What is here:

- where results and synthetic pairs go (:data:`RESULTS`, :data:`DATA_DIR`) and the test
  areas (:data:`AREAS`);
- the results file: :func:`machine` (and :func:`cpu_model`), :func:`run_settings`,
  :func:`write_json` (paths made :func:`portable`), :func:`write_results` (JSON and tables);
- the data and the model: :func:`synthetic_split`, :func:`load_or_exit`;
- the match diagnoses on val pairs (``match_errors.py``, ``match_ranking.py``,
  ``match_stages.py``): :func:`add_val_pair_args`, :func:`val_pairs`,
  :func:`without_classical`;
- the scaffolding of the ablation scripts (``denseflow_ablations.py``,
  ``finematch_ablations.py``): :func:`add_ablation_args`, :func:`budget_schedule`,
  :func:`ablation_overrides`, :func:`ablation_settings`, :func:`finished_variants`,
  :func:`markdown_table`, :func:`save_ablation` and :func:`finish`;
- the choice of a test-time setting on validation pairs: :func:`evaluate_candidates`,
  :func:`lowest_median`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvloc.checkpoint import CheckpointError, load_model
from cvloc.config import config_to_dict, load_config
from cvloc.data.pairs import PairsDataset
from cvloc.demo import evaluate_classical, write_synthetic_pairs
from cvloc.evaluate import evaluate
from cvloc.metrics import metrics_to_json
from cvloc.models.baselines import PriorBaseline
from cvloc.models.refinement import refined

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DATA_DIR = Path(__file__).parents[1] / "data" / "benchmarks"  # /data/ is git-ignored
AREAS = ("same", "cross")


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows).

    Returns:
        The model name, e.g. ``"AMD EPYC"``.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The CPU model and logical CPU count (and the GPU, if any), for the results file.

    Returns:
        A one-line description.
    """
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs{gpu}"


def run_settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The settings of a run for its results file: the options, ``extra``, machine, torch.

    Args:
        args: the parsed options (paths are stored as strings).
        **extra: further settings, stored after the options.

    Returns:
        The settings as JSON-ready values.
    """
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {**options, **extra, "machine": machine(), "torch": torch.__version__}


def portable(value: Any) -> Any:
    """Paths inside this repository made relative to its root, in nested results.

    Results files are committed: an absolute path would name the machine that ran them.

    Args:
        value: a JSON-ready value (dicts and lists are walked; strings, also inside
            ``key=value`` overrides, lose the repository prefix).

    Returns:
        The same structure with portable strings.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(f"{REPO}/", "")
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write results as strict JSON, portable (:func:`portable`), NaN and inf as null.

    Args:
        path: the file (parent directories are created).
        data: the results.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(metrics_to_json(portable(data)))
    print(f"wrote {path}")


def write_results(path: Path, data: dict[str, Any], tables: list[str]) -> None:
    """Write the results JSON (:func:`write_json`) and its Markdown tables beside it (``.md``).

    Args:
        path: the JSON file.
        data: the results.
        tables: Markdown tables, written one after the other.
    """
    write_json(path, data)
    path.with_suffix(".md").write_text("\n".join(tables))
    print(f"wrote {path.with_suffix('.md')}")


def synthetic_split(
    preset: str, split: str, area: str, num: int, seed: int, workers: int, data_dir: Path
) -> PairsDataset:
    """A fixed synthetic split written once under ``data_dir`` and reused afterwards.

    Args:
        preset: synthetic preset.
        split: ``"test"``, ``"val"`` or ``"train"``.
        area: ``"same"`` or ``"cross"``.
        num: number of pairs.
        seed: world seed.
        workers: generator processes.
        data_dir: parent directory of the pairs directories.

    Returns:
        The pairs (``root`` is their directory).
    """
    out = data_dir / f"{preset}-{split}-{area}-s{seed}-n{num}"
    return write_synthetic_pairs(out, num, seed, workers, preset, area, split)


def add_val_pair_args(parser: argparse.ArgumentParser, out_name: str) -> None:
    """The options of a match diagnosis on same-area val pairs (never the test split).

    ``--preset``, ``--num``, ``--seed``, ``--workers``, ``--threads``, ``--data-dir`` (read
    by :func:`val_pairs`) and ``--out`` (default ``RESULTS / out_name``).

    Args:
        parser: the script's parser.
        out_name: the results file's name.
    """
    parser.add_argument("--preset", default="kitti-small", help="synthetic preset")
    parser.add_argument("--num", type=int, default=100, help="val pairs (same area)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=1, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--out", type=Path, default=RESULTS / out_name, help="JSON")


def val_pairs(args: argparse.Namespace) -> PairsDataset:
    """Set the torch threads and return the val pairs of :func:`add_val_pair_args`' options."""
    torch.set_num_threads(args.threads)
    return synthetic_split(args.preset, "val", "same", args.num, args.seed, args.workers,
                           args.data_dir)  # fmt: skip


def without_classical(model: nn.Module, eval_config: Any) -> nn.Module:
    """The model as its weights run it, without the classical refinement: its matches.

    The classical refinement moves the pose and never the matches, so the match
    diagnoses leave its search out; the refinement passes stay.

    Args:
        model: a localizer.
        eval_config: its :class:`cvloc.config.EvalConfig`.

    Returns:
        The localizer, in eval mode.
    """
    return refined(model, dataclasses.replace(eval_config, classical_refine=False)).eval()


def load_or_exit(checkpoint: str) -> tuple[torch.nn.Module, Any]:
    """Load a model, or print why it cannot be loaded and exit with status 2.

    Args:
        checkpoint: a weights name or a ``.pt`` / ``.safetensors`` path.

    Returns:
        (model in eval mode, its experiment config).
    """
    try:
        return load_model(checkpoint)
    except (FileNotFoundError, CheckpointError) as exc:
        sys.exit(f"checkpoint {checkpoint!r}: {exc}")


def baseline_metrics(name: str, pairs: PairsDataset, workers: int) -> dict[str, Any]:
    """The metrics JSON of a non-learned method on a pairs directory's dataset.

    Args:
        name: ``"prior"`` or ``"classical"`` (the search in ``workers`` processes).
        pairs: the dataset (``root`` is its directory).
        workers: processes of the classical search.

    Returns:
        The method's metrics.
    """
    if name == "prior":
        return evaluate(PriorBaseline(), pairs, progress=False, method="prior")
    if name == "classical":
        return evaluate_classical(pairs.root, workers)[0]
    raise ValueError(f"no baseline named {name!r}; one of prior, classical")


def add_ablation_args(
    parser: argparse.ArgumentParser,
    config: str,
    runs_dir: str,
    variants: list[str],
    *,
    out: str,
    workers: int = 1,
) -> None:
    """Add the options every ablation script has: base config, budget, splits, output.

    Args:
        parser: the script's parser.
        config: the default base config (a preset name).
        runs_dir: the default parent directory of the variants' checkpoints.
        variants: the variant names (the ``--variants`` choices; default: all).
        out: the default results file name, in :data:`RESULTS`.
        workers: the default number of data processes.
    """
    parser.add_argument("--config", default=config, help="base config")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per variant")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default: config's)")
    parser.add_argument("--num-val", type=int, default=50, help="validation pairs")
    parser.add_argument("--num-test", type=int, default=200, help="test pairs per area")
    parser.add_argument("--variants", nargs="+", choices=variants, default=variants, help="subset")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--workers", type=int, default=workers, help="pair generator / data loader processes"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--init-from",
        metavar="WEIGHTS",
        help="start every variant from these weights (train.init_from: a path or shipped "
        "weights name; default: from scratch), e.g. the stage-1 feature pre-training "
        "training/denseflow-synth-kitti-small-features/weights.safetensors",
    )
    parser.add_argument(
        "--init-modules",
        nargs="*",
        default=[],
        metavar="NAME",
        help="fill only these sub-modules from --init-from (train.init_modules: NAME or "
        "DST=SRC; default: the whole model), e.g. ground_encoder satellite_encoder, so "
        "that variants whose architecture differs (no RefineBlock) still start from the "
        "pre-trained encoders",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=Path(runs_dir), help="checkpoints per variant"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the variants already in --out (written after each one) when it was made "
        "with the same budget, data and base config, and run only the others",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / out, help="results JSON (and .md beside it)"
    )


def budget_schedule(args: argparse.Namespace, batch_size: int) -> tuple[int, int]:
    """The epochs of a ``--steps`` budget over ``--pairs`` training pairs.

    Args:
        args: the options (``steps``, ``pairs``).
        batch_size: pairs per step.

    Returns:
        (epochs, steps per epoch): one pass over the pairs per epoch, at most ``--steps``.
    """
    per_epoch = max(1, min(args.steps, args.pairs // batch_size))
    return math.ceil(args.steps / per_epoch), per_epoch


def ablation_overrides(args: argparse.Namespace, batch_size: int, out_dir: Path) -> list[str]:
    """Config overrides every ablation variant shares: schedule, batch, output, start weights.

    The schedule keeps the preset's shape scaled to the budget (:func:`budget_schedule`,
    warm-up over 5 % of the steps); no images are logged. ``--init-from`` and
    ``--init-modules`` become ``train.init_from`` and ``train.init_modules``.

    Args:
        args: the options of :func:`add_ablation_args`.
        batch_size: pairs per step.
        out_dir: the variant's output directory.

    Returns:
        Dotlist overrides (the script adds its data source and variant switches).
    """
    epochs, per_epoch = budget_schedule(args, batch_size)
    overrides = [
        f"data.num_val={args.num_val}",
        f"data.batch_size={batch_size}",
        f"train.epochs={epochs}",
        f"train.steps_per_epoch={per_epoch}",
        f"train.warmup_steps={epochs * per_epoch // 20}",
        f"train.num_threads={args.threads}",
        f"train.log_every={min(50, args.steps)}",
        "train.image_every=0",
        f"train.out_dir={out_dir}",
    ]
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    if args.init_modules:  # without --init-from, the config check says what is missing
        overrides.append(f"train.init_modules=[{','.join(args.init_modules)}]")
    return overrides


# The settings that decide an ablation's numbers: --resume keeps results only where they match.
ABLATION_KEYS = (
    "config",
    "config_sha256",
    "steps",
    "pairs",
    "batch_size",
    "num_val",
    "num_test",
    "seed",
    "init_from",
    "init_modules",
)


def ablation_settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """:func:`run_settings` with ``config_sha256``, the digest of the resolved base config.

    A preset edited between two runs (a new default) changes the digest, so results of the
    old preset are never resumed as if they were the new one's.

    Args:
        args: the options of :func:`add_ablation_args`.
        **extra: further settings.

    Returns:
        The settings.
    """
    resolved = json.dumps(config_to_dict(load_config(args.config)), sort_keys=True)
    digest = hashlib.sha256(resolved.encode()).hexdigest()
    return run_settings(args, config_sha256=digest, **extra)


def finished_variants(
    args: argparse.Namespace, settings: dict[str, Any], keys: tuple[str, ...] = ABLATION_KEYS
) -> dict[str, dict[str, Any]]:
    """With ``--resume``, the results already in ``--out``; else none.

    Args:
        args: the options (``resume``, ``out``).
        settings: this run's :func:`ablation_settings`.
        keys: the settings that must match the stored ones.

    Returns:
        Result name -> results, as stored.

    Raises:
        SystemExit: ``--out`` is not a results file or was made with other settings.
    """
    if not args.resume or not args.out.exists():
        return {}
    try:
        stored = json.loads(args.out.read_text())
        old, variants = stored["settings"], stored["variants"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--resume: {args.out} is not an ablation results file ({exc})") from exc
    new = portable(settings)
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        raise SystemExit(
            f"--resume: {args.out} was made with other {', '.join(differ)} "
            "(drop --resume to start over, or write elsewhere with --out)"
        )
    print(f"resuming: {', '.join(variants)} kept from {args.out}")
    return dict(variants)


def markdown_table(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """A Markdown table: a ``Model`` column of labels, then right-aligned value columns.

    Args:
        head: the headers of the value columns.
        rows: (label, cells) per row, one cell per header.

    Returns:
        The table, with a final newline.
    """
    lines = ["| Model | " + " | ".join(head) + " |", "|:--|" + "--:|" * len(head)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def save_ablation(
    args: argparse.Namespace,
    settings: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    text: str,
) -> None:
    """Write the results JSON and the table (``.md``) beside it, finished or not.

    Args:
        args: the options of :func:`add_ablation_args` (``out``: the JSON).
        settings: the run's :func:`ablation_settings`.
        variants: result name -> its results (label, overrides, metrics per area, ...).
        text: the Markdown table.
    """
    write_results(args.out, {"settings": settings, "variants": variants}, [text])


def finish(args: argparse.Namespace, preset: str, text: str) -> None:
    """Print an ablation table (the scripts write it after every variant, :func:`save_ablation`).

    Args:
        args: the options of :func:`add_ablation_args`.
        preset: the synthetic preset, for the heading.
        text: the Markdown table.
    """
    print(f"\n**{preset}, {args.steps} steps on {args.pairs} pairs, {args.num_test} test pairs**")
    print(text)


def evaluate_candidates(runs: dict[str, nn.Module], pairs: Any) -> dict[str, dict[str, Any]]:
    """Evaluate each named localizer on validation pairs, printing one summary line each.

    The scripts that choose a test-time setting on validation pairs
    (``refinement.py``, ``classical_window.py``, ``robust_fit.py``) share this loop and
    :func:`lowest_median`.

    Args:
        runs: name -> localizer.
        pairs: the validation pairs.

    Returns:
        Name -> metrics JSON.
    """
    results = {}
    for name, localizer in runs.items():
        metrics = evaluate(localizer, pairs, progress=False, method=name)
        results[name] = metrics
        print(
            f"val {name}: median {metrics['location_median_m']:.3f} m, "
            f"yaw {metrics['yaw_median_deg']:.3f} deg, "
            f"P@15px {metrics.get('match_precision_15px', math.nan):.3f}, "
            f"{metrics['seconds_per_pair']:.2f} s per pair",
            flush=True,
        )
    return results


def lowest_median(results: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The name of lowest median location error among ``names``; a tie goes to the first."""
    return min(names, key=lambda name: results[name]["location_median_m"])
