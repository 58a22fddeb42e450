"""``measure`` and ``growth`` on synthetic shapes whose diameters are known, and on the bundled expert label."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from monaiunetseg.cli import main
from monaiunetseg.measure.growth import growth, rano_lgg_category
from monaiunetseg.measure.shape import COLUMNS as SHAPE_COLUMNS
from monaiunetseg.measure.shape import axial_axis, farthest_pair, measure_labelmap

from conftest import SAMPLE_FLAIR, SAMPLE_LABEL

VOXEL = 1.0  # tolerance of a rasterised diameter: about one voxel
SHAPE = (81, 81, 61)  # odd: voxel centres on whole millimetres, the centre voxel at the world origin


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def grid_affine(spacing=(1.0, 1.0, 1.0), shape=SHAPE) -> np.ndarray:
    """RAS affine of an axial grid centred on the world origin."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return affine


def world_points(shape, affine) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T
    return (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def ellipsoid(shape, affine, semi_axes, rotate=np.eye(3), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxels whose centres lie in the ellipsoid with ``semi_axes`` (mm) along the rows of ``rotate``'s inverse."""
    local = (world_points(shape, affine) - np.asarray(centre)) @ rotate  # world -> the ellipsoid's own axes
    return ((local / np.asarray(semi_axes)) ** 2).sum(axis=-1) <= 1.0


def box(shape, affine, half, rotate=np.eye(3)) -> np.ndarray:
    local = world_points(shape, affine) @ rotate
    return (np.abs(local) <= np.asarray(half) + 1e-6).all(axis=-1)


def test_axis_aligned_ellipsoid():
    affine = grid_affine()
    row = measure_labelmap(ellipsoid(SHAPE, affine, (25, 15, 10)), affine)
    assert row["components"] == 1 and row["lesion"] == 0 and len(row["lesions"]) == 1
    assert row["volume_ml"] == pytest.approx(4 / 3 * math.pi * 25 * 15 * 10 / 1000, rel=0.03)
    assert row["max_diameter_mm"] == pytest.approx(50, abs=VOXEL)
    assert row["axial_longest_mm"] == pytest.approx(50, abs=VOXEL)
    assert row["axial_perpendicular_mm"] == pytest.approx(30, abs=VOXEL)
    assert row["bidimensional_mm2"] == pytest.approx(1500, rel=0.05)
    assert row["axial_axis"] == 2 and row["axial_tilt_deg"] == 0
    assert row["axial_slice"] == 30
    assert row["mean_tumour_diameter_mm"] == pytest.approx((2 * row["volume_ml"] * 1000) ** (1 / 3))
    assert [row["centroid_r"], row["centroid_a"], row["centroid_s"]] == pytest.approx([0, 0, 0], abs=0.6)


def test_rotated_ellipsoid_in_plane_and_in_3d():
    affine = grid_affine()
    in_plane = measure_labelmap(ellipsoid(SHAPE, affine, (25, 15, 10), rotation("z", 30)), affine)
    assert in_plane["max_diameter_mm"] == pytest.approx(50, abs=VOXEL)
    assert in_plane["axial_longest_mm"] == pytest.approx(50, abs=VOXEL)
    assert in_plane["axial_perpendicular_mm"] == pytest.approx(30, abs=1.5 * VOXEL)
    tilted = measure_labelmap(ellipsoid(SHAPE, affine, (25, 15, 10), rotation("x", 35) @ rotation("z", 20)),
                              affine)
    assert tilted["max_diameter_mm"] == pytest.approx(50, abs=VOXEL)


def test_boxes_axis_aligned_and_rotated():
    affine = grid_affine()
    half = (20, 10, 5)  # voxel-centre extents 40 x 20 x 10 mm
    row = measure_labelmap(box(SHAPE, affine, half), affine)
    assert row["volume_ml"] == pytest.approx(41 * 21 * 11 / 1000)  # voxel centres from -20 to 20 mm, ...
    assert row["max_diameter_mm"] == pytest.approx(math.sqrt(40**2 + 20**2 + 10**2))
    assert row["axial_longest_mm"] == pytest.approx(math.sqrt(40**2 + 20**2))
    # The longest chord perpendicular to the diagonal of a w x h rectangle (w >= h) runs from a corner: h * D / w.
    assert row["axial_perpendicular_mm"] == pytest.approx(20 * math.sqrt(40**2 + 20**2) / 40, abs=VOXEL)
    rotated = measure_labelmap(box(SHAPE, affine, half, rotation("z", 30)), affine)
    assert rotated["axial_longest_mm"] == pytest.approx(math.sqrt(40**2 + 20**2), abs=1.5 * VOXEL)
    assert rotated["max_diameter_mm"] == pytest.approx(math.sqrt(40**2 + 20**2 + 10**2), abs=1.5 * VOXEL)


def test_l_shape_perpendicular_chord_is_one_limb_not_the_caliper_width():
    mask = np.zeros((50, 50, 5), dtype=bool)
    mask[0:40, 0:10, 1:4] = True  # a limb along axis 0
    mask[0:10, 0:40, 1:4] = True  # a limb along axis 1
    row = measure_labelmap(mask, np.eye(4))
    assert row["axial_longest_mm"] == pytest.approx(39 * math.sqrt(2))  # tip to tip
    # Perpendicular to the tip-to-tip line each limb is 10 voxels wide: a 45-degree chord of 9-10 * sqrt(2) mm;
    # the caliper width across it (both limbs) is (39 + 9) / sqrt(2) = 33.9 mm.
    assert 9 * math.sqrt(2) - VOXEL <= row["axial_perpendicular_mm"] <= 10 * math.sqrt(2) + VOXEL
    assert row["bidimensional_mm2"] == pytest.approx(row["axial_longest_mm"] * row["axial_perpendicular_mm"])


def test_anisotropic_spacing_gives_the_same_millimetres():
    spacing, shape = (0.8, 1.2, 3.0), (101, 71, 25)
    affine = grid_affine(spacing, shape)
    row = measure_labelmap(ellipsoid(shape, affine, (25, 15, 20)), affine)
    assert row["volume_ml"] == pytest.approx(4 / 3 * math.pi * 25 * 15 * 20 / 1000, rel=0.05)
    assert row["max_diameter_mm"] == pytest.approx(50, abs=1.2)
    assert row["axial_longest_mm"] == pytest.approx(50, abs=1.2)
    # voxel centres 28.8 mm apart across A: a chord between them loses up to a voxel of 1.2 mm at each end
    assert row["axial_perpendicular_mm"] == pytest.approx(30, abs=2 * 1.2)


def test_sagittal_storage_measures_in_the_patient_axial_plane():
    """The same lesion stored as sagittal slices (rows along S, flipped) gives the axial storage's numbers."""
    affine = grid_affine()
    mask = ellipsoid(SHAPE, affine, (25, 15, 10), rotation("z", 25), centre=(8, -5, 3))
    axial = measure_labelmap(mask, affine)
    # voxel (a, s, r) of the sagittal array is voxel (r, a, 60 - s) of the axial one
    sagittal_mask = mask.transpose(1, 2, 0)[:, ::-1, :]
    sagittal_affine = np.eye(4)
    sagittal_affine[:3, :3] = np.stack([affine[:3, 1], -affine[:3, 2], affine[:3, 0]], axis=1)
    sagittal_affine[:3, 3] = affine[:3, 3] + 60 * affine[:3, 2]
    sagittal = measure_labelmap(sagittal_mask, sagittal_affine)
    assert axial_axis(sagittal_affine) == (1, 0.0)
    assert sagittal["axial_axis"] == 1 and sagittal["axial_slice"] == 60 - axial["axial_slice"]
    for column in ("volume_ml", "max_diameter_mm", "centroid_r", "centroid_a", "centroid_s", "sum_products_mm2"):
        assert sagittal[column] == pytest.approx(axial[column], abs=1e-6), column
    for column in ("axial_longest_mm", "axial_perpendicular_mm"):
        assert sagittal[column] == pytest.approx(axial[column], abs=0.5), column
    assert sagittal["side"] == axial["side"] == "both"  # centred 8 mm right, 25 mm long


def test_oblique_grid_uses_the_axis_closest_to_s_and_reports_the_tilt():
    affine = grid_affine()
    affine[:3, :3] = rotation("x", 20) @ affine[:3, :3]
    axis, tilt = axial_axis(affine)
    assert axis == 2 and tilt == pytest.approx(20)
    row = measure_labelmap(box(SHAPE, grid_affine(), (20, 10, 5)), affine)
    assert row["axial_tilt_deg"] == pytest.approx(20)
    assert row["axial_longest_mm"] == pytest.approx(math.sqrt(40**2 + 20**2))  # the grid's own slices


def test_two_components_give_lesion_rows_and_sides():
    affine = grid_affine()
    shape = SHAPE
    big = ellipsoid(shape, affine, (10, 10, 10), centre=(20, 0, 0))  # right (RAS +x)
    small = ellipsoid(shape, affine, (5, 5, 5), centre=(-20, 0, 0))  # left
    row = measure_labelmap(big | small, affine)
    assert row["components"] == 2 and [lesion["lesion"] for lesion in row["lesions"]] == [1, 2]
    first, second = row["lesions"]
    assert first["volume_ml"] > second["volume_ml"] and first["side"] == "right" and second["side"] == "left"
    assert row["side"] == "both"
    assert row["volume_ml"] == pytest.approx(first["volume_ml"] + second["volume_ml"])
    assert first["max_diameter_mm"] == pytest.approx(20, abs=VOXEL)
    assert second["max_diameter_mm"] == pytest.approx(10, abs=VOXEL)
    assert row["max_diameter_mm"] == pytest.approx(55, abs=VOXEL)  # from the far side of one to the other
    assert row["sum_products_mm2"] == pytest.approx(first["bidimensional_mm2"] + second["bidimensional_mm2"])
    assert first["centroid_r"] == pytest.approx(20, abs=0.6) and second["centroid_r"] == pytest.approx(-20, abs=0.6)


def test_side_is_relative_to_the_head_midline_when_the_scan_is_given():
    affine = grid_affine()
    shape = SHAPE
    head = ellipsoid(shape, affine, (30, 35, 25), centre=(12, 0, 0)).astype(np.float32) * 500
    lesion = ellipsoid(shape, affine, (4, 4, 4), centre=(6, 0, 0))
    assert measure_labelmap(lesion, affine)["side"] == "right"  # of x = 0
    row = measure_labelmap(lesion, affine, image=(head, affine))
    assert row["midline_r"] == pytest.approx(12, abs=0.6) and row["side"] == "left"


def test_empty_and_single_voxel_labelmaps():
    empty = measure_labelmap(np.zeros((5, 5, 5), dtype=np.uint8), np.eye(4))
    assert empty["components"] == 0 and empty["volume_ml"] == 0 and empty["lesions"] == []
    assert empty["axial_slice"] is None and empty["side"] == "" and empty["sum_products_mm2"] == 0
    one = np.zeros((5, 5, 5), dtype=np.uint8)
    one[2, 3, 4] = 7  # any non-zero label is lesion
    row = measure_labelmap(one, np.eye(4))
    assert row["components"] == 1 and row["max_diameter_mm"] == 0 and row["axial_slice"] == 4


def test_farthest_pair_of_flat_and_straight_sets():
    line = np.array([[0, 0, 0], [1, 1, 1], [3, 3, 3], [2, 2, 2]], dtype=float)
    assert farthest_pair(line)[2] == pytest.approx(3 * math.sqrt(3))
    square = np.array([[x, y, 5] for x in range(10) for y in range(4)], dtype=float)
    assert farthest_pair(square)[2] == pytest.approx(math.sqrt(81 + 9))


def write_nifti(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(path)
    return path


def test_measure_cli_writes_csv_and_json_with_paths_as_given(tmp_path: Path, monkeypatch, capsys):
    from monaiunetseg.io import nrrd_mha

    affine = grid_affine(shape=(40, 40, 30))
    mask = ellipsoid((40, 40, 30), affine, (8, 6, 4))
    monkeypatch.chdir(tmp_path)
    write_nifti(mask, affine, tmp_path / "a.nii.gz")
    (tmp_path / "sub").mkdir()
    nrrd_mha.write_labelmap(mask.astype(np.uint8), tmp_path / "sub" / "b.nrrd", affine=affine)
    rc = main(["measure", "a.nii.gz", "sub/b.nrrd", "--csv", "m.csv", "--json", "m.json", "--lesions"])
    assert rc == 0
    with open(tmp_path / "m.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["labelmap"], r["lesion"]) for r in rows] == [("a.nii.gz", "0"), ("a.nii.gz", "1"),
                                                           ("sub/b.nrrd", "0"), ("sub/b.nrrd", "1")]
    assert float(rows[0]["volume_ml"]) == pytest.approx(float(rows[2]["volume_ml"]))
    assert float(rows[0]["max_diameter_mm"]) == pytest.approx(16, abs=VOXEL)
    document = json.loads((tmp_path / "m.json").read_text())
    assert [r["labelmap"] for r in document["rows"]] == ["a.nii.gz", "sub/b.nrrd"]
    assert document["rows"][0]["components"] == 1 and len(document["rows"][0]["lesions"]) == 1
    assert "a.nii.gz: " in capsys.readouterr().out
    assert main(["measure", "a.nii.gz", "missing.nii.gz", "--csv", "m2.csv"]) == 1  # measured the rest
    with open(tmp_path / "m2.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["error"] == "" and rows[1]["labelmap"] == "missing.nii.gz" and "no such file" in rows[1]["error"]


def test_measure_the_bundled_expert_label():
    from monaiunetseg.measure.report import measure_files

    (row,) = measure_files([SAMPLE_LABEL], SAMPLE_FLAIR)
    assert row["error"] == "" and row["components"] >= 1
    assert row["volume_ml"] == pytest.approx(31453 * 3 / 1000)  # 1 x 1 x 3 mm nominal voxels
    assert 0 < row["axial_perpendicular_mm"] <= row["axial_longest_mm"] <= row["max_diameter_mm"]
    assert row["axial_axis"] == 2 and row["side"] in ("left", "right", "both")


def test_rano_lgg_categories():
    assert rano_lgg_category(100, 125) == "progressive disease"
    assert rano_lgg_category(100, 124) == "stable disease"
    assert rano_lgg_category(100, 76) == "stable disease"
    assert rano_lgg_category(100, 75) == "minor response"
    assert rano_lgg_category(100, 51) == "minor response"
    assert rano_lgg_category(100, 50) == "partial response"
    assert rano_lgg_category(100, 0) == "complete response"
    assert rano_lgg_category(0, 10) == "progressive disease"
    assert rano_lgg_category(0, 0) == "no measurable lesion"


def test_growth_of_a_sphere_from_radius_10_to_12_mm_in_365_days(tmp_path: Path, capsys):
    shape = (40, 40, 40)
    affine = grid_affine(shape=shape)
    base = write_nifti(ellipsoid(shape, affine, (10, 10, 10)), affine, tmp_path / "t0.nii.gz")
    follow = write_nifti(ellipsoid(shape, affine, (12, 12, 12)), affine, tmp_path / "t1.nii.gz")
    rc = main(["growth", str(base), str(follow), "--dates", "2020-01-01", "2020-12-31",
               "--json", str(tmp_path / "g.json")])
    assert rc == 0
    line = capsys.readouterr().out
    assert "progressive disease" in line and "research use only" in line and "mm/year" in line
    change = json.loads((tmp_path / "g.json").read_text())
    assert change["interval_days"] == 365
    mtd = lambda r: (2 * 4 / 3 * math.pi * r**3) ** (1 / 3)  # noqa: E731  the MTD of a sphere of radius r
    assert change["baseline_volume_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.03)
    assert change["volume_change_pct"] == pytest.approx((1.2**3 - 1) * 100, abs=5)
    assert change["mtd_velocity_mm_per_year"] == pytest.approx((mtd(12) - mtd(10)) * 365.25 / 365, abs=0.2)
    assert change["product_change_pct"] == pytest.approx((1.2**2 - 1) * 100, abs=5)
    assert change["rano_lgg_category"] == "progressive disease"
    assert change["baseline"]["labelmap"] == str(base) and "caveat" in change


def test_growth_without_dates_has_no_velocity():
    sphere = np.zeros((9, 9, 9), dtype=bool)
    sphere[2:7, 2:7, 2:7] = True
    row = measure_labelmap(sphere, np.eye(4))
    change = growth(row, row)
    assert change["mtd_velocity_mm_per_year"] is None and change["rano_lgg_category"] == "stable disease"
    with pytest.raises(ValueError):
        import datetime

        growth(row, row, (datetime.date(2021, 1, 1), datetime.date(2020, 1, 1)))


def write_seg(labels: np.ndarray, affine: np.ndarray, folder: Path, study_date: str) -> Path:
    """A DICOM SEG of ``labels`` over a synthetic MR series on the grid ``affine`` (axial, so S orders the slices)."""
    import pydicom

    from dicom_factory import write_series
    from monaiunetseg.io.dicom_seg import write_dicom_seg

    series = write_series(np.full(labels.shape, 100.0), affine, folder / "mr")
    datasets = sorted((pydicom.dcmread(p) for p in series["paths"]), key=lambda ds: float(ds.ImagePositionPatient[2]))
    for ds in datasets:
        ds.StudyDate = study_date
    return write_dicom_seg(labels.astype(np.uint8), datasets, folder / "seg.dcm")


def test_dicom_seg_labelmaps_measure_like_nifti_and_give_growth_their_study_dates(tmp_path: Path):
    from monaiunetseg.measure.report import growth_files, measure_files

    shape = (31, 31, 21)
    affine = grid_affine((0.9, 0.9, 2.0), shape)
    small, large = ellipsoid(shape, affine, (8, 6, 8)), ellipsoid(shape, affine, (10, 8, 10))
    seg0 = write_seg(small, affine, tmp_path / "t0", "20200101")
    seg1 = write_seg(large, affine, tmp_path / "t1", "20210101")
    (row,) = measure_files([seg0])
    expected = measure_labelmap(small, affine)
    for column in ("volume_ml", "max_diameter_mm", "axial_longest_mm", "axial_perpendicular_mm", "centroid_r",
                   "centroid_a", "centroid_s"):
        assert row[column] == pytest.approx(expected[column], abs=1e-4), column
    change = growth_files(seg0, seg1)
    assert change["interval_days"] == 366 and change["baseline_date"] == "2020-01-01"
    assert change["mtd_velocity_mm_per_year"] > 0 and change["rano_lgg_category"] == "progressive disease"


class EllipsoidSegmenter:
    """Stand-in for the model: a fixed lesion, so that segment's measurement columns have known values."""

    def __init__(self, centre=(-10.0, 5.0, 0.0)) -> None:
        self.centre = centre
        self.timings = SimpleNamespace(preprocess=0.0, model=0.0, postprocess=0.0)

    def segment(self, array, affine):
        return ellipsoid(array.shape, affine, (9, 6, 5), rotation("z", 20), centre=self.centre).astype(np.uint8)


@pytest.fixture
def head_scan(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A synthetic head (bright ellipsoid centred 6 mm right of x = 0), as NIfTI."""
    import nibabel as nib

    shape = (61, 61, 31)
    affine = grid_affine((1.0, 1.0, 2.0), shape)
    texture = np.arange(np.prod(shape)).reshape(shape) % 17  # a scan, not a label map (segment skips those)
    head = (ellipsoid(shape, affine, (25, 28, 25), centre=(6, 0, 0)) * 400 + 10 + texture).astype(np.int16)
    path = tmp_path / "in" / "head.nii.gz"
    path.parent.mkdir()
    nib.Nifti1Image(head, affine).to_filename(path)
    return path, head, affine


def test_segment_measure_fills_the_report_columns_for_new_and_kept_results(head_scan, tmp_path: Path):
    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.report import INTEGER_COLUMNS, MEASURE_COLUMNS, REPORT_COLUMNS
    from monaiunetseg.batch.run import run_batch

    path, head, affine = head_scan
    assert MEASURE_COLUMNS == [c for c in SHAPE_COLUMNS if c not in ("lesion", "volume_ml")]
    # new columns at the end: the measurements, then the shard (merge-reports)
    assert REPORT_COLUMNS[-len(MEASURE_COLUMNS) - 1:-1] == MEASURE_COLUMNS and REPORT_COLUMNS[-1] == "shard"
    segmenter = EllipsoidSegmenter()
    expected = measure_labelmap(segmenter.segment(head, affine), affine, image=(head, affine))
    assert expected["side"] == "left" and expected["midline_r"] == pytest.approx(6, abs=0.6)
    out = tmp_path / "out"
    for attempt in ("new", "kept"):
        (res,) = run_batch([path], out, BatchOptions(progress=False, measure=True), segmenter=segmenter).results
        assert res.status == "ok" and (res.seconds is None) == (attempt == "kept")
        with open(out / "report.csv", newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        raw = json.loads((out / "report.json").read_text())["rows"][0]
        for column in MEASURE_COLUMNS:
            if column == "side":
                assert row[column] == raw[column] == "left"
            elif column in INTEGER_COLUMNS:
                assert row[column] == str(expected[column]) and raw[column] == expected[column], column
            else:
                assert float(row[column]) == pytest.approx(expected[column], abs=1e-3), column
                assert raw[column] == pytest.approx(expected[column]), column
    (res,) = run_batch([path], tmp_path / "plain", BatchOptions(progress=False), segmenter=segmenter).results
    with open(tmp_path / "plain" / "report.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["volume_ml"] != "" and all(row[c] == "" for c in MEASURE_COLUMNS)  # costly: only when asked


def test_segment_case_json_carries_the_measurements(head_scan, tmp_path: Path):
    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.single import result_json, segment_single

    path, head, affine = head_scan
    result = segment_single(path, tmp_path / "out", BatchOptions(progress=False, measure=True),
                            segmenter=EllipsoidSegmenter())
    data = json.loads(result_json(result))
    expected = measure_labelmap(EllipsoidSegmenter().segment(head, affine), affine, image=(head, affine))
    assert data["status"] == "ok" and data["components"] == 1 and data["side"] == "left"
    assert data["max_diameter_mm"] == pytest.approx(expected["max_diameter_mm"])
    assert data["bidimensional_mm2"] == pytest.approx(expected["bidimensional_mm2"])


def test_a_report_of_an_earlier_version_is_not_foreign(tmp_path: Path):
    from monaiunetseg.batch.report import FIRST_COLUMNS, REPORT_COLUMNS, foreign_reports

    report = tmp_path / "report.csv"
    report.write_text(",".join(FIRST_COLUMNS) + "\n")  # the first version's, before the newer columns
    assert foreign_reports(report) == []
    report.write_text(",".join(REPORT_COLUMNS) + "\n")
    assert foreign_reports(report) == []
    report.write_text(",".join(REPORT_COLUMNS[:4]) + "\n")
    assert foreign_reports(report) == [report]
    report.write_text("input,output,status,error,something,else\n")
    assert foreign_reports(report) == [report]


def test_diameters_match_brute_force_on_irregular_blobs():
    """Hull and surface shortcuts give the exact largest distances: checked against all pairs of voxel centres."""
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(3)
    affine = np.diag([0.9, 1.3, 2.5, 1.0])
    affine[:3, :3] = rotation("z", 17) @ affine[:3, :3]
    for _ in range(3):
        blob = ndimage.gaussian_filter(rng.random((24, 20, 10)), 2) > 0.52
        row = measure_labelmap(blob, affine)
        world = np.argwhere(blob) @ affine[:3, :3].T
        assert row["max_diameter_mm"] == pytest.approx(pdist(world).max())
        k = row["axial_slice"]
        in_plane = np.argwhere(blob[:, :, k]) @ affine[:2, :2].T
        longest = pdist(in_plane).max() if len(in_plane) > 1 else 0.0
        assert row["axial_longest_mm"] == pytest.approx(longest)
        assert row["components"] > 1  # several lesions: each one's diameter is its own
        labels, n = ndimage.label(blob, structure=np.ones((3, 3, 3)))
        brute = [pdist(np.argwhere(labels == i) @ affine[:3, :3].T).max(initial=0.0) for i in range(1, n + 1)]
        assert sorted(lesion["max_diameter_mm"] for lesion in row["lesions"]) == pytest.approx(sorted(brute))


def test_growth_of_scans_segments_them_first(head_scan, tmp_path: Path):
    from monaiunetseg.measure.report import growth_files

    path, head, affine = head_scan

    class Growing(EllipsoidSegmenter):
        def __init__(self):
            super().__init__()
            self.scale = 1.0

        def segment(self, array, affine):
            self.scale += 0.2  # the second scan's lesion: 1.4 / 1.2 of the first's in every direction
            return ellipsoid(array.shape, affine, (9 * self.scale, 6 * self.scale, 5 * self.scale),
                             centre=self.centre).astype(np.uint8)

    change = growth_files(path, path, segmenter=Growing())
    assert change["followup_volume_ml"] > change["baseline_volume_ml"] > 0
    assert change["rano_lgg_category"] == "progressive disease" and change["mtd_velocity_mm_per_year"] is None
    assert change["baseline"]["side"] == "left" and change["baseline"]["midline_r"] == pytest.approx(6, abs=0.6)


def test_growth_cli_on_the_bundled_scan_with_the_shipped_model(tmp_path: Path, capsys):
    assert main(["growth", str(SAMPLE_FLAIR), str(SAMPLE_FLAIR), "--images", "--device", "cpu",
                 "--dates", "2020-01-01", "2020-07-01", "--json", str(tmp_path / "g.json")]) == 0
    change = json.loads((tmp_path / "g.json").read_text())
    assert change["baseline_volume_ml"] > 10 and change["volume_change_ml"] == 0
    assert change["mtd_velocity_mm_per_year"] == 0 and change["rano_lgg_category"] == "stable disease"
    assert "stable disease" in capsys.readouterr().out


def _distance_to_border(points_ijk: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World distance (mm) from each point to the nearest voxel centre of the lesion's border (inside voxels
    with a face neighbour outside)."""
    from scipy import ndimage

    border = np.argwhere(mask & ~ndimage.binary_erosion(mask)) @ affine[:3, :3].T + affine[:3, 3]
    world = np.asarray(points_ijk) @ affine[:3, :3].T + affine[:3, 3]
    return np.sqrt(((world[:, None, :] - border[None]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("storage", ["axial", "sagittal"])
def test_diameter_end_points_lie_on_the_border_and_span_the_measured_lengths(storage: str):
    from segment_data import permuted

    affine = grid_affine()
    mask = ellipsoid(SHAPE, affine, (30, 18, 12), rotation("z", 25))
    if storage == "sagittal":
        mask, affine = permuted(mask, affine, (1, 2, 0))
    row = measure_labelmap(mask, affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    for name, column in (("longest", "axial_longest_mm"), ("perpendicular", "axial_perpendicular_mm")):
        segment = row["diameters"][name]
        ijk, ras = np.asarray(segment["ijk"]), np.asarray(segment["ras"])
        assert ijk.shape == ras.shape == (2, 3)
        assert np.allclose(ijk[:, row["axial_axis"]], row["axial_slice"])  # on the measured slice
        assert np.allclose(ijk @ affine[:3, :3].T + affine[:3, 3], ras)
        assert segment["length_mm"] == pytest.approx(row[column], abs=1e-6)
        assert (_distance_to_border(ijk, mask, affine) <= spacing.max()).all()  # within a voxel of the border
    long_dir = np.diff(np.asarray(row["diameters"]["longest"]["ras"]), axis=0)[0]
    perp_dir = np.diff(np.asarray(row["diameters"]["perpendicular"]["ras"]), axis=0)[0]
    assert abs(long_dir @ perp_dir) < 1e-6 * np.linalg.norm(long_dir) * np.linalg.norm(perp_dir)
    assert row["axial_longest_mm"] == pytest.approx(60, abs=2 * VOXEL)
    assert row["axial_perpendicular_mm"] == pytest.approx(36, abs=2 * VOXEL)


def test_diameters_of_lesions_are_on_the_labelmap_grid_and_absent_when_empty():
    affine = grid_affine()
    mask = ellipsoid(SHAPE, affine, (8, 6, 4), centre=(20, 0, 0)) | ellipsoid(SHAPE, affine, (5, 5, 3),
                                                                             centre=(-20, 10, 5))
    row = measure_labelmap(mask, affine)
    for lesion in row["lesions"]:
        ends = np.rint(np.asarray(lesion["diameters"]["longest"]["ijk"])).astype(int)
        assert mask[tuple(ends.T)].all()  # voxel centres of the lesion itself, in labelmap indices
    empty = measure_labelmap(np.zeros(SHAPE, np.uint8), affine)
    assert empty["diameters"] == {"longest": None, "perpendicular": None}


def test_segment_overlay_with_measure_draws_the_reported_diameters(head_scan, tmp_path: Path):
    from PIL import Image

    from monaiunetseg.batch.options import BatchOptions
    from monaiunetseg.batch.run import run_batch

    path, head, affine = head_scan
    out = tmp_path / "out"
    (res,) = run_batch([path], out, BatchOptions(progress=False, measure=True, overlay=True),
                       segmenter=EllipsoidSegmenter()).results
    assert res.status == "ok"
    text = Image.open(res.overlay).text
    expected = f"RANO {res.axial_longest_mm:.1f} x {res.axial_perpendicular_mm:.1f} mm = {res.bidimensional_mm2:.0f} mm²"
    assert f"{expected} (measured slice)" in text["Description"] and text["RANO lines"] == "drawn"
    assert text["Description"].startswith(f"slice {res.axial_slice + 1}/31 (axial)")
    (plain,) = run_batch([path], tmp_path / "plain", BatchOptions(progress=False, overlay=True),
                         segmenter=EllipsoidSegmenter()).results
    assert "RANO" not in Image.open(plain.overlay).text["Description"]  # without --measure: as before


def test_empty_labelmap_of_an_all_zero_scan_measures_without_a_midline():
    """``segment --measure`` on an all-zero scan: nothing found, nothing to place on a side, no error."""
    from monaiunetseg.measure.shape import measure_labelmap

    zeros = np.zeros((16, 16, 4), np.float32)
    row = measure_labelmap(np.zeros((16, 16, 4), np.uint8), np.eye(4), image=(zeros, np.eye(4)))
    assert row["volume_ml"] == 0 and row["components"] == 0 and row["side"] == ""
