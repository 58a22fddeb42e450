"""2D pictures (PNG, TIFF, JPEG) as 1-slice volumes, so the slice-wise model trains and runs on them unchanged.

Why one module: training data (``prepare-pairs``) and inference must read a picture the same way (grey values,
axis order, geometry), or a model would see its training images transposed or flipped at run time. A picture of
``H`` rows and ``W`` columns becomes an ``(H, W, 1)`` float32 array with a unit-spacing identity affine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
# ITU-R BT.601 luma: RGB -> grey as most image tools do it.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class Image2DError(ValueError):
    """A picture that cannot be used; the message names the file and the problem."""


def is_image2d_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE2D_SUFFIXES)


def unit_affine() -> np.ndarray:
    """The geometry of every picture: 1 mm pixels, rows along the first axis, columns along the second."""
    return np.eye(4)


def _read_pixels(path: Path) -> np.ndarray:
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img)
    except Exception as exc:  # truncated or not a picture: PIL and tifffile raise many types
        raise Image2DError(f"{path}: not a readable 2D image ({exc.__class__.__name__}: {exc})") from exc


def read_image2d(path: str | os.PathLike, as_mask: bool = False) -> np.ndarray:
    """``(H, W, 1)`` float32 grey values (RGB/RGBA -> luma, alpha dropped); with ``as_mask`` a uint8 ``0/1``
    foreground (any value > 0 in any channel: binary or instance-labelled masks alike)."""
    path = Path(path)
    pixels = _read_pixels(path)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        colour = pixels[..., :3]
        grey = (colour > 0).any(axis=-1) if as_mask else colour.astype(np.float32) @ LUMA
    elif pixels.ndim == 2:
        grey = pixels
    else:
        raise Image2DError(f"{path}: array of shape {pixels.shape}: expected a 2D grey or RGB image")
    if np.iscomplexobj(grey) or not np.issubdtype(np.asarray(grey).dtype, np.number) and grey.dtype != bool:
        raise Image2DError(f"{path}: {grey.dtype} pixels: expected real values")
    if as_mask:
        return (np.asarray(grey) > 0).astype(np.uint8)[:, :, None]
    out = np.asarray(grey, dtype=np.float32)[:, :, None]
    if not np.isfinite(out).all():
        raise Image2DError(f"{path}: NaN or infinite pixels")
    return out
