r"""One table for both methods: prior, classical, DenseFlow and FineMatch on the synthetic tests.

Reproduce the recorded results (the classical search dominates: about 20 min per preset
on 2 CPU cores; ``--methods`` with ``--merge`` re-runs only what changed)::

    python benchmarks/method_comparison.py --num 500 --workers 2 \\
        --checkpoint DenseFlow:kitti-small=denseflow-synth-kitti-small \\
        --checkpoint FineMatch:kitti-small=finematch-synth-kitti-small

Every method runs on the same fixed synthetic test pairs (seed 0, written once per preset
and area under ``--data-dir`` and reused), same area and cross area, for each ``--presets``
(``kitti-small``: pinhole, prior +-20 m / +-10 deg; ``vigor-small``: panorama). The learned
methods need a checkpoint per preset (``METHOD:PRESET=NAME_OR_PATH``); a learned method
without one for a preset is left out of that preset's table and listed under
``settings.missing``. ``DenseFlow+classical`` and ``FineMatch+classical`` use the same
checkpoints as ``DenseFlow`` and ``FineMatch``, finished by the classical search in a small
window around their estimate (``eval.classical_refine``; the window recorded in the weights,
else the defaults of :class:`cvloc.config.EvalConfig`); the plain rows run without it.

The metrics are those of ``design.md`` (localisation, and the CVFM-style match precision
of the top-30 and of all confident matches on the satellite image): both methods'
correspondences are scored the same way (with the classical refinement they stay the
learned method's own).

Writes ``benchmarks/results/method_comparison.json`` ({"settings", PRESET: {AREA: {method:
metrics JSON}}}) and the Markdown tables beside it (``.md``); each row records the
``threads``, ``batch`` and ``workers`` it ran with (``run``), the ``settings`` those of the
latest invocation. With ``--merge`` the methods not run now keep their entries from the
existing file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from cvloc.evaluate import evaluate
from cvloc.metrics import format_metrics_table
from cvloc.models.refinement import refined

# "+classical": the learned method finished by the classical search in a small window around
# its estimate (cvloc.models.refinement.ClassicalRefinement), with the same weights.
LEARNED = ("DenseFlow", "DenseFlow+classical", "FineMatch", "FineMatch+classical")
METHODS = ("prior", "classical", *LEARNED)
PRESETS = ("kitti-small", "vigor-small")


def parse_checkpoints(specs: list[str]) -> dict[tuple[str, str], str]:
    """``METHOD:PRESET=CHECKPOINT`` options -> {(method, preset): checkpoint}.

    Args:
        specs: the ``--checkpoint`` values.

    Returns:
        The mapping.

    Raises:
        SystemExit: a value is malformed or names an unknown method or preset.
    """
    out = {}
    for spec in specs:
        key, sep, path = spec.partition("=")
        method, colon, preset = key.partition(":")
        if not sep or not colon or not path:
            raise SystemExit(f"--checkpoint {spec!r}: expected METHOD:PRESET=CHECKPOINT")
        if method not in LEARNED or preset not in PRESETS:
            raise SystemExit(f"--checkpoint {spec!r}: method in {LEARNED}, preset in {PRESETS}")
        out[method, preset] = path
    return out


def run_method(
    name: str, pairs: Any, checkpoint: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """The metrics JSON of one method on a pairs directory's dataset.

    A learned method runs as its weights' test-time settings say (``eval.refine_*``,
    :func:`cvloc.models.refinement.refined`), as ``cvloc eval`` runs it, except that the
    classical refinement is on exactly for the ``+classical`` names; the metrics record
    ``refine_passes``, ``classical_refine``, ``classical_rematch`` and ``match_upsample``.

    Args:
        name: one of :data:`METHODS`.
        pairs: the :class:`cvloc.data.pairs.PairsDataset`.
        checkpoint: the learned method's weights (None for the baselines).
        args: the options (``workers``, ``batch``).

    Returns:
        The method's metrics.
    """
    if name not in LEARNED:
        return baseline_metrics(name, pairs, args.workers)
    assert checkpoint is not None
    model, cfg = load_or_exit(checkpoint)
    method, _, finish = name.partition("+")
    if cfg.model.method.lower() != method.lower():
        raise SystemExit(f"{checkpoint}: a {cfg.model.method} checkpoint given for {name}")
    settings = dataclasses.replace(cfg.eval, classical_refine=finish == "classical")
    metrics = evaluate(
        refined(model, settings), pairs, batch_size=args.batch, method=name, checkpoint=checkpoint
    )
    window = (settings.classical_shift_m, settings.classical_yaw_deg)
    return {
        **metrics,
        "refine_passes": settings.refine_passes,
        "classical_refine": settings.classical_refine,
        **({"classical_window": window} if settings.classical_refine else {}),
        "classical_rematch": settings.classical_refine and settings.classical_rematch,
        "match_upsample": settings.match_upsample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="METHOD:PRESET=NAME_OR_PATH"
    )
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--num", type=int, default=500, help="test pairs per area")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--workers", type=int, default=2, help="processes: pairs, classical")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, learned methods")
    parser.add_argument("--batch", type=int, default=1, help="pairs per learned forward call")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--merge", action="store_true", help="keep other methods' entries")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "method_comparison.json", help="results JSON"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = parse_checkpoints(args.checkpoint)
    results: dict[str, Any] = {"settings": {}}
    if args.merge and args.out.exists():
        results = json.loads(args.out.read_text())
    settings = results["settings"]
    if settings and (settings.get("num"), settings.get("seed")) != (args.num, args.seed):
        raise SystemExit(f"{args.out}: made with other pairs; drop --merge or match --num/--seed")
    missing = set(settings.get("missing", []))
    settings.update(num=args.num, seed=args.seed, split="test", machine=machine())
    settings.update(torch=torch.__version__, threads=args.threads, batch=args.batch)
    settings.setdefault("checkpoints", {})
    tables = []
    for preset in args.presets:
        for area in AREAS:
            pairs = synthetic_split(
                preset, "test", area, args.num, args.seed, args.workers, args.data_dir
            )
            entry = results.setdefault(preset, {}).setdefault(area, {})
            for name in args.methods:
                checkpoint = checkpoints.get((name.partition("+")[0], preset))
                if name in LEARNED and checkpoint is None:
                    missing.add(f"{name}:{preset}")
                    entry.pop(name, None)
                    continue
                missing.discard(f"{name}:{preset}")
                if checkpoint is not None:
                    settings["checkpoints"][f"{name}:{preset}"] = checkpoint
                # Per row: with --merge, rows run at different settings share one file.
                run = {"threads": args.threads, "batch": args.batch, "workers": args.workers}
                entry[name] = {**run_method(name, pairs, checkpoint, args), "run": run}
                print(f"{preset} {area} {name}: {entry[name]['seconds_per_pair']:.3f} s per pair")
    settings["missing"] = sorted(missing)
    for preset in PRESETS:
        for area in AREAS:
            entry = results.get(preset, {}).get(area)
            if entry:
                ordered = {m: entry[m] for m in METHODS if m in entry}
                title = f"{preset} test, {area} area, {args.num} pairs, seed {args.seed}"
                tables.append(format_metrics_table(ordered, title=title))
                print(tables[-1])
    write_results(args.out, results, tables)


if __name__ == "__main__":
    main()
