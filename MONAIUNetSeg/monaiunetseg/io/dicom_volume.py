"""One entry point for a DICOM series as a volume, whichever way it is stored: classic single-frame slices
(:mod:`monaiunetseg.io.dicom_series`) or one enhanced multi-frame file (:mod:`monaiunetseg.io.dicom_multiframe`).

Discovery, segmentation and resume call these, so a new storage form is added in one place.
"""

from __future__ import annotations

import numpy as np

from monaiunetseg.io.dicom_series import (LPS_TO_RAS, DicomSeries, DicomSeriesError, SeriesVolume, mixed_identity,
                                          not_a_volume)
from monaiunetseg.io.dicom_stack import load_series_volume, sort_slices


def is_multiframe(series: DicomSeries) -> bool:
    return any(f.n_frames > 1 for f in series.files)


def volume_problem(series: DicomSeries) -> str | None:
    """Why the series cannot be one 3D volume, judged from headers alone (None if it may be one)."""
    mixed = mixed_identity(series)
    if mixed:
        return mixed
    if is_multiframe(series):
        from monaiunetseg.io.dicom_multiframe import series_problem

        return series_problem(series)
    return not_a_volume(series)


def load_volume(series: DicomSeries) -> SeriesVolume:
    """Pixels and RAS geometry of the series; :class:`DicomSeriesError` naming the folder/file when it is no volume."""
    mixed = mixed_identity(series)
    if mixed:
        raise DicomSeriesError(f"{series.label()}: {mixed}")
    if is_multiframe(series):
        from monaiunetseg.io.dicom_multiframe import load_multiframe_volume

        return load_multiframe_volume(series)
    return load_series_volume(series)


def volume_grid(series: DicomSeries) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, RAS affine) the series' volume will have, from headers only (resume checks outputs against it)."""
    if is_multiframe(series):
        from monaiunetseg.io.dicom_multiframe import multiframe_grid

        return multiframe_grid(series)
    stack = sort_slices(series)
    first = stack.files[0]
    return (first.columns, first.rows, len(stack.files)), LPS_TO_RAS @ stack.affine_lps
