"""``cvloc demo``: the main job: DenseFlow and the baselines on a fixed synthetic test split.

Stages, each timed, with progress bars:

1. **pairs**: ``--num`` (100) synthetic ``kitti-small`` test pairs of the same area, seed
   0, written to ``--out`` as ``cvloc-pairs/1`` by ``--workers`` processes (reused later).
2. **prior** and **classical** baselines; the classical search (about 2 s a pair) runs in
   ``--workers`` single-thread processes, ``seconds_per_pair`` being one process's time.
3. **DenseFlow**: the shipped ``denseflow-synth-kitti-small`` weights (or ``--checkpoint``)
   through :func:`cvloc.evaluate.evaluate`, one torch thread; without weights the demo says
   so in one line and goes on with the baselines. Then **DenseFlow + classical**: the same
   estimates finished by the classical search in a small window around them
   (:class:`cvloc.models.refinement.ClassicalRefinement`; the window the weights record,
   else the default of :class:`cvloc.config.EvalConfig`).
4. **figures** of the first ``--figures`` pairs: DenseFlow's Fig. 4 (ground image, BEV
   inliers, poses) and Fig. 5 (matches by confidence, confidence map), from DenseFlow's
   prediction, or the classical one without weights.

Prints DenseFlow's Table 1 layout and writes ``OUT/metrics.json``: ``methods`` (method ->
metrics JSON of ``design.md``), ``data``, ``stage_seconds`` (the stages before figures).
:func:`write_synthetic_pairs` and :func:`evaluate_classical` serve the benchmarks too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cvloc import __version__
from cvloc.checkpoint import CheckpointError, load_model, resolve_checkpoint
from cvloc.config import EvalConfig
from cvloc.data.batch import camera_xy, collate
from cvloc.data.pairs import PairsDataset, PairsFormatError, write_dataset_json, write_pair
from cvloc.data.synthetic import generate_pair
from cvloc.evaluate import batch_match_precision, evaluate
from cvloc.metrics import (
    aggregate_match_precision,
    format_metrics_table,
    localization_metrics,
    metrics_to_json,
)
from cvloc.models.baselines import ClassicalBaseline, PriorBaseline
from cvloc.models.refinement import ClassicalRefinement

PRESET, SPLIT, AREA = "kitti-small", "test", "same"
WEIGHTS = "denseflow-synth-kitti-small"
GENERATOR = f"cvloc demo {__version__}"
MARKER = ".cvloc-demo"  # marks a directory the demo may clean up and rewrite
_WORKER: dict[str, Any] = {}  # per-process state of the classical pool


class DemoError(Exception):
    """A problem the user can fix (e.g. an unusable ``--out``): one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options.

    Args:
        parser: the sub-command parser.
    """
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="(default demo_out)")
    parser.add_argument("--num", type=int, default=100, help="test pairs (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    parser.add_argument(
        "--checkpoint",
        default=WEIGHTS,
        metavar="NAME_OR_PATH",
        help=f"DenseFlow weights name or .pt / .safetensors file (default {WEIGHTS})",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--figures", type=int, default=3, help="pairs to draw (default 3)")


def run(args: argparse.Namespace) -> int:
    """Run the demo.

    Args:
        args: parsed options of :func:`add_arguments`.

    Returns:
        0 on success (also without DenseFlow weights), 2 on a user error (unusable
        ``--out``, unreadable pairs there), 130 when interrupted.
    """
    try:
        return _run(args)
    except (DemoError, OSError, PairsFormatError, json.JSONDecodeError) as exc:
        print(f"cvloc demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvloc demo: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    for name, low in (("num", 1), ("workers", 1), ("figures", 0)):
        if getattr(args, name) < low:
            raise DemoError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    # One thread: on cores shared with other jobs, waiting OpenMP threads stall (DenseFlow
    # took 15x longer with 2 threads beside a training run); the pools use both cores.
    torch.set_num_threads(1)
    seconds: dict[str, float] = {}
    start, figures = time.perf_counter(), min(args.figures, args.num)
    with _stage(seconds, "pairs"):
        dataset = write_synthetic_pairs(args.out, args.num, args.seed, args.workers)
    data = f"synthetic {PRESET} {SPLIT}/{AREA} seed {args.seed}, {args.num} pairs ({args.out})"
    denseflow, checkpoint, window = _load_denseflow(args.checkpoint)
    results: dict[str, dict[str, Any]] = {}
    with _stage(seconds, "prior"):  # poses only: skip decoding the correspondences
        poses = PairsDataset(args.out, load_correspondences=False)
        results["prior"] = evaluate(PriorBaseline(), poses, progress=False, method="prior")
    with _stage(seconds, "classical"):
        results["classical"], preds = evaluate_classical(args.out, args.workers, figures)
    if denseflow is not None:
        with _stage(seconds, "DenseFlow"):
            results["DenseFlow"] = evaluate(
                denseflow, dataset, method="DenseFlow", checkpoint=str(checkpoint)
            )
        with _stage(seconds, "DenseFlow + classical"):
            results["DenseFlow + classical"] = evaluate(
                ClassicalRefinement(denseflow, *window),
                dataset,
                method="DenseFlow + classical",
                checkpoint=str(checkpoint),
            )
    print(format_metrics_table(results, title=data))
    path = args.out / "metrics.json"
    report = {"data": data, "methods": results, "stage_seconds": seconds}
    path.write_text(metrics_to_json(report))
    print(f"wrote {path}")
    with _stage(seconds, "figures"):
        drawn = _figures(dataset, figures, denseflow, preds, args.out)
    if drawn:
        print(f"wrote {len(drawn)} figures: {', '.join(p.name for p in drawn)}")
    stages = "; ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    print(f"demo finished in {time.perf_counter() - start:.1f} s ({stages})")
    return 0


@contextlib.contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the enclosed block under ``name``."""
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def write_synthetic_pairs(
    out: Path,
    num: int,
    seed: int,
    workers: int,
    preset: str = PRESET,
    area: str = AREA,
    split: str = SPLIT,
) -> PairsDataset:
    """Synthetic pairs as ``cvloc-pairs/1`` in ``out``, written by ``workers`` processes.

    A directory that this function already filled with the same pairs is reused; one that
    it did not write (no marker file) must be empty.

    Args:
        out: the directory.
        num: number of pairs (generator indices 0 .. num - 1, epoch 0).
        seed: synthetic world seed.
        workers: generator processes.
        preset: synthetic preset.
        area: ``"same"`` or ``"cross"``.
        split: ``"test"``, ``"val"`` or ``"train"``.

    Returns:
        The pairs.

    Raises:
        DemoError: ``out`` holds other files.
    """
    info_path = out / "dataset.json"
    expected = {"preset": preset, "split": split, "area": area, "seed": seed, "num": num}
    if (out / MARKER).is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if all(info.get(k) == v for k, v in {**expected, "generator": GENERATOR}.items()):
            print(f"reusing the {num} pairs in {out}")
            return PairsDataset(out)
    if out.exists() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise DemoError(f"{out} is not empty and was not written by the demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    info_path.unlink(missing_ok=True)  # first: an interrupted rewrite is an unfinished run
    shutil.rmtree(out / "samples", ignore_errors=True)
    jobs = [(out, preset, split, area, index, seed) for index in range(num)]
    with multiprocessing.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        metas = list(tqdm(pool.imap(_write_one, jobs), total=num, desc="pairs", unit="pair"))
    extra = {k: metas[0][k] for k in ("camera_model", "shift_range_m", "yaw_range_deg")}
    write_dataset_json(out, preset, split, seed, num, area=area, generator=GENERATOR, **extra)
    return PairsDataset(out)


def _write_one(job: tuple[Path, str, str, str, int, int]) -> dict[str, Any]:
    """Generate and write one pair (a pool task); returns its meta."""
    out, preset, split, area, index, seed = job
    p = generate_pair(preset, split, area, index, seed)
    sample = out / "samples" / f"{index:06d}"
    write_pair(
        sample, p.ground, p.satellite, p.meta, p.ground_uv, p.sat_uv, p.height_m, p.sat_height_m
    )
    return p.meta


def _load_denseflow(
    name: str,
) -> tuple[torch.nn.Module | None, Path | None, tuple[float, float]]:
    """The DenseFlow model, its file and its classical refinement window (metres, degrees).

    (None, None, the default window) after a one-line explanation when there is no model.
    """
    window = (EvalConfig.classical_shift_m, EvalConfig.classical_yaw_deg)
    try:
        path = resolve_checkpoint(name)
        model, cfg = load_model(path)
    except (FileNotFoundError, CheckpointError) as exc:  # missing, corrupt or mismatching
        print(f"DenseFlow weights not available ({exc}); evaluating the baselines only")
        return None, None, window
    return model, path, (cfg.eval.classical_shift_m, cfg.eval.classical_yaw_deg)


def evaluate_classical(
    root: Path, workers: int, keep: int = 0
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The classical baseline on a pairs directory, spread over ``workers`` processes.

    Each process runs one torch thread; ``seconds_per_pair`` is the mean forward time of a
    pair in its process. The metrics are those of :func:`cvloc.evaluate.evaluate`
    (localisation and match precision), computed over all pairs together.

    Args:
        root: a ``cvloc-pairs/1`` directory.
        workers: processes.
        keep: return the full predictions of the pairs 0 .. keep - 1 (for figures).

    Returns:
        (metrics JSON, pair index -> prediction for the kept pairs).
    """
    num = len(PairsDataset(root))
    with multiprocessing.Pool(workers, _init_classical, (root, keep)) as pool:
        tasks = pool.imap_unordered(_classical_one, range(num))
        records = sorted(
            tqdm(tasks, total=num, desc="classical", unit="pair"), key=lambda r: r["index"]
        )
    stack = {k: torch.stack([r[k] for r in records]) for k in ("pred_xy", "gt_xy", "pred_yaw")}
    gt_yaw = torch.stack([r["gt_yaw"] for r in records])
    metrics = localization_metrics(stack["pred_xy"], stack["gt_xy"], stack["pred_yaw"], gt_yaw)
    result = {"method": "classical", "checkpoint": None, **metrics}
    result["seconds_per_pair"] = sum(r["seconds"] for r in records) / num
    result.update(aggregate_match_precision([r["precision"] for r in records]))
    return result, {r["index"]: r["pred"] for r in records if r["index"] < keep}


def _init_classical(root: Path, keep: int) -> None:
    # One thread per process: the processes, not the threads, use the cores.
    torch.set_num_threads(1)
    _WORKER.update(dataset=PairsDataset(root), model=ClassicalBaseline(), keep=keep)


def _classical_one(index: int) -> dict[str, Any]:
    """Localize pair ``index`` with the classical baseline (a pool task).

    The full prediction (a few MB) travels back only for the pairs to draw.
    """
    batch = collate([_WORKER["dataset"][index]])
    with torch.inference_mode():
        start = time.perf_counter()
        pred = _WORKER["model"](batch)
        seconds = time.perf_counter() - start
        precision = batch_match_precision(pred, batch)[0]
    return {
        "index": index,
        "seconds": seconds,
        "precision": precision,
        "pred_xy": pred["camera_xy_pred"][0].double(),
        "gt_xy": camera_xy(batch, "gt")[0].double(),
        "pred_yaw": pred["yaw_deg_pred"][0].double(),
        "gt_yaw": batch["yaw_deg_gt"][0].double(),
        "pred": pred if index < _WORKER["keep"] else None,
    }


def _figures(
    dataset: PairsDataset,
    num: int,
    denseflow: torch.nn.Module | None,
    classical_preds: dict[int, dict[str, Any]],
    out: Path,
) -> list[Path]:
    """Fig. 4 and Fig. 5 analogues of the first ``num`` pairs."""
    try:
        from cvloc.viz_prediction import plot_prediction
    except ImportError as exc:
        print(f"no figures: {exc}")
        return []
    method = "DenseFlow" if denseflow is not None else "classical"
    paths = []
    for index in tqdm(range(num), desc="figures", unit="pair"):
        item = dataset[index]
        with torch.inference_mode():
            pred = classical_preds[index] if denseflow is None else denseflow(collate([item]))
        for kind in ("localization", "confidence"):
            path = out / f"{kind}_{index:06d}.png"
            paths.append(plot_prediction(kind, item, pred, path, method))
    return paths
