"""Tiny fake benchmark trees in the exact on-disk layouts, for the loader tests.

Images are small generated pictures; names, offsets and noise come from the callers
(often REAL lines of ../shared/datasets). Nothing here is real imagery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# KITTI 2011_09_26 P_rect_02 (public calibration values, as in the KITTI devkit).
KITTI_P_RECT_02 = (
    "7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 "
    "1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03"
)
FORD_K = [945.391406, 0.0, 855.502825, 0.0, 945.668274, 566.372868, 0.0, 0.0, 1.0]


def write_image(path: Path, size_wh: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random picture (compresses well) of a size, as PNG or JPEG by suffix."""
    rng = np.random.default_rng(seed)
    w, h = size_wh
    small = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **({"compress_level": 1} if path.suffix == ".png" else {}))
    return path


def make_kitti(
    root: Path,
    lines: Sequence[str],
    yaw_rad: float | Sequence[float] = 0.3,
    split_file: str = "test1_files.txt",
    image_size: tuple[int, int] = (124, 38),
    sat_size: int = 64,
) -> Path:
    """A KITTI tree (HighlyAccurate layout) for split ``lines`` ('name [u v theta]')."""
    yaws = [yaw_rad] * len(lines) if isinstance(yaw_rad, float | int) else list(yaw_rad)
    for i, line in enumerate(lines):
        name = line.split()[0]
        date, drive, frame = name.split("/")
        raw = root / "raw_data" / date
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "calib_cam_to_cam.txt").write_text(
            f"calib_time: 09-Jan-2012 13:57:47\nS_rect_02: 1.242000e+03 3.750000e+02\n"
            f"P_rect_02: {KITTI_P_RECT_02}\n"
        )
        write_image(raw / drive / "image_02" / "data" / frame, image_size, seed=i)
        oxts = raw / drive / "oxts" / "data" / frame.replace(".png", ".txt")
        oxts.parent.mkdir(parents=True, exist_ok=True)
        oxts.write_text(f"49.015 8.43 112.9 0.01 -0.02 {yaws[i]!r}" + " 0" * 24 + "\n")
        write_image(root / "satmap" / name, (sat_size, sat_size), seed=100 + i)
    (root / split_file).write_text("\n".join(lines) + "\n")
    return root


def make_ford(
    root: Path,
    log: str,
    lines: Sequence[Sequence[object]],
    test: bool,
    t_body_cam: Sequence[float] = (1.5, -0.3, -0.6),
    image_size: tuple[int, int] = (83, 43),
    sat_size: int = 64,
) -> Path:
    """A Ford tree: one log's pose file plus images, tiles and the calibration yaml."""
    log_dir = root / log
    rows = [" ".join(str(v) for v in fields) for fields in lines]
    name = "grd_sat_quaternion_latlon" + ("_test" if test else "")
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{name}.txt").write_text("\n".join(rows) + "\n")
    for i, fields in enumerate(lines):
        frame = str(fields[0]).replace(".txt", ".png")
        write_image(log_dir / f"{log.replace('/', '-')}-FL" / frame, image_size, seed=i)
        tile = log_dir / "SatelliteMaps_18" / f"{fields[7]}_{fields[8]}.png"
        write_image(tile, (sat_size, sat_size), seed=50 + i)
    calib = root / "Calibration-V2" / "V2"
    calib.mkdir(parents=True, exist_ok=True)
    # An ideal forward-looking camera: camera z -> body x, x -> body y, y -> body z.
    # Quaternion (w, x, y, z) of that rotation: 0.5 * (1, 1, 1, 1).
    tf = {
        "translation": dict(zip("xyz", t_body_cam, strict=True)),
        "rotation": {"x": 0.5, "y": 0.5, "z": 0.5, "w": 0.5},
    }
    (calib / "cameraFrontLeft_body.yaml").write_text(json.dumps({"transform": tf}))
    (calib / "cameraFrontLeftIntrinsics.yaml").write_text(json.dumps({"K": FORD_K}))
    return root


def make_vigor(
    root: Path,
    city: str,
    label_lines: Sequence[str],
    label_name: str,
    pano_size: tuple[int, int] = (64, 32),
    tile_size: int = 40,
) -> Path:
    """A VIGOR tree: one city's label file, its panoramas (JPEG) and tiles (PNG)."""
    labels = root / "splits__corrected" / city
    labels.mkdir(parents=True, exist_ok=True)
    with (labels / label_name).open("a") as f:
        f.write("\n".join(label_lines) + "\n")
    for i, line in enumerate(label_lines):
        fields = line.split()
        write_image(root / city / "panorama" / fields[0], pano_size, seed=i)
        for tile in fields[1::3]:
            path = root / city / "satellite" / tile
            if not path.exists():
                write_image(path, (tile_size, tile_size), seed=200 + i)
    return root


def make_oxford(
    root: Path,
    lines: Sequence[str],
    yaws: Sequence[float],
    split: str = "test1",
    map_image: Image.Image | None = None,
    image_size: tuple[int, int] = (60, 40),
) -> Path:
    """An Oxford tree: a split file, its ``<split>_yaw.txt``, ground images and a map.

    The default map (1500 x 1500 px) covers UTM easting ~619317-619456 and northing
    ~5736140-5736278 (the protocol's control point (900, 900) px is 619400, 5736195).
    """
    from cvloc.data.oxford import SPLIT_FILES

    root.mkdir(parents=True, exist_ok=True)
    (root / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n")
    (root / f"{split}_yaw.txt").write_text("\n".join(repr(float(y)) for y in yaws) + "\n")
    for i, line in enumerate(lines):
        write_image(root / line.split()[0], image_size, seed=i)
    if map_image is None:
        write_image(root / "satellite_map_new.png", (1500, 1500), seed=7)
    else:
        map_image.save(root / "satellite_map_new.png", compress_level=1)
    return root
