"""Evaluation: run a localizer over a dataset and compute the metrics JSON of design.md.

:func:`evaluate` works with any model following the prediction contract (``forward(batch)``
returning ``camera_xy_pred`` (B, 2) and ``yaw_deg_pred`` (B,)), learned or not. It adds,
when the model and the data provide what they need:

- DenseFlow's flow view (``reference/protocols.md`` section 4.4): end-point error of the
  final flow against the flow implied by the GT pose over visible BEV pixels
  (``flow_epe_px``, ``flow_epe_lt_{5,15,25,50}px``), for models returning ``flow_iters``.
- CVFM-style match precision (``match_precision_{5,10,15}px``) for models returning
  ``match_src_uv`` / ``match_dst_uv`` / ``match_weight`` on data with pixel-level GT
  (``gt_sat_uv_grd``): each match is lifted to the ground-image location it stands for
  (:func:`lift_matches_to_ground`, at the predicted ``match_height_m`` when the model
  returns one, else on the flat ground) and judged against the GT satellite location
  there (:func:`gt_at_ground_pixels`, bilinear between ground pixels).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cvloc.checkpoint import checkpoint_sha256
from cvloc.data.batch import camera_xy, collate, one_camera_model
from cvloc.geometry.bev import lift_to_ground_image
from cvloc.geometry.checks import check_same_batch, check_shape
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import world_to_cam_from_pose, wrap_deg
from cvloc.metrics import aggregate_match_precision, localization_metrics, match_precision
from cvloc.models.pose_head import flow_from_pose

FLOW_EPE_THRESHOLDS_PX: tuple[int, ...] = (5, 15, 25, 50)
MATCH_KEYS: tuple[str, ...] = ("match_src_uv", "match_dst_uv", "match_weight")
GT_LOOKUPS: tuple[str, ...] = ("bilinear", "nearest")


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    method: str | None = None,
    checkpoint: str | None = None,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Localize every pair of a dataset and compute the metrics JSON.

    The model runs in eval mode under ``torch.inference_mode``, in dataset order.
    ``seconds_per_pair`` is the wall time of the model's forward calls only (not data
    loading, not the transfer to ``device``, not the metrics), summed over all batches,
    first batch included, divided by the number of pairs; on CUDA the device is
    synchronised before and after each call so asynchronous kernels are counted.

    Args:
        model: a localizer (``forward(batch) -> dict`` with ``camera_xy_pred`` (B, 2) and
            ``yaw_deg_pred`` (B,)); moved to ``device``.
        dataset: a dataset of :mod:`cvloc.data.batch` items.
        batch_size: pairs per forward call.
        num_workers: DataLoader worker processes.
        device: where the model runs.
        progress: show a progress bar.
        method: the ``method`` value of the result; defaults to the model's class name.
        checkpoint: the ``checkpoint`` value of the result (None for non-learned methods):
            a file or shipped weights name, whose file's digest the result also records
            as ``checkpoint_sha256``.
        per_sample: also return ``per_sample``: ``name``, ``location_error_m`` and
            ``yaw_error_deg`` (absolute, wrapped) of every pair, in dataset order.

    Returns:
        The metrics dict: ``method``, ``checkpoint``, ``num_samples``, the keys of
        :func:`cvloc.metrics.localization_metrics`, ``seconds_per_pair``, and when
        available the flow keys of :class:`FlowErrorAccumulator` and the match keys of
        :func:`cvloc.metrics.aggregate_match_precision`.

    Raises:
        ValueError: the dataset is empty or ``batch_size`` < 1.
        FileNotFoundError: ``checkpoint`` names no file
            (:func:`cvloc.checkpoint.resolve_checkpoint`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("evaluate: the dataset is empty")
    # Before the run: a checkpoint that does not resolve fails now, not after it.
    digest = None if checkpoint is None else checkpoint_sha256(checkpoint)
    device = torch.device(device)
    model = model.to(device).eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    poses: defaultdict[str, list[torch.Tensor]] = defaultdict(list)
    flow = FlowErrorAccumulator()
    matches: list[dict[str, float | int]] = []
    names: list[str] = []
    forward_s = 0.0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            batch = to_device(batch, device)
            _synchronize(device)
            start = time.perf_counter()
            pred = model(batch)
            _synchronize(device)
            forward_s += time.perf_counter() - start
            poses["pred_xy"].append(pred["camera_xy_pred"].double().cpu())
            poses["gt_xy"].append(camera_xy(batch, "gt").double().cpu())
            poses["pred_yaw"].append(pred["yaw_deg_pred"].double().cpu())
            poses["gt_yaw"].append(batch["yaw_deg_gt"].double().cpu())
            names += list(batch["name"])
            if "flow_iters" in pred:
                flow.add(pred, batch)
            if "gt_sat_uv_grd" in batch and all(k in pred for k in MATCH_KEYS):
                matches += batch_match_precision(pred, batch, pred.get("match_height_m"))
    stacked = {k: torch.cat(v) for k, v in poses.items()}
    metrics = localization_metrics(
        stacked["pred_xy"], stacked["gt_xy"], stacked["pred_yaw"], stacked["gt_yaw"]
    )
    result: dict[str, Any] = {
        "method": method or type(model).__name__,
        "checkpoint": checkpoint,
        "checkpoint_sha256": digest,
        **metrics,
        "seconds_per_pair": forward_s / metrics["num_samples"],
    }
    if flow.batches:
        result.update(flow.summary())
    if matches:
        result.update(aggregate_match_precision(matches))
    if per_sample:
        result["per_sample"] = {
            "name": names,
            "location_error_m": (stacked["pred_xy"] - stacked["gt_xy"]).norm(dim=-1).tolist(),
            "yaw_error_deg": wrap_deg(stacked["pred_yaw"] - stacked["gt_yaw"]).abs().tolist(),
        }
    return result


class FlowErrorAccumulator:
    """Running flow end-point-error statistics over the visible BEV pixels of many batches.

    Pixels of all samples are pooled into one mean, as RAFT's Sintel validation does (the
    stored DenseFlow sources do not say how its ``--test_flow`` averages), so samples with
    larger visible BEVs weigh more.

    Attributes:
        batches: number of batches added.
        count: number of visible pixels seen.
        sum_px: sum of their end-point errors, satellite pixels.
        below: threshold (px) -> number of pixels with an error strictly below it.
    """

    def __init__(self) -> None:
        self.batches = 0
        self.count = 0
        self.sum_px = 0.0
        self.below = dict.fromkeys(FLOW_EPE_THRESHOLDS_PX, 0)

    def add(self, pred: dict[str, Any], batch: dict[str, Any]) -> None:
        """Add the final flow of a batch.

        Args:
            pred: prediction with ``flow_iters`` (list of (B, 2, Hs, Ws), satellite pixels,
                on the satellite pixel grid) and optionally ``bev_valid`` (B, 1, Hs, Ws).
            batch: the batch, with the prior and GT poses.
        """
        epe = flow_end_point_errors(pred, batch)
        self.batches += 1
        self.count += epe.numel()
        self.sum_px += float(epe.double().sum())
        for thr in FLOW_EPE_THRESHOLDS_PX:
            self.below[thr] += int((epe < thr).sum())

    def summary(self) -> dict[str, float]:
        """``flow_epe_px`` (mean) and ``flow_epe_lt_{T}px`` (fractions); NaN when empty.

        Returns:
            The flow metrics.
        """
        n = self.count
        out = {"flow_epe_px": self.sum_px / n if n else math.nan}
        for t, below in self.below.items():
            out[f"flow_epe_lt_{t}px"] = below / n if n else math.nan
        return out


def flow_end_point_errors(pred: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
    """End-point errors of the final flow at the visible BEV pixels.

    The GT flow is :func:`cvloc.models.pose_head.flow_from_pose` from the prior to the GT
    pose: where each BEV pixel, placed with the prior pose, truly lies on the satellite.

    Convention: BEV pixel (i, j) is satellite pixel centre (u, v) = (j, i); flows are
    (du, dv) in satellite pixels.

    Args:
        pred: ``flow_iters`` (list of (B, 2, Hs, Ws)) and optionally ``bev_valid``
            (B, 1, Hs, Ws), nonzero where the BEV pixel is visible (all when absent).
        batch: ``satellite`` (B, 3, Hs, Ws), ``sat_center_uv``, ``m_per_px``, the prior and
            GT poses.

    Returns:
        (M,) errors in satellite pixels, M = number of visible pixels in the batch.

    Raises:
        ShapeError: the flow is not on the satellite pixel grid.
    """
    flow = pred["flow_iters"][-1]
    check_shape(flow, [batch["satellite"].shape[0], 2, *batch["satellite"].shape[-2:]], "flow")
    flow_gt = flow_from_pose(
        tuple(flow.shape[-2:]),
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_uv_gt"],
        batch["yaw_deg_gt"],
    )
    epe = torch.linalg.vector_norm(flow.float() - flow_gt.float(), dim=1)  # B,Hs,Ws
    valid = pred.get("bev_valid")
    visible = torch.ones_like(epe, dtype=torch.bool) if valid is None else valid[:, 0] > 0
    return epe[visible].cpu()


def lift_matches_to_ground(
    src_sat_uv: torch.Tensor,
    sat_center_uv: torch.Tensor,
    m_per_px: torch.Tensor,
    camera_uv_prior: torch.Tensor,
    yaw_deg_prior: torch.Tensor,
    camera_height_m: torch.Tensor,
    camera_model: str,
    ground_size: tuple[int, int],
    K: torch.Tensor | None = None,
    heights_m: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-image pixel of every match source: BEV cells placed with the prior pose.

    A match source is a BEV cell, i.e. a satellite pixel p at which the model placed ground
    content assuming the camera at its prior pose and the content at height h (0 for the
    flat-ground BEV of DenseFlow, a predicted surface height for the fine-grained matcher).
    The ground pixel it stands for is the projection of the world point of p at height h
    through the level prior camera (:func:`cvloc.geometry.pose.world_to_cam_from_pose`),
    computed by :func:`cvloc.geometry.bev.lift_to_ground_image`. For a per-match height,
    the point at height h seen from camera height H is the point at height 0 seen from
    H - h (the frames differ by a vertical translation only), so every match gets its own
    camera and is lifted at height 0.

    Convention: satellite north-up, pixel centres at integers; world x east, y north, z up,
    origin at ``sat_center_uv``; yaw clockwise from north; ground pixels (u, v) with
    integer pixel centres. Valid as in :func:`cvloc.geometry.bev.lift_to_ground_image`: in
    front of the camera and inside the ground image.

    Args:
        src_sat_uv: (B, N, 2) match sources, satellite pixels.
        sat_center_uv: (B, 2) satellite pixel of the world origin.
        m_per_px: (B,) satellite metres per pixel.
        camera_uv_prior: (B, 2) prior camera position, satellite pixels.
        yaw_deg_prior: (B,) prior heading.
        camera_height_m: (B,) camera height above the ground.
        camera_model: ``"pinhole"`` or ``"panorama"``.
        ground_size: (W, H) of the ground image in pixels.
        K: (B, 3, 3) pinhole intrinsics (required for ``"pinhole"``).
        heights_m: (B, N) height above ground of each source's content; None = 0.

    Returns:
        ground_uv: (B, N, 2) ground pixels.
        valid: (B, N) bool.
    """
    check_shape(src_sat_uv, ["B", "N", 2], "src_sat_uv")
    check_same_batch(("src_sat_uv", src_sat_uv), ("camera_uv_prior", camera_uv_prior))
    B, N, _ = src_sat_uv.shape
    dtype = torch.promote_types(src_sat_uv.dtype, torch.float32)
    if heights_m is None:
        heights_m = src_sat_uv.new_zeros(B, N, dtype=dtype)
    check_shape(heights_m, [B, N], "heights_m")

    def per_match(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B N, ...)
        return x.to(dtype)[:, None].expand(B, N, *x.shape[1:]).reshape(B * N, *x.shape[1:])

    center, m = sat_center_uv.to(dtype), m_per_px.to(dtype)
    points_xy = pixel_to_world_xy(src_sat_uv.to(dtype), center[:, None], m[:, None])
    prior_xy = pixel_to_world_xy(camera_uv_prior.to(dtype), center, m)
    world_to_cam = world_to_cam_from_pose(
        per_match(prior_xy),
        per_match(yaw_deg_prior),
        (camera_height_m.to(dtype)[:, None] - heights_m.to(dtype)).reshape(B * N),
    )
    uv, valid = lift_to_ground_image(
        points_xy.reshape(B * N, 1, 1, 2),
        src_sat_uv.new_zeros(1, dtype=dtype),
        world_to_cam,
        camera_model,
        ground_size,
        per_match(K) if camera_model == "pinhole" and K is not None else None,
    )
    return uv.reshape(B, N, 2), valid.reshape(B, N)


def gt_at_ground_pixels(
    gt_sat_uv_grd: torch.Tensor,
    ground_uv: torch.Tensor,
    valid: torch.Tensor,
    mode: str = "bilinear",
    panorama: bool = False,
) -> torch.Tensor:
    """Pixel-level GT satellite location at (sub-pixel) ground locations, NaN where none.

    ``"bilinear"`` (the evaluation default) interpolates the 4 surrounding ground pixels
    and gives NaN unless all with a nonzero weight have a GT, so it never blends a surface
    with "no surface".
    It matters because a lifted BEV cell lands between ground pixels, and far away one
    ground row spans metres of ground. For the flow implied by the GT pose on 8 synthetic
    kitti-small / vigor-small pairs, the matches whose ground pixel sees the ground have a
    median error of 1.3 / 3.6 px against the nearest pixel's GT and 0.06 / 0.39 px against
    the bilinear one (precision at 5 px of all its matches with GT: 0.68 / 0.51 nearest,
    0.73 / 0.85 bilinear). ``"nearest"`` takes the closest pixel centre.

    Convention: ``gt_sat_uv_grd[b, v, u]`` belongs to ground pixel centre (u, v); outside
    the pixel centres the border pixel is repeated, except across a panorama's left/right
    seam, where columns wrap.

    Args:
        gt_sat_uv_grd: (B, Hg, Wg, 2) GT satellite pixel per ground pixel, NaN where none.
        ground_uv: (B, N, 2) ground pixels.
        valid: (B, N) bool, False gives NaN.
        mode: ``"bilinear"`` or ``"nearest"``.
        panorama: whether columns wrap around (equirectangular panorama).

    Returns:
        (B, N, 2) satellite pixels.
    """
    if mode not in GT_LOOKUPS:
        raise ValueError(f"mode must be one of {GT_LOOKUPS}, got {mode!r}")
    B, Hg, Wg, _ = gt_sat_uv_grd.shape
    batch = torch.arange(B, device=ground_uv.device)[:, None]
    u, v = ground_uv.to(gt_sat_uv_grd.dtype).unbind(-1)

    def at(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:  # B,N,2
        col = torch.remainder(col, Wg) if panorama else col.clamp(0, Wg - 1)
        return gt_sat_uv_grd[batch, row.clamp(0, Hg - 1), col]

    if mode == "nearest":
        gt = at(u.round().long(), v.round().long())
    else:
        u0, v0 = u.floor(), v.floor()
        fu, fv = u - u0, v - v0
        c, r = u0.long(), v0.long()
        gt = torch.zeros_like(ground_uv, dtype=gt_sat_uv_grd.dtype)
        missing = torch.zeros_like(valid)
        corners = ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)))
        corners += ((0, 1, (1 - fu) * fv), (1, 1, fu * fv))
        for dc, dr, weight in corners:
            value = at(c + dc, r + dr)
            used = weight > 0  # a neighbour with zero weight may lack GT
            missing |= used & ~torch.isfinite(value).all(-1)
            gt = gt + torch.where(used[..., None], value * weight[..., None], 0.0)
        gt = torch.where(missing[..., None], gt.new_tensor(math.nan), gt)
    return torch.where(valid[..., None], gt, gt.new_tensor(math.nan))


def match_gt_sat_uv(
    pred: dict[str, Any], batch: dict[str, Any], heights_m: torch.Tensor | None = None
) -> torch.Tensor:
    """The GT satellite pixel of every match: its source lifted to the ground image.

    Args:
        pred: ``match_src_uv`` (B, N, 2), BEV cells placed with the prior pose.
        batch: the batch, with ``gt_sat_uv_grd`` (B, Hg, Wg, 2).
        heights_m: (B, N) height of each source's content (None = flat ground).

    Returns:
        (B, N, 2) GT satellite pixels, NaN where the source's ground pixel has none.
    """
    camera_model = one_camera_model(batch["camera_model"])
    ground = batch["ground"]
    ground_uv, valid = lift_matches_to_ground(
        pred["match_src_uv"],
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_height_m"],
        camera_model,
        (ground.shape[-1], ground.shape[-2]),
        batch["K"],
        heights_m,
    )
    panorama = camera_model == "panorama"
    return gt_at_ground_pixels(batch["gt_sat_uv_grd"], ground_uv, valid, panorama=panorama)


def batch_match_precision(
    pred: dict[str, Any], batch: dict[str, Any], heights_m: torch.Tensor | None = None
) -> list[dict[str, float | int]]:
    """CVFM-style precision of each sample's matches (:func:`cvloc.metrics.match_precision`).

    Args:
        pred: ``match_src_uv`` / ``match_dst_uv`` (B, N, 2) (BEV cell placed with the prior
            pose -> matched satellite pixel) and ``match_weight`` (B, N), the score.
        batch: the batch, with ``gt_sat_uv_grd`` (B, Hg, Wg, 2).
        heights_m: (B, N) height of each source's content (None = flat ground).

    Returns:
        One :func:`cvloc.metrics.match_precision` dict per sample.
    """
    gt = match_gt_sat_uv(pred, batch, heights_m)
    dst, weight = pred["match_dst_uv"], pred["match_weight"]
    return [match_precision(dst[b], gt[b], weight[b]) for b in range(len(gt))]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device`` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
