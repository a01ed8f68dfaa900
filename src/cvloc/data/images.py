"""Robust image decoding for the benchmark loaders, with errors that name the file.

Every image goes through :func:`load_rgb`: pillow decodes it, EXIF orientation is applied
(so a photo is used the way viewers show it), greyscale / palette / RGBA images become RGB,
and an optional resize uses pillow's bilinear filter (antialiased when shrinking), whose
sampling grid is the pixel-centre one of :func:`cvloc.geometry.cameras.scale_intrinsics`:
a point at u in the stored image lands at (u + 0.5) * sx - 0.5.

Failures raise a :class:`SampleError` naming the path and what was expected there:
:class:`MissingFileError` for a missing file, :class:`CorruptFileError` for a file that
exists but cannot be decoded or parsed. Loaders catch :class:`SampleError` (and nothing
broader) when asked to skip bad samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Decoder failures of pillow: truncated data (OSError), bad headers (SyntaxError,
# ValueError), unknown formats, oversized images (DecompressionBombError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap W and H


class SampleError(Exception):
    """A file a sample needs is missing or unreadable.

    Attributes:
        path: the offending file.
        what: what was expected there (e.g. "KITTI satellite tile").
        reason: what went wrong.
    """

    def __init__(self, path: str | os.PathLike, what: str, reason: str) -> None:
        self.path = Path(path)
        self.what = what
        self.reason = reason
        super().__init__(f"{self.path}: {reason} (expected: {what})")


class MissingFileError(SampleError, FileNotFoundError):
    """A file a sample needs does not exist."""


class CorruptFileError(SampleError, ValueError):
    """A file exists but cannot be decoded or parsed."""


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise :class:`MissingFileError` when it is not a file.

    Args:
        path: the file.
        what: what the file should be, for the error message.

    Returns:
        The path.
    """
    path = Path(path)
    if not path.is_file():
        reason = "is a directory, not a file" if path.is_dir() else "missing"
        raise MissingFileError(path, what, reason)
    return path


def load_rgb(
    path: str | os.PathLike,
    what: str,
    size_wh: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image to RGB, EXIF-oriented, optionally resized.

    Convention: the resize maps a stored pixel u to (u + 0.5) * W' / W - 0.5 (pixel
    centres at integers), as :func:`cvloc.geometry.cameras.scale_intrinsics` assumes.
    RGBA images lose their alpha channel (no compositing: the loaders' images are opaque).

    Args:
        path: the image file.
        what: what the image is, for error messages (e.g. "VIGOR panorama").
        size_wh: (W, H) to resize to, or None to keep the stored size.
        max_pixels: raise pillow's decompression-bomb limit to this many pixels (for very
            large maps such as Oxford's stitched satellite map); None keeps the default.

    Returns:
        rgb: (H, W, 3) uint8 array (after the resize); raw_wh: the (W, H) of the decoded,
        EXIF-oriented image before the resize.

    Raises:
        MissingFileError: the file does not exist.
        CorruptFileError: pillow cannot decode it.
    """
    path = require_file(path, what)
    default_limit = Image.MAX_IMAGE_PIXELS
    try:
        if max_pixels is not None:
            Image.MAX_IMAGE_PIXELS = max(max_pixels, default_limit or 0)
        with Image.open(path) as img:
            raw_wh = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in _TRANSPOSING_ORIENTATIONS:
                raw_wh = raw_wh[::-1]
            if size_wh is not None and orientation == 1:
                # JPEG DCT-domain downscaling (never below size_wh): much faster decoding.
                img.draft("RGB", tuple(size_wh))
            rgb_img = ImageOps.exif_transpose(img).convert("RGB")
            rgb_img.load()
    except _DECODE_ERRORS as exc:
        raise CorruptFileError(path, what, f"cannot decode the image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = default_limit
    if size_wh is not None and rgb_img.size != tuple(size_wh):
        rgb_img = rgb_img.resize(tuple(size_wh), Image.Resampling.BILINEAR)
    return np.asarray(rgb_img), raw_wh


def verify_image(path: str | os.PathLike, what: str) -> None:
    """Check that an image file exists and is structurally valid, without decoding pixels.

    Uses pillow's ``verify`` (header and chunk checksums for PNG), which is much cheaper
    than a full decode; a file that passes may still fail to decode in rare cases.

    Args:
        path: the image file.
        what: what the image is, for error messages.

    Raises:
        MissingFileError: the file does not exist.
        CorruptFileError: the file is not a valid image.
    """
    path = require_file(path, what)
    default_limit = Image.MAX_IMAGE_PIXELS
    try:
        # verify() reads no pixel data, so the size limit only guards a decode we skip.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as img:
            img.verify()
    except _DECODE_ERRORS as exc:
        raise CorruptFileError(path, what, f"not a valid image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = default_limit


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1].

    Args:
        rgb: (H, W, 3) uint8 array.

    Returns:
        (3, H, W) float32 tensor.
    """
    # astype copies into a writable, contiguous array (decoded images are read-only).
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32)).div_(255.0)
