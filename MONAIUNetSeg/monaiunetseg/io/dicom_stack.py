"""A classic DICOM series (one file per slice) as a volume: slices sorted by position along the normal, checked to
form one regular stack, read into a float32 array with its RAS affine.

Split from :mod:`monaiunetseg.io.dicom_series` (the header scan and series checks), which it builds on; the
multi-frame reader (:mod:`monaiunetseg.io.dicom_multiframe`) gives the same result for an enhanced file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom

from monaiunetseg.errors import describe
from monaiunetseg.geometry import check_affine
from monaiunetseg.io.dicom_series import (HEADER_ELEMENT_LIMIT, LPS_TO_RAS, ORIENTATION_ATOL, DicomFile, DicomSeries,
                                          DicomSeriesError, SeriesVolume, not_a_volume)
from monaiunetseg.io.guard import voxel_budget_problem

try:
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom < 3 (Slicer 5.6 and 5.8 ship pydicom 2.4)
    from pydicom.pixel_data_handlers.util import apply_modality_lut

SPACING_ATOL_MM, SPACING_RTOL = 0.05, 0.01  # positions rounded to 0.01 mm still pass; a missing slice never does


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        raise ValueError("zero-length direction")
    return v / norm


@dataclass
class SliceStack:
    """Sorted files and the LPS affine of a regular stack."""

    files: list[DicomFile]
    affine_lps: np.ndarray


def sort_slices(series: DicomSeries) -> SliceStack:
    """Sort by position along the normal and check one regular stack: same orientation, size and pixel
    spacing everywhere, no sheared (tilted) stack, uniform spacing (a gap means missing slices)."""
    where = series.label()
    problem = not_a_volume(series)
    if problem:
        raise DicomSeriesError(f"{where}: {problem}")
    files = series.files
    iops = np.array([f.orientation for f in files])
    if np.abs(iops - iops[0]).max() > ORIENTATION_ATOL:
        distinct = np.unique(np.round(iops, 3), axis=0)
        raise DicomSeriesError(f"{where}: mixed orientations: {len(distinct)} different ImageOrientationPatient "
                               f"values (e.g. {distinct[0].tolist()} and {distinct[1].tolist()})")
    sizes = {(f.rows, f.columns) for f in files}
    if len(sizes) > 1:
        raise DicomSeriesError(f"{where}: inconsistent image size (Rows, Columns): {sorted(sizes)}")
    spacings = np.array([f.pixel_spacing for f in files])
    if np.abs(spacings - spacings[0]).max() > 1e-4 * max(1.0, float(spacings[0].max())):
        raise DicomSeriesError(f"{where}: inconsistent PixelSpacing: {np.unique(spacings, axis=0).tolist()}")
    try:
        row_dir, col_dir = _unit(np.array(iops[0][:3])), _unit(np.array(iops[0][3:]))
    except ValueError:
        raise DicomSeriesError(f"{where}: invalid ImageOrientationPatient {list(iops[0])}") from None
    if abs(float(row_dir @ col_dir)) > ORIENTATION_ATOL:
        raise DicomSeriesError(f"{where}: ImageOrientationPatient {list(iops[0])} is not orthogonal")
    normal = np.cross(row_dir, col_dir)
    positions = np.array([f.position for f in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    files = [files[i] for i in order]
    steps = np.diff(along)
    spacing = float(np.median(steps))
    if spacing <= SPACING_ATOL_MM:
        raise DicomSeriesError(f"{where}: slices overlap (median spacing {spacing:.3g} mm along the normal)")
    tol = SPACING_ATOL_MM + SPACING_RTOL * spacing
    bad = np.nonzero(np.abs(steps - spacing) > tol)[0]
    if bad.size:
        i = int(bad[0])
        gap = float(steps[i])
        if gap > spacing + tol:
            missing = int(round(sum(steps[b] / spacing - 1 for b in bad if steps[b] > spacing + tol)))
            raise DicomSeriesError(
                f"{where}: missing slice(s): gap of {gap:.2f} mm between {files[i].path.name} and {files[i + 1].path.name} "
                f"(positions {along[i]:.2f} and {along[i + 1]:.2f} mm along the normal) where the slice spacing is "
                f"{spacing:.2f} mm; about {max(missing, 1)} slice(s) missing")
        raise DicomSeriesError(f"{where}: non-uniform slice spacing ({gap:.2f} mm between {files[i].path.name} and "
                               f"{files[i + 1].path.name}, median {spacing:.2f} mm)")
    offsets = positions - positions[0]
    perpendicular = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if perpendicular.max() > SPACING_ATOL_MM + SPACING_RTOL * np.abs(offsets @ normal).max():
        raise DicomSeriesError(f"{where}: slice positions are not along the slice normal (gantry tilt or sheared "
                               f"stack, up to {perpendicular.max():.2f} mm off); resample the series first")
    spacing = float(along[-1] - along[0]) / (len(files) - 1)  # uniform: the end-to-end mean beats the median
    row_spacing, col_spacing = spacings[0]  # PixelSpacing = (between rows, between columns)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # voxel axis 0 = column index, moves along the row direction
    affine[:3, 1] = col_dir * row_spacing  # voxel axis 1 = row index
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    return SliceStack(files, affine)


def slim_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` without its pixel data and without top-level values over :data:`HEADER_ELEMENT_LIMIT` (deferred
    ones are dropped unread): what a DICOM SEG needs of a source image is small."""
    for tag in list(ds.keys()):
        item = ds.get_item(tag)
        length = getattr(item, "length", None)  # a raw (possibly deferred) element: its length on disk
        if length is None:
            value = item.value
            length = len(value) if isinstance(value, (bytes, bytearray, str)) else 0
        if tag == 0x7FE00010 or (HEADER_ELEMENT_LIMIT < length != 0xFFFFFFFF):
            del ds[tag]
    return ds


def load_series_volume(series: DicomSeries) -> SeriesVolume:
    """Read the pixels of a sorted, checked stack; rescale slope/intercept (modality LUT) applied per slice."""
    stack = sort_slices(series)
    first = stack.files[0]
    affine = check_affine(LPS_TO_RAS @ stack.affine_lps, series.label())
    too_big = voxel_budget_problem((first.columns, first.rows, len(stack.files)))
    if too_big:
        raise DicomSeriesError(f"{series.label()}: {too_big}")
    array = np.empty((first.columns, first.rows, len(stack.files)), dtype=np.float32)
    headers: list[pydicom.Dataset] = []
    for k, f in enumerate(stack.files):
        try:
            # as scanned (files without the preamble are DICOM too); big values stay on disk until asked for
            ds = pydicom.dcmread(f.path, force=True, defer_size=HEADER_ELEMENT_LIMIT)
            pixels = apply_modality_lut(ds.pixel_array, ds)
        except Exception as exc:  # truncated pixel data, unsupported compression, ...
            raise DicomSeriesError(f"{f.path}: cannot read pixel data ({describe(exc)})") from exc
        if pixels.shape != (first.rows, first.columns):
            raise DicomSeriesError(f"{f.path}: pixel array shape {pixels.shape}, expected {(first.rows, first.columns)}")
        array[:, :, k] = pixels.T
        headers.append(slim_header(ds))  # memory stays flat over long series
    return SeriesVolume(array, affine, headers)
