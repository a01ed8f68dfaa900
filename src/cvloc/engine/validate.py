"""Validation: localization metrics and loss on the validation split, over all ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cvloc.config import TrainConfig
from cvloc.data.batch import camera_xy
from cvloc.engine.data import to_device
from cvloc.engine.distributed import DistInfo, broadcast_buffers, gather_objects
from cvloc.metrics import localization_metrics

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    cfg: TrainConfig,
    epoch: int,
    info: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    forward_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the model on this rank's validation shard and pool the results of all ranks.

    Args:
        model: the unwrapped model (left in training mode afterwards).
        loader: this rank's validation loader.
        loss_fn: the training loss, ``(pred, batch, cfg, epoch) -> (total, parts)``.
        cfg: the training section (loss weights).
        epoch: the current epoch (selects beta and kappa).
        info: this process's place in the job.
        autocast: returns the precision context of the forward pass.
        forward_kwargs: extra keyword arguments of the model's forward (as in training).

    Returns:
        :func:`cvloc.metrics.localization_metrics` output plus ``loss`` (the mean over
        validation pairs).
    """
    broadcast_buffers(model, info)
    model.eval()
    rows: list[tuple[np.ndarray, ...]] = []
    for batch in loader:
        batch = to_device(batch, info.device)
        with autocast():
            pred = model(batch, **(forward_kwargs or {}))
        _, parts = loss_fn(pred, batch, cfg, epoch)
        n = batch["ground"].shape[0]
        values = (
            pred["camera_xy_pred"],
            camera_xy(batch, "gt"),
            pred["yaw_deg_pred"],
            batch["yaw_deg_gt"],
            parts["loss"].expand(n),
        )
        rows.append(tuple(v.detach().double().cpu().numpy() for v in values))
    model.train()
    shards = [row for shard in gather_objects(rows, info) for row in shard]
    pred_xy, gt_xy, pred_yaw, gt_yaw, losses = (
        np.concatenate(column) for column in zip(*shards, strict=True)
    )
    metrics: dict[str, Any] = localization_metrics(pred_xy, gt_xy, pred_yaw, gt_yaw)
    metrics["loss"] = float(np.mean(losses))
    return metrics
