"""The ``cvloc-pairs/1`` on-disk format: writer, reader and the pair -> item conversion.

Layout (``design.md``, "On-disk pair format")::

    DIR/dataset.json                    {"format": "cvloc-pairs/1", "preset", "split", ...}
    DIR/samples/000000/ground.png       RGB
    DIR/samples/000000/satellite.png    RGB, north-up
    DIR/samples/000000/meta.json        camera, poses, geo-referencing (see META_KEYS)
    DIR/samples/000000/correspondences.npz
        ground_uv (N, 2), sat_uv (N, 2), height_m (N,) [+ sat_height_m (Hs, Ws)], float32

Every file is written to a temporary name in its final directory and moved into place with
``os.replace``, so an interrupted run leaves whole files or none. A writer puts
``dataset.json`` last: a directory without it is an unfinished run, and
:class:`PairsDataset` refuses it.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cvloc.data.batch import CAMERA_MODELS, check_item

FORMAT = "cvloc-pairs/1"
GROUND_PNG = "ground.png"
SATELLITE_PNG = "satellite.png"
META_JSON = "meta.json"
CORRESPONDENCES_NPZ = "correspondences.npz"
SAMPLE_FILES: tuple[str, ...] = (GROUND_PNG, SATELLITE_PNG, META_JSON, CORRESPONDENCES_NPZ)
META_KEYS: tuple[str, ...] = (
    "camera_model",
    "world_to_cam",
    "m_per_px",
    "sat_center_uv",
    "camera_uv",
    "yaw_deg",
    "camera_height_m",
    "prior",
    "ground_size",
    "sat_size",
)
# Optional meta.json keys with the value used when a producer omits them. The synthetic
# generator always writes them; for other producers 0.0 means "no prior noise is declared":
# the prior is taken as given and a method searching around it uses its own configured range.
META_DEFAULTS: dict[str, float] = {"shift_range_m": 0.0, "yaw_range_deg": 0.0}
# PNG zlib level: 1 encodes a 512 x 128 + 256 x 256 pair in 35 ms instead of 87 ms at the
# default 6, for files 10 % larger; the images are noisy renders that compress poorly anyway.
PNG_COMPRESS_LEVEL = 1


class PairsFormatError(ValueError):
    """A ``cvloc-pairs/1`` file exists but its content does not follow the format."""


def write_pair(
    sample_dir: str | os.PathLike,
    ground_rgb: np.ndarray,
    satellite_rgb: np.ndarray,
    meta: dict[str, Any],
    ground_uv: np.ndarray,
    sat_uv: np.ndarray,
    height_m: np.ndarray,
    sat_height_m: np.ndarray | None = None,
) -> Path:
    """Write one pair as a ``cvloc-pairs/1`` sample directory.

    Each file is written to a temporary file beside it and moved into place atomically.

    Args:
        sample_dir: the sample directory (created if missing), e.g. ``DIR/samples/000000``.
        ground_rgb: (Hg, Wg, 3) uint8 RGB ground image.
        satellite_rgb: (Hs, Ws, 3) uint8 RGB north-up satellite image.
        meta: the ``meta.json`` content (keys in :data:`META_KEYS`; extra keys allowed).
            NumPy scalars and arrays are converted to plain JSON numbers and lists.
        ground_uv: (N, 2) ground pixels with a correspondence.
        sat_uv: (N, 2) their satellite pixels.
        height_m: (N,) height above ground of each 3-D point.
        sat_height_m: (Hs, Ws) surface height of every satellite pixel, or None.

    Returns:
        The sample directory.

    Raises:
        ValueError: an array has the wrong shape or dtype, ``meta`` lacks keys or
            disagrees with the images, or holds NaN / infinity (not plain JSON).
    """
    sample_dir = Path(sample_dir)
    # Everything is checked before the first file is written: the reader accepts the result.
    _check_image(ground_rgb, "ground_rgb")
    _check_image(satellite_rgb, "satellite_rgb")
    _check_meta(meta, ground_rgb, satellite_rgb, "write_pair")
    arrays = _correspondence_arrays(
        ground_uv, sat_uv, height_m, sat_height_m, satellite_rgb, "write_pair"
    )
    text = _to_json(meta)
    sample_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(sample_dir / GROUND_PNG, lambda f: _save_png(f, ground_rgb))
    _atomic_write(sample_dir / SATELLITE_PNG, lambda f: _save_png(f, satellite_rgb))
    _atomic_write(sample_dir / CORRESPONDENCES_NPZ, lambda f: np.savez_compressed(f, **arrays))
    _atomic_write(sample_dir / META_JSON, lambda f: f.write(text.encode()))
    return sample_dir


def write_dataset_json(
    root: str | os.PathLike, preset: str, split: str, seed: int, num: int, **extra: Any
) -> Path:
    """Write ``DIR/dataset.json``; call it after the last sample so it marks a finished run.

    Args:
        root: the dataset directory.
        preset: name of the generator preset (or of the source dataset).
        split: the split name.
        seed: the generation seed.
        num: the number of samples in ``DIR/samples``.
        **extra: further JSON-ready keys (e.g. ``area``, ``start``).

    Returns:
        The path of ``dataset.json``.
    """
    info = {"format": FORMAT, "preset": preset, "split": split, "seed": seed, "num": num}
    info.update(extra)
    path = Path(root) / "dataset.json"
    text = _to_json(info)
    _atomic_write(path, lambda f: f.write(text.encode()))
    return path


def pair_to_item(
    ground_rgb: np.ndarray,
    satellite_rgb: np.ndarray,
    meta: dict[str, Any],
    ground_uv: np.ndarray,
    sat_uv: np.ndarray,
    height_m: np.ndarray,
    sat_height_m: np.ndarray | None = None,
    name: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Convert one pair to a dataset item of the :mod:`cvloc.data.batch` schema.

    Used by :class:`PairsDataset` and by the on-the-fly synthetic dataset, so a pair gives
    the same item whether it went through disk or not (PNG is lossless for uint8).

    Convention: ``gt_sat_uv_grd[v, u]`` holds the satellite pixel of ground pixel (u, v);
    ground pixels are rounded to the nearest pixel centre, and pixels without a
    correspondence are NaN. ``height_m`` is not part of the item (the schema has no
    per-correspondence key); ``sat_height_m`` carries the surface heights.

    Args:
        ground_rgb: (Hg, Wg, 3) uint8 RGB.
        satellite_rgb: (Hs, Ws, 3) uint8 RGB, north-up.
        meta: ``meta.json`` content (keys in :data:`META_KEYS`, plus optional
            ``shift_range_m``, ``yaw_range_deg`` defaulting to :data:`META_DEFAULTS`).
        ground_uv: (N, 2) ground pixel centres with a correspondence.
        sat_uv: (N, 2) their satellite pixels.
        height_m: (N,) heights of the 3-D points (validated, not returned).
        sat_height_m: (Hs, Ws) surface height per satellite pixel, or None.
        name: the item's ``name``; defaults to ``meta["name"]``.
        source: where the pair comes from (a sample directory), for error messages;
            defaults to ``name``.

    Returns:
        The item dict: images (3, H, W) float32 in [0, 1], ``K`` (3, 3) (zeros for
        panoramas), poses, ranges, ``gt_sat_uv_grd`` (Hg, Wg, 2) and, when given,
        ``sat_height_m`` (Hs, Ws).

    Raises:
        PairsFormatError: ``meta`` lacks keys or disagrees with the images or arrays.
    """
    name = str(meta.get("name", "")) if name is None else name
    source = source or name or "pair"
    _check_meta(meta, ground_rgb, satellite_rgb, source)
    corr_source = f"{source}: {CORRESPONDENCES_NPZ}"
    arrays = _correspondence_arrays(
        ground_uv, sat_uv, height_m, sat_height_m, satellite_rgb, corr_source
    )
    pinhole = meta["camera_model"] == "pinhole"
    item: dict[str, Any] = {
        "name": name,
        "ground": _image_tensor(ground_rgb),
        "satellite": _image_tensor(satellite_rgb),
        "camera_model": meta["camera_model"],
        "K": _tensor(meta["K"]) if pinhole else torch.zeros(3, 3),
        "world_to_cam": _tensor(meta["world_to_cam"]),
        "camera_height_m": _tensor(meta["camera_height_m"]),
        "m_per_px": _tensor(meta["m_per_px"]),
        "sat_center_uv": _tensor(meta["sat_center_uv"]),
        "camera_uv_gt": _tensor(meta["camera_uv"]),
        "yaw_deg_gt": _tensor(meta["yaw_deg"]),
        "camera_uv_prior": _tensor(meta["prior"]["camera_uv"]),
        "yaw_deg_prior": _tensor(meta["prior"]["yaw_deg"]),
        "shift_range_m": _tensor(meta.get("shift_range_m", META_DEFAULTS["shift_range_m"])),
        "yaw_range_deg": _tensor(meta.get("yaw_range_deg", META_DEFAULTS["yaw_range_deg"])),
        "gt_sat_uv_grd": _dense_correspondences(arrays, ground_rgb.shape[:2], corr_source),
    }
    if "sat_height_m" in arrays:
        item["sat_height_m"] = torch.from_numpy(arrays["sat_height_m"].copy())
    check_item(item, source)
    return item


class PairsDataset(Dataset):
    """A ``cvloc-pairs/1`` directory as a torch Dataset of :mod:`cvloc.data.batch` items.

    The sample directories are listed (sorted by name) at construction; files are read and
    decoded in ``__getitem__`` only, so the dataset is cheap to pickle into DataLoader
    workers. Every error names the offending file and what was expected.

    Values missing from a sample's ``meta.json`` (``shift_range_m``, ``yaw_range_deg``)
    are taken from ``dataset.json`` when it has them, else from :data:`META_DEFAULTS`.

    Args:
        root: the dataset directory (holding ``dataset.json`` and ``samples/``).
        load_correspondences: read ``correspondences.npz``; when False the items have no
            ``gt_sat_uv_grd`` / ``sat_height_m`` (faster when only poses are needed).

    Raises:
        FileNotFoundError: the directory, ``dataset.json`` or ``samples/`` is missing.
        PairsFormatError: ``dataset.json`` is unreadable, has another ``format``, or its
            ``num`` disagrees with the number of sample directories.
    """

    def __init__(self, root: str | os.PathLike, load_correspondences: bool = True) -> None:
        self.root = Path(root)
        self.load_correspondences = load_correspondences
        self.info = _read_dataset_json(self.root)
        samples = self.root / "samples"
        if not samples.is_dir():
            raise FileNotFoundError(f"{samples}: missing; a {FORMAT} directory has samples/")
        # Hidden entries are temporary files of an interrupted writer, never samples.
        self.sample_dirs = sorted(
            p for p in samples.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        num = self.info.get("num")
        if num is not None and num != len(self.sample_dirs):
            raise PairsFormatError(
                f"{self.root / 'dataset.json'}: says num={num} but {samples} holds "
                f"{len(self.sample_dirs)} sample directories"
            )
        self.meta_defaults = {k: self.info[k] for k in META_DEFAULTS if k in self.info}

    def __len__(self) -> int:
        return len(self.sample_dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_dir = self.sample_dirs[index]
        for fname in SAMPLE_FILES if self.load_correspondences else SAMPLE_FILES[:3]:
            if not (sample_dir / fname).is_file():
                raise FileNotFoundError(f"{sample_dir / fname}: missing sample file")
        meta = {**self.meta_defaults, **_read_json(sample_dir / META_JSON)}
        ground = _read_png(sample_dir / GROUND_PNG, meta.get("ground_size"))
        satellite = _read_png(sample_dir / SATELLITE_PNG, meta.get("sat_size"))
        name = str(meta.get("name", sample_dir.relative_to(self.root).as_posix()))
        if not self.load_correspondences:
            empty = np.zeros((0, 2), np.float32)
            item = pair_to_item(
                ground,
                satellite,
                meta,
                empty,
                empty,
                empty[:, 0],
                name=name,
                source=str(sample_dir),
            )
            del item["gt_sat_uv_grd"]
            return item
        npz_path = sample_dir / CORRESPONDENCES_NPZ
        arrays = _read_npz(npz_path)
        missing = [k for k in ("ground_uv", "sat_uv", "height_m") if k not in arrays]
        if missing:
            raise PairsFormatError(f"{npz_path}: missing arrays {missing}")
        return pair_to_item(
            ground,
            satellite,
            meta,
            arrays["ground_uv"],
            arrays["sat_uv"],
            arrays["height_m"],
            arrays.get("sat_height_m"),
            name=name,
            source=str(sample_dir),
        )


# ---------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write ``path`` through a temporary file in the same directory, then ``os.replace``."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 honours the umask (tempfile.mkstemp would make the file 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave the temporary behind.
        tmp.unlink(missing_ok=True)
        raise


def _save_png(f: io.BufferedIOBase, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _to_json(data: dict[str, Any]) -> str:
    # allow_nan=False: design.md asks for plain JSON numbers, and NaN is not one.
    return json.dumps(data, indent=1, allow_nan=False, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_image(rgb: Any, name: str) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8):
        raise ValueError(f"{name}: expected a uint8 numpy array, got {getattr(rgb, 'dtype', rgb)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3), got {rgb.shape}")


def _correspondence_arrays(
    ground_uv: Any,
    sat_uv: Any,
    height_m: Any,
    sat_height_m: Any,
    satellite_rgb: np.ndarray,
    source: str,
) -> dict[str, np.ndarray]:
    """Validate the correspondence arrays and cast them to float32."""
    named = {"ground_uv": ground_uv, "sat_uv": sat_uv, "height_m": height_m}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in named.items()}
    n = len(arrays["ground_uv"])
    for key, shape in (("ground_uv", (n, 2)), ("sat_uv", (n, 2)), ("height_m", (n,))):
        if arrays[key].shape != shape:
            raise PairsFormatError(
                f"{source}: {key} must have shape {shape} (N = len(ground_uv)), "
                f"got {arrays[key].shape}"
            )
    if sat_height_m is not None:
        arrays["sat_height_m"] = np.asarray(sat_height_m, dtype=np.float32)
        if arrays["sat_height_m"].shape != satellite_rgb.shape[:2]:
            raise PairsFormatError(
                f"{source}: sat_height_m must have the satellite's shape "
                f"{satellite_rgb.shape[:2]}, got {arrays['sat_height_m'].shape}"
            )
    return arrays


# ---------------------------------------------------------------------------- reading


def _read_dataset_json(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such {FORMAT} directory")
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; a finished {FORMAT} directory has dataset.json "
            "(writers add it last, so an interrupted run has none)"
        )
    info = _read_json(path)
    if info.get("format") != FORMAT:
        raise PairsFormatError(
            f'{path}: expected "format": "{FORMAT}", got {info.get("format")!r}'
        )
    return info


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PairsFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PairsFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_png(path: Path, size_wh: Any) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 and check it against meta's [W, H]."""
    try:
        with Image.open(path) as img:
            # Producers may store grey or RGBA PNGs; the schema is RGB.
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise PairsFormatError(f"{path}: not a readable PNG image ({exc})") from exc
    h, w = rgb.shape[:2]
    if size_wh is not None and np.asarray(size_wh).tolist() != [w, h]:
        raise PairsFormatError(f"{path}: image is {w}x{h} but meta.json says {size_wh} ([W, H])")
    return rgb


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise PairsFormatError(f"{path}: not a readable .npz archive ({exc})") from exc


# ---------------------------------------------------------------------------- conversion


def _check_meta(meta: dict[str, Any], ground: np.ndarray, sat: np.ndarray, source: str) -> None:
    """Check meta's keys, shapes and image sizes; errors name ``source`` (a meta.json)."""
    missing = [k for k in META_KEYS if k not in meta]
    if meta.get("camera_model") == "pinhole" and "K" not in meta:
        missing.append("K")
    prior = meta.get("prior")
    if isinstance(prior, dict):
        missing += [f"prior.{k}" for k in ("camera_uv", "yaw_deg") if k not in prior]
    elif "prior" in meta:
        missing.append("prior.{camera_uv, yaw_deg}")
    if missing:
        raise PairsFormatError(f"{source}: meta.json is missing keys {missing}")
    if meta["camera_model"] not in CAMERA_MODELS:
        raise PairsFormatError(
            f"{source}: camera_model must be one of {CAMERA_MODELS}, got {meta['camera_model']!r}"
        )
    shapes = {"world_to_cam": (4, 4), "sat_center_uv": (2,), "camera_uv": (2,)}
    if meta["camera_model"] == "pinhole":
        shapes["K"] = (3, 3)
    for key, shape in shapes.items():
        if np.shape(meta[key]) != shape:
            raise PairsFormatError(
                f"{source}: meta.json {key} must have shape {shape}, got {np.shape(meta[key])}"
            )
    for key, rgb in (("ground_size", ground), ("sat_size", sat)):
        w_h = [rgb.shape[1], rgb.shape[0]]
        if np.asarray(meta[key]).tolist() != w_h:
            raise PairsFormatError(f"{source}: meta.json {key} is {meta[key]}, image is {w_h}")


def _image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    # astype copies into a writable, contiguous array (decoded PNGs are read-only).
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32)).div_(255.0)


def _tensor(value: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def _dense_correspondences(
    arrays: dict[str, np.ndarray], ground_hw: tuple[int, int], source: str
) -> torch.Tensor:
    """Scatter the sparse correspondences into a (Hg, Wg, 2) map, NaN where there is none."""
    h, w = ground_hw
    dense = np.full((h, w, 2), np.nan, dtype=np.float32)
    ij = np.rint(arrays["ground_uv"]).astype(np.int64)  # integer pixel centres
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    if not inside.all():
        bad = arrays["ground_uv"][~inside][0].tolist()
        raise PairsFormatError(
            f"{source}: ground_uv {bad} lies outside the {w}x{h} ground image "
            f"(expected pixel centres in [0, W-1] x [0, H-1])"
        )
    if not np.isfinite(arrays["sat_uv"]).all():
        raise PairsFormatError(f"{source}: sat_uv holds non-finite values")
    dense[ij[:, 1], ij[:, 0]] = arrays["sat_uv"]
    return torch.from_numpy(dense)
