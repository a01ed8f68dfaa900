"""``cvloc eval``: evaluate a checkpoint or a baseline on pairs, print Table 1, write JSON.

Examples::

    cvloc eval --method classical --dataset synthetic --preset kitti-small --num 50
    cvloc eval --checkpoint runs/exp/best.pt --data pairs/test --json metrics.json
    cvloc eval --checkpoint NAME --dataset kitti --root /data/KITTI --split test2
    cvloc eval --checkpoint NAME --data pairs/test --set model.denseflow.iters=12

Data come from a ``cvloc-pairs/1`` directory (``--data DIR``) or from any dataset of
:func:`cvloc.data.registry.build_dataset` (``--dataset NAME``: ``synthetic``, generated on
the fly, or a real benchmark with ``--root DIR``), so a newly registered dataset needs no
change here. User errors (a missing checkpoint or directory, an unknown dataset) print one
line and exit with status 2. Heavy modules are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cvloc.cli import UsageError

SYNTHETIC_DEFAULTS = {"preset": "kitti-small", "seed": 0}
METHODS = ("prior", "classical")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cvloc eval``.

    Args:
        parser: the sub-command parser.
    """
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint", metavar="NAME_OR_PATH", help="a .pt / .safetensors file or weights name"
    )
    model.add_argument("--method", choices=METHODS, help="a non-learned baseline")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's stored config that keep every weight's shape, "
        "e.g. model.denseflow.iters=12 (recorded in the JSON as config_overrides)",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", metavar="DIR", help="a cvloc-pairs/1 directory")
    data.add_argument(
        "--dataset",
        metavar="NAME",
        help="a registered dataset: synthetic, or a benchmark (kitti, ford, vigor, oxford) "
        "with --root",
    )
    parser.add_argument("--root", metavar="DIR", help="the benchmark's root directory")
    parser.add_argument("--split", default="test", help="split (default: test)")
    parser.add_argument(
        "--area", choices=("same", "cross"), help="synthetic / VIGOR area (default: same)"
    )
    synth = parser.add_argument_group("synthetic dataset (--dataset synthetic)")
    synth.add_argument(
        "--preset", help="generator preset (default: the checkpoint's, else kitti-small)"
    )
    synth.add_argument("--num", type=int, default=100, help="number of pairs (default: 100)")
    synth.add_argument(
        "--seed", type=int, help="world seed (default: the checkpoint's training seed, else 0)"
    )
    parser.add_argument("--json", metavar="OUT", help="write the metrics JSON here")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    add_refine_arguments(parser)


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the test-time refinement options (``eval.refine_*``, ``eval.classical_*``).

    Each defaults to the checkpoint's eval settings.

    Args:
        parser: the sub-command parser.
    """
    group = parser.add_argument_group(
        "refinement (cvloc.models.refinement; default: the checkpoint's eval settings)"
    )
    group.add_argument(
        "--refine-passes", type=int, metavar="N", help="forward passes per pair (1: one pass)"
    )
    group.add_argument(
        "--refine-shift-m",
        type=float,
        metavar="M",
        help="position bound declared to passes after the first (metres)",
    )
    group.add_argument(
        "--refine-yaw-deg",
        type=float,
        metavar="DEG",
        help="heading bound declared to passes after the first (degrees)",
    )
    group.add_argument(
        "--refine-align-shift-m",
        type=float,
        metavar="M",
        help="start the second pass from the first's rigid BEV alignment (FineMatch), with "
        "this position bound (metres)",
    )
    group.add_argument(
        "--refine-align-headings",
        type=int,
        metavar="N",
        help="run that first pass at N headings over the prior's range; the alignment is "
        "the shift best scored over them (FineMatch)",
    )
    group.add_argument(
        "--refine-align-temperature",
        type=float,
        metavar="T",
        help="temperature of the log-sum-exp over those headings (alignment-score units)",
    )
    group.add_argument(
        "--classical-refine",
        action=argparse.BooleanOptionalAction,
        help="end with the classical NCC search in a window around the estimate",
    )
    group.add_argument(
        "--classical-shift-m",
        type=float,
        metavar="M",
        help="that window's position half-range per axis (metres)",
    )
    group.add_argument(
        "--classical-yaw-deg",
        type=float,
        metavar="DEG",
        help="that window's heading half-range (degrees)",
    )
    group.add_argument(
        "--classical-rematch",
        action=argparse.BooleanOptionalAction,
        help="then match once more at the search's pose (its matches are reported)",
    )
    group.add_argument(
        "--match-upsample",
        type=int,
        metavar="F",
        help="interpolate the matches F times more densely per axis (1: the model's own)",
    )


def refine_settings(args: argparse.Namespace, eval_config: Any) -> Any:
    """The checkpoint's eval config with the refinement options of the command line applied.

    Args:
        args: options of :func:`add_refine_arguments`.
        eval_config: the checkpoint's :class:`cvloc.config.EvalConfig`.

    Returns:
        A new EvalConfig.

    Raises:
        UsageError: an option is out of range.
    """
    import dataclasses

    try:
        return dataclasses.replace(eval_config, **given_refinement(args))
    except ValueError as exc:
        raise refinement_usage_error(exc) from exc


def given_refinement(args: argparse.Namespace) -> dict[str, Any]:
    """The refinement fields (:data:`REFINE_FIELDS`) set on the command line, with their values.

    Args:
        args: options of :func:`add_refine_arguments` (their dests are the field names).

    Returns:
        Field name -> value, in :data:`REFINE_FIELDS` order.
    """
    from cvloc.models.refinement import REFINE_FIELDS

    return {name: getattr(args, name) for name in REFINE_FIELDS if getattr(args, name) is not None}


def refinement_usage_error(exc: ValueError) -> UsageError:
    """An invalid refinement field (:class:`cvloc.config.EvalConfig`) as its option's error.

    Args:
        exc: the error naming ``eval.FIELD``.

    Returns:
        The error naming ``--FIELD`` instead.
    """
    return UsageError(str(exc).replace("eval.", "--").replace("_", "-"))


def refuse_refinement_options(args: argparse.Namespace, also: tuple[str, ...] = ()) -> None:
    """Refuse the refinement options (and ``also``) for a method without a checkpoint.

    Args:
        args: options of :func:`add_refine_arguments`.
        also: other options given that need a checkpoint, e.g. ``("--set",)``.

    Raises:
        UsageError: naming the first such option.
    """
    given = [f"--{name.replace('_', '-')}" for name in given_refinement(args)] + list(also)
    if given:
        raise UsageError(f"{given[0]} applies to a --checkpoint")


def run(args: argparse.Namespace) -> int:
    """Run ``cvloc eval``.

    Args:
        args: the parsed options of :func:`add_arguments`.

    Returns:
        0 on success.

    Raises:
        UsageError: a problem with the user's input (``cvloc`` prints it, exit status 2).
    """
    import torch

    from cvloc.evaluate import evaluate
    from cvloc.metrics import format_metrics_table, metrics_to_json

    for name in ("batch_size", "num", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    device = _device(args.device)
    torch.manual_seed(0)  # evaluation is deterministic; this pins any stray randomness
    model, method, defaults, refinement = _model(args, device)
    dataset, source = _dataset(args, defaults)
    if args.limit is not None and args.limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.limit))
    result = evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        progress=sys.stderr.isatty(),
        method=method,
        checkpoint=args.checkpoint,
    )
    result["data"] = source
    if refinement is not None:
        result["refinement"] = refinement
    if args.set:
        result["config_overrides"] = list(args.set)
    print(format_metrics_table({method: result}, title=f"{method} on {source}"))
    print(f"{result['num_samples']} pairs, {result['seconds_per_pair']:.4f} s per pair")
    if "flow_epe_px" in result:
        print(f"flow EPE {result['flow_epe_px']:.2f} px")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(metrics_to_json(result))
        print(f"wrote {path}")
    return 0


def _device(name: str) -> Any:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def _model(
    args: argparse.Namespace, device: Any
) -> tuple[Any, str, dict[str, Any], dict[str, Any] | None]:
    """(model, method name, synthetic defaults of the checkpoint's config, its refinement).

    The refinement is the :data:`cvloc.models.refinement.REFINE_FIELDS` it runs with (None
    for a baseline).
    """
    if args.method is not None:
        from cvloc.models.baselines import ClassicalBaseline, PriorBaseline

        refuse_refinement_options(args, ("--set",) if args.set else ())
        model = PriorBaseline() if args.method == "prior" else ClassicalBaseline()
        return model, args.method, dict(SYNTHETIC_DEFAULTS), None
    from cvloc.checkpoint import CheckpointError, load_model
    from cvloc.models.refinement import refined, refinement_of

    try:
        model, cfg = load_model(args.checkpoint, device, args.set)
    except FileNotFoundError as exc:
        raise UsageError(f"checkpoint {args.checkpoint!r} not found: {exc}") from exc
    except CheckpointError as exc:
        raise UsageError(f"checkpoint {args.checkpoint!r} cannot be loaded: {exc}") from exc
    settings = refine_settings(args, cfg.eval)
    method = cfg.model.method
    if settings.refine_passes > 1:
        method = f"{method} ({settings.refine_passes} passes)"
    if settings.classical_refine:
        method = f"{method} + classical refinement"
    defaults = {"preset": cfg.data.preset, "seed": cfg.data.seed}
    return refined(model, settings), method, defaults, refinement_of(settings)


def _dataset(args: argparse.Namespace, defaults: dict[str, Any]) -> tuple[Any, str]:
    """(dataset, a short description of it for the table title and the JSON)."""
    from cvloc.data.registry import build_dataset

    if args.data is not None:
        name, root, options, source = "pairs", args.data, {}, str(args.data)
    elif args.dataset == "synthetic":
        preset = args.preset or defaults["preset"]
        seed = defaults["seed"] if args.seed is None else args.seed
        area = args.area or "same"
        name, root = "synthetic", None
        options = {"preset": preset, "num": args.num, "area": area, "seed": seed}
        source = f"synthetic {preset} {args.split}/{area} seed {seed}"
    else:
        name, root, source = args.dataset, args.root, f"{args.dataset} {args.split}"
        options = {} if args.area is None else {"area": args.area}
    try:
        return build_dataset(name, root, args.split, **options), source
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise UsageError(f"{'--data' if args.data else '--dataset ' + name}: {message}") from exc
