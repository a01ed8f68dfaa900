r"""How much of DenseFlow's pose error is the weighting of its flow? A diagnosis on val pairs.

Reproduce the recorded results (about 4 min per checkpoint on 2 CPU cores)::

    python benchmarks/pose_weights.py --num 100 \
        --checkpoints denseflow-synth-kitti-small \
        training/denseflow-synth-kitti-small-stride4b/weights.safetensors

DenseFlow's pose is the weighted least-squares fit of its final flow (paper eq. 3, weights
S = visibility x confidence). The pose can miss because the weights trust wrong flow
vectors, or because the flow is wrong everywhere. Each checkpoint runs once on ``--num``
synthetic ``val`` pairs (never the test split) and its final flow is fitted again under
other weights:

- ``model``: S, what every other benchmark reports;
- ``visibility``: the visibility alone (the confidence head's contribution);
- ``robust``: S times Cauchy weights 1 / (1 + (r / sigma)^2) of each pixel's residual r to
  the current fit, re-fitted ``--robust-iters`` times (``--sigma-px``): the robust
  re-weighting a user could add after the fit;
- ``oracle <T px``: S on the pixels whose true flow error is below T satellite pixels, 0
  elsewhere. An upper bound that reads the ground truth, not a method: no re-weighting of
  this flow does better.

It also reports the heading shrinkage ``k``: the least-squares slope of the signed heading
error against the prior's heading offset (0: the error does not depend on the offset; k > 0:
the model corrects k less than the offset, on average). Writes
``benchmarks/results/pose_weights.json`` ({"settings", CHECKPOINT: {weighting: metrics},
"heading_shrinkage": {CHECKPOINT: k}}) and the Markdown table beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import (
    DATA_DIR,
    RESULTS,
    load_or_exit,
    markdown_table,
    run_settings,
    synthetic_split,
    write_results,
)
from cvloc.evaluate import evaluate
from cvloc.geometry.pose import wrap_deg
from cvloc.models.denseflow import DenseFlow
from cvloc.models.inputs import known_heading
from cvloc.models.pose_head import flow_from_pose, pose_from_flow

POSE_ARGS = ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior")


class Reweighted(nn.Module):
    """A DenseFlow whose pose is re-fitted from its final flow under other weights.

    ``forward(batch)`` returns the model's prediction with ``camera_uv_pred``,
    ``camera_xy_pred``, ``yaw_deg_pred`` and the match keys of the re-fit. With
    ``record``, the prior's signed heading offset and the estimate's signed heading error
    (degrees, wrapped) of every pair are appended to :attr:`headings`.

    Args:
        model: a :class:`cvloc.models.DenseFlow` (``flow_iters``, ``confidence_iters``,
            ``bev_valid``).
        weighting: ``model``, ``visibility``, ``robust`` or ``oracle``.
        threshold_px: the oracle's error bound, or the robust weights' sigma, in pixels.
        iters: re-fits of ``robust``.
        record: keep the heading offsets and errors.
    """

    def __init__(
        self, model: nn.Module, weighting: str, threshold_px: float, iters: int, record: bool
    ) -> None:
        super().__init__()
        self.model, self.weighting = model, weighting
        self.threshold_px, self.iters, self.record = threshold_px, iters, record
        self.required_keys = getattr(model, "required_keys", ())
        self.headings: list[torch.Tensor] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The prediction with the pose of this weighting."""
        pred = dict(self.model(batch))
        flow = pred["flow_iters"][-1].float()
        visible = pred["bev_valid"][:, 0].float()
        weight = visible * pred["confidence_iters"][-1][:, 0].float()
        args = [batch[k] for k in POSE_ARGS]
        stride = self.model.config.pose_stride
        fixed = known_heading(batch)
        hw = (flow.shape[-2], flow.shape[-1])
        if self.weighting == "visibility":
            weight = visible
        elif self.weighting == "oracle":
            truth = flow_from_pose(hw, *args, batch["camera_uv_gt"], batch["yaw_deg_gt"])
            weight = weight * ((flow - truth).norm(dim=1) < self.threshold_px)
        pose = pose_from_flow(flow, weight, *args, stride=stride, known_heading=fixed)
        if self.weighting == "robust":
            for _ in range(self.iters):
                fitted = flow_from_pose(hw, *args, pose.camera_uv, pose.yaw_deg)
                residual = (flow - fitted).norm(dim=1)
                cauchy = weight / (1.0 + (residual / self.threshold_px) ** 2)
                pose = pose_from_flow(flow, cauchy, *args, stride=stride, known_heading=fixed)
        pred.update(
            camera_uv_pred=pose.camera_uv,
            camera_xy_pred=pose.camera_xy,
            yaw_deg_pred=pose.yaw_deg,
            match_src_uv=pose.src_uv,
            match_dst_uv=pose.dst_uv,
            match_weight=pose.weight,
        )
        if self.record:
            offset = wrap_deg(batch["yaw_deg_prior"].double() - batch["yaw_deg_gt"].double())
            error = wrap_deg(pose.yaw_deg.double() - batch["yaw_deg_gt"].double())
            self.headings.append(torch.stack([offset, error], dim=-1).cpu())
        return pred


def heading_shrinkage(headings: list[torch.Tensor]) -> float:
    """The slope k of error = k offset (least squares through 0) over recorded pairs.

    Args:
        headings: (B, 2) blocks of (prior offset, estimate error), degrees.

    Returns:
        k; NaN when every offset is 0 (a known heading).
    """
    pairs = torch.cat(headings)
    offset, error = pairs[:, 0], pairs[:, 1]
    denominator = float((offset * offset).sum())
    return float((offset * error).sum()) / denominator if denominator > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", nargs="+", default=["denseflow-synth-kitti-small"], help="weights"
    )
    parser.add_argument("--preset", default="kitti-small", help="synthetic preset")
    parser.add_argument("--num", type=int, default=100, help="val pairs")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument("--sigma-px", type=float, default=8.0, help="robust weights' scale")
    parser.add_argument("--robust-iters", type=int, default=3, help="robust re-fits")
    parser.add_argument(
        "--oracle-px", type=float, nargs="+", default=[5.0, 10.0], help="oracle error bounds"
    )
    parser.add_argument("--workers", type=int, default=1, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "pose_weights.json", help="JSON")
    args = parser.parse_args()
    if not args.sigma_px > 0 or args.robust_iters < 1 or min(args.oracle_px) <= 0:
        raise SystemExit("--sigma-px and --oracle-px must be positive, --robust-iters >= 1")
    torch.set_num_threads(args.threads)
    val = synthetic_split(args.preset, "val", "same", args.num, args.seed, args.workers,
                          args.data_dir)  # fmt: skip
    weightings = [
        ("model", "model", 0.0),
        ("visibility", "visibility", 0.0),
        (f"robust (sigma {args.sigma_px:g} px)", "robust", args.sigma_px),
        *[(f"oracle < {t:g} px", "oracle", t) for t in args.oracle_px],
    ]
    results: dict[str, Any] = {"settings": run_settings(args), "heading_shrinkage": {}}
    rows = []
    for checkpoint in args.checkpoints:
        model, _ = load_or_exit(checkpoint)
        if not isinstance(model, DenseFlow):
            raise SystemExit(f"{checkpoint}: not a DenseFlow model (no dense flow to re-fit)")
        results[checkpoint] = {}
        for label, weighting, value in weightings:
            wrapped = Reweighted(model, weighting, value, args.robust_iters, weighting == "model")
            metrics = evaluate(
                wrapped, val, batch_size=4, progress=False, method=label, checkpoint=checkpoint
            )
            results[checkpoint][label] = metrics
            if weighting == "model":
                k = heading_shrinkage(wrapped.headings)
                results["heading_shrinkage"][checkpoint] = k
                print(f"{checkpoint}: heading shrinkage k = {k:.3f}")
            cells = [
                f"{metrics['location_mean_m']:.2f}",
                f"{metrics['location_median_m']:.2f}",
                f"{metrics['yaw_median_deg']:.2f}",
                f"{100 * metrics['lateral_recall_1m']:.1f}",
                f"{100 * metrics['longitudinal_recall_1m']:.1f}",
            ]
            rows.append((f"{checkpoint}, {label}", cells))
            print(f"{checkpoint} {label}: {' / '.join(cells)}", flush=True)
    head = [
        "location mean (m)",
        "location median (m)",
        "yaw median (deg)",
        "lateral R@1m (%)",
        "longitudinal R@1m (%)",
    ]
    shrink = ", ".join(f"{c}: {k:.3f}" for c, k in results["heading_shrinkage"].items())
    title = (
        f"**{args.preset} val, same area, {args.num} pairs: DenseFlow's pose under other "
        f"weights of its flow** (heading shrinkage k: {shrink})\n"
    )
    write_results(args.out, results, [title + "\n" + markdown_table(head, rows)])


if __name__ == "__main__":
    main()
