"""``cvloc calibrate``: fit a model's uncertainty scales on validation pairs, write weights.

Examples::

    cvloc calibrate --checkpoint runs/exp/best.pt --num 200 --out weights/exp.safetensors
    cvloc calibrate --checkpoint NAME --data pairs/val --out NAME-calibrated.safetensors
    cvloc calibrate --checkpoint NAME --set model.denseflow.bev_samples=4 --out NEW.safetensors

The pairs are the synthetic ``val`` split of the model's training preset and prior
(``--num``, ``--seed``, ``--area``; ``--preset`` for a model trained on a pairs directory)
or a ``cvloc-pairs/1`` directory (``--data``), which must not be a test split: the scales
are fitted where checkpoints are chosen, never where they are scored
(:mod:`cvloc.calibrate`). The model runs as its weights' ``eval.refine_*`` settings say,
or as ``--refine-passes`` / ``--refine-shift-m`` / ``--refine-yaw-deg`` say; those are then
recorded in the written weights with the scales, which hold for that procedure only; so
are the ``--set`` overrides of the model's config. The scales fit the median normalised
error, or the ``--quantile`` given (0.95: the 95 % ellipse holds 95 % of the pairs).
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from cvloc.cli import UsageError
from cvloc.eval_command import add_refine_arguments, refine_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cvloc calibrate``.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="NAME_OR_PATH",
        help="a .pt / .safetensors file or weights name",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT.safetensors",
        help="the calibrated weights file to write (may be the input file)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the stored config that keep every weight's shape (as cvloc "
        "eval --set), fitted and written into --out",
    )
    parser.add_argument("--data", metavar="DIR", help="validation pairs (cvloc-pairs/1)")
    parser.add_argument(
        "--preset",
        help="synthetic preset of the val pairs (default: the model's training preset)",
    )
    parser.add_argument("--area", choices=("same", "cross"), default="same", help="synthetic area")
    parser.add_argument("--num", type=int, default=200, help="synthetic val pairs (default 200)")
    parser.add_argument("--seed", type=int, help="world seed (default: the model's training seed)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.5,
        metavar="Q",
        help="fit the ellipse of probability Q to hold a share Q of the pairs (default 0.5, "
        "the median; 0.95: honest 95 %% ellipses for heavy-tailed errors)",
    )
    add_refine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``cvloc calibrate``.

    Args:
        args: the parsed options of :func:`add_arguments`.

    Returns:
        0 on success.

    Raises:
        UsageError: a problem with the user's input (``cvloc`` prints it, exit status 2).
    """
    from cvloc.calibrate import fit_calibration, normalized_errors, write_calibrated_weights
    from cvloc.checkpoint import CheckpointError, load_model
    from cvloc.localize_inputs import readable_training_settings
    from cvloc.models.refinement import refined, refinement_of

    for name in ("num", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.quantile < 1.0:
        raise UsageError(f"--quantile must be in (0, 1), got {args.quantile}")
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out {args.out}: must be a .safetensors file")
    try:
        model, cfg = load_model(args.checkpoint, args.device, args.set)
    except FileNotFoundError as exc:
        raise UsageError(f"checkpoint {args.checkpoint!r} not found: {exc}") from exc
    except CheckpointError as exc:
        raise UsageError(f"checkpoint {args.checkpoint!r} cannot be loaded: {exc}") from exc
    dataset, source, data_cfg = _dataset(args, cfg)
    settings = refine_settings(args, cfg.eval)
    refine = refinement_of(settings)
    print(f"calibrating {args.checkpoint} on {len(dataset)} pairs: {source}, {refine}")
    d2, z2, missing = normalized_errors(
        refined(model, settings), dataset, args.batch_size, args.device,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    try:
        calibration = fit_calibration(d2, z2, missing, args.quantile)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from exc
    # Recorded only where the input records none (write_calibrated_weights).
    training_data = readable_training_settings(dataclasses.replace(cfg, data=data_cfg))
    out = write_calibrated_weights(
        args.checkpoint,
        args.out,
        calibration,
        source,
        training_data,
        eval_settings=refine,
        config_overrides=args.set,
    )
    print(json.dumps(dataclasses.asdict(calibration), indent=1))
    heading = "heading known: no heading variance"
    if calibration.yaw_coverage95_raw is not None:
        heading = (
            f"heading variance x {calibration.yaw_variance_scale:.3g} (95 % coverage "
            f"{calibration.yaw_coverage95_raw:.0%} -> {calibration.yaw_coverage95:.0%})"
        )
    print(
        f"position covariance x {calibration.covariance_scale:.3g} (95 % ellipse coverage "
        f"{calibration.position_coverage95_raw:.0%} -> {calibration.position_coverage95:.0%}), "
        f"{heading}"
    )
    print(f"wrote {out}")
    return 0


def _dataset(args: argparse.Namespace, cfg: Any) -> tuple[Any, str, Any]:
    """(validation pairs, their description, the data config that describes them)."""
    if args.data is not None:
        from cvloc.data.pairs import PairsDataset

        try:
            dataset = PairsDataset(args.data)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise UsageError(f"--data {args.data}: {exc}") from exc
        split = dataset.info.get("split")
        if split == "test":
            raise UsageError(
                f"--data {args.data}: its dataset.json says split 'test'; calibrate on "
                "validation pairs (never fit anything on the test split)"
            )
        data_cfg = dataclasses.replace(cfg.data, dataset="pairs", root=args.data)
        return dataset, f"{args.data} (split {split or 'unknown'})", data_cfg
    from cvloc.data.synthetic.dataset import SyntheticDataset
    from cvloc.data.synthetic.presets import get_preset

    if args.preset is None and cfg.data.dataset != "synthetic":
        raise UsageError(
            f"the model trained on data.dataset={cfg.data.dataset}: give its validation "
            "pairs with --data DIR, or the synthetic preset they came from with --preset"
        )
    name = args.preset or cfg.data.preset
    try:
        preset = get_preset(name)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"--preset {name}: {exc}") from exc
    if cfg.data.yaw_range_deg is not None:  # the heading noise the model trained with
        preset = preset.with_prior(yaw_range_deg=cfg.data.yaw_range_deg)
    seed = cfg.data.seed if args.seed is None else args.seed
    dataset = SyntheticDataset(preset, "val", args.area, args.num, seed)
    source = (
        f"synthetic {name} val/{args.area} seed {seed}, {args.num} pairs, heading noise "
        f"+-{preset.prior.yaw_range_deg:g} deg"
    )
    data_cfg = dataclasses.replace(cfg.data, dataset="synthetic", preset=name)
    return dataset, source, data_cfg
