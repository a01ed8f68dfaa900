"""``cvloc train``: train a localizer from a preset or YAML config with dotlist overrides.

Examples::

    cvloc train --config denseflow-synth-kitti-small
    cvloc train --config overfit train.epochs=3 data.batch_size=2
    cvloc train --config denseflow-synth-kitti-small --resume
    torchrun --nproc_per_node 2 -m cvloc train --config denseflow-synth-kitti

From Python: ``train(load_config("overfit"))`` returns the trained model and its state.
"""

from __future__ import annotations

import argparse
import logging
import os

from cvloc.checkpoint import CheckpointError
from cvloc.config import ConfigError, list_presets, load_config
from cvloc.engine.loop import Trainer, train
from cvloc.engine.state import NonFiniteLossError, TrainResult, TrainState

__all__ = ["NonFiniteLossError", "TrainResult", "TrainState", "Trainer", "train"]

# Exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cvloc train``.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument(
        "--config",
        required=True,
        help=f"preset name ({', '.join(list_presets())}) or path to a YAML config",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT_DIR/last.pt (same as train.resume=true)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides after the options, e.g. train.lr=1e-4 data.batch_size=2",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``cvloc train``.

    Args:
        args: parsed options.

    Returns:
        0 on success, 2 for a configuration or checkpoint error (e.g. resuming a run of
        another model config), 1 when training diverged, 130 when interrupted (after
        saving ``last.pt``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides) + (["train.resume=true"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        logging.getLogger("cvloc.train").error("%s", exc)
        return 2
    try:
        result = train(cfg)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        logging.getLogger("cvloc.train").error("%s", exc)
        return 2
    except NonFiniteLossError as exc:
        logging.getLogger("cvloc.train").error("%s", exc)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    best = result.state.best_metric
    print(f"done: {result.state.step} steps; best val location median {best:.3f} m; "
          f"checkpoints in {result.out_dir}")  # fmt: skip
    return 0
