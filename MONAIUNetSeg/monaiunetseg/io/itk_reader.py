"""Other ITK image formats (MINC, ITK HDF5, GIPL, VTK legacy) through MONAI's ``ITKReader``: the optional
``itk`` extra (``pip install 'monaiunetseg[itk]'``).

The core reads NIfTI (nibabel), NRRD and MetaImage (SimpleITK) and DICOM (pydicom/highdicom) itself; ITK's
Python wrapping is about 1.5 GB, so the rarer research formats are opt-in rather than a cost every install
pays. Without the extra such a file is reported with the command that adds it. GIPL and VTK legacy files store
no orientation: ITK reads them with an identity direction, and so does their labelmap.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg.geometry import check_affine
from monaiunetseg.io.guard import not_regular

ITK_SUFFIXES = {".mnc": "MINC", ".mnc2": "MINC", ".hdf5": "ITK HDF5", ".gipl": "GIPL", ".gipl.gz": "GIPL",
                ".vtk": "VTK legacy"}
INSTALL_HINT = "pip install 'monaiunetseg[itk]'"


class ItkInputError(ValueError):
    """An input for the itk reader that cannot be segmented; the message names the file and the problem."""


def itk_format(path: str | os.PathLike) -> str | None:
    """The format name of a file the itk extra reads (from its suffix), else None."""
    name = str(path).lower()
    for suffix, fmt in ITK_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def itk_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    return name[: -len(".gipl.gz")] if name.lower().endswith(".gipl.gz") else Path(name).stem


def itk_available() -> bool:
    return importlib.util.find_spec("itk") is not None


def missing_extra_message(path: str | os.PathLike) -> str:
    return f"{path}: {itk_format(path)} files are read through the optional itk extra: {INSTALL_HINT}"


@dataclass
class ItkVolume:
    """A 3D volume read through ITK: float32 (i, j, k) data and its RAS affine."""

    path: Path
    array: np.ndarray
    affine: np.ndarray


def read_itk_volume(path: str | os.PathLike) -> ItkVolume:
    """Read and check one volume with MONAI's ITKReader (ITK's voxel order, RAS affine)."""
    path = Path(path)
    if not os.path.exists(path):
        raise ItkInputError(f"{path}: no such file")
    kind = not_regular(path)  # a FIFO would block the reader, a device never end
    if kind:
        raise ItkInputError(f"{path}: {kind}, not a regular file: not read")
    if not itk_available():
        raise ItkInputError(missing_extra_message(path))
    from monai.data import ITKReader

    reader = ITKReader(reverse_indexing=False, affine_lps_to_ras=True)
    try:
        data, meta = reader.get_data(reader.read(str(path)))
    except Exception as exc:  # ITK raises RuntimeError/TypeError with long C++ traces for unreadable files
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise ItkInputError(f"{path}: cannot read as {itk_format(path)} ({detail})") from exc
    array = np.asarray(data)
    if array.ndim != 3 or min(array.shape) < 2:
        raise ItkInputError(f"{path}: image of shape {array.shape}: expected a single greyscale 3D volume")
    if np.iscomplexobj(array):
        raise ItkInputError(f"{path}: complex-valued voxels: expected a real-valued scan")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ItkInputError(f"{path}: {bad} NaN or infinite voxel(s) of {array.size}; fix or mask them first")
    return ItkVolume(path, array, check_affine(meta["affine"], str(path)))


def grid_of(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, RAS affine) of the input (reads the image: ITK's Python wrapping has no cheap header-only path here)."""
    volume = read_itk_volume(path)
    return volume.array.shape, volume.affine
