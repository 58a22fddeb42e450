"""``monaiunetseg segment-case``: exactly one input, its labelmap, and its outcome as a JSON file (what the Slicer
module's background job runs and reads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.batch.single import segment_single
from monaiunetseg.cli import main as cli_main
from monaiunetseg.geometry import voxel_volume_ml

from conftest import SAMPLE_FLAIR
from dicom_factory import write_series

RESULT_KEYS = {"status", "input", "output", "volume_ml", "seconds", "error"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _sample_slices(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    src = nib.load(SAMPLE_FLAIR)
    return np.asarray(src.dataobj).astype(np.float32)[:, :, 16:16 + n], src.affine


def test_sample_gives_an_ok_result_and_a_labelmap_on_the_input_grid(tmp_path: Path):
    """As the Slicer module's job runs it: a fresh ``python -m monaiunetseg.cli segment-case`` process."""
    out, result = tmp_path / "out", tmp_path / "job" / "result.json"
    proc = _run(["-m", "monaiunetseg.cli", "segment-case", str(SAMPLE_FLAIR), "-o", str(out),
                 "--result-json", str(result), "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(result.read_text())
    assert RESULT_KEYS <= set(data)
    assert data["status"] == "ok" and data["error"] == "" and data["input"] == str(SAMPLE_FLAIR)
    labelmap = Path(data["output"])
    assert labelmap.is_absolute() and labelmap == out / "TCGA_DU_A5TR_19970726_flair_seg.nii.gz"
    src, seg = nib.load(SAMPLE_FLAIR), nib.load(labelmap)
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) == {0, 1}
    assert data["volume_ml"] == pytest.approx(np.count_nonzero(labels) * voxel_volume_ml(seg.affine)) and data["volume_ml"] > 0
    assert data["seconds"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted([labelmap.name, "run.json"])  # no report.csv
    assert [p.name for p in result.parent.iterdir()] == ["result.json"]  # written atomically: no temporary left
    assert "segment-case: ok: " in proc.stdout


def test_unreadable_input_exits_1_with_a_failed_result_naming_the_file(tmp_path: Path, capsys):
    bad = tmp_path / "in" / "x.nii.gz"
    bad.parent.mkdir()
    bad.write_text("not an image\n")
    result = tmp_path / "result.json"
    assert cli_main(["segment-case", str(bad), "-o", str(tmp_path / "out"), "--result-json", str(result)]) == 1
    data = json.loads(result.read_text())
    assert RESULT_KEYS <= set(data)
    assert data["status"] == "failed" and data["output"] == "" and data["volume_ml"] is None
    assert data["input"] == str(bad) and data["error"].startswith(f"{bad}: ")
    assert f"FAILED  {bad}: " in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_input_that_is_not_one_case_fails_before_the_model_loads(tmp_path: Path, monkeypatch):
    import monaiunetseg.model.predictor as predictor

    monkeypatch.setattr(predictor, "Segmenter", lambda *a, **k: pytest.fail("the model was loaded"))
    array, affine = _sample_slices()
    two = tmp_path / "two_series"
    write_series(array, affine, two, description="AX FLAIR", series_number=1, slope=1.0, intercept=0.0, seed=1)
    write_series(array, affine, two, description="AX FLAIR again", series_number=2, slope=1.0, intercept=0.0, seed=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = {tmp_path / "missing.nii.gz": "no such file or folder", empty: "no DICOM or NIfTI files found",
                two: "2 series found"}
    for path, message in expected.items():
        result = segment_single(path, tmp_path / "out")
        assert result.status == "failed" and message in result.error and str(path) in result.error, result.error


def test_one_dicom_series_folder_and_rerun(segmenter, tmp_path: Path):
    """Any 3D series the caller names is segmented (no FLAIR check); a rerun keeps this input's own result."""
    array, affine = _sample_slices()
    write_series(array, affine, tmp_path / "dicom", description="AX T2", slope=1.0, intercept=0.0)
    out = tmp_path / "out"
    first = segment_single(tmp_path / "dicom", out, segmenter=segmenter)
    assert first.status == "ok" and Path(first.output).is_file() and first.series_description == "AX T2"
    assert nib.load(first.output).shape == array.shape
    again = segment_single(tmp_path / "dicom", out, segmenter=segmenter)
    assert again.status == "ok" and again.output == first.output and again.seconds is None
    assert again.volume_ml == pytest.approx(first.volume_ml) and "existing output kept" in again.note


def test_bad_requests_exit_2(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:  # --result-json is required
        cli_main(["segment-case", str(SAMPLE_FLAIR), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(SAMPLE_FLAIR, scan)
    result = tmp_path / "job" / "result.json"
    assert cli_main(["segment-case", str(scan), "-o", str(tmp_path), "--result-json", str(result)]) == 2
    assert "monaiunetseg segment-case: error: output folder" in capsys.readouterr().err
    data = json.loads(result.read_text())  # the caller still learns why from the result file
    assert data["status"] == "failed" and "choose another output folder" in data["error"]
    assert not (tmp_path / "scan_seg.nii.gz").exists()


def test_cli_import_stays_cheap_and_a_missing_package_is_named(tmp_path: Path):
    code = ("import sys\n"
            "import monaiunetseg.cli as cli\n"
            "cli.build_parser()\n"
            "print([m for m in ('torch', 'monai') if m in sys.modules])\n")
    proc = _run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    code = ("import sys\n"
            "sys.modules['nibabel'] = None\n"
            "from monaiunetseg.cli import main\n"
            "sys.exit(main(['segment-case', 'scan.nii.gz', '-o', 'out', '--result-json', 'r.json']))\n")
    proc = _run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 2
    assert "monaiunetseg segment-case: error: the segment-case command cannot be loaded" in proc.stderr
    assert "install the missing package (nibabel)" in proc.stderr


def test_result_json_never_replaces_an_input_an_output_or_a_foreign_file(tmp_path: Path, capsys):
    """Issue 22.1: ``--result-json`` naming the input scan, an output of -o, a link or a user's file is refused
    (exit 2) before any work, and that file is left byte for byte as it was."""
    array, affine = _sample_slices(2)
    scan = tmp_path / "in" / "c1.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(array, affine), scan)
    out = tmp_path / "out"
    out.mkdir()
    labelmap = out / "c1_seg.nii.gz"
    shutil.copy(scan, labelmap)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    outside = tmp_path / "outside.json"
    outside.write_text('{"mine": 1}\n')
    link = tmp_path / "link.json"
    link.symlink_to(outside)
    before = {p: p.read_bytes() for p in (scan, labelmap, notes, outside)}
    for target, message in [(scan, "is the input"), (labelmap, "name of a file MONAIUNetSeg writes"),
                            (out / "run.json", "name of a file MONAIUNetSeg writes"),
                            (notes, "is not a segment-case result"), (link, "is a symbolic link")]:
        code = cli_main(["segment-case", str(scan), "-o", str(out), "--result-json", str(target), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and f"--result-json {target}" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["c1_seg.nii.gz"]  # no lock, no run.json: nothing was done
