"""The one batch schema shared by the synthetic world and every real-dataset loader.

A dataset item is a dict with the keys below (tensors without the batch dimension);
``collate`` stacks them into a batch (B leading). Models, losses and metrics read only
these keys. Frames and units follow ``docs/conventions.md``: satellite images north-up,
pixel (u, v) = (column east, row south) with integer pixel centres; the metric world
frame x east, y north, z up has its origin at ``sat_center_uv``; yaw is the compass
heading of the optical axis in degrees, clockwise from north, in (-180, 180].

Required keys (shape per item; dtype float32 unless noted):

- ``name`` (str): a unique sample id (dataset-relative path or index).
- ``ground`` (3, Hg, Wg): RGB ground image in [0, 1].
- ``satellite`` (3, Hs, Ws): RGB north-up satellite image in [0, 1].
- ``camera_model`` (str): ``"pinhole"`` or ``"panorama"``.
- ``K`` (3, 3): pinhole intrinsics in the pixels of ``ground``; all zeros for panoramas.
- ``world_to_cam`` (4, 4): ground-truth extrinsics, ``X_cam = world_to_cam @ X_world``.
- ``camera_height_m`` (): camera centre height above the ground plane.
- ``m_per_px`` (): satellite resolution in metres per pixel of ``satellite``.
- ``sat_center_uv`` (2,): satellite pixel of the world origin.
- ``camera_uv_gt`` (2,), ``yaw_deg_gt`` (): ground-truth 3-DoF pose.
- ``camera_uv_prior`` (2,), ``yaw_deg_prior`` (): the noisy initial pose a method starts from.
- ``shift_range_m`` (): half-width of the prior's position noise (per axis, metres).
- ``yaw_range_deg`` (): half-width of the prior's heading noise (180 = unknown heading).

Optional keys (present only where a dataset has them):

- ``sat_height_m`` (Hs, Ws): surface height above ground of every satellite pixel.
- ``gt_sat_uv_grd`` (Hg, Wg, 2): for every ground pixel, the satellite pixel of the same
  3-D surface point if that point is visible from above, else NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cvloc.geometry.geo import pixel_to_world_xy

REQUIRED_KEYS: tuple[str, ...] = (
    "name",
    "ground",
    "satellite",
    "camera_model",
    "K",
    "world_to_cam",
    "camera_height_m",
    "m_per_px",
    "sat_center_uv",
    "camera_uv_gt",
    "yaw_deg_gt",
    "camera_uv_prior",
    "yaw_deg_prior",
    "shift_range_m",
    "yaw_range_deg",
)
OPTIONAL_KEYS: tuple[str, ...] = ("sat_height_m", "gt_sat_uv_grd")
CAMERA_MODELS: tuple[str, ...] = ("pinhole", "panorama")


def check_item(item: dict[str, Any], source: str = "item") -> None:
    """Validate one dataset item against the schema.

    Args:
        item: a dict produced by a dataset.
        source: where the item came from (a path), for the error message.

    Raises:
        KeyError: a required key is missing.
        ValueError: a key has the wrong shape or value.
    """
    missing = [k for k in REQUIRED_KEYS if k not in item]
    if missing:
        raise KeyError(f"{source}: missing batch keys {missing}")
    if item["camera_model"] not in CAMERA_MODELS:
        raise ValueError(f"{source}: camera_model must be one of {CAMERA_MODELS}")
    for key, ndim in (("ground", 3), ("satellite", 3)):
        t = item[key]
        if t.dim() != ndim or t.shape[0] != 3:
            raise ValueError(f"{source}: {key} must be (3, H, W), got {tuple(t.shape)}")
    if item["camera_model"] == "panorama":
        h, w = item["ground"].shape[-2:]
        if w != 2 * h:
            raise ValueError(f"{source}: a panorama must have W = 2 H, got {w}x{h}")


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch: tensors gain a leading B, strings become lists.

    Args:
        items: B items with the same keys and shapes.

    Returns:
        The batch dict.
    """
    keys = items[0].keys()
    batch: dict[str, Any] = {}
    for k in keys:
        values = [it[k] for it in items]
        batch[k] = torch.stack(values) if isinstance(values[0], torch.Tensor) else list(values)
    return batch


def one_camera_model(value: str | Sequence[str]) -> str:
    """The one camera model of a batch (``collate`` makes a list of strings).

    Args:
        value: a batch's ``camera_model``: a model name, or one per sample.

    Returns:
        ``"pinhole"`` or ``"panorama"``.

    Raises:
        ValueError: the batch mixes camera models.
    """
    models = {value} if isinstance(value, str) else set(value)
    if len(models) != 1:
        raise ValueError(f"camera_model: one model per batch, got {sorted(models)}")
    return models.pop()


def camera_xy(batch: dict[str, Any], role: str) -> torch.Tensor:
    """Metric world position of the camera for ``role`` in {"gt", "prior"}.

    Args:
        batch: a batch (or item) dict.
        role: ``"gt"`` or ``"prior"``.

    Returns:
        (B, 2) metres (or (2,) for an item).
    """
    return pixel_to_world_xy(batch[f"camera_uv_{role}"], batch["sat_center_uv"], batch["m_per_px"])
