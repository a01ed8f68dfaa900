"""Synthetic world speed: generated pairs per second per CPU core, and ``cvloc synth`` writing.

Single process, ``torch.set_num_threads(1)``: the figure is per core, so a DataLoader with
W workers on W free cores makes about W times as many. Pairs per second per core are
measured in CPU time of this process (``time.process_time``), which other jobs on a shared
machine do not inflate; the wall-clock rate is reported beside it. Each preset first generates one
pair untimed (imports, caches), then N timed pairs (same area, test split, seed 0).

Writing is measured for kitti-small: ``write_pair`` alone on pre-generated pairs (PNG and
npz encoding), and the whole ``cvloc synth`` command (generation + writing).

Usage::

    python benchmarks/synth_speed.py [--num N] [--write-num M]

Prints a Markdown table and writes ``benchmarks/results/synth_speed.json``: preset ->
{pairs_per_s, seconds_per_pair, N, ...}, plus ``cvloc_synth_write`` and ``machine``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_model, write_json
from cvloc.data.pairs import write_pair
from cvloc.data.synthetic import command as synth_command
from cvloc.data.synthetic import generate_pair

PRESETS = ("kitti-small", "kitti", "vigor-small", "vigor")


def time_generation(preset: str, num: int) -> dict:
    generate_pair(preset, "test", "same", 10_000, seed=0)  # warm-up, not timed
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(num):
        pair = generate_pair(preset, "test", "same", i, seed=0)
    cpu_seconds = (time.process_time() - c0) / num
    wall_seconds = (time.perf_counter() - t0) / num
    return {
        "pairs_per_s": 1.0 / cpu_seconds,
        "seconds_per_pair": cpu_seconds,
        "wall_pairs_per_s": 1.0 / wall_seconds,
        "N": num,
        "ground_size": pair.meta["ground_size"],
        "sat_size": pair.meta["sat_size"],
        "camera_model": pair.meta["camera_model"],
        "correspondences_per_pair": len(pair.ground_uv),
    }


def time_writing(num: int) -> dict:
    pairs = [generate_pair("kitti-small", "test", "same", i, seed=0) for i in range(num)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i, p in enumerate(pairs):
            write_pair(
                Path(tmp) / f"{i:06d}",
                p.ground,
                p.satellite,
                p.meta,
                p.ground_uv,
                p.sat_uv,
                p.height_m,
                p.sat_height_m,
            )
        write_s = (time.perf_counter() - t0) / num
        bytes_per_pair = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / num
        out = Path(tmp) / "cmd"
        # The sub-command alone, as `cvloc synth` runs it, without the other commands' imports.
        parser = argparse.ArgumentParser()
        synth_command.add_arguments(parser)
        args = parser.parse_args(["--preset", "kitti-small", "--num", str(num), "--out", str(out)])
        t0 = time.perf_counter()
        # Quiet: its progress bar and summary line would interleave with the table.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert synth_command.run(args) == 0
        command_s = (time.perf_counter() - t0) / num
    return {
        "preset": "kitti-small",
        "N": num,
        "write_pair_pairs_per_s": 1.0 / write_s,
        "write_pair_seconds_per_pair": write_s,
        "bytes_per_pair": bytes_per_pair,
        "cvloc_synth_pairs_per_s": 1.0 / command_s,
        "cvloc_synth_seconds_per_pair": command_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=8, help="timed pairs per preset")
    parser.add_argument("--write-num", type=int, default=8, help="pairs for the write test")
    args = parser.parse_args()
    torch.set_num_threads(1)

    presets = {name: time_generation(name, args.num) for name in PRESETS}
    writing = time_writing(args.write_num)
    machine = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # Other processes share the cores; a load above the core count inflates s/pair.
        "load_average_1min": os.getloadavg()[0],
        "cores": os.cpu_count(),
    }

    print(
        f"Synthetic generation, 1 thread, {machine['cpu']} ({machine['cores']} cores, load "
        f"{machine['load_average_1min']:.1f}), torch {machine['torch']}\n"
    )
    print(
        "| preset | camera | ground | satellite | corr./pair | pairs/s per core (CPU time) "
        "| CPU s/pair | wall pairs/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in presets.items():
        g, s = r["ground_size"], r["sat_size"]
        print(
            f"| {name} | {r['camera_model']} | {g[0]}x{g[1]} | {s[0]}x{s[1]} | "
            f"{r['correspondences_per_pair']} | {r['pairs_per_s']:.2f} | "
            f"{r['seconds_per_pair']:.3f} | {r['wall_pairs_per_s']:.2f} |"
        )
    print(
        f"\nkitti-small writing (N={writing['N']}): write_pair "
        f"{writing['write_pair_pairs_per_s']:.1f} pairs/s "
        f"({writing['bytes_per_pair'] / 1e3:.0f} kB/pair); `cvloc synth` end to end "
        f"{writing['cvloc_synth_pairs_per_s']:.2f} pairs/s"
    )
    result = {**presets, "cvloc_synth_write": writing, "machine": machine}
    write_json(RESULTS / "synth_speed.json", result)


if __name__ == "__main__":
    main()
