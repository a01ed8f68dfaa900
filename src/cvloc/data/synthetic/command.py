r"""``cvloc synth``: write synthetic cross-view pairs as a ``cvloc-pairs/1`` directory.

Example::

    cvloc synth --preset kitti-small --split test --area same --num 100 --seed 0 \
        --out data/kitti-small-test --preview data/kitti-small-test.png

Pairs get the generator indices ``start .. start + num - 1`` and sample directories named
by that index (``samples/000000`` ...), so chunks written with different ``--start`` never
collide. ``dataset.json`` is written last: a directory without it is an unfinished run.

``--format kitti`` writes the pairs in the KITTI cross-view layout instead
(:func:`cvloc.data.kitti_export.export_kitti`: ``raw_data/``, ``satmap/`` and split files with
the fixed prior noise), readable by :class:`cvloc.data.kitti.KittiDataset` and by the peers'
KITTI code; only the ``kitti`` and ``kitti-small`` presets are KITTI-like. Chunks exported
into one root merge their split files.

``--preview OUT.png`` draws the first pairs (:func:`cvloc.viz.plot_pair_preview`): with
``--num 1`` the single pair goes to ``OUT.png``; otherwise the first (up to
:data:`MAX_PREVIEWS`) pairs go to ``OUT_000000.png`` ..., named like their sample
directories.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from cvloc import __version__
from cvloc.data.pairs import write_dataset_json, write_pair
from cvloc.data.synthetic import PRESETS, generate_pair
from cvloc.data.synthetic.generate import SPLITS
from cvloc.data.synthetic.style import AREAS

MAX_PREVIEWS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``synth`` options.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="world preset")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split (default test)")
    parser.add_argument(
        "--area",
        default="same",
        choices=AREAS,
        help="same: the training distribution of scenes; cross: a shifted one, as the "
        "benchmarks' cross-area splits (default same)",
    )
    parser.add_argument("--num", type=_positive_int, required=True, help="number of pairs")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--start", type=_non_negative_int, default=0, help="index of the first pair (default 0)"
    )
    parser.add_argument(
        "--preview",
        type=Path,
        metavar="OUT.png",
        help=f"also draw pairs: with --num 1 to OUT.png, else the first {MAX_PREVIEWS} to "
        "OUT_<index>.png (OUT_000000.png, ...)",
    )
    parser.add_argument(
        "--format",
        choices=("pairs", "kitti"),
        default="pairs",
        help="pairs: cvloc-pairs/1 (default); kitti: the KITTI cross-view layout",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty directory, replacing its dataset.json and samples/",
    )


def run(args: argparse.Namespace) -> int:
    """Generate and write the pairs.

    Args:
        args: parsed options (see :func:`add_arguments`).

    Returns:
        Exit status: 0 on success, 2 when the output directory cannot be used, 130 when
        interrupted.
    """
    if args.format == "kitti":
        return _run_kitti_export(args)
    problem = _prepare_output(args.out, args.overwrite)
    if problem:
        print(f"cvloc synth: error: {problem}", file=sys.stderr)
        return 2
    indices = range(args.start, args.start + args.num)
    t0 = time.perf_counter()
    meta: dict = {}
    try:
        for i, index in enumerate(tqdm(indices, desc=f"synth {args.preset}", unit="pair")):
            pair = generate_pair(args.preset, args.split, args.area, index, args.seed)
            write_pair(
                args.out / "samples" / f"{index:06d}",
                pair.ground,
                pair.satellite,
                pair.meta,
                pair.ground_uv,
                pair.sat_uv,
                pair.height_m,
                pair.sat_height_m,
            )
            if args.preview is not None and i < MAX_PREVIEWS:
                _write_preview(pair, args.preview, index, args.num)
            meta = pair.meta
    except KeyboardInterrupt:
        print(f"cvloc synth: interrupted; {args.out} is unfinished", file=sys.stderr)
        return 130
    write_dataset_json(
        args.out,
        args.preset,
        args.split,
        args.seed,
        args.num,
        area=args.area,
        start=args.start,
        camera_model=meta["camera_model"],
        shift_range_m=meta.get("shift_range_m"),
        yaw_range_deg=meta.get("yaw_range_deg"),
        generator=f"cvloc {__version__}",
    )
    seconds = time.perf_counter() - t0
    print(f"wrote {args.num} pairs to {args.out} ({args.num / seconds:.1f} pairs/s)")
    return 0


def _run_kitti_export(args: argparse.Namespace) -> int:
    """Write the pairs in the KITTI layout (chunks into one root merge their split files)."""
    from cvloc.data.kitti_export import export_kitti

    indices = range(args.start, args.start + args.num)
    pairs = (generate_pair(args.preset, args.split, args.area, i, args.seed) for i in indices)
    try:
        files = export_kitti(
            tqdm(pairs, total=args.num, desc="synth kitti", unit="pair"), args.out
        )
    except ValueError as exc:
        print(f"cvloc synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cvloc synth: interrupted; {args.out} is unfinished", file=sys.stderr)
        return 130
    print(f"wrote {args.num} pairs in the KITTI layout to {args.out}: {[f.name for f in files]}")
    return 0


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # ArgumentTypeError shows this message; a ValueError would show the function name.
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _prepare_output(out: Path, overwrite: bool) -> str | None:
    """Make ``out`` ready for writing; return why it cannot be, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            return f"--out {out} is not empty; pass --overwrite to replace its pairs"
        # dataset.json first: an interrupted overwrite must not look like a finished run.
        (out / "dataset.json").unlink(missing_ok=True)
        shutil.rmtree(out / "samples", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _write_preview(pair: object, preview: Path, index: int, num: int) -> None:
    # Imported here: matplotlib is only needed when a preview is asked for.
    from cvloc.viz import plot_pair_preview

    path = preview if num == 1 else preview.with_name(f"{preview.stem}_{index:06d}.png")
    plot_pair_preview(pair, path)
