"""Labelmap files in every output format (NIfTI, NRRD, MetaImage; PNG for a 2D picture): write one, and read back what resume needs
(which input it is the result of, its grid, its voxels), choosing the reader from the file name.

The writers keep the input's grid exactly: a labelmap of a NIfTI input is written from the input's header, one
of an NRRD/MetaImage input with the input's spacing, origin and direction; any other pairing (DICOM in, or
``--output-format`` asking for another format) is written from the RAS affine the volume was segmented on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monaiunetseg.io import image2d, nifti, nrrd_mha
from monaiunetseg.io.guard import voxel_budget_problem

# Output formats: the suffix of ``<name>_seg<suffix>``.
FORMAT_SUFFIXES = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha"}


def _is_nifti(path: str | os.PathLike) -> bool:
    return nifti.is_nifti_path(path)


def read_source_record(path: str | os.PathLike) -> dict | None:
    """The source record written with the labelmap at ``path`` (None when there is none)."""
    if image2d.is_png_path(path):
        return image2d.read_mask_source(path)
    return nifti.read_source_record(path) if _is_nifti(path) else nrrd_mha.read_source_record(path)


def _claims_ours(path: str | os.PathLike) -> bool:
    """The header says this project wrote the file (description / field): what a copied header also says."""
    if _is_nifti(path):
        return nifti.is_our_labelmap(path)
    if image2d.is_png_path(path):
        return image2d.is_our_mask_png(path)
    return nrrd_mha.image_format(path) is not None and nrrd_mha.is_our_labelmap(path)


def has_output_content(values: np.ndarray) -> bool:
    """Voxels as this project writes them: uint8 labels 0/1, or float32 probabilities in [0, 1]. A scan saved
    with an output's header copied (``descrip`` and all) has neither: integer intensities or many float values."""
    if values.dtype == np.uint8:
        return int(values.max(initial=0)) <= 1
    if values.dtype == np.float32:
        return bool(np.isfinite(values).all()) and float(values.min(initial=0)) >= 0 and float(values.max(initial=0)) <= 1
    return False


def is_our_labelmap(path: str | os.PathLike) -> bool:
    """True for a labelmap (or probability map) this project wrote, in any format: the header says so *and* the
    voxels are what it writes (:func:`has_output_content`), so a real scan that carries a copied output header is
    still a scan (segmented, never taken for an earlier output nor replaced as one)."""
    if not _claims_ours(path):
        return False
    try:
        return has_output_content(read_labels(path))
    except Exception:  # unreadable: not known to be ours
        return False


def grid_of(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(3D shape, RAS affine) of an image or labelmap file, from its header."""
    if image2d.is_png_path(path):
        return read_labels(path).shape, image2d.unit_affine()
    return nifti.grid_of(path) if _is_nifti(path) else nrrd_mha.grid_of(path)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A labelmap's voxels, (i, j, k), as stored; its header is checked first as an input's is (3D, within the
    voxel budget, the data really there), so a small file claiming a huge grid is refused before any allocation."""
    if image2d.is_png_path(path):
        return image2d.read_mask_png(path)
    if _is_nifti(path):
        path = Path(path)
        img = nifti._open(path)
        shape = nifti.spatial_shape(img.shape, path)
        nifti.check_header(img, path)
        return np.asarray(img.dataobj).reshape(shape)
    shape, _ = nrrd_mha.grid_of(path)
    too_big = voxel_budget_problem(tuple(shape))
    if too_big:
        raise nrrd_mha.ImageInputError(f"{path}: {too_big}")
    return nrrd_mha.read_labels(path)


def write_labelmap(labels: np.ndarray, volume, target: str | os.PathLike, source: dict | None = None) -> Path:
    """Write ``labels`` on the grid of ``volume`` (what the input was read as: a NIfTI or NRRD/MetaImage volume
    keeps its own header geometry; anything else gives its ``affine``) in the format of ``target``'s suffix.
    A float array is written as a float32 probability map (``--save-probabilities``) with the same geometry."""
    target = Path(target)
    if image2d.is_png_path(target):
        return image2d.write_mask_png(labels, target, source=source)
    if _is_nifti(target):
        if isinstance(volume, nifti.NiftiVolume):
            return nifti.write_labelmap_like(labels, volume, target, source=source)
        return nifti.write_labelmap(labels, volume.affine, target, source=source)
    if nrrd_mha.image_format(target) is None:
        raise ValueError(f"{target}: unknown labelmap format (use {', '.join(FORMAT_SUFFIXES.values())})")
    reference = volume if isinstance(volume, nrrd_mha.ImageVolume) else None
    return nrrd_mha.write_labelmap(labels, target, affine=volume.affine, reference=reference, source=source)


# Inputs that are label maps, not scans (someone's reference mask beside the scans): not segmented by default.
LABELMAP_NAME_ENDINGS = ("_label", "_seg", "_mask")
LABELMAP_MAX_VALUES = 8  # an integer volume with at most this many distinct values is taken for a label map
LABELMAP_NOTE = "looks like a label map"


def _name_stem(path: str | os.PathLike) -> str:
    """The file name without its image suffix(es): ``a_label.nii.gz`` -> ``a_label``."""
    if _is_nifti(path):
        return nifti.nifti_stem(path)
    return Path(path).name.split(".", 1)[0] if "." in Path(path).name else Path(path).name


def _few_values(values: np.ndarray, limit: int) -> int | None:
    """The number of distinct values when at most ``limit``, else None; a coarse subsample answers first, so a
    scan (hundreds of intensities) costs one small ``np.unique``."""
    flat = values.reshape(-1)
    if flat.size > 100_000 and np.unique(flat[:: max(1, flat.size // 100_000)]).size > limit:
        return None
    n = np.unique(flat).size
    return n if n <= limit else None


def _integer_voxels(path: str | os.PathLike) -> np.ndarray | None:
    """The stored voxels when the header says they are integers, else None. The header is read and checked
    first (as an input's is: 3D, within the voxel budget, the data really there), the data only for integer
    files, unscaled (a scale factor does not change the count of distinct values)."""
    path = Path(path)
    if _is_nifti(path):
        img = nifti._open(path)
        if not np.issubdtype(img.header.get_data_dtype(), np.integer):
            return None
        nifti.spatial_shape(img.shape, path)
        nifti.check_header(img, path)
        return np.asarray(img.dataobj.get_unscaled())
    if nrrd_mha.image_format(path) is None:
        return None
    sitk = nrrd_mha._sitk()
    reader = nrrd_mha._reader(path)
    integer_ids = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                   sitk.sitkUInt64, sitk.sitkInt64}
    if reader.GetPixelID() not in integer_ids:
        return None
    nrrd_mha._check_3d(reader, path)
    if voxel_budget_problem(tuple(reader.GetSize())):
        return None
    return sitk.GetArrayFromImage(reader.Execute())


def labelmap_reason(path: str | os.PathLike) -> str | None:
    """Why the image file at ``path`` looks like a label map rather than a scan, or None: its name ends in
    ``_label``, ``_seg`` or ``_mask`` before the extension, or it holds integer voxels with at most
    :data:`LABELMAP_MAX_VALUES` distinct values. Unreadable files are not judged here (reading them as an input
    reports the problem)."""
    stem = _name_stem(path).lower()
    for ending in LABELMAP_NAME_ENDINGS:
        if stem.endswith(ending):
            return f"{LABELMAP_NOTE} (name ends in {ending})"
    try:
        values = _integer_voxels(path)
        n = None if values is None else _few_values(np.asarray(values), LABELMAP_MAX_VALUES)
    except Exception:
        return None
    if n is not None and n > 1:  # one value (all zero): an empty image, which the input checks name as such
        return f"{LABELMAP_NOTE} (integer voxels, {n} distinct value(s))"
    return None
