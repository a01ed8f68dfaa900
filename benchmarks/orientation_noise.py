r"""Location error against orientation noise on synthetic VIGOR (DenseFlow's Figure 3).

Reproduce the recorded results with the shipped ``vigor-small`` weights (1,200 CPU steps
from the kitti-small weights with +-10 deg heading noise; the command that trains them is in
``training/README.md``)::

    python benchmarks/orientation_noise.py --checkpoint denseflow-synth-vigor-small --num 60

For each noise level theta (0, 20, ..., 180 deg) every test pair's prior heading is
replaced by GT + u theta, with u ~ U(-1, 1) drawn once per pair (``--mode uniform``: the
dataset protocol's ``yaw_range_deg`` = theta) or u = +-1 (``--mode fixed``: an error of
exactly theta); the prior position, the images and the pairs stay the same at every level,
so only the heading noise changes. N synthetic ``vigor-small`` test pairs (panoramas, seed
0) per area, written once to ``--data-dir`` and reused.

The model is told theta. By default it searches the heading
(:class:`cvloc.models.heading_search.HeadingSearch`): a model trained with heading noise
+-r runs from ceil(theta / r) prior headings spread over +-theta and keeps its most
confident answer, as ``cvloc localize`` does for an unknown heading (1 forward pass at
theta <= r, 18 at 180 deg for r = 10). ``--no-search`` runs it once from the noisy prior:
the paper's protocol, for a model trained with unknown orientation (yaw_range_deg = 180).
We tried that first: 613 CPU steps of DenseFlow from the kitti-small weights with +-180 deg
noise learnt no heading (validation at step 550: median 11.45 m, heading error 94.6 deg,
as a random heading), so the recorded curve is the heading search's.

Writes ``benchmarks/results/orientation_noise.json`` (per area and level: the metrics JSON
and the number of hypotheses) and the plot ``docs/images/orientation_noise.png``: median
location error against noise, same area blue, cross area orange (the paper's colours), the
prior's error dashed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from common import (
    AREAS,
    DATA_DIR,
    RESULTS,
    load_or_exit,
    run_settings,
    synthetic_split,
    write_json,
)
from cvloc.evaluate import evaluate
from cvloc.geometry.pose import wrap_deg
from cvloc.localize_inputs import checkpoint_training_settings
from cvloc.models.baselines import PriorBaseline
from cvloc.models.heading_search import (
    HeadingSearch,
    heading_hypotheses,
    hypothesis_spacing_deg,
)

PRESET = "vigor-small"
PLOT = Path(__file__).parents[1] / "docs" / "images" / "orientation_noise.png"
COLORS = {"same": "tab:blue", "cross": "tab:orange"}


class HeadingNoise(Dataset):
    """A dataset whose prior heading is the GT heading plus a set amount of noise.

    Convention: yaw in compass degrees; prior = wrap(GT + u noise_deg), u fixed per pair.

    Args:
        dataset: the pairs.
        noise_deg: theta, the noise scale in degrees.
        mode: ``"uniform"`` (u ~ U(-1, 1)) or ``"fixed"`` (u = +-1).
        seed: seed of the per-pair draws (the same at every noise level).
    """

    def __init__(self, dataset: Dataset, noise_deg: float, mode: str, seed: int = 0) -> None:
        self.dataset, self.noise_deg = dataset, noise_deg
        rng = np.random.default_rng(seed)
        n = len(dataset)  # type: ignore[arg-type]
        self.u = rng.uniform(-1.0, 1.0, n) if mode == "uniform" else rng.choice([-1.0, 1.0], n)

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        noise = torch.tensor(self.u[index] * self.noise_deg, dtype=item["yaw_deg_gt"].dtype)
        item["yaw_deg_prior"] = wrap_deg(item["yaw_deg_gt"] + noise)
        # The declared protocol: a method searching the heading searches +-theta.
        item["yaw_range_deg"] = torch.tensor(float(self.noise_deg))
        return item


def plot(results: dict[str, Any], noise: list[int], path: Path, title: str) -> None:
    """Median location error against heading noise, one line per area.

    Args:
        results: area -> {"levels": {str(noise): metrics}, "prior": metrics}.
        noise: the noise levels (degrees).
        path: the PNG to write.
        title: the plot title.
    """
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for area in AREAS:
        medians = [results[area]["levels"][str(t)]["location_median_m"] for t in noise]
        ax.plot(noise, medians, "o-", color=COLORS[area], label=f"{area} area")
        prior = results[area]["prior"]["location_median_m"]
        ax.axhline(prior, color=COLORS[area], linestyle="--", linewidth=1, label=f"prior, {area}")
    ax.set_xlabel("orientation noise (deg)")
    ax.set_ylabel("median location error (m)")
    ax.set_xticks(noise)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="weights name or file")
    parser.add_argument("--num", type=int, default=200, help="test pairs per area")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--noise", type=int, nargs="+", default=list(range(0, 181, 20)), help="levels (deg)"
    )
    parser.add_argument(
        "--mode", choices=("uniform", "fixed"), default="uniform", help="u ~ U(-1, 1) or +-1"
    )
    parser.add_argument(
        "--no-search",
        action="store_true",
        help="run the model once from the noisy prior (no heading hypotheses)",
    )
    parser.add_argument("--workers", type=int, default=2, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "orientation_noise.json", help="JSON"
    )
    parser.add_argument("--plot", type=Path, default=PLOT, help="PNG of the curves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_or_exit(args.checkpoint)
    trained = checkpoint_training_settings(args.checkpoint, cfg)["yaw_range_deg"]
    runner = model if args.no_search else HeadingSearch(model, trained)
    spacing = hypothesis_spacing_deg(trained)
    settings = run_settings(args, train_yaw_range_deg=trained, hypothesis_spacing_deg=spacing)
    results: dict[str, Any] = {"settings": settings}
    for area in AREAS:
        pairs = synthetic_split(
            PRESET, "test", area, args.num, args.seed, args.workers, args.data_dir
        )
        prior = evaluate(PriorBaseline(), pairs, progress=False, method="prior")
        results[area] = {"prior": prior, "levels": {}}
        for theta in args.noise:
            noisy = HeadingNoise(pairs, theta, args.mode, args.seed)
            metrics = evaluate(runner, noisy, progress=False, method=f"noise {theta}")
            hypotheses = 1 if args.no_search else len(heading_hypotheses(0.0, theta, spacing))
            results[area]["levels"][str(theta)] = {**metrics, "heading_hypotheses": hypotheses}
            location, yaw = metrics["location_median_m"], metrics["yaw_median_deg"]
            print(f"{area} area, noise {theta:3d} deg: median {location:.2f} m, {yaw:.2f} deg")
    print("\n| noise (deg) | " + " | ".join(f"{a} median (m)" for a in AREAS) + " |")
    print("|--:|" + "--:|" * len(AREAS))
    for theta in args.noise:
        cells = [f"{results[a]['levels'][str(theta)]['location_median_m']:.2f}" for a in AREAS]
        print(f"| {theta} | " + " | ".join(cells) + " |")
    write_json(args.out, results)
    search = "one pass" if args.no_search else f"heading search every {spacing:g} deg"
    title = f"{PRESET}, {args.num} pairs per area, {args.mode} noise, {search}"
    plot(results, args.noise, args.plot, title)


if __name__ == "__main__":
    main()
