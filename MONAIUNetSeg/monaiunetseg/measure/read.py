"""Labelmaps and scans for ``measure`` and ``growth``, read with the project's readers (``io``) on their own grids.

NIfTI, NRRD and MetaImage labelmaps go through ``io.labelmap``; a DICOM SEG (a ``.dcm`` file, or any file that
starts like a DICOM file) through highdicom, all its segments together, its affine turned from
DICOM LPS to the project's RAS.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg.geometry import check_affine
from monaiunetseg.io import labelmap, nifti, nrrd_mha
from monaiunetseg.io.dicom_series import has_dicom_magic
from monaiunetseg.io.guard import not_regular, open_header, voxel_budget_problem

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Labelmap:
    """A labelmap's voxels (i, j, k), its RAS affine and, for a DICOM SEG, its StudyDate."""

    array: np.ndarray
    affine: np.ndarray
    study_date: datetime.date | None = None


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or (nrrd_mha.image_format(path) is None and not nifti.is_nifti_path(path)
                                            and has_dicom_magic(path))


def parse_dicom_date(text: str | None) -> datetime.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when absent or malformed."""
    try:
        return datetime.datetime.strptime(str(text or "").strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _check_seg_size(path: Path) -> None:
    """Refuse a SEG whose header asks for more voxels than the budget, before highdicom decodes any frame."""
    import pydicom

    try:
        with open_header(path) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        shape = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("NumberOfFrames") or 1))
    except Exception:  # noqa: BLE001  not readable as DICOM: segread says why
        return
    too_big = voxel_budget_problem(shape)
    if too_big:
        raise ValueError(f"{path}: {too_big}")


def read_dicom_seg(path: Path) -> Labelmap:
    import highdicom as hd

    _check_seg_size(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # pydicom/highdicom raise many types for files that are no SEG
        raise ValueError(f"{path}: cannot read as DICOM SEG ({type(exc).__name__}: {exc})") from exc
    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    return Labelmap(np.asarray(volume.array), LPS_TO_RAS @ np.asarray(volume.affine, dtype=float),
                    parse_dicom_date(seg.get("StudyDate")))


def read_labelmap(path: str | os.PathLike) -> Labelmap:
    """The labelmap at ``path`` (NIfTI, NRRD, MetaImage or DICOM SEG)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    irregular = not_regular(path)
    if irregular:
        raise ValueError(f"{path}: {irregular}, not a labelmap file: not read")
    if _is_dicom(path):
        result = read_dicom_seg(path)
    else:
        if not nifti.is_nifti_path(path) and nrrd_mha.image_format(path) is None:
            raise ValueError(f"{path}: unknown labelmap format (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, "
                             "MetaImage .mha/.mhd or DICOM SEG)")
        try:
            _, affine = labelmap.grid_of(path)
            result = Labelmap(np.asarray(labelmap.read_labels(path)), affine)
        except (ValueError, OSError, RuntimeError) as exc:
            raise ValueError(f"{path}: cannot read the labelmap ({exc})") from exc
    check_affine(result.affine, str(path))
    if result.array.ndim != 3:
        raise ValueError(f"{path}: labelmap of shape {result.array.shape}: expected 3D")
    if result.array.dtype.kind in "fc":  # NaN is not zero, so it would count as lesion
        bad = int(np.count_nonzero(~np.isfinite(result.array)))
        if bad:
            raise ValueError(f"{path}: {bad} NaN or infinite voxel(s) of {result.array.size}: not a labelmap "
                             "(fix or mask them first)")
    return result


def read_scan(path: str | os.PathLike):
    """A NIfTI, NRRD or MetaImage scan (``.array``, ``.affine``), for the head midline of ``side``."""
    path = Path(path)
    irregular = not_regular(path) if os.path.lexists(path) else None
    if irregular:
        raise ValueError(f"{path}: {irregular}, not a scan file: not read")
    if nifti.is_nifti_path(path):
        return nifti.read_nifti_volume(path)
    if nrrd_mha.image_format(path) is not None:
        return nrrd_mha.read_image_volume(path)
    raise ValueError(f"{path}: --image must be a NIfTI, NRRD or MetaImage scan")
