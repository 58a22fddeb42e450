"""``monaiunetseg segment`` end to end on real data: DICOM and NIfTI, SEG, bad inputs, resume, shards, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.dicom_seg import SEGMENT_CATEGORY, SEGMENT_LABEL, SEGMENT_TYPE
from monaiunetseg.io.nifti import read_source_record, write_labelmap

from conftest import SAMPLE_FLAIR
from dicom_factory import write_series
from segment_data import flipped, on_grid, save_nifti, small_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with (size, mtime_ns): proves a run wrote nothing there."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(kaggle_dir: Path, tmp_path_factory) -> dict:
    """A DICOM study (FLAIR stored with flipped row and slice axes + a T1, one folder) and the FLAIR as NIfTI."""
    root = tmp_path_factory.mktemp("segment_inputs")
    flair, affine = small_volume(kaggle_dir, n_slices=8)
    t1, _ = small_volume(kaggle_dir, n_slices=8, channel=0)
    flair_d, affine_d = flipped(flair, affine, (0, 2))
    f = write_series(flair_d, affine_d, root / "dicom" / "study", description="AX FLAIR", series_number=5, seed=4)
    t = write_series(t1, affine, root / "dicom" / "study", description="AX T1", series_number=3,
                     study_uid=f["study_uid"], seed=5, slope=1.0, intercept=0.0)
    nifti = save_nifti(flair, affine, root / "nifti" / "LGG_flair.nii.gz")
    return {"root": root, "study": root / "dicom" / "study", "nifti": nifti, "flair": flair, "affine": affine,
            "flair_uid": f["series_uid"], "t1_uid": t["series_uid"], "flair_paths": f["paths"]}


def test_dicom_and_nifti_batch_with_seg(data, segmenter, tmp_path: Path):
    out = tmp_path / "out"
    before = tree_state(data["root"])
    result = run_batch([data["study"], data["nifti"]], out, BatchOptions(dicom_seg=True, overlay=True, progress=False),
                       segmenter=segmenter)
    assert result.exit_code == 0
    rows = {(r["series_uid"] or r["input"]): r for r in read_report(out / "report.csv")}
    assert len(rows) == 3
    flair_row, t1_row, nifti_row = rows[data["flair_uid"]], rows[data["t1_uid"]], rows[str(data["nifti"])]
    assert flair_row["status"] == "ok" and flair_row["input"] == str(data["study"])
    assert flair_row["series_description"] == "AX FLAIR"
    assert Path(flair_row["output"]).name == "LGG-TEST-01_19970726_S5_AX_FLAIR_seg.nii.gz"
    assert t1_row["status"] == "skipped" and "not a FLAIR series" in t1_row["error"] and "AX T1" in t1_row["error"]
    assert nifti_row["status"] == "ok" and nifti_row["dicom_seg"] == "" and "needs a DICOM source" in nifti_row["note"]
    assert nifti_row["error"] == "" and Path(nifti_row["output"]).name == "LGG_flair_seg.nii.gz"
    assert tree_state(data["root"]) == before  # nothing written among the inputs
    assert Path(flair_row["overlay"]).name == "LGG-TEST-01_19970726_S5_AX_FLAIR_overlay.png"
    assert Image.open(flair_row["overlay"]).format == "PNG"

    # DICOM labelmap: uint8 {0, 1} on the DICOM grid, as an independent reader (GDCM via SimpleITK) sees it.
    seg_img = nib.load(flair_row["output"])
    labels_dicom = np.asarray(seg_img.dataobj)
    assert seg_img.get_data_dtype() == np.uint8 and set(np.unique(labels_dicom)) <= {0, 1}
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(data["study"]), data["flair_uid"]))
    sitk_img = reader.Execute()
    assert labels_dicom.shape == sitk_img.GetSize()
    assert seg_img.header["sform_code"] == 1 and seg_img.header["qform_code"] == 1
    sitk_ras = np.eye(4)
    sitk_ras[:3, :3] = np.array(sitk_img.GetDirection()).reshape(3, 3) * np.array(sitk_img.GetSpacing())
    sitk_ras[:3, 3] = sitk_img.GetOrigin()
    np.testing.assert_allclose(seg_img.affine, LPS_TO_RAS @ sitk_ras, atol=1e-4)
    np.testing.assert_allclose(seg_img.header.get_qform(), seg_img.affine, atol=1e-4)

    # Same scan as DICOM (flipped storage) and as NIfTI: identical labelmaps voxel for voxel in world space.
    nifti_labels = np.asarray(nib.load(nifti_row["output"]).dataobj)
    assert nifti_labels.any()
    np.testing.assert_array_equal(on_grid(labels_dicom, seg_img.affine, nifti_labels.shape, data["affine"]), nifti_labels)
    vox_ml = abs(np.linalg.det(data["affine"][:3, :3])) / 1000
    assert float(flair_row["volume_ml"]) == pytest.approx(nifti_labels.sum() * vox_ml, abs=1e-3)
    assert float(nifti_row["volume_ml"]) == pytest.approx(nifti_labels.sum() * vox_ml, abs=1e-3)

    # DICOM SEG: readable, references the source series, right segment, research use only, same pixels.
    seg = hd.seg.segread(flair_row["dicom_seg"])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == data["flair_uid"]
    assert seg.StudyInstanceUID == pydicom.dcmread(data["flair_paths"][0]).StudyInstanceUID
    assert "research use only" in seg.SeriesDescription.lower()
    assert "research use only" in seg.ContentDescription.lower()
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == SEGMENT_LABEL == "FLAIR abnormality"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == SEGMENT_CATEGORY.value == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == SEGMENT_TYPE.value == "4147007"  # as in Slicer
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in data["flair_paths"])}
    for uid, ds in sources.items():
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, :, :, 0]
        z = on_grid(labels_dicom, seg_img.affine, (256, 256, 1), _slice_affine(ds))[:, :, 0]
        np.testing.assert_array_equal(frame, z.T)  # frame is (row, column)


def _slice_affine(ds: pydicom.Dataset) -> np.ndarray:
    """RAS affine of one DICOM slice as a (column, row, 1) grid."""
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * col_spacing, iop[3:] * row_spacing
    lps[:3, 2] = np.cross(iop[:3], iop[3:])
    lps[:3, 3] = np.array(ds.ImagePositionPatient, dtype=float)
    return LPS_TO_RAS @ lps


def test_all_series_rerun_keeps_finished_and_adds_t1(data, tmp_path: Path):
    out = tmp_path / "out"
    assert cli_main(["segment", str(data["study"]), "-o", str(out), "--quiet"]) == 0
    (flair_out,) = out.glob("*FLAIR_seg.nii.gz")
    mtime = flair_out.stat().st_mtime_ns
    assert cli_main(["segment", str(data["study"]), "-o", str(out), "--quiet", "--all-series"]) == 0
    rows = read_report(out / "report.csv")
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    assert {r["series_description"] for r in rows} == {"AX FLAIR", "AX T1"}
    assert flair_out.stat().st_mtime_ns == mtime  # the finished FLAIR was not redone
    kept = next(r for r in rows if r["series_description"] == "AX FLAIR")
    assert "existing output" in kept["note"] and kept["volume_ml"] != ""
    t1_img = nib.load(next(r["output"] for r in rows if r["series_description"] == "AX T1"))
    assert t1_img.shape == (256, 256, 8)


def test_bad_inputs_fail_their_own_case(data, tmp_path: Path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = shutil.copy(data["nifti"], bad / "good.nii.gz")
    (bad / "corrupt.nii.gz").write_bytes(Path(data["nifti"]).read_bytes()[:400])  # truncated download
    (bad / "notes.txt").write_text("not an image\n")
    (bad / "empty").mkdir()
    save_nifti(np.ones((64, 64)), np.eye(4), bad / "flat.nii.gz")
    save_nifti(np.ones((16, 16, 4, 3)), np.eye(4), bad / "fourd.nii.gz")
    nan = np.ones((16, 16, 4), dtype=np.float32)
    nan[3, 4, 1] = np.nan
    save_nifti(nan, np.eye(4), bad / "nan.nii.gz", dtype=np.float32)
    vol = np.random.default_rng(0).integers(0, 400, size=(20, 20, 6)).astype(np.float32)
    aff = np.diag([-1.0, -1.0, 3.0, 1.0])
    write_series(vol, aff, bad / "gap_series", description="AX FLAIR", skip_slices=(2,))
    write_series(vol, aff, bad / "mixed_series", description="AX FLAIR", orientation_override={4: [0, 1, 0, 0, 0, -1]})
    trunc = write_series(vol, aff, bad / "truncated_series", description="AX FLAIR")["paths"][0]
    trunc.write_bytes(trunc.read_bytes()[:-300])  # pixel data cut short
    inputs = [good, bad / "corrupt.nii.gz", bad / "notes.txt", bad / "empty", bad / "flat.nii.gz", bad / "fourd.nii.gz",
              bad / "nan.nii.gz", bad / "gap_series", bad / "mixed_series", bad / "truncated_series"]
    out = tmp_path / "out"
    code = cli_main(["segment", *map(str, inputs), "-o", str(out), "--quiet"])
    assert code == 1
    rows = {Path(r["input"]).name: r for r in read_report(out / "report.csv")}
    assert rows["good.nii.gz"]["status"] == "ok" and Path(rows["good.nii.gz"]["output"]).is_file()
    expected = {
        "corrupt.nii.gz": "cannot read",
        "notes.txt": "not a NIfTI",
        "empty": "no DICOM or NIfTI files",
        "flat.nii.gz": "2D image",
        "fourd.nii.gz": "4D image",
        "nan.nii.gz": "1 NaN",
        "gap_series": "missing slice",
        "mixed_series": "mixed orientations",
        "truncated_series": "cannot read pixel data",
    }
    for name, problem in expected.items():
        row = rows[name]
        assert row["status"] == "failed", (name, row)
        assert problem in row["error"], (name, row["error"])
        where = trunc if name == "truncated_series" else bad / name
        assert str(where) in row["error"], (name, row["error"])  # the message names the file/folder
        assert row["output"] == ""
    printed = capsys.readouterr()
    assert "9 failed" in printed.out and "1 ok" in printed.out
    assert sorted(p.name for p in out.iterdir()) == [".monaiunetseg", "good_seg.nii.gz", "report.csv", "report.json",
                                                     "run.json"]


def test_resume_overwrite_and_output_folder_rules(data, segmenter, tmp_path: Path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(data["nifti"], inputs / f"case{i}.nii.gz")
    before = tree_state(inputs)
    out = tmp_path / "out"
    opts = BatchOptions(progress=False)
    first = run_batch([inputs], out, opts, segmenter=segmenter)
    assert [r.status for r in first.results] == ["ok"] * 3 and first.n_existing == 0
    outputs = sorted(out.glob("*_seg.nii.gz"))
    assert len(outputs) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in outputs}
    outputs[1].unlink()  # as if the batch had been killed before this case
    second = run_batch([inputs], out, opts, segmenter=segmenter)
    assert second.n_existing == 2 and second.count("ok") == 3
    assert {p.name: p.stat().st_mtime_ns for p in outputs if p != outputs[1]} == {k: v for k, v in mtimes.items() if k != outputs[1].name}
    assert outputs[1].is_file()
    rows = read_report(out / "report.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(r["volume_ml"] for r in rows)
    assert sum("existing output" in r["note"] for r in rows) == 2
    assert [p.name for p in out.glob(".*")] == [".monaiunetseg"]  # no temporary files or lock left
    third = run_batch([inputs], out, BatchOptions(progress=False, overwrite=True), segmenter=segmenter)
    assert third.n_existing == 0
    assert all(p.stat().st_mtime_ns > mtimes.get(p.name, 0) for p in outputs)
    assert tree_state(inputs) == before

    # Output folders among the inputs are refused before anything is written.
    with pytest.raises(ValueError, match="inside the input folder"):
        run_batch([inputs], inputs / "out", opts, segmenter=segmenter)
    with pytest.raises(ValueError, match="next to the inputs"):
        run_batch([inputs / "case0.nii.gz"], inputs, opts, segmenter=segmenter)
    assert cli_main(["segment", str(inputs), "-o", str(inputs / "results"), "--quiet"]) == 2
    assert tree_state(inputs) == before and not (inputs / "out").exists() and not (inputs / "results").exists()


def test_shards_split_a_real_batch(data, segmenter, tmp_path: Path):
    inputs = [data["study"], data["nifti"], tmp_path / "missing.nii.gz"]
    out = tmp_path / "out"
    reports = []
    for k in range(2):
        res = run_batch(inputs, out, BatchOptions(num_shards=2, shard_id=k, progress=False, all_series=True), segmenter=segmenter)
        assert res.report.name == f"report.shard{k}of2.csv"
        reports.append(read_report(res.report))
    keys = [(r["input"], r["series_uid"]) for rows in reports for r in rows]
    assert len(keys) == len(set(keys)) == 4  # 2 DICOM series, 1 NIfTI, 1 missing input
    assert all(reports)
    assert len(list(out.glob("*_seg.nii.gz"))) == 3


def test_console_script_readme_command(tmp_path: Path):
    """The README's first command, as a user runs it (installed console script, fresh process)."""
    exe = Path(sys.executable).with_name("monaiunetseg")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monaiunetseg.cli"]
    out = tmp_path / "out"
    proc = subprocess.run([*command, "segment", str(SAMPLE_FLAIR), "-o", str(out), "--overlay"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 ok" in proc.stdout and "report:" in proc.stdout
    (row,) = read_report(out / "report.csv")
    assert row["status"] == "ok"
    src, seg = nib.load(SAMPLE_FLAIR), nib.load(out / "TCGA_DU_A5TR_19970726_flair_seg.nii.gz")
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    assert np.array_equal(seg.header.get_qform(), src.header.get_qform()) and np.array_equal(seg.header.get_sform(), src.header.get_sform())
    assert (seg.header["qform_code"], seg.header["sform_code"]) == (src.header["qform_code"], src.header["sform_code"])
    png = Image.open(out / "TCGA_DU_A5TR_19970726_flair_overlay.png")
    rgb = np.asarray(png.convert("RGB")).astype(int)
    assert min(png.size) >= 256
    blue = (rgb[..., 2] - rgb[..., 0] > 80) & (rgb[..., 2] - rgb[..., 1] > 30)  # the outline (grey: r = g = b)
    assert blue.any() == bool(np.asarray(seg.dataobj).any())  # the outline is drawn when something was found


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: --device cuda is valid here")
def test_device_cuda_without_cuda_is_a_clear_error(data, tmp_path: Path, capsys):
    assert cli_main(["segment", str(data["nifti"]), "-o", str(tmp_path / "out"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err
    assert not (tmp_path / "out").exists()


class RssRecordingSegmenter:
    """The real segmenter, recording this process's RSS at every case (to see memory over a batch)."""

    def __init__(self, segmenter) -> None:
        self.segmenter, self.rss = segmenter, []

    @property
    def timings(self):
        return self.segmenter.timings

    def segment(self, array, affine):
        import psutil

        self.rss.append(psutil.Process().memory_info().rss)
        return self.segmenter.segment(array, affine)


def test_memory_stays_flat_over_a_batch(kaggle_dir: Path, segmenter, tmp_path: Path):
    flair, affine = small_volume(kaggle_dir, n_slices=3)
    for i in range(9):
        save_nifti(np.roll(flair, i, axis=0), affine, tmp_path / "in" / f"c{i:02d}.nii.gz")
    recorder = RssRecordingSegmenter(segmenter)
    result = run_batch([tmp_path / "in"], tmp_path / "out", BatchOptions(progress=False, overlay=True), segmenter=recorder)
    assert result.count("ok") == 9 and len(recorder.rss) == 9
    growth_mb = (max(recorder.rss[3:]) - recorder.rss[2]) / 2**20
    assert growth_mb < 40, [round(r / 2**20) for r in recorder.rss]


def _same_grid_variant(data: dict, shift: int) -> np.ndarray:
    """Another scan on the same grid as ``data["nifti"]`` (the FLAIR rolled in-plane)."""
    return np.roll(data["flair"], shift, axis=0)


def test_output_of_another_input_is_never_reused_or_overwritten(data, segmenter, tmp_path: Path):
    """Later runs into the same -o with other inputs of the same name: never reported as theirs, never replaced."""
    a = save_nifti(data["flair"], data["affine"], tmp_path / "patA" / "flair.nii.gz")
    b = save_nifti(_same_grid_variant(data, 20), data["affine"], tmp_path / "patB" / "flair.nii.gz")
    c = save_nifti(data["flair"][:, :, :6], data["affine"], tmp_path / "patC" / "flair.nii.gz")  # other grid
    out = tmp_path / "out"
    labelmap = out / "flair_seg.nii.gz"
    opts = BatchOptions(progress=False)

    assert run_batch([a], out, opts, segmenter=segmenter).exit_code == 0
    record = read_source_record(labelmap)
    assert record.pop("model")["weights_sha256"] == [hashlib.sha256(w.read_bytes()).hexdigest() for w in segmenter.weights]
    assert record.pop("review") == "no" and float(record.pop("confidence")) >= 0.8 and record.pop("review_reasons") == ""
    assert record == {"kind": "nifti", "input": str(a.resolve()), "sha256": hashlib.sha256(a.read_bytes()).hexdigest()}
    owned_by_a = labelmap.read_bytes()
    for other in (b, c):  # same grid: once reported as A's result; other grid: once silently overwritten
        result = run_batch([other], out, opts, segmenter=segmenter)
        assert result.exit_code == 1
        (res,) = result.results
        assert res.status == "failed" and res.output == "" and res.volume_ml is None
        assert res.error == (f"{other}: {labelmap} already holds the result of {a.resolve()}; "
                             "use another -o or --overwrite")
        assert labelmap.read_bytes() == owned_by_a
    rows = read_report(out / "report.csv")  # earlier runs' rows kept, earlier first
    assert [(r["input"], r["status"]) for r in rows] == [(str(a), "ok"), (str(b), "failed"), (str(c), "failed")]

    # --overwrite hands the name to B; A's row no longer describes that file and goes, C's stays.
    assert run_batch([b], out, BatchOptions(progress=False, overwrite=True), segmenter=segmenter).exit_code == 0
    assert read_source_record(labelmap)["input"] == str(b.resolve())
    assert labelmap.read_bytes() != owned_by_a
    rows = read_report(out / "report.csv")
    assert [(r["input"], r["status"]) for r in rows] == [(str(c), "failed"), (str(b), "ok")]
    (res,) = run_batch([a], out, opts, segmenter=segmenter).results
    assert res.status == "failed" and f"already holds the result of {b.resolve()}" in res.error

    # A file at the name without a source record (not written by this version) is not ours to replace either.
    (tmp_path / "legacy").mkdir()
    write_labelmap(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4), tmp_path / "legacy" / "flair_seg.nii.gz")
    (res,) = run_batch([a], tmp_path / "legacy", opts, segmenter=segmenter).results
    assert res.status == "failed" and "no MONAIUNetSeg source record" in res.error


def test_dicom_output_of_another_series_is_not_reused(segmenter, tmp_path: Path):
    """Two series named alike (same patient, date, number, description) but different SeriesInstanceUIDs."""
    vol = np.random.default_rng(1).integers(0, 400, size=(24, 24, 5)).astype(np.float32)
    aff = np.diag([-1.0, -1.0, 3.0, 1.0])
    first = write_series(vol, aff, tmp_path / "one", seed=1)
    second = write_series(vol[::-1].copy(), aff, tmp_path / "two", seed=2)
    out = tmp_path / "out"
    (ok,) = run_batch([tmp_path / "one"], out, BatchOptions(progress=False), segmenter=segmenter).results
    assert ok.status == "ok" and read_source_record(ok.output)["series_uid"] == first["series_uid"]
    (res,) = run_batch([tmp_path / "two"], out, BatchOptions(progress=False), segmenter=segmenter).results
    assert res.status == "failed" and res.series_uid == second["series_uid"]
    assert f"{ok.output} already holds the result of DICOM series {first['series_uid']} ({tmp_path / 'one'})" in res.error
    assert str(tmp_path / "two") in res.error
    (again,) = run_batch([tmp_path / "one"], out, BatchOptions(progress=False), segmenter=segmenter).results
    assert again.status == "ok" and "existing output kept" in again.note  # its own output is still resumed


def test_report_keeps_rows_of_earlier_runs(data, segmenter, tmp_path: Path):
    x = shutil.copy(data["nifti"], tmp_path / "x.nii.gz")
    y = save_nifti(_same_grid_variant(data, 10), data["affine"], tmp_path / "in" / "y.nii.gz")
    out = tmp_path / "out"
    opts = BatchOptions(progress=False)
    run_batch([x], out, opts, segmenter=segmenter)
    run_batch([y, tmp_path / "missing.nii.gz"], out, opts, segmenter=segmenter)
    rows = read_report(out / "report.csv")
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("x.nii.gz", "ok"), ("y.nii.gz", "ok"),
                                                                   ("missing.nii.gz", "failed")]
    assert rows[0]["volume_ml"] != "" and rows[0]["seconds"] != ""  # the earlier row is kept as it was
    run_batch([x], out, opts, segmenter=segmenter)  # x's row replaced (now "existing output kept"), moved last
    rows = read_report(out / "report.csv")
    assert [Path(r["input"]).name for r in rows] == ["y.nii.gz", "missing.nii.gz", "x.nii.gz"]
    assert "existing output kept" in rows[-1]["note"]
    assert [p.name for p in out.glob(".*")] == [".monaiunetseg"]


def _corrupt_rows(path: Path) -> None:
    """Give the Rows element (0028,0010, US) a 3-byte value: the file parses, the value cannot be converted."""
    raw = path.read_bytes()
    tag = b"\x28\x00\x10\x00US\x02\x00"
    i = raw.index(tag)
    path.write_bytes(raw[:i] + b"\x28\x00\x10\x00US\x03\x00" + raw[i + 8:i + 10] + b"\x00" + raw[i + 10:])


def test_corrupt_header_element_fails_its_file_not_the_batch(data, tmp_path: Path):
    vol = np.random.default_rng(0).integers(0, 400, size=(20, 20, 6)).astype(np.float32)
    series = write_series(vol, np.diag([-1.0, -1.0, 3.0, 1.0]), tmp_path / "series", description="AX FLAIR")
    bad = series["paths"][0]
    _corrupt_rows(bad)
    with pytest.raises(pydicom.errors.BytesLengthException):  # the corruption is real: pydicom fails on access
        pydicom.dcmread(bad, stop_before_pixels=True).Rows
    out = tmp_path / "out"
    assert cli_main(["segment", str(tmp_path / "series"), str(data["nifti"]), "-o", str(out), "--quiet"]) == 1
    rows = {r["input"]: r for r in read_report(out / "report.csv")}
    assert rows[str(bad)]["status"] == "failed"
    assert rows[str(bad)]["error"].startswith(f"{bad}: corrupt DICOM file")
    # without its first slice the rest is still a regular stack: it must not be segmented as if complete
    series_row = rows[str(tmp_path / "series")]
    assert series_row["status"] == "failed" and "incomplete series" in series_row["error"], series_row
    assert str(bad) in series_row["error"] and not series_row["output"]
    assert rows[str(data["nifti"])]["status"] == "ok" and Path(rows[str(data["nifti"])]["output"]).is_file()


def test_bad_bundle_or_weights_is_a_command_error(data, tmp_path: Path, capsys):
    from monaiunetseg.model.bundle import bundle_root

    not_a_bundle = tmp_path / "not_a_bundle"
    not_a_bundle.mkdir()
    with pytest.raises(FileNotFoundError, match="not_a_bundle: not a MONAI bundle folder"):
        bundle_root(not_a_bundle)  # never silently the default bundle instead
    args = ["segment", str(data["nifti"]), "-o", str(tmp_path / "out"), "--quiet"]
    assert cli_main([*args, "--bundle", str(not_a_bundle)]) == 2
    assert f"{not_a_bundle}: not a MONAI bundle folder (no configs/inference.json in it)" in capsys.readouterr().err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    for weights in (garbage, tensor):
        assert cli_main([*args, "--weights", str(weights)]) == 2
        err = capsys.readouterr().err
        assert f"monaiunetseg segment: error: {weights}: not a readable PyTorch state_dict (" in err
        assert "Traceback" not in err


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_segment_runs_without_tqdm_and_highdicom(tmp_path: Path):
    """As in Slicer's Python (no tqdm, no highdicom): NIfTI and plain DICOM inputs still work."""
    src = nib.load(SAMPLE_FLAIR)
    array = np.asarray(src.dataobj).astype(np.float32)[:, :, 16:22]
    write_series(array, src.affine, tmp_path / "dicom", description="AX FLAIR", slope=1.0, intercept=0.0)
    out = tmp_path / "out"
    code = ("import sys\n"
            "sys.modules['tqdm'] = sys.modules['highdicom'] = None  # not importable\n"
            "from monaiunetseg.cli import main\n"
            f"sys.exit(main(['segment', {str(SAMPLE_FLAIR)!r}, {str(tmp_path / 'dicom')!r}, '-o', {str(out)!r}]))\n")
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 ok" in proc.stdout
    rows = read_report(out / "report.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(Path(r["output"]).is_file() for r in rows)


def test_segment_import_failure_is_reported_not_hidden(tmp_path: Path):
    code = ("import sys\n"
            "sys.modules['nibabel'] = None\n"
            "from monaiunetseg.cli import main\n"
            "sys.exit(main(['segment', 'scan.nii.gz', '-o', 'out']))\n")
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 2
    assert "monaiunetseg segment: error: the segment command cannot be loaded" in proc.stderr
    assert "install the missing package (nibabel)" in proc.stderr
    assert "invalid choice" not in proc.stderr


def test_model_option_picks_a_model_set_of_the_bundle(tmp_path: Path, capsys):
    """``--model fast`` runs the bundle's single-model set (one member of the ``default`` ensemble: another
    labelmap, each the Segmenter's of that set); an unknown set is an exit-2 error naming the sets there are,
    before any work."""
    from monaiunetseg.model.predictor import Segmenter

    img = nib.load(SAMPLE_FLAIR)
    outs = {}
    for model in ("default", "fast"):
        out = tmp_path / model
        assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(out), "--quiet", "--device", "cpu", "--model", model]) == 0
        outs[model] = np.asanyarray(nib.load(out / "TCGA_DU_A5TR_19970726_flair_seg.nii.gz").dataobj)
        assert json.loads((out / "run.json").read_text())["runs"][-1]["options"]["model"] == model
    assert outs["fast"].any() and outs["default"].any() and not np.array_equal(outs["default"], outs["fast"])
    for model in ("default", "fast"):
        direct = Segmenter(device="cpu", model=model).segment(np.asarray(img.dataobj), img.affine)
        assert np.array_equal(outs[model], direct), model
    capsys.readouterr()
    assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(tmp_path / "x"), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "default, fast" in err
    assert not (tmp_path / "x").exists()
