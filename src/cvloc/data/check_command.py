r"""``cvloc datasets check``: validate a benchmark tree before a long run.

Example::

    cvloc datasets check --dataset kitti --root /data/KITTI --split test1
    cvloc datasets check --dataset vigor --root /data/VIGOR --opt area=cross --limit 1000

Every split of the dataset (or the ``--split`` ones) is indexed exactly as the loaders do
(split files parsed, malformed lines reported with their line number); then every file its
samples need is checked once: present, and for images structurally valid (pillow
``verify``, no full decode). ``--decode`` loads every sample through the dataset instead,
which also catches malformed oxts / calibration files and undecodable pixels (slower).
Exit status: 0 when everything is fine, 1 when something is missing or corrupt, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from cvloc.data.images import MissingFileError, SampleError, verify_image
from cvloc.data.registry import BenchmarkDataset, build_dataset

SPLITS: dict[str, tuple[str, ...]] = {
    "kitti": ("train", "val", "test1", "test2"),
    "ford": ("train", "val", "test"),
    "vigor": ("train", "val", "test"),
    "oxford": ("train", "val", "test1", "test2", "test3"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``datasets check``.

    Args:
        parser: the ``datasets`` sub-command parser.
    """
    sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="report missing or corrupt files of a benchmark")
    check.add_argument("--dataset", required=True, choices=sorted(SPLITS))
    check.add_argument("--root", required=True, type=Path, help="the dataset root")
    check.add_argument(
        "--split", action="append", help="split to check (repeatable; default: all of them)"
    )
    check.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option (repeatable), e.g. split_dir=PATH, area=cross, log=2",
    )
    check.add_argument("--limit", type=int, help="check only the first N samples per split")
    check.add_argument(
        "--decode", action="store_true", help="load every sample (slower, catches more)"
    )
    check.add_argument("--examples", type=int, default=3, help="examples shown per problem")


def run(args: argparse.Namespace) -> int:
    """Check the dataset and print the report.

    Args:
        args: parsed options (see :func:`add_arguments`).

    Returns:
        0 when fine, 1 on problems, 2 on a usage error.
    """
    try:
        options = _parse_options(args.opt)
    except ValueError as exc:
        print(f"cvloc datasets check: error: {exc}", file=sys.stderr)
        return 2
    splits = args.split or SPLITS[args.dataset]
    if any(s not in SPLITS[args.dataset] for s in splits):
        print(f"cvloc datasets check: error: {args.dataset} splits are {SPLITS[args.dataset]}")
        return 2
    lines, ok = check_dataset(
        args.dataset, args.root, splits, options, args.limit, args.decode, args.examples
    )
    print("\n".join(lines))
    return 0 if ok else 1


def check_dataset(
    dataset: str,
    root: Path,
    splits: tuple[str, ...] | list[str],
    options: dict[str, Any],
    limit: int | None = None,
    decode: bool = False,
    examples: int = 3,
) -> tuple[list[str], bool]:
    """Check the splits of a benchmark tree.

    Args:
        dataset: the dataset name (a key of :data:`SPLITS`).
        root: the dataset root.
        splits: the splits to check.
        options: keyword options of the dataset class.
        limit: check only the first ``limit`` samples of each split.
        decode: load every sample instead of checking its files.
        examples: problem examples listed per kind.

    Returns:
        The report lines and whether everything is fine.
    """
    report = [f"{dataset} at {root}"]
    problems: dict[str, list[str]] = defaultdict(list)
    seen: set[Path] = set()
    for split in splits:
        try:
            ds = build_dataset(dataset, root, split, **options)
        except (OSError, ValueError) as exc:  # missing / malformed split file, bad option
            problems[f"{split}: cannot index the split"].append(str(exc))
            continue
        assert isinstance(ds, BenchmarkDataset)
        count = len(ds) if limit is None else min(limit, len(ds))
        report.append(f"  {split}: {len(ds)} samples, checking {count}")
        for i in range(count):
            for key, detail in _check_sample(ds, i, decode, seen):
                problems[key].append(detail)
    for key, details in problems.items():
        shown = "; ".join(details[:examples])
        report.append(f"  {key}: {len(details)} (e.g. {shown})")
    total = sum(len(d) for d in problems.values())
    report.append(f"FAILED: {total} problem(s)" if total else "OK: no missing or corrupt file")
    return report, total == 0


def _check_sample(
    ds: BenchmarkDataset, index: int, decode: bool, seen: set[Path]
) -> list[tuple[str, str]]:
    """(problem kind, detail) of one sample; ``seen`` files are not checked twice."""
    if decode:
        try:
            ds.load(index)
        except SampleError as exc:
            return [(_kind(exc), _detail(exc))]
        return []
    found = []
    for what, path in ds.sample_files(index):
        if path in seen:
            continue
        seen.add(path)
        try:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                verify_image(path, what)
            elif not path.is_file():
                raise MissingFileError(path, what, "missing")
        except SampleError as exc:
            found.append((_kind(exc), _detail(exc)))
    return found


def _kind(exc: SampleError) -> str:
    state = "missing" if isinstance(exc, MissingFileError) else "corrupt"
    return f"{state} {exc.what}"


def _detail(exc: SampleError) -> str:
    return str(exc.path) if isinstance(exc, MissingFileError) else f"{exc.path}: {exc.reason}"


def _parse_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> typed options (YAML scalars; lists become tuples)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        options[key] = tuple(value) if isinstance(value, list) else value
    return options
