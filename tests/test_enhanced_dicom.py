"""Enhanced (multi-frame) DICOM: a single-file 3D image segmented on its own grid, alone or beside classic series,
with a DICOM SEG referencing its frames; multi-frame files that are not one 3D volume refused, saying why."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.io.dicom_multiframe import multiframe_problem
from monaiunetseg.io.dicom_volume import load_volume, volume_grid
from monaiunetseg.io.labelmap import read_source_record

from dicom_factory import write_enhanced, write_series, write_time_series
from segment_data import flipped, on_grid, small_volume


def _rows(report: Path) -> dict[str, dict[str, str]]:
    with open(report, newline="") as fh:
        return {r["series_uid"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def study(kaggle_dir: Path, tmp_path_factory) -> dict:
    """One folder tree: a classic FLAIR series (stored with flipped row and slice axes) and the same scan as one
    legacy-converted enhanced MR file (frames in the classic files' scrambled order), plus a 4D enhanced file."""
    root = tmp_path_factory.mktemp("enhanced")
    flair, affine = small_volume(kaggle_dir, n_slices=8)
    stored, stored_affine = flipped(flair, affine, (1, 2))
    classic = write_series(stored, stored_affine, root / "tree" / "classic", description="AX FLAIR", seed=11)
    enhanced = write_enhanced(classic["paths"], root / "tree" / "enhanced" / "flair_mf.dcm", description="AX FLAIR")
    time_series = write_time_series(enhanced["path"], root / "dynamic" / "dyn_mf.dcm")
    return {"root": root, "tree": root / "tree", "flair": flair, "affine": affine, "classic": classic,
            "enhanced": enhanced, "time_series": time_series}


def test_enhanced_volume_is_the_classic_volume(study):
    cases = {c.series_uid: c for c in discover_cases([study["tree"]])}
    classic, enhanced = cases[study["classic"]["series_uid"]], cases[study["enhanced"]["series_uid"]]
    assert classic.kind == enhanced.kind == "dicom" and enhanced.source == study["enhanced"]["path"].parent
    a, b = load_volume(classic.series), load_volume(enhanced.series)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)  # same grid, same orientation of the voxel axes
    np.testing.assert_array_equal(b.array, a.array)
    np.testing.assert_array_equal(on_grid(b.array, b.affine, study["flair"].shape, study["affine"]), study["flair"])
    assert b.array.dtype == np.float32 and len(b.datasets) == 1 and "PixelData" not in b.datasets[0]
    assert sorted(b.frame_slices) == list(range(8)) and b.frame_slices != list(range(8))  # frames scrambled
    shape, affine = volume_grid(enhanced.series)  # header only, for resume
    assert shape == b.array.shape and np.allclose(affine, b.affine, atol=1e-5)


def test_enhanced_and_classic_give_the_same_labelmap_and_seg_references_frames(study, segmenter, tmp_path: Path):
    out = tmp_path / "out"
    result = run_batch([study["tree"]], out, BatchOptions(dicom_seg=True, progress=False), segmenter=segmenter)
    assert result.exit_code == 0
    rows = _rows(out / "report.csv")
    classic, enhanced = rows[study["classic"]["series_uid"]], rows[study["enhanced"]["series_uid"]]
    assert classic["status"] == enhanced["status"] == "ok", (classic, enhanced)
    assert Path(enhanced["output"]).name == "LGG-TEST-01_19970726_S7_AX_FLAIR_seg.nii.gz"
    a, b = nib.load(classic["output"]), nib.load(enhanced["output"])
    labels = np.asarray(b.dataobj)
    assert labels.any() and b.get_data_dtype() == np.uint8
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    np.testing.assert_array_equal(labels, np.asarray(a.dataobj))  # voxel-identical in world space
    assert float(enhanced["volume_ml"]) == pytest.approx(float(classic["volume_ml"]))
    assert read_source_record(enhanced["output"])["series_uid"] == study["enhanced"]["series_uid"]

    seg = hd.seg.segread(enhanced["dicom_seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["enhanced"]["series_uid"]
    source = pydicom.dcmread(study["enhanced"]["path"], stop_before_pixels=True)
    assert int(seg.NumberOfFrames) == int(source.NumberOfFrames) == 8
    for number, item in enumerate(source.PerFrameFunctionalGroupsSequence, start=1):
        ref = seg.PerFrameFunctionalGroupsSequence[number - 1].DerivationImageSequence[0].SourceImageSequence[0]
        assert (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber)) == (study["enhanced"]["sop_uid"], number)
        frame = seg.get_pixels_by_source_frame(source_sop_instance_uid=study["enhanced"]["sop_uid"],
                                               source_frame_numbers=[number], segment_numbers=[1])[0, :, :, 0]
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = np.rint(np.linalg.inv(b.affine) @ np.r_[position * [-1, -1, 1], 1])[2].astype(int)  # LPS -> RAS
        np.testing.assert_array_equal(frame, labels[:, :, k].T)  # frame (row, column) = that slice of the labelmap

    again = run_batch([study["tree"]], out, BatchOptions(dicom_seg=True, progress=False), segmenter=segmenter)
    assert again.n_existing == 2  # resume recognises the enhanced output (header-only grid check)


def test_four_d_enhanced_file_is_refused_naming_why(study, tmp_path: Path):
    out = tmp_path / "out"
    result = run_batch([study["time_series"]], out, BatchOptions(progress=False))
    (row,) = result.results
    assert row.status == "failed"
    assert "2 temporal positions" in row.error and "not one 3D volume" in row.error
    assert str(study["time_series"].parent) in row.error
    with pytest.raises(Exception, match="2 temporal positions"):
        load_volume(discover_cases([study["time_series"]])[0].series)


def _header(study) -> pydicom.Dataset:
    return pydicom.dcmread(study["enhanced"]["path"], stop_before_pixels=True)


def _set(ds: pydicom.Dataset, frame: int, group: str, keyword: str, value) -> None:
    item = ds.PerFrameFunctionalGroupsSequence[frame]
    if group not in item:
        setattr(item, group, [pydicom.Dataset()])
    setattr(getattr(item, group)[0], keyword, value)


def test_multiframe_problems_name_the_dimension(study):
    assert multiframe_problem(_header(study)) is None
    cases = {
        "diffusion b-values": ("MRDiffusionSequence", "DiffusionBValue", [0, 1000]),
        "echo times": ("MREchoSequence", "EffectiveEchoTime", [90.0, 120.0]),
        "stacks": ("FrameContentSequence", "StackID", ["1", "2"]),
        "mixed orientations": ("PlaneOrientationSequence", "ImageOrientationPatient", [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]]),
    }
    for meaning, (group, keyword, values) in cases.items():
        ds = _header(study)
        for frame in range(int(ds.NumberOfFrames)):
            _set(ds, frame, group, keyword, values[frame % 2])
        assert meaning in (multiframe_problem(ds) or ""), meaning
    ds = _header(study)
    position = copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence)
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence = position
    assert "8 frames at 7 distinct positions" in multiframe_problem(ds)
    del ds.PerFrameFunctionalGroupsSequence
    assert "without per-frame functional groups" in multiframe_problem(ds)
