r"""Where does DenseFlow's match precision come from? Its matches stage by stage, and FineMatch's.

Reproduce the recorded results (about 3 min on 2 CPU cores)::

    python benchmarks/match_stages.py --num 100

DenseFlow's top-30 matches are far more precise than FineMatch's (94 against 80 % within
15 px on the test split). Both start from the same kind of features: a ResNet's 1/8 maps,
the ground's placed on the satellite grid at the prior pose. This script judges the
matches each method has at every stage, on ``--num`` synthetic ``val`` pairs (never the
test split), with the CVFM-style precision of ``design.md``:

- DenseFlow, **correlation argmax**: every visible BEV cell matched to the satellite cell
  of highest level-0 correlation (the features alone, before any GRU update), inside the
  prior's window (:func:`cvloc.models.matching.prior_window_mask`, as FineMatch matches)
  or over the whole map, ranked by the peak of the row's softmax;
- DenseFlow **after GRU iteration k** (k = 1 .. ``model.denseflow.iters``): the upsampled
  flow and confidence of that iteration, as the pose head samples them (eq. 3 weights);
- FineMatch, **one pass**, and **as shipped** (its recorded refinement passes; the
  classical refinement, which moves the pose and not the matches, left out), both at the
  match density its weights record (``eval.match_upsample``).

Writes ``benchmarks/results/match_stages.json`` ({"settings", "rows": {row: match
metrics}}) and the Markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from common import (
    add_val_pair_args,
    load_or_exit,
    markdown_table,
    run_settings,
    val_pairs,
    without_classical,
    write_results,
)
from cvloc.data.batch import collate
from cvloc.evaluate import batch_match_precision
from cvloc.geometry.bev import satellite_grid_uv
from cvloc.metrics import aggregate_match_precision
from cvloc.models.inputs import known_heading
from cvloc.models.matching import prior_window_mask
from cvloc.models.pose_head import pose_from_flow
from cvloc.models.refinement import refined

THRESHOLDS = ("5px", "10px", "15px")


def correlation_matches(
    pred: dict[str, Any], batch: dict[str, Any], stride: int, window: bool
) -> dict[str, torch.Tensor]:
    """Each visible BEV cell's best-correlated satellite cell, scored by its softmax peak.

    Convention: BEV cell n and satellite cell m share the grid of
    :func:`cvloc.geometry.bev.satellite_grid_uv` (the BEV placed at the prior pose).

    Args:
        pred: DenseFlow's prediction: ``correlation`` (B, N, M), ``feature_valid`` (B, H, W).
        batch: the batch (the prior and its bounds for the window).
        stride: satellite pixels per cell.
        window: restrict each cell to the prior's window; else the whole map.

    Returns:
        ``match_src_uv`` / ``match_dst_uv`` (B, N, 2) and ``match_weight`` (B, N).
    """
    corr = pred["correlation"].float()
    valid = pred["feature_valid"]
    grid_hw = tuple(valid.shape[-2:])
    cells = satellite_grid_uv(*grid_hw, stride, torch.float32, corr.device).reshape(-1, 2)
    if window:
        bounds = ("camera_uv_prior", "m_per_px", "shift_range_m", "yaw_range_deg")
        allowed = prior_window_mask(grid_hw, stride, *(batch[k] for k in bounds))
        corr = torch.where(allowed, corr, corr.new_tensor(-torch.inf))
    peak, best = torch.softmax(corr, dim=-1).max(dim=-1)
    return {
        "match_src_uv": cells.expand(corr.shape[0], -1, -1),
        "match_dst_uv": cells[best],
        "match_weight": peak * valid.flatten(1).float(),
    }


def iteration_matches(
    pred: dict[str, Any], batch: dict[str, Any], k: int, pose_stride: int
) -> dict[str, torch.Tensor]:
    """DenseFlow's matches after GRU iteration ``k`` (0-based), as its pose head takes them."""
    weights = pred["bev_valid"][:, 0] * pred["confidence_iters"][k][:, 0]
    geo = (batch[key] for key in ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior"))
    pose = pose_from_flow(
        pred["flow_iters"][k], weights, *geo, stride=pose_stride,
        known_heading=known_heading(batch),
    )  # fmt: skip
    return {"match_src_uv": pose.src_uv, "match_dst_uv": pose.dst_uv, "match_weight": pose.weight}


def run_denseflow(model: nn.Module, pairs: Any) -> dict[str, list[dict[str, Any]]]:
    """Per-sample match precision of every DenseFlow stage, keyed by row name."""
    cfg = model.config
    rows: dict[str, list[dict[str, Any]]] = {}
    model.eval()
    for i in tqdm(range(len(pairs)), desc="DenseFlow", unit="pair"):
        batch = collate([pairs[i]])
        with torch.inference_mode():
            pred = model(batch)
        stages = {
            "DenseFlow, correlation argmax, whole map": correlation_matches(
                pred, batch, cfg.stride, window=False
            ),
            "DenseFlow, correlation argmax, prior window": correlation_matches(
                pred, batch, cfg.stride, window=True
            ),
        }
        for k in range(len(pred["flow_iters"])):
            name = f"DenseFlow, after GRU iteration {k + 1}"
            stages[name] = iteration_matches(pred, batch, k, cfg.pose_stride)
        for name, matches in stages.items():
            rows.setdefault(name, []).extend(batch_match_precision(matches, batch))
    return rows


def run_finematch(model: nn.Module, eval_config: Any, pairs: Any) -> dict[str, list[Any]]:
    """Per-sample match precision of FineMatch in one pass and with its recorded passes."""
    passes = eval_config.refine_passes
    one_pass = dataclasses.replace(
        eval_config, refine_passes=1, refine_align_shift_m=None, classical_refine=False
    )
    variants = {
        "FineMatch, one pass": refined(model, one_pass),
        f"FineMatch, {passes} passes (shipped)": without_classical(model, eval_config),
    }
    rows: dict[str, list[Any]] = {}
    for name, localizer in variants.items():
        localizer.eval()
        for i in tqdm(range(len(pairs)), desc=name, unit="pair"):
            batch = collate([pairs[i]])
            with torch.inference_mode():
                pred = localizer(batch)
            rows.setdefault(name, []).extend(
                batch_match_precision(pred, batch, pred.get("match_height_m"))
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--denseflow", default="denseflow-synth-kitti-small", help="weights")
    parser.add_argument("--finematch", default="finematch-synth-kitti-small", help="weights")
    add_val_pair_args(parser, "match_stages.json")
    args = parser.parse_args()
    val = val_pairs(args)
    denseflow, _ = load_or_exit(args.denseflow)
    finematch, fm_cfg = load_or_exit(args.finematch)
    per_sample = {**run_denseflow(denseflow, val), **run_finematch(finematch, fm_cfg.eval, val)}
    results: dict[str, Any] = {"settings": run_settings(args), "rows": {}}
    table = []
    for name, samples in per_sample.items():
        metrics = aggregate_match_precision(samples)
        results["rows"][name] = metrics
        cells = [f"{100 * metrics[f'match_precision_{t}']:.1f}" for t in THRESHOLDS]
        table.append((name, cells))
        print(f"{name}: P@{'/'.join(THRESHOLDS)} {' / '.join(cells)} %")
    head = [f"P@{t} (%)" for t in THRESHOLDS]
    title = f"**{args.preset} val, same area, {args.num} pairs: top-30 precision by stage**\n"
    write_results(args.out, results, [title + "\n" + markdown_table(head, table)])


if __name__ == "__main__":
    main()
