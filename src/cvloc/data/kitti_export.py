"""Export synthetic pinhole pairs in the KITTI (HighlyAccurate) layout.

``export_kitti(pairs, root)`` writes, per pair, ``image_02`` (the synthetic ground image,
unresampled), an oxts record, ``calib_cam_to_cam.txt`` and a satellite tile, plus the split
file, so that :class:`cvloc.data.kitti.KittiDataset` (and the HighlyAccurate-family code)
reads the synthetic benchmark like KITTI:

- ``P_rect_02`` is the synthetic K at the synthetic image size, so the loader's
  pixel-centre rescaling to ``ground_size`` = the synthetic size returns K exactly.
- The KITTI tile is centred on the GPS (camera - 1.08 m forward - 0.26 m right) while the
  synthetic tile is centred on the prior, so the tile is **re-rendered** from the pair's
  scene (rebuilt from the generator seeds in its meta) at the GPS. Resampling the saved
  tile would need up to 29 m of content outside it and blur it; the re-render is exact.
- The split line's noise (u, v, theta) is :func:`cvloc.data.kitti.to_protocol` of the
  pair's GT relative to its prior, scaled by the pair's ``shift_range_m`` and
  ``yaw_range_deg``: the loader (with those ranges) reproduces the synthetic prior.
  Training pairs get name-only lines (the loader draws training noise itself).
- oxts: latitude 49.015, longitude 8.43 + 0.001 deg per frame index (each scene is an
  independent world; the loaders never read the fix, the tile is centred on it by
  construction); yaw = radians(90 - yaw_deg).

The m/px of the presets (0.19583 at 512 px) equals the loader's 0.195829 to 5e-6
(0.1 mm over the 29 m prior range). ``cvloc_export.json`` records the loader options.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cvloc.data.kitti import (
    CAMERA_HEIGHT_M,
    KITTI_M_PER_PX,
    SAT_SIZE_PX,
    camera_offset_xy,
    read_p_rect_02,
    to_protocol,
)
from cvloc.data.synthetic.generate import SynthPair
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.presets import get_preset
from cvloc.data.synthetic.render import render_satellite
from cvloc.data.synthetic.world import build_world
from cvloc.geometry.geo import pixel_to_world_xy

SPLIT_FILE_OF = {
    ("train", "same"): "train_files.txt",
    ("train", "cross"): "train_files.txt",
    ("val", "same"): "val_files.txt",
    ("val", "cross"): "val_files.txt",
    ("test", "same"): "test1_files.txt",
    ("test", "cross"): "test2_files.txt",
}
GEO_ORIGIN = (49.015, 8.43)
LON_STEP_DEG = 0.001


def export_kitti(
    pairs: Iterable[SynthPair],
    root: str | os.PathLike,
    date: str = "2000_01_01",
    drive: int | None = None,
) -> list[Path]:
    """Write synthetic pinhole pairs as a KITTI tree under ``root``.

    Args:
        pairs: pairs from :func:`cvloc.data.synthetic.generate_pair` of a pinhole preset
            with the KITTI prior protocol (``kitti``, ``kitti-small``), camera 1.65 m high.
        root: the KITTI root to write (``raw_data/``, ``satmap/``, split files).
        date: the ``<date>`` folder (``YYYY_MM_DD``; 2000 marks synthetic data).
        drive: the drive number (4 digits); default 1 + 2 x split index + (area == cross),
            so train / val / test and both areas of one seed never collide.

    Returns:
        The split files written (train / val / test1 / test2 by the pairs' split and area),
        merged by frame name with lines already there, so exports in chunks compose.

    Raises:
        ValueError: a pair is not a KITTI-like pinhole pair, or ``root`` already has a
            different ``calib_cam_to_cam.txt`` for ``date``.
    """
    root = Path(root)
    lines: dict[Path, list[str]] = {}
    options: dict[str, float | list[int]] = {}
    for pair in pairs:
        meta = pair.meta
        _check_pair(meta)
        split, area = meta["split"], meta["area"]
        d = drive if drive is not None else 1 + 2 * ("train", "val", "test").index(split)
        d += 0 if drive is not None else int(area == "cross")
        name = f"{date}/{date}_drive_{d:04d}_sync/{meta['index']:010d}.png"
        _write_frame(root, name, pair)
        line = name
        if split != "train":
            line += " " + " ".join(f"{x:.9f}" for x in _noise(meta))
        lines.setdefault(root / SPLIT_FILE_OF[split, area], []).append(line)
        options = {
            "ground_size": list(meta["ground_size"]),
            "shift_range_m": float(meta["shift_range_m"]),
            "yaw_range_deg": float(meta["yaw_range_deg"]),
        }
    for path, rows in lines.items():
        # Merge with an existing file (by frame name) so that chunked exports compose.
        old = path.read_text().splitlines() if path.is_file() else []
        merged = {row.split()[0]: row for row in [*old, *rows] if row.strip()}
        path.write_text("\n".join(merged[name] for name in sorted(merged)) + "\n")
    if options:
        (root / "cvloc_export.json").write_text(json.dumps({"KittiDataset": options}, indent=1))
    return sorted(lines)


def _check_pair(meta: dict) -> None:
    """Reject pairs the KITTI layout cannot represent exactly."""
    ws, hs = meta["sat_size"]
    problems = []
    if meta["camera_model"] != "pinhole":
        problems.append(f"camera_model {meta['camera_model']!r} (KITTI is pinhole)")
    if abs(meta["camera_height_m"] - CAMERA_HEIGHT_M) > 1e-6:
        problems.append(f"camera height {meta['camera_height_m']} m (KITTI: {CAMERA_HEIGHT_M})")
    if ws != hs or abs(meta["m_per_px"] * ws / (KITTI_M_PER_PX * SAT_SIZE_PX) - 1) > 1e-4:
        problems.append(f"satellite {ws}x{hs} at {meta['m_per_px']} m/px (KITTI: ~100 m square)")
    if not all(k in meta for k in ("preset", "split", "area", "seed", "index")):
        problems.append("no generator identity (preset, split, area, seed, index) in meta")
    if problems:
        raise ValueError(f"{meta.get('name', 'pair')}: cannot export to KITTI: {problems}")


def _noise(meta: dict) -> np.ndarray:
    """The split line's (u, v, theta): the pair's GT relative to its prior."""
    yaw_range = meta["yaw_range_deg"] or 1.0  # no heading noise: theta is 0 whatever the unit
    return to_protocol(
        _world_xy(meta, meta["camera_uv"]),
        meta["yaw_deg"],
        _world_xy(meta, meta["prior"]["camera_uv"]),
        meta["prior"]["yaw_deg"],
        meta["yaw_deg"],
        meta["shift_range_m"],
        yaw_range,
    )


def _write_frame(root: Path, name: str, pair: SynthPair) -> None:
    """image_02, oxts, calib and the GPS-centred tile of one pair."""
    meta = pair.meta
    date, drive, frame = name.split("/")
    raw = root / "raw_data" / date
    image = raw / drive / "image_02" / "data" / frame
    oxts = raw / drive / "oxts" / "data" / frame.replace(".png", ".txt")
    for path in (image, oxts, root / "satmap" / name):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_calib(raw / "calib_cam_to_cam.txt", np.array(meta["K"]), meta["ground_size"])
    Image.fromarray(pair.ground).save(image)
    yaw_rad = math.remainder(math.radians(90.0 - meta["yaw_deg"]), 2 * math.pi)
    lon = GEO_ORIGIN[1] + LON_STEP_DEG * meta["index"]
    oxts.write_text(f"{GEO_ORIGIN[0]:.9f} {lon:.9f} 0 0 0 {yaw_rad!r}" + " 0" * 24 + "\n")
    gps_xy = _world_xy(meta, meta["camera_uv"]) - camera_offset_xy(meta["yaw_deg"])
    Image.fromarray(rerender_satellite(meta, gps_xy)).save(root / "satmap" / name)


def rerender_satellite(meta: dict, center_xy: np.ndarray) -> np.ndarray:
    """Re-render a synthetic pair's satellite tile centred elsewhere, from its scene.

    The scene is rebuilt from the generator identity in ``meta`` (preset, split, area,
    seed, index), so ``center_xy = (0, 0)`` reproduces the pair's own tile exactly.

    Convention: ``center_xy`` is in the pair's world frame (metres, x east, y north, origin
    at the pair's ``sat_center_uv``, i.e. its prior); size and m/px are the preset's.

    Args:
        meta: the pair's ``meta``.
        center_xy: (2,) the new tile centre.

    Returns:
        (Hs, Ws, 3) uint8 tile.
    """
    preset = get_preset(meta["preset"])
    seed = stable_seed("scene", meta["seed"], meta["split"], meta["area"], meta["index"])
    world = build_world(seed, meta["area"], preset)
    prior_scene_xy = world.camera.xy - _world_xy(meta, meta["camera_uv"])
    tile, _ = render_satellite(world, prior_scene_xy + np.asarray(center_xy), preset)
    return tile


def _world_xy(meta: dict, uv: list[float]) -> np.ndarray:
    """(2,) world position (pair frame) of a satellite pixel of the pair."""
    center = torch.tensor(meta["sat_center_uv"], dtype=torch.float64)
    uv_t = torch.tensor(uv, dtype=torch.float64)
    return pixel_to_world_xy(uv_t, center, meta["m_per_px"]).numpy()


def _write_calib(path: Path, K: np.ndarray, size_wh: list[int]) -> None:
    """Write (or check) the date's calib file: P_rect_02 = [K | 0], S_rect_02 = size."""
    if path.is_file():
        if not np.allclose(read_p_rect_02(path), K, rtol=1e-9, atol=1e-9):
            raise ValueError(f"{path}: has another P_rect_02; export to another date or root")
        return
    P = np.hstack([K, np.zeros((3, 1))])
    path.write_text(
        "calib_time: synthetic (cvloc)\n"
        f"S_rect_02: {size_wh[0]:.6e} {size_wh[1]:.6e}\n"
        "R_rect_02: 1 0 0 0 1 0 0 0 1\n"
        "P_rect_02: " + " ".join(f"{x:.12e}" for x in P.ravel()) + "\n"
    )
