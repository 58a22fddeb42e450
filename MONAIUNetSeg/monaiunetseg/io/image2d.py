"""2D pictures (PNG, TIFF, JPEG) as 1-slice volumes, so the slice-wise model trains and runs on them unchanged.

Why one module: training data (``prepare-pairs``) and inference must read a picture the same way (grey values,
axis order, geometry), or a model would see its training images transposed or flipped at run time. A picture of
``H`` rows and ``W`` columns becomes an ``(H, W, 1)`` float32 array with a unit-spacing identity affine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg.io.guard import voxel_budget_problem

IMAGE2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
# A JPEG mask's edges carry compression noise (values 1-40 around a drawn 255): foreground is above half the range.
LOSSY_MASK_NOTE = "a JPEG mask: lossy compression blurs its edges, so foreground is taken as above half its range"
# ITU-R BT.601 luma: RGB -> grey as most image tools do it.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class Image2DError(ValueError):
    """A picture that cannot be used; the message names the file and the problem."""


def is_image2d_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE2D_SUFFIXES)


def is_lossy(path: str | os.PathLike) -> bool:
    """A JPEG: its mask values are not the drawn ones (see :data:`LOSSY_MASK_NOTE`)."""
    return str(path).lower().endswith(JPEG_SUFFIXES)


def unit_affine() -> np.ndarray:
    """The geometry of every picture: 1 mm pixels, rows along the first axis, columns along the second."""
    return np.eye(4)


def _check_budget(path: Path, shape: tuple[int, ...]) -> None:
    """The pixel budget (the voxel budget of ``io.guard``), from the header before any pixel is decoded."""
    too_big = voxel_budget_problem(tuple(shape))
    if too_big:
        raise Image2DError(f"{path}: {too_big}")


def _read_pixels(path: Path) -> np.ndarray:
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                _check_budget(path, tif.series[0].shape if tif.series else tif.pages[0].shape)
                return np.asarray(tif.asarray())
        from PIL import Image

        with Image.open(path) as img:
            _check_budget(path, (img.height, img.width))  # the grey picture it becomes
            if img.mode in ("P", "PA"):  # palette indices are no grey values: the colours they stand for are
                img = img.convert("RGBA")
            elif img.mode in ("LA", "1"):
                img = img.convert("L")
            return np.asarray(img)
    except Image2DError:
        raise
    except Exception as exc:  # truncated or not a picture: PIL and tifffile raise many types
        raise Image2DError(f"{path}: not a readable 2D image ({exc.__class__.__name__}: {exc})") from exc


def read_image2d(path: str | os.PathLike, as_mask: bool = False) -> np.ndarray:
    """``(H, W, 1)`` float32 grey values (RGB/RGBA -> luma, alpha dropped); with ``as_mask`` a uint8 ``0/1``
    foreground (any value > 0 in any channel: binary or instance-labelled masks alike)."""
    path = Path(path)
    pixels = _read_pixels(path)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        colour = pixels[..., :3]
        grey = colour.max(axis=-1) if as_mask else colour.astype(np.float32) @ LUMA
    elif pixels.ndim == 2:
        grey = pixels
    else:
        raise Image2DError(f"{path}: array of shape {pixels.shape}: expected a 2D grey or RGB image")
    if np.iscomplexobj(grey) or not np.issubdtype(np.asarray(grey).dtype, np.number) and grey.dtype != bool:
        raise Image2DError(f"{path}: {grey.dtype} pixels: expected real values")
    if as_mask:
        threshold = 0
        if is_lossy(path) and np.issubdtype(np.asarray(grey).dtype, np.integer):
            threshold = np.iinfo(np.asarray(grey).dtype).max // 2
        return (np.asarray(grey) > threshold).astype(np.uint8)[:, :, None]
    out = np.asarray(grey, dtype=np.float32)[:, :, None]
    if not np.isfinite(out).all():
        raise Image2DError(f"{path}: NaN or infinite pixels")
    return out


# --- segment: a picture as a case, its mask as a PNG of the same size -------------------------------------------

MASK_SUFFIX = ".png"
SOURCE_CHUNK = "MONAIUNetSeg"  # PNG text chunk: the labelmap's source record (as the NIfTI extension holds it)
SOFTWARE_CHUNK = "Software"


@dataclass
class PictureVolume:
    """A picture read for segmenting: ``(H, W, 1)`` float32 grey values and the unit affine."""

    path: Path
    array: np.ndarray
    affine: np.ndarray


def read_picture_volume(path: str | os.PathLike) -> PictureVolume:
    return PictureVolume(Path(path), read_image2d(path), unit_affine())


def is_png_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(MASK_SUFFIX)


def write_mask_png(labels: np.ndarray, target: str | os.PathLike, source: dict | None = None) -> Path:
    """``(H, W, 1)`` (or ``(H, W)``) labels 0/1 -> an 8-bit PNG of the picture's size, 0 background and 255
    foreground (visible in any viewer), marked as this tool's with its source record."""
    from PIL import Image, PngImagePlugin

    from monaiunetseg import TOOL_NAME

    array = np.asarray(labels)
    if array.ndim == 3:
        if array.shape[2] != 1:
            raise ValueError(f"{target}: a PNG mask holds one slice, got shape {array.shape}")
        array = array[:, :, 0]
    if array.dtype.kind == "f":
        raise ValueError(f"{target}: a PNG mask holds labels, not probabilities")
    info = PngImagePlugin.PngInfo()
    info.add_text(SOFTWARE_CHUNK, TOOL_NAME)
    if source is not None:
        info.add_text(SOURCE_CHUNK, json.dumps({SOURCE_CHUNK: source}))
    Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8), mode="L").save(target, format="PNG", pnginfo=info)
    return Path(target)


def _png_text(path: str | os.PathLike) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        return dict(getattr(img, "text", {}) or {})


def is_our_mask_png(path: str | os.PathLike) -> bool:
    """The PNG says this tool wrote it (the caller also checks its pixels)."""
    from monaiunetseg import TOOL_NAME

    try:
        return _png_text(path).get(SOFTWARE_CHUNK) == TOOL_NAME and SOURCE_CHUNK in _png_text(path)
    except Exception:  # not a PNG
        return False


def read_mask_source(path: str | os.PathLike) -> dict | None:
    try:
        record = json.loads(_png_text(path).get(SOURCE_CHUNK, "")).get(SOURCE_CHUNK)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG mask as ``(H, W, 1)`` uint8 labels 0/1."""
    return read_image2d(path, as_mask=True)
