"""The ``cvloc`` command line: one sub-command per job.

Sub-commands register themselves in ``_commands``; each has an ``add_arguments`` and a
``run`` function so that parsing stays here and the work stays in its module. A command
raises :class:`UsageError` for a problem with the user's input: :func:`main` prints it as
one line and exits with status :data:`EXIT_USAGE`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cvloc import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def _build_parser(commands: dict[str, tuple[str, Callable, Callable]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvloc",
        description="Fine-grained cross-view camera localization: ground image + satellite "
        "image -> 3-DoF camera pose with pixel-level correspondences.",
    )
    parser.add_argument("--version", action="version", version=f"cvloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def _commands() -> dict[str, tuple[str, Callable, Callable]]:
    from cvloc import calibrate_command, demo, eval_command, localize_command, train
    from cvloc.data import check_command as datasets
    from cvloc.data.synthetic import command as synth

    return {
        "demo": (
            "The main job: DenseFlow and the baselines on 100 synthetic kitti-small test pairs "
            "(Table 1, metrics.json, figures).",
            demo.add_arguments,
            demo.run,
        ),
        "synth": (
            "Generate synthetic cross-view pairs (cvloc-pairs/1).",
            synth.add_arguments,
            synth.run,
        ),
        "eval": (
            "Evaluate a checkpoint or a baseline on pairs: metrics table and JSON.",
            eval_command.add_arguments,
            eval_command.run,
        ),
        "train": (
            "Train a localizer from a preset or YAML config (key=value overrides).",
            train.add_arguments,
            train.run,
        ),
        "calibrate": (
            "Fit a model's uncertainty scales on validation pairs; write calibrated weights.",
            calibrate_command.add_arguments,
            calibrate_command.run,
        ),
        "localize": (
            "Localize your own ground image on a satellite image: pose.json, matches, figure.",
            localize_command.add_arguments,
            localize_command.run,
        ),
        "datasets": (
            "Check a real benchmark's files (KITTI, Ford, VIGOR, Oxford) before a run.",
            datasets.add_arguments,
            datasets.run,
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cvloc`` console script.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The process exit status.
    """
    commands = _commands()
    parser = _build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(commands[args.command][2](args) or 0)
    except UsageError as exc:
        print(f"cvloc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
