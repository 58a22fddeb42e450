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
    """A labelmap's voxels, (i, j, k)."""
    if image2d.is_png_path(path):
        return image2d.read_mask_png(path)
    if _is_nifti(path):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj).reshape(nifti.grid_of(path)[0])
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
