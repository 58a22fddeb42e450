"""DICOM discovery, grouping, slice sorting and geometry on real series written from a shared LGG patient."""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.discover import discover_cases, shard
from monaiunetseg.batch.naming import assign_names, safe_name
from monaiunetseg.batch.report import FAILED, SKIPPED
from monaiunetseg.io.dicom_series import (
    DicomFile,
    DicomSeries,
    DicomSeriesError,
    flair_evidence,
    group_series,
    read_header,
)
from monaiunetseg.io.dicom_stack import load_series_volume, sort_slices

from dicom_factory import write_series
from segment_data import flipped, on_grid, save_nifti, small_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def two_series(kaggle_dir: Path, tmp_path_factory) -> dict:
    """One folder holding a FLAIR and a T1 series of the same study, files scrambled and randomly named.

    The FLAIR series is stored left-handed (slice index running inferior): sorting by position along the
    normal has to reverse the slice order.
    """
    folder = tmp_path_factory.mktemp("dicom") / "study"
    flair, affine = small_volume(kaggle_dir, n_slices=8)
    flair_d, affine_d = flipped(flair, affine, (2,))
    t1, _ = small_volume(kaggle_dir, n_slices=8, channel=0)
    f = write_series(flair_d, affine_d, folder, description="AX FLAIR", series_number=5, seed=1)
    t = write_series(t1, affine, folder, description="AX T1", series_number=3, study_uid=f["study_uid"], seed=2,
                     slope=1.0, intercept=0.0)
    return {"folder": folder, "flair": flair, "affine": affine, "flair_d": flair_d, "affine_d": affine_d,
            "t1": t1, "flair_info": f, "t1_info": t}


def _series(folder: Path) -> list[DicomSeries]:
    return group_series([read_header(p) for p in sorted(folder.iterdir())])


def test_groups_two_series_in_one_folder(two_series):
    series = _series(two_series["folder"])
    by_uid = {s.uid: s for s in series}
    assert set(by_uid) == {two_series["flair_info"]["series_uid"], two_series["t1_info"]["series_uid"]}
    assert len(by_uid[two_series["flair_info"]["series_uid"]].files) == 8
    assert flair_evidence(by_uid[two_series["flair_info"]["series_uid"]]) == "SeriesDescription 'AX FLAIR'"
    assert flair_evidence(by_uid[two_series["t1_info"]["series_uid"]]) is None


def test_volume_equals_source_in_world_space(two_series):
    """Scrambled files and InstanceNumbers, rescale slope 0.5 / intercept -10: the volume read back is the
    source array exactly, on a grid that maps every voxel to the same world position."""
    flair_series = next(s for s in _series(two_series["folder"]) if s.uid == two_series["flair_info"]["series_uid"])
    vol = load_series_volume(flair_series)
    # Sorted ascending along the normal = the source's slice order reversed (it was stored left-handed).
    np.testing.assert_array_equal(vol.array, two_series["flair_d"][:, :, ::-1])
    np.testing.assert_array_equal(on_grid(vol.array, vol.affine, two_series["flair"].shape, two_series["affine"]),
                                  two_series["flair"])
    assert vol.array.dtype == np.float32
    assert [int(ds.InstanceNumber) for ds in vol.datasets] != sorted(int(ds.InstanceNumber) for ds in vol.datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in vol.datasets]
    assert z == sorted(z)
    assert all("PixelData" not in ds for ds in vol.datasets)  # headers only are kept


def test_geometry_agrees_with_simpleitk_and_highdicom(two_series):
    """Independent readers (GDCM through SimpleITK; highdicom) find the same grid and values."""
    flair_series = next(s for s in _series(two_series["folder"]) if s.uid == two_series["flair_info"]["series_uid"])
    vol = load_series_volume(flair_series)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(two_series["folder"]), two_series["flair_info"]["series_uid"])
    reader.SetFileNames(names)
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    sitk_lps = np.eye(4)
    sitk_lps[:3, :3] = direction * np.array(image.GetSpacing())
    sitk_lps[:3, 3] = image.GetOrigin()
    sitk_array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (column, row, slice)
    np.testing.assert_array_equal(on_grid(sitk_array, LPS_TO_RAS @ sitk_lps, vol.array.shape, vol.affine), vol.array)

    hd_volume = hd.get_volume_from_series([pydicom.dcmread(p) for p in two_series["flair_info"]["paths"]])
    hd_array = hd_volume.array  # (slice, row, column) with an LPS affine over those indices
    np.testing.assert_allclose(on_grid(hd_array, LPS_TO_RAS @ hd_volume.affine, vol.array.shape, vol.affine), vol.array)


def _small_series(tmp_path: Path, name: str, **kwargs) -> DicomSeries:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 500, size=(24, 20, 6)).astype(np.float32)
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])
    write_series(array, affine, tmp_path / name, **kwargs)
    (series,) = _series(tmp_path / name)
    return series


def test_missing_slice_is_an_error_naming_the_folder(tmp_path: Path):
    series = _small_series(tmp_path, "gap", skip_slices=(3,))
    with pytest.raises(DicomSeriesError, match=r"missing slice") as err:
        sort_slices(series)
    assert str(tmp_path / "gap") in str(err.value)
    assert "5.00 mm" in str(err.value) and "2.50 mm" in str(err.value)


def test_mixed_orientations_is_an_error(tmp_path: Path):
    series = _small_series(tmp_path, "mixed", orientation_override={2: [1, 0, 0, 0, 0, -1], 4: [1, 0, 0, 0, 0, -1]})
    with pytest.raises(DicomSeriesError, match=r"mixed orientations") as err:
        sort_slices(series)
    assert str(tmp_path / "mixed") in str(err.value)


def test_oblique_series_geometry(tmp_path: Path):
    """An oblique stack (rotated 20 degrees about two axes) keeps its direction cosines and spacing."""
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS[:3, :3] @ rx @ ry @ np.diag([0.8, 0.7, 3.3])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    array = np.random.default_rng(1).integers(0, 900, size=(16, 12, 5)).astype(np.float32)
    write_series(array, affine, tmp_path / "oblique", seed=3)
    vol = load_series_volume(_series(tmp_path / "oblique")[0])
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, array)


def test_flair_selection_by_name_and_timing():
    def series(**kw) -> DicomSeries:
        return DicomSeries("1.2", [DicomFile(Path("x"), "1.2", **kw)])

    for text in ("AX FLAIR", "t2_tirm_tra_dark-fluid", "T2F", "Sag 3D T2 FLAIR", "T2W_FLAIR", "DarkFluid",
                 "fluid attenuated IR"):
        assert flair_evidence(series(series_description=text)), text
    assert flair_evidence(series(protocol_name="ax_flair_fs")) == "ProtocolName 'ax_flair_fs'"
    for text in ("AX T1", "t2_fse", "T1 MPRAGE", "COR STIR", "t2_tirm_cor_stir", "T2FS"):
        assert flair_evidence(series(series_description=text)) is None, text
    assert flair_evidence(series(series_description="AX 5", inversion_time=2500.0, echo_time=120.0))
    assert flair_evidence(series(series_description="MPRAGE", inversion_time=900.0, echo_time=3.0)) is None


def test_discovery_default_skips_t1_and_all_series_takes_it(two_series, tmp_path: Path):
    (two_series["folder"] / "notes.txt").write_text("not an image")
    try:
        default = discover_cases([two_series["folder"]])
        everything = discover_cases([two_series["folder"]], all_series=True)
    finally:
        (two_series["folder"] / "notes.txt").unlink()
    runnable = [c for c in default if c.kind == "dicom"]
    assert [c.series_uid for c in runnable] == [two_series["flair_info"]["series_uid"]]
    skipped = {c.series_uid: c for c in default if c.status == SKIPPED}
    t1 = skipped[two_series["t1_info"]["series_uid"]]
    assert "not a FLAIR series" in t1.problem and "AX T1" in t1.problem and "--all-series" in t1.problem
    other = [c for c in default if c.status == SKIPPED and not c.series]
    assert len(other) == 1 and "notes.txt" in other[0].problem
    assert sorted(c.series_uid for c in everything if c.kind == "dicom") == sorted(
        [two_series["flair_info"]["series_uid"], two_series["t1_info"]["series_uid"]])


def test_output_names_are_safe_and_unique(tmp_path: Path):
    assert "/" not in safe_name("../../etc/passwd") and ".." not in safe_name("../../etc/passwd")
    assert safe_name("..") == "case" and safe_name("CON") == "_CON"
    assert safe_name("Pat 1^A/B_19970726_S5_AX FLAIR (3mm)") == "Pat_1_A_B_19970726_S5_AX_FLAIR_3mm"
    cases = [Case("nifti", tmp_path / "a" / "scan.nii.gz"), Case("nifti", tmp_path / "b" / "SCAN.nii.gz"),
             Case("nifti", tmp_path / "c" / "other.nii")]
    assign_names(cases)
    names = [c.name for c in cases]
    assert len({n.lower() for n in names}) == 3
    assert names[2] == "other" and names[0].startswith("scan_") and names[1].startswith("SCAN_")
    again = [Case("nifti", c.source) for c in cases]
    assign_names(again)
    assert [c.name for c in again] == names  # stable across runs


def test_shards_cover_the_batch_exactly_once(two_series, kaggle_dir: Path, tmp_path: Path):
    flair, affine = small_volume(kaggle_dir, n_slices=4)
    for i in range(5):
        save_nifti(flair, affine, tmp_path / f"sub{i % 2}" / f"case{i}.nii.gz")
    (tmp_path / "empty").mkdir()
    inputs = [tmp_path, two_series["folder"], tmp_path / "missing.nii.gz"]
    cases = discover_cases(inputs, all_series=True)
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys)) == 8  # 5 NIfTI + 2 series + the missing file (the empty folder is inside tmp_path)
    assert [c.key for c in discover_cases(list(reversed(inputs)), all_series=True)] == keys  # deterministic
    for n in (1, 2, 3, 5, 11):
        parts = [shard(cases, n, k) for k in range(n)]
        flat = [c.key for p in parts for c in p]
        assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))
    with pytest.raises(ValueError):
        shard(cases, 2, 2)


def test_problem_files_in_discovery(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 3)
    cases = discover_cases([tmp_path / "empty", tmp_path / "junk.dcm", tmp_path / "nope"])
    by_source = {c.source.name: c for c in cases}
    assert by_source["empty"].status == FAILED and "no DICOM or NIfTI files" in by_source["empty"].problem
    assert by_source["junk.dcm"].status == FAILED and "junk.dcm" in by_source["junk.dcm"].problem
    assert by_source["nope"].status == FAILED and "no such file" in by_source["nope"].problem


def test_earlier_outputs_are_not_taken_as_scans(tmp_path: Path):
    from monaiunetseg.io.nifti import write_labelmap

    write_labelmap(np.zeros((8, 8, 3), dtype=np.uint8), np.eye(4), tmp_path / "old" / "scan_seg.nii.gz")
    (case,) = discover_cases([tmp_path / "old"])
    assert case.status == SKIPPED and "earlier output" in case.problem and "scan_seg.nii.gz" in case.problem


def test_files_without_preamble_are_read_as_scanned(tmp_path: Path):
    """DICOM files lacking the 128-byte preamble and 'DICM' are found (force) and their pixels read too."""
    vol = np.random.default_rng(3).integers(0, 400, size=(20, 18, 5)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    info = write_series(vol, affine, tmp_path / "series", slope=1.0, intercept=0.0)
    for p in info["paths"]:
        p.write_bytes(p.read_bytes()[132:])
        with pytest.raises(pydicom.errors.InvalidDicomError):
            pydicom.dcmread(p)  # really without the preamble: a plain read refuses it
    (case,) = discover_cases([tmp_path / "series"])
    assert case.kind == "dicom" and case.series_uid == info["series_uid"]
    volume = load_series_volume(case.series)
    np.testing.assert_array_equal(on_grid(volume.array, volume.affine, vol.shape, affine), vol)


def test_corrupt_header_element_is_a_series_error_naming_the_file(tmp_path: Path):
    vol = np.zeros((8, 8, 3), dtype=np.float32)
    path = write_series(vol, np.eye(4), tmp_path / "series")["paths"][0]
    raw = path.read_bytes()
    i = raw.index(b"\x28\x00\x10\x00US\x02\x00")  # Rows, given a 3-byte value: pydicom fails only on access
    path.write_bytes(raw[:i] + b"\x28\x00\x10\x00US\x03\x00" + raw[i + 8:i + 10] + b"\x00" + raw[i + 10:])
    with pytest.raises(DicomSeriesError, match=f"^{path}: corrupt DICOM file"):
        read_header(path)
    by_source = {c.source: c for c in discover_cases([tmp_path / "series"], all_series=True)}
    assert by_source[path].status == FAILED and str(path) in by_source[path].problem


def _unlistable_folder_row(cases, folder: Path):
    (row,) = [c for c in cases if c.source == folder]
    assert row.status == FAILED and row.problem.startswith(f"{folder}: cannot list folder")
    return row


def test_unlistable_folder_is_a_failed_row(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from listing a folder")
    save_nifti(np.ones((8, 8, 3)), np.eye(4), tmp_path / "in" / "good.nii.gz")
    locked = tmp_path / "in" / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        cases = discover_cases([tmp_path / "in"])
        assert "Permission denied" in _unlistable_folder_row(cases, locked).problem
        assert [c.source.name for c in cases if c.kind == "nifti"] == ["good.nii.gz"]
    finally:
        locked.chmod(0o755)


def test_folder_beyond_path_max_is_a_failed_row(tmp_path: Path):
    """A folder that cannot be listed whoever runs it (root included): its path exceeds PATH_MAX."""
    save_nifti(np.arange(192.0).reshape(8, 8, 3), np.eye(4), tmp_path / "in" / "good.nii.gz")  # a scan, not a label map
    fd = os.open(tmp_path / "in", os.O_RDONLY)
    try:
        for _ in range(os.pathconf(tmp_path, "PC_PATH_MAX") // 256 + 1):
            os.mkdir("d" * 255, dir_fd=fd)
            fd, parent = os.open("d" * 255, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)
    cases = discover_cases([tmp_path / "in"])
    (row,) = [c for c in cases if c.kind == "problem"]
    assert row.status == FAILED and "cannot list folder (File name too long)" in row.problem
    assert str(row.source).startswith(str(tmp_path / "in" / ("d" * 255)))
    assert [c.source.name for c in cases if c.kind == "nifti"] == ["good.nii.gz"]


@pytest.mark.parametrize("cut", [0, 400])
@pytest.mark.parametrize("which", [0, -1])
def test_series_with_a_truncated_first_or_last_slice_fails_as_a_whole(kaggle_dir: Path, tmp_path: Path, cut, which):
    """Issue 22.8: the first or last slice file cut to 0 or 400 bytes names no series (its UID is gone), and the
    other slices still form a regular stack: it was segmented on them. Such a file beside a series' slices fails
    the series, naming the file; segment-case says so too."""
    from monaiunetseg.batch.single import segment_single

    array, affine = small_volume(kaggle_dir, n_slices=6)
    series = write_series(array, affine, tmp_path / "in" / "series", description="AX FLAIR")
    victim = series["paths"][which]
    victim.write_bytes(victim.read_bytes()[:cut])
    cases = discover_cases([tmp_path / "in"])
    assert not [c for c in cases if c.kind == "dicom"]
    (failed,) = [c for c in cases if c.series is not None]
    assert failed.status == FAILED and "possibly incomplete series" in failed.problem
    assert f"empty or truncated (e.g. {victim})" in failed.problem
    result = segment_single(tmp_path / "in" / "series", tmp_path / "out")
    assert result.status == "failed" and str(victim) in result.error and result.output == ""


def test_two_patients_sharing_a_series_uid_are_refused_naming_both(kaggle_dir: Path, tmp_path: Path):
    """Issue 22.3: two patients' folders with one SeriesInstanceUID and interleaved positions formed one regular
    stack of both, reported ok under the first patient. The series fails naming both patients and folders."""
    from monaiunetseg.batch.single import segment_single

    array, affine = small_volume(kaggle_dir, n_slices=8)
    uid = "1.2.826.0.1.3680043.8.498.12345"
    odd, even = tuple(range(1, 8, 2)), tuple(range(0, 8, 2))
    write_series(array, affine, tmp_path / "in" / "alice", patient_id="ALICE", series_uid=uid, skip_slices=odd)
    write_series(array, affine, tmp_path / "in" / "bob", patient_id="BOB", series_uid=uid, skip_slices=even, seed=3)
    cases = discover_cases([tmp_path / "in"])
    assert not [c for c in cases if c.kind == "dicom"]
    (failed,) = [c for c in cases if c.series is not None]
    assert failed.status == FAILED and "shared by 2 patients/studies" in failed.problem
    for text in ("'ALICE'", "'BOB'", str(tmp_path / "in" / "alice"), str(tmp_path / "in" / "bob")):
        assert text in failed.problem
    with pytest.raises(DicomSeriesError, match="shared by 2 patients"):
        load_series_volume(failed.series)
    result = segment_single(tmp_path / "in", tmp_path / "out")
    assert result.status == "failed" and "'BOB'" in result.error and result.output == ""


def test_large_private_elements_are_not_kept_in_the_headers(kaggle_dir: Path, tmp_path: Path):
    """Issue 22.11b: the headers kept per slice (the DICOM SEG's sources) held every element but the pixels, so a
    2 MiB private element before PixelData cost 2 MiB per slice for the whole case. Values over 64 KiB are now
    neither loaded nor kept; the volume and the SEG are as before."""
    import tracemalloc

    from monaiunetseg.io.dicom_seg import write_dicom_seg

    array, affine = small_volume(kaggle_dir, n_slices=12)
    info = write_series(array, affine, tmp_path / "big", description="AX FLAIR")
    for path in info["paths"]:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00290010, "LO", "VENDOR RAW")
        ds.add_new(0x00291010, "OB", bytes(2 * 2**20))
        ds.save_as(path)
    (series,) = _series(tmp_path / "big")
    tracemalloc.start()
    try:
        volume = load_series_volume(series)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"{peak / 2**20:.1f} MiB for 12 slices of 256x256"
    assert np.allclose(volume.array, array)
    assert all(0x00291010 not in ds and "PixelData" not in ds for ds in volume.datasets)
    assert all(ds.PatientID == "LGG-TEST-01" and ds.get((0x0029, 0x0010)).value == "VENDOR RAW" for ds in volume.datasets)
    seg = write_dicom_seg((volume.array > 400).astype(np.uint8), volume.datasets, tmp_path / "seg.dcm")
    assert hd.seg.segread(seg).number_of_frames == 12
