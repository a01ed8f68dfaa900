"""What every localizer reads from a batch, checked once for all methods.

DenseFlow and the fine-grained matcher consume the same keys of the batch schema
(:mod:`cvloc.data.batch`): images, camera, satellite geo-reference and the prior pose;
never a ground-truth key.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from cvloc.data.batch import one_camera_model
from cvloc.geometry.bev import bev_from_prior
from cvloc.geometry.checks import ShapeError, check_shape
from cvloc.models.encoders import OUTPUT_STRIDE, OUTPUT_STRIDES

LOCALIZER_INPUT_KEYS: tuple[str, ...] = (
    "ground",
    "satellite",
    "camera_model",
    "K",
    "camera_height_m",
    "m_per_px",
    "sat_center_uv",
    "camera_uv_prior",
    "yaw_deg_prior",
)


def check_batch(
    batch: dict[str, Any], required_keys: tuple[str, ...], model: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground and satellite images of a batch, checked.

    Args:
        batch: the batch dict.
        required_keys: keys that must be present.
        model: the model's name, for the error message.

    Returns:
        ground (B, 3, Hg, Wg) and satellite (B, 3, Hs, Ws).

    Raises:
        KeyError: required keys are missing.
        ShapeError: an image has the wrong shape or a size not divisible by the stride.
    """
    missing = [k for k in required_keys if k not in batch]
    if missing:
        raise KeyError(f"{model}: batch misses keys {missing} (needs {required_keys})")
    ground, satellite = batch["ground"], batch["satellite"]
    check_shape(ground, ["B", 3, "Hg", "Wg"], "ground")
    check_shape(satellite, [ground.shape[0], 3, "Hs", "Ws"], "satellite")
    for name, image in (("ground", ground), ("satellite", satellite)):
        if image.shape[-2] % OUTPUT_STRIDE or image.shape[-1] % OUTPUT_STRIDE:
            raise ShapeError(
                f"{name}: height and width must be divisible by {OUTPUT_STRIDE}, "
                f"got {tuple(image.shape[-2:])}"
            )
    return ground, satellite


def cuda_autocast(
    enabled: bool, dtype_name: str, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """Autocast for the networks on CUDA when mixed precision is on; a no-op elsewhere.

    Args:
        enabled: the model config's ``mixed_precision``.
        dtype_name: ``"bfloat16"`` or ``"float16"``.
        device: the device the batch is on.

    Returns:
        The context manager.
    """
    if not (enabled and device.type == "cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype_name))


def bev_at_prior(
    features: torch.Tensor,
    batch: dict[str, Any],
    grid_hw: tuple[int, int],
    heights_m: torch.Tensor | None = None,
    samples_per_cell: int = 1,
    feature_offset_px: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground features on the satellite feature grid of a batch, the camera at its prior.

    :func:`cvloc.geometry.bev.bev_from_prior` with the camera, geo-reference and prior
    read from the batch.

    Convention: as :func:`cvloc.geometry.bev.bev_from_prior`; the grid has one cell per
    ``Ws / W`` satellite pixels (the encoders' stride).

    Args:
        features: (B, C, h, w) ground feature map covering the whole ground image.
        batch: the batch (``ground``, ``camera_model``, ``K``, ``sat_center_uv``,
            ``m_per_px``, ``camera_uv_prior``, ``yaw_deg_prior``, ``camera_height_m``).
        grid_hw: (H, W) of the satellite feature grid.
        heights_m: optional (Z,) heights above ground to lift at (a volume).
        samples_per_cell: points averaged per cell along each axis.
        feature_offset_px: offset of the feature cells from the pixel-centre convention,
            ground pixels (:func:`cvloc.geometry.bev.warp_to_bev`).

    Returns:
        bev (B, C, H, W) or (B, C, Z, H, W), and validity (B, H, W) or (B, Z, H, W).
    """
    camera_model = one_camera_model(batch["camera_model"])
    ground = batch["ground"]
    return bev_from_prior(
        features,
        batch["K"] if camera_model == "pinhole" else None,
        camera_model,
        (ground.shape[-1], ground.shape[-2]),
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_height_m"],
        grid_hw,
        batch["satellite"].shape[-1] / grid_hw[1],
        heights_m=heights_m,
        samples_per_cell=samples_per_cell,
        feature_offset_px=feature_offset_px,
    )


def ground_sampling(stride: int, ground_stride: int | None, bev_samples: int) -> tuple[int, float]:
    """Check a model's ground projection options; the ground encoders' stride and offset.

    A ground map denser than the satellite grid (``ground_stride`` < ``stride``, the same
    weights dilated) is read with the offset that weights trained at ``stride`` learned:
    a ResNet's cell j is centred on image pixel ``s j``, the pixel-centre convention of
    :func:`cvloc.geometry.bev.warp_to_bev` puts it at ``s (j + 0.5) - 0.5``, so they absorbed
    (stride - 1) / 2 pixels, and the denser map is read (stride - ground_stride) / 2 pixels
    further on.

    Args:
        stride: the satellite grid's stride (8 or 4).
        ground_stride: the ground encoders' stride, at most ``stride``; None: ``stride``.
        bev_samples: points averaged per BEV cell along each axis, >= 1.

    Returns:
        (ground encoders' stride, ``feature_offset_px`` to read them with).

    Raises:
        ValueError: a bad ``ground_stride`` or ``bev_samples``.
    """
    if ground_stride is None:
        ground_stride = stride
    if ground_stride not in OUTPUT_STRIDES or ground_stride > stride:
        raise ValueError(
            f"ground_stride must be one of {OUTPUT_STRIDES} and at most stride {stride}, "
            f"got {ground_stride}"
        )
    if bev_samples < 1:
        raise ValueError(f"bev_samples must be >= 1, got {bev_samples}")
    return ground_stride, (stride - ground_stride) / 2


def known_heading(batch: dict[str, Any]) -> torch.Tensor | None:
    """Which samples' prior heading is exact: a prior ``yaw_range_deg`` of 0.

    Convention: ``yaw_range_deg`` is the half-width of the prior's heading noise
    (:mod:`cvloc.data.batch`); 0 declares a known heading (VIGOR "aligned", Oxford), which
    the pose heads then keep (:func:`cvloc.geometry.procrustes.weighted_procrustes_2d`
    with ``fixed_rotation``).

    Args:
        batch: a batch; without ``yaw_range_deg`` every heading is treated as unknown.

    Returns:
        (B,) bool, or None.
    """
    yaw_range = batch.get("yaw_range_deg")
    return None if yaw_range is None else yaw_range <= 0
