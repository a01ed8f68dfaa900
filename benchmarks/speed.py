"""Speed and memory of DenseFlow and FineMatch: inference per pair, training per step.

CPU, and CUDA when present.

Reproduce the recorded results (on an otherwise idle machine; about 10 min on 2 CPU cores)::

    python benchmarks/speed.py --repeats 10 --threads 1
    python benchmarks/speed.py --method finematch --repeats 5 --threads 1

(``--threads 2 --out benchmarks/results/denseflow_speed_2threads.json`` for two threads;
``--set model.denseflow.stride=4 --out ...`` measures every model with config overrides.)

Every measurement runs in a fresh process, so its peak resident memory (``ru_maxrss``,
imports included) belongs to one configuration; ``rss_before`` is the resident memory after
the imports, model, inputs and warm-up, before the timed calls. Models are freshly initialised
(seed 0; speed does not depend on the weights); inputs are synthetic test pairs.

- CPU inference, batch 1, ``--threads`` torch threads: wall and CPU seconds (process time,
  all threads) per pair after ``--warmup`` calls, for the CPU preset model
  (``denseflow-synth-kitti-small``) and the paper-width one (``denseflow-synth-kitti``) at
  the ``kitti-small`` (512x128 ground, 256x256 satellite) and ``kitti`` (1024x256,
  512x512) sizes.
- CPU training, the kitti-small preset at batch 4: seconds per optimizer step (forward,
  loss, backward, clipping, AdamW), data excluded.
- CUDA, when ``torch.cuda.is_available()``: milliseconds per pair (batch 1, synchronised,
  after warm-up) and peak allocated memory (``torch.cuda.max_memory_allocated``) of both
  models at the kitti size.

``--method finematch`` measures FineMatch's CPU preset (``finematch-synth-kitti-small``; it
has no paper-width preset) the same way. Prints a Markdown table and writes
``benchmarks/results/{denseflow,finematch}_speed.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import RESULTS, machine, write_json
from cvloc.config import ConfigError, load_config
from cvloc.data.batch import collate
from cvloc.data.pairs import pair_to_item
from cvloc.data.synthetic import generate_pair
from cvloc.engine.builders import build_model, build_optimizer
from cvloc.losses import loss_for_method

PRESETS = {
    "denseflow": {"cpu-preset": "denseflow-synth-kitti-small", "paper": "denseflow-synth-kitti"},
    "finematch": {"cpu-preset": "finematch-synth-kitti-small"},
}
SIZES = ("kitti-small", "kitti")


def pairs_batch(size: str, num: int) -> dict[str, Any]:
    """A batch of the first ``num`` synthetic test pairs of a preset.

    Args:
        size: the synthetic preset (image sizes).
        num: batch size.

    Returns:
        The collated batch.
    """
    pairs = [generate_pair(size, "test", "same", i, 0) for i in range(num)]
    items = [
        pair_to_item(p.ground, p.satellite, p.meta, p.ground_uv, p.sat_uv, p.height_m)
        for p in pairs
    ]
    return collate(items)


def rss_mib() -> tuple[float | None, float]:
    """(current resident memory or None where /proc is missing, peak resident memory), MiB."""
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20, peak_mib
    except OSError:
        return None, peak_mib


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """Time one configuration (runs in its own process).

    Args:
        task: ``kind`` ("inference" or "training"), ``config`` (preset name),
            ``overrides`` (its ``key=value`` overrides), ``size``,
            ``batch``, ``device``, ``threads``, ``warmup``, ``repeats`` and ``batch_cpu``
            (the inputs, made by the parent).

    Returns:
        The task's settings with ``wall_s`` and ``cpu_s`` per call, ``rss_before_mib``,
        ``peak_rss_mib`` and, on CUDA, ``cuda_peak_mib``.
    """
    torch.set_num_threads(task["threads"])
    torch.manual_seed(0)
    device = torch.device(task["device"])
    cfg = load_config(task["config"], task["overrides"])
    model = build_model(cfg.model).to(device)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in task["batch_cpu"].items()}
    if task["kind"] == "training":
        model.train()
        optimizer = build_optimizer(model, cfg.train)
        loss_fn = loss_for_method(cfg.model.method)

        def call() -> None:
            loss, _ = loss_fn(model(batch), batch, cfg.train, 0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
            optimizer.step()
    else:
        model.eval()

        def call() -> None:
            with torch.inference_mode():
                model(batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # CUDA needs more warm-up calls: kernel selection and the caching allocator settle.
    for _ in range(task["warmup"] if device.type == "cpu" else max(task["warmup"], 5)):
        call()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before, _ = rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(task["repeats"]):
        call()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {k: v for k, v in task.items() if k != "batch_cpu"}
    out.update(wall_s=wall / task["repeats"], cpu_s=cpu / task["repeats"])
    out.update(rss_before_mib=rss_before, peak_rss_mib=rss_mib()[1])
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration to measure, with its inputs (see :func:`measure`)."""
    models = PRESETS[args.method]

    def task(kind: str, model: str, size: str, device: str, repeats: int, batch: dict) -> dict:
        return {
            "kind": kind,
            "model": model,
            "config": models[model],
            "overrides": args.set,
            "size": size,
            "batch": len(batch["name"]),
            "device": device,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": repeats,
            "batch_cpu": batch,
        }

    one = {size: pairs_batch(size, 1) for size in SIZES}
    todo = [task("inference", m, s, "cpu", args.repeats, one[s]) for m in models for s in SIZES]
    four = pairs_batch("kitti-small", 4)
    todo.append(task("training", "cpu-preset", "kitti-small", "cpu", args.train_repeats, four))
    if torch.cuda.is_available():
        todo += [
            task("inference", m, "kitti", "cuda", args.cuda_repeats, one["kitti"]) for m in models
        ]
    return todo


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| kind | model | size | batch | device | threads | s / call (wall) | CPU s / call "
        "| RSS before (MiB) | peak RSS (MiB) | CUDA peak (MiB) |",
        "|:--|:--|:--|--:|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        cuda = f"{r['cuda_peak_mib']:.0f}" if "cuda_peak_mib" in r else "-"
        before = f"{r['rss_before_mib']:.0f}" if r["rss_before_mib"] is not None else "-"
        lines.append(
            f"| {r['kind']} | {r['model']} | {r['size']} | {r['batch']} | {r['device']} "
            f"| {r['threads']} | {r['wall_s']:.4f} | {r['cpu_s']:.3f} | {before} "
            f"| {r['peak_rss_mib']:.0f} | {cuda} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=sorted(PRESETS), default="denseflow", help="model")
    parser.add_argument("--repeats", type=int, default=10, help="timed CPU inference calls")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps")
    parser.add_argument("--cuda-repeats", type=int, default=50, help="timed CUDA calls")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, all models"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default: METHOD_speed.json)")
    args = parser.parse_args()
    out = args.out or RESULTS / f"{args.method}_speed.json"
    for name in PRESETS[args.method].values():
        try:  # a bad override fails here, not in a worker process
            load_config(name, args.set)
        except ConfigError as exc:
            raise SystemExit(f"--set: {exc}") from exc
    rows = []
    context = multiprocessing.get_context("spawn")  # a fresh process: its own peak memory
    for task in tasks(args):
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (task,)))
        r = rows[-1]
        print(f"{r['kind']} {r['model']} {r['size']} {r['device']}: {r['wall_s']:.4f} s")
    print(table(rows))
    settings = {"machine": machine(), "torch": torch.__version__, "note": args.note}
    settings["method"] = args.method
    write_json(out, {"settings": settings, "rows": rows})


if __name__ == "__main__":
    main()
