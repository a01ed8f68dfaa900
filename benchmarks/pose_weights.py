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

Two other fits of the same flow under the model's weights S:

- ``similarity``: a rotation, translation and scale (the scale discarded): absorbs a flow
  pulled radially towards the camera by a common factor, as objects above the ground pull
  it on a flat-ground BEV;
- ``anisotropic``: the rigid pose whose residuals along each match's viewing ray (from the
  camera) weigh ``--radial-weight`` times those across it (Gauss-Newton from the rigid fit,
  ``--gauss-newton-iters`` steps): range errors count less than bearing errors.

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
from cvloc.geometry.geo import pixel_to_world_xy, world_xy_to_pixel
from cvloc.geometry.pose import rotation_2d, wrap_deg
from cvloc.geometry.procrustes import rotation_angle_2d, weighted_procrustes_2d
from cvloc.models.denseflow import DenseFlow
from cvloc.models.inputs import known_heading
from cvloc.models.pose_head import flow_from_pose, pose_from_flow

POSE_ARGS = ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior")


def similarity_camera(
    src: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor,
    prior: torch.Tensor,
    fixed: torch.Tensor,
) -> torch.Tensor:
    """Camera position of the weighted similarity fit dst ~ s R src + t (s discarded).

    Convention: world x east, y north, metres; ``prior`` is the camera in the frame of
    ``src`` (the BEV placed at the prior pose).

    Args:
        src: (B, N, 2) BEV points.
        dst: (B, N, 2) their matches.
        weight: (B, N) match weights.
        prior: (B, 2) the prior camera position.
        fixed: (B,) bool, known headings (R = identity).

    Returns:
        (B, 2) the camera moved by the fit, s R prior + t. Its rotation is the rigid fit's.
    """
    R, _ = weighted_procrustes_2d(src, dst, weight, fixed)
    w = weight / weight.sum(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    g_src, g_dst = (w[..., None] * src).sum(1), (w[..., None] * dst).sum(1)
    a = torch.einsum("bij,bnj->bni", R, src - g_src[:, None])
    b = dst - g_dst[:, None]
    scale = (w * (a * b).sum(-1)).sum(-1) / (w * (a * a).sum(-1)).sum(-1).clamp_min(1e-12)
    return g_dst + scale[:, None] * torch.einsum("bij,bj->bi", R, prior - g_src)


def anisotropic_fit(
    src: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor,
    prior: torch.Tensor,
    fixed: torch.Tensor,
    radial_weight: float,
    iters: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid pose with residuals along each viewing ray down-weighted, by Gauss-Newton.

    Minimises sum_i w_i (lambda r_i^2 + q_i^2), where r_i and q_i are the components of
    dst_i - (c + R(th) (src_i - prior)) along and across the ray R(th) (src_i - prior) of
    the camera c; from the rigid fit (lambda = 1 is that fit). To first order r_i does
    not depend on th and q_i changes by |src_i - prior| per radian.

    Convention: as :func:`similarity_camera`; th counter-clockwise, radians.

    Args:
        src: (B, N, 2) BEV points.
        dst: (B, N, 2) their matches.
        weight: (B, N) match weights.
        prior: (B, 2) the prior camera position.
        fixed: (B,) bool, known headings (th stays 0).
        radial_weight: lambda, > 0.
        iters: Gauss-Newton steps.

    Returns:
        (B, 2) camera positions and (B,) angles th of the fit.
    """
    R, t = weighted_procrustes_2d(src, dst, weight, fixed)
    theta = rotation_angle_2d(R)
    camera = (R @ prior[..., None])[..., 0] + t
    offset = src - prior[:, None]
    w = weight / weight.amax(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    for _ in range(iters):
        ray = torch.einsum("bij,bnj->bni", rotation_2d(theta), offset)
        reach = ray.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        along = ray / reach
        across = torch.stack([-along[..., 1], along[..., 0]], -1)
        residual = camera[:, None] + ray - dst
        # Jacobians of (r, q) with respect to (c_x, c_y, th), each (B, N, 3).
        jac_r = torch.cat([along, torch.zeros_like(reach)], -1)
        jac_q = torch.cat([across, reach], -1)
        r, q = (along * residual).sum(-1), (across * residual).sum(-1)
        normal = torch.einsum("bn,bni,bnj->bij", radial_weight * w, jac_r, jac_r)
        normal = normal + torch.einsum("bn,bni,bnj->bij", w, jac_q, jac_q)
        gradient = torch.einsum("bn,bni->bi", radial_weight * w * r, jac_r)
        gradient = gradient + torch.einsum("bn,bni->bi", w * q, jac_q)
        damping = 1e-9 * normal.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)
        normal = normal + damping[:, None, None] * torch.eye(3, dtype=normal.dtype)
        step = torch.linalg.solve(normal, gradient)
        camera = camera - step[:, :2]
        theta = torch.where(fixed, theta, theta - step[:, 2])
    return camera, theta


class Reweighted(nn.Module):
    """A DenseFlow whose pose is re-fitted from its final flow under other weights.

    ``forward(batch)`` returns the model's prediction with ``camera_uv_pred``,
    ``camera_xy_pred``, ``yaw_deg_pred`` and the match keys of the re-fit. With
    ``record``, the prior's signed heading offset and the estimate's signed heading error
    (degrees, wrapped) of every pair are appended to :attr:`headings`.

    Args:
        model: a :class:`cvloc.models.DenseFlow` (``flow_iters``, ``confidence_iters``,
            ``bev_valid``).
        weighting: ``model``, ``visibility``, ``robust``, ``oracle``, ``similarity`` or
            ``anisotropic``.
        value: the oracle's error bound or the robust weights' sigma, in pixels; the
            anisotropic fit's radial weight.
        iters: re-fits of ``robust``, Gauss-Newton steps of ``anisotropic``.
        record: keep the heading offsets and errors.
    """

    def __init__(
        self, model: nn.Module, weighting: str, value: float, iters: int, record: bool
    ) -> None:
        super().__init__()
        self.model, self.weighting = model, weighting
        self.value, self.iters, self.record = value, iters, record
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
            weight = weight * ((flow - truth).norm(dim=1) < self.value)
        pose = pose_from_flow(flow, weight, *args, stride=stride, known_heading=fixed)
        camera_xy, camera_uv, yaw_deg = pose.camera_xy, pose.camera_uv, pose.yaw_deg
        if self.weighting in ("similarity", "anisotropic"):
            center, m = batch["sat_center_uv"].double(), batch["m_per_px"].double()
            src = pixel_to_world_xy(pose.src_uv.double(), center[:, None], m[:, None])
            dst = pixel_to_world_xy(pose.dst_uv.double(), center[:, None], m[:, None])
            prior = pixel_to_world_xy(batch["camera_uv_prior"].double(), center, m)
            if self.weighting == "similarity":
                camera = similarity_camera(src, dst, pose.weight.double(), prior, fixed)
            else:
                camera, theta = anisotropic_fit(
                    src, dst, pose.weight.double(), prior, fixed, self.value, self.iters
                )
                yaw_deg = (batch["yaw_deg_prior"].double() - torch.rad2deg(theta)).float()
            camera_xy = camera.float()
            camera_uv = world_xy_to_pixel(camera, center, m).float()
        if self.weighting == "robust":
            for _ in range(self.iters):
                fitted = flow_from_pose(hw, *args, pose.camera_uv, pose.yaw_deg)
                residual = (flow - fitted).norm(dim=1)
                cauchy = weight / (1.0 + (residual / self.value) ** 2)
                pose = pose_from_flow(flow, cauchy, *args, stride=stride, known_heading=fixed)
            camera_xy, camera_uv, yaw_deg = pose.camera_xy, pose.camera_uv, pose.yaw_deg
        pred.update(
            camera_uv_pred=camera_uv,
            camera_xy_pred=camera_xy,
            yaw_deg_pred=yaw_deg,
            match_src_uv=pose.src_uv,
            match_dst_uv=pose.dst_uv,
            match_weight=pose.weight,
        )
        if self.record:
            offset = wrap_deg(batch["yaw_deg_prior"].double() - batch["yaw_deg_gt"].double())
            error = wrap_deg(yaw_deg.double() - batch["yaw_deg_gt"].double())
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
        "--radial-weight", type=float, default=0.5, help="anisotropic fit: along-ray weight"
    )
    parser.add_argument(
        "--gauss-newton-iters", type=int, default=5, help="anisotropic fit: Gauss-Newton steps"
    )
    parser.add_argument(
        "--oracle-px", type=float, nargs="+", default=[5.0, 10.0], help="oracle error bounds"
    )
    parser.add_argument("--workers", type=int, default=1, help="pair generator processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="pairs directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "pose_weights.json", help="JSON")
    args = parser.parse_args()
    positive = (args.sigma_px, min(args.oracle_px), args.radial_weight)
    if not min(positive) > 0 or min(args.robust_iters, args.gauss_newton_iters) < 1:
        raise SystemExit(
            "--sigma-px, --oracle-px and --radial-weight must be positive, "
            "--robust-iters and --gauss-newton-iters >= 1"
        )
    torch.set_num_threads(args.threads)
    val = synthetic_split(args.preset, "val", "same", args.num, args.seed, args.workers,
                          args.data_dir)  # fmt: skip
    weightings = [
        ("model", "model", 0.0),
        ("visibility", "visibility", 0.0),
        (f"robust (sigma {args.sigma_px:g} px)", "robust", args.sigma_px),
        *[(f"oracle < {t:g} px", "oracle", t) for t in args.oracle_px],
        ("similarity fit", "similarity", 0.0),
        (f"anisotropic fit (along-ray {args.radial_weight:g})", "anisotropic", args.radial_weight),
    ]
    results: dict[str, Any] = {"settings": run_settings(args), "heading_shrinkage": {}}
    rows = []
    for checkpoint in args.checkpoints:
        model, _ = load_or_exit(checkpoint)
        if not isinstance(model, DenseFlow):
            raise SystemExit(f"{checkpoint}: not a DenseFlow model (no dense flow to re-fit)")
        results[checkpoint] = {}
        for label, weighting, value in weightings:
            iters = args.gauss_newton_iters if weighting == "anisotropic" else args.robust_iters
            wrapped = Reweighted(model, weighting, value, iters, weighting == "model")
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
