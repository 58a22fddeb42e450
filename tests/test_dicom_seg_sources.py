"""``--dicom-seg`` on source headers as real scanners write them (#22.7a, b): values our reader accepts as equal
within its tolerance, but highdicom wants identical or shared."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch

from dicom_factory import slice_geometry, write_enhanced, write_series
from segment_data import small_volume

OPTIONS = BatchOptions(dicom_seg=True, progress=False)


def _check_seg(row, n_frames: int, series_uid: str) -> None:
    assert row.status == "ok" and row.note == "" and row.dicom_seg, (row.status, row.note, row.error)
    seg = hd.seg.segread(row.dicom_seg)
    assert int(seg.NumberOfFrames) == n_frames
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid


def test_orientation_jittering_by_1e_8_between_slices(kaggle_dir: Path, segmenter, tmp_path: Path):
    """Issue 22.7a: cosines differing by ~1e-8 between slices (as scanners round them) made highdicom refuse
    ("Source images must have a shared orientation"); the SEG is written on the first slice's orientation."""
    array, affine = small_volume(kaggle_dir, n_slices=6)
    iop, _, _ = slice_geometry(affine, 0)
    jitter = {k: [v + (1e-8 if k % 2 and abs(v) < 0.5 else 0.0) for v in iop] for k in range(6)}
    info = write_series(array, affine, tmp_path / "in" / "jitter", orientation_override=jitter)
    assert len({pydicom.dcmread(p).ImageOrientationPatient[1] for p in info["paths"]}) == 2
    (row,) = run_batch([tmp_path / "in"], tmp_path / "out", OPTIONS, segmenter=segmenter).results
    _check_seg(row, 6, info["series_uid"])


@pytest.mark.parametrize("groups", [("PixelMeasuresSequence",), ("PixelMeasuresSequence", "PlaneOrientationSequence")])
def test_enhanced_source_with_per_frame_pixel_measures(kaggle_dir: Path, segmenter, tmp_path: Path, groups):
    """Issue 22.7b: an enhanced image keeping its pixel measures (and orientation) per frame, not shared, gave an
    AttributeError in highdicom; the SEG is written with them shared."""
    array, affine = small_volume(kaggle_dir, n_slices=6)
    classic = write_series(array, affine, tmp_path / "classic", seed=4)
    path = tmp_path / "in" / "mf" / "flair.dcm"
    info = write_enhanced(classic["paths"], path, description="AX FLAIR")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for group in groups:
        for item in ds.PerFrameFunctionalGroupsSequence:
            setattr(item, group, shared[group].value)
        del shared[group]
    ds.save_as(path)
    (row,) = run_batch([tmp_path / "in"], tmp_path / "out", OPTIONS, segmenter=segmenter).results
    _check_seg(row, 6, info["series_uid"])
