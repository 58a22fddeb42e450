"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) input and labelmap output through SimpleITK.

Both formats store an ITK image: spacing, origin and a direction matrix in DICOM's LPS patient frame (ITK
converts a NRRD written in RAS space on reading). The core works with a NIfTI-style RAS affine over voxel axes
(i, j, k), so :func:`read_image_volume` returns exactly that, like :func:`monaiunetseg.io.nifti.read_nifti_volume`.
A labelmap of such an input is written with the input image's own spacing, origin and direction (copied, not
recomputed), and records its source in a header field (``MONAIUNetSeg:=...`` in NRRD, ``MONAIUNetSeg = ...`` in
MetaImage), so that resume and "is this our output" work as for NIfTI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg.files import atomic_path
from monaiunetseg.geometry import check_affine
from monaiunetseg.io.data_files import DataFileError, checked_input_files, data_files
from monaiunetseg.io.guard import not_regular, voxel_budget_problem
from monaiunetseg.io.nifti import OUTPUT_DESCRIPTIONS, SOURCE_KEY, output_array

NRRD_SUFFIXES, METAIMAGE_SUFFIXES = (".nrrd", ".nhdr"), (".mha", ".mhd")
DESCRIPTION_KEY = "MONAIUNetSeg_description"  # header field marking a labelmap this project wrote
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageInputError(ValueError):
    """An NRRD/MetaImage input that cannot be segmented; the message names the file and the problem."""


def image_format(path: str | os.PathLike) -> str | None:
    """``"nrrd"``, ``"metaimage"`` or None, from the file name."""
    name = str(path).lower()
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if name.endswith(METAIMAGE_SUFFIXES):
        return "metaimage"
    return None


def image_stem(path: str | os.PathLike) -> str:
    return Path(path).stem


@dataclass
class ImageVolume:
    """A 3D volume read through SimpleITK: float32 (i, j, k) data, its RAS affine, and the image's geometry."""

    path: Path
    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def _sitk():
    import SimpleITK as sitk  # imported on use: NIfTI/DICOM batches never load it

    return sitk


def ras_affine(spacing, origin, direction) -> np.ndarray:
    """RAS affine over voxel (i, j, k) of an ITK image (LPS direction, spacing, origin)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def detached_data_files(path: str | os.PathLike) -> list[Path]:
    """The data files an NRRD/MetaImage header names, resolved as ITK does (:mod:`monaiunetseg.io.data_files`);
    [] when the data is in the header file."""
    try:
        return data_files(path)
    except DataFileError as exc:
        raise ImageInputError(str(exc)) from exc


def input_files(path: str | os.PathLike) -> list[Path]:
    """The file and the existing data files of its header, each checked to be a regular file (a FIFO would
    block a reader, a device never end) inside the header's folder tree: :class:`ImageInputError` naming the
    one that is not. Only NRRD/MetaImage files have data-file fields: any other file (a NIfTI) is itself."""
    try:
        if image_format(path) is None:
            kind = not_regular(Path(path))
            if kind:
                raise DataFileError(f"{path}: {kind}, not a regular file: not read")
            return [Path(path)]
        return checked_input_files(path)
    except DataFileError as exc:
        raise ImageInputError(str(exc)) from exc


def _reader(path: Path):
    sitk = _sitk()
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    input_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise ImageInputError(f"{path}: cannot read as {image_format(path) or 'ITK image'} ({detail})") from exc
    return reader


def _check_3d(reader, path: Path) -> None:
    size, components = tuple(reader.GetSize()), reader.GetNumberOfComponents()
    if components != 1:
        raise ImageInputError(f"{path}: {components} components per voxel (colour/vector image of size {size}): "
                              "expected a greyscale 3D volume")
    if len(size) > 3:
        raise ImageInputError(f"{path}: {len(size)}D image of size {size}: expected a single 3D volume "
                              "(split time series / multi-channel images first)")
    if len(size) < 3 or min(size) < 2:
        raise ImageInputError(f"{path}: 2D image of size {size}: expected a 3D volume")


def grid_of(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, RAS affine) from the header only."""
    path = Path(path)
    reader = _reader(path)
    _check_3d(reader, path)
    return tuple(reader.GetSize()), ras_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def read_image_volume(path: str | os.PathLike) -> ImageVolume:
    """Read and check one NRRD/MetaImage volume (3D, one component, finite voxels)."""
    path = Path(path)
    reader = _reader(path)
    _check_3d(reader, path)
    too_big = voxel_budget_problem(tuple(reader.GetSize()))
    if too_big:
        raise ImageInputError(f"{path}: {too_big}")
    check_affine(ras_affine(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()), str(path))
    try:
        image = reader.Execute()
        data = _sitk().GetArrayFromImage(image)  # (k, j, i)
    except RuntimeError as exc:  # truncated data, missing .raw of a .mhd/.nhdr
        raise ImageInputError(f"{path}: cannot read voxel data ({str(exc).strip().splitlines()[-1]})") from exc
    if np.iscomplexobj(data):
        raise ImageInputError(f"{path}: complex-valued voxels: expected a real-valued scan")
    array = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ImageInputError(f"{path}: {bad} NaN or infinite voxel(s) of {array.size}; fix or mask them first")
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    return ImageVolume(path, array, ras_affine(spacing, origin, direction), spacing, origin, direction)


def _metadata(path: Path) -> dict[str, str]:
    reader = _reader(path)
    return {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}


def is_our_labelmap(path: str | os.PathLike) -> bool:
    """True for a labelmap this project wrote (header field): an earlier output is not a scan to segment."""
    try:
        return _metadata(Path(path)).get(DESCRIPTION_KEY) in {d.decode() for d in OUTPUT_DESCRIPTIONS}
    except Exception:  # unreadable: not ours; reading it as an input will report the problem
        return False


def read_source_record(path: str | os.PathLike) -> dict | None:
    """The source record written with a labelmap; None when there is none."""
    text = _metadata(Path(path)).get(SOURCE_KEY)
    try:
        record = json.loads(text).get(SOURCE_KEY) if text else None
    except (ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A labelmap's voxels as (i, j, k)."""
    sitk = _sitk()
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def _geometry_from_affine(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return tuple(spacing), tuple(lps[:3, 3]), tuple((lps[:3, :3] / spacing).ravel())


def write_labelmap(labels: np.ndarray, target: str | os.PathLike, affine: np.ndarray | None = None,
                   reference: ImageVolume | None = None, source: dict | None = None) -> Path:
    """Write ``labels`` (i, j, k) as uint8 NRRD/MetaImage (by ``target``'s suffix), atomically, on the grid of
    ``reference`` (its geometry copied exactly) or of the RAS ``affine``; ``source`` is recorded in the header.
    A float array is written as a float32 probability map instead."""
    sitk = _sitk()
    labels, description = output_array(labels)
    if reference is not None:
        if labels.shape != reference.array.shape:
            raise ValueError(f"labelmap shape {labels.shape} != input shape {reference.array.shape}")
        spacing, origin, direction = reference.spacing, reference.origin, reference.direction
    elif affine is not None:
        spacing, origin, direction = _geometry_from_affine(affine)
    else:
        raise ValueError("write_labelmap needs the input's affine or reference image")
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    image.SetMetaData(DESCRIPTION_KEY, description.decode())
    if source is not None:
        image.SetMetaData(SOURCE_KEY, json.dumps({SOURCE_KEY: source}))
    target = Path(target)
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), True)  # compressed: a labelmap (and a probability map) is mostly zeros
    return target
