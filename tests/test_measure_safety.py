"""Issue 31: ``measure`` and ``growth`` under hostile input: outputs never replace an input or a user's file,
NaN and broken geometry are refused, budgets apply, and every error is one line with the documented exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.cli import main

BOX = (slice(4, 12), slice(4, 12), slice(2, 6))


def labelmap(path: Path, array: np.ndarray | None = None, affine=None, dtype=np.uint8) -> Path:
    if array is None:
        array = np.zeros((16, 16, 8), dtype)
        array[BOX] = 1
    nib.Nifti1Image(np.asarray(array, dtype), np.eye(4) if affine is None else affine).to_filename(path)
    return path


def test_measure_and_growth_outputs_never_replace_an_input_or_a_users_file(tmp_path: Path, capsys):
    """Item 1: ``--csv``/``--json`` onto a labelmap or the ``--image`` scan, ``growth --json`` onto the follow-up,
    a user's file or a link: exit 2 before any work, every file left byte for byte."""
    a, b = labelmap(tmp_path / "a.nii.gz"), labelmap(tmp_path / "b.nii.gz")
    scan = labelmap(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((16, 16, 8)) * 100, dtype=np.float32)
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    link = tmp_path / "link.json"
    link.symlink_to(notes)
    before = {p: p.read_bytes() for p in (a, b, scan, notes)}
    for argv, message in [(["measure", str(a), "--csv", str(a)], "is the input"),
                          (["measure", str(a), "--image", str(scan), "--json", str(scan)], "is the input"),
                          (["measure", str(a), "--csv", str(notes)], "is not a measure CSV"),
                          (["measure", str(a), "--json", str(link)], "is a symbolic link"),
                          (["growth", str(a), str(b), "--json", str(b)], "is the input")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in before} == before
    out = tmp_path / "m.csv"  # an earlier output of the command is replaced, as a rerun should
    assert main(["measure", str(a), "--csv", str(out)]) == 0 and main(["measure", str(b), "--csv", str(out)]) == 0


def test_nan_voxels_are_not_lesion(tmp_path: Path, capsys):
    """Item 5: a labelmap with a NaN slice (or all NaN) is refused naming the count, never measured as lesion."""
    array = np.zeros((16, 16, 8), np.float32)
    array[BOX] = 1
    array[:, :, 7] = np.nan
    one = labelmap(tmp_path / "nan_slice.nii.gz", array, dtype=np.float32)
    every = labelmap(tmp_path / "all_nan.nii.gz", np.full((16, 16, 8), np.nan), dtype=np.float32)
    good = labelmap(tmp_path / "good.nii.gz")
    out = tmp_path / "m.csv"
    assert main(["measure", str(one), str(every), str(good), "--csv", str(out)]) == 1
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "256 NaN or infinite voxel(s)" in rows[0]["error"] and rows[0]["volume_ml"] == ""
    assert "2048 NaN or infinite" in rows[1]["error"] and float(rows[2]["volume_ml"]) == pytest.approx(0.256)
    capsys.readouterr()


def test_zero_pixdim_without_sform_is_invalid_geometry(tmp_path: Path, capsys):
    """Item 6: pixdim z = 0 and no sform/qform is refused as invalid geometry (nibabel reads it as 1 mm)."""
    img = nib.Nifti1Image(np.pad(np.ones((4, 4, 4), np.uint8), 2), None)
    img.header["pixdim"][1:4] = [1, 1, 0]
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    path = tmp_path / "pixdim0.nii.gz"
    img.to_filename(path)
    assert main(["measure", str(path)]) == 1
    assert "invalid geometry" in capsys.readouterr().err


def test_thin_lesion_left_is_not_complete_response(tmp_path: Path, capsys):
    """Item 7: a 20x20x10 lesion followed by a one-voxel-wide line or one voxel is not "complete response"."""
    big = np.zeros((30, 30, 14), np.uint8)
    big[5:25, 5:25, 2:12] = 1
    line, voxel = np.zeros_like(big), np.zeros_like(big)
    line[5:25, 10, 5] = 1
    voxel[10, 10, 5] = 1
    base = labelmap(tmp_path / "t0.nii.gz", big)
    for name, follow in (("line", line), ("voxel", voxel)):
        out = tmp_path / f"{name}.json"
        assert main(["growth", str(base), str(labelmap(tmp_path / f"{name}.nii.gz", follow)), "--json", str(out)]) == 0
        category = json.loads(out.read_text())["rano_lgg_category"]
        assert category.startswith("not measurable"), category
    assert main(["growth", str(base), str(labelmap(tmp_path / "none.nii.gz", np.zeros_like(big)))]) == 0
    assert "complete response" in capsys.readouterr().out


def test_measure_has_a_voxel_budget(tmp_path: Path, capsys):
    """Item 12: a small .nii.gz of 1024x1024x256 is refused before its voxels are read (a subprocess whose peak
    memory stays far below the 256 MiB the voxels need), and the good labelmap's row is still written."""
    big = tmp_path / "big.nii.gz"
    nib.Nifti1Image(np.zeros((1024, 1024, 256), np.uint8), np.eye(4)).to_filename(big)
    good = labelmap(tmp_path / "good.nii.gz")
    out = tmp_path / "m.csv"
    # peak RSS of this process alone: VmHWM (ru_maxrss keeps the forking pytest's, across exec)
    code = ("import sys; from monaiunetseg.cli import main; rc = main(sys.argv[1:]); "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "measure", str(big), str(good), "--csv", str(out)],
                          capture_output=True, text=True, env={**os.environ, "MONAIUNETSEG_MAX_VOXELS": str(2**26)})
    assert proc.returncode == 1, proc.stderr
    assert "more than the limit" in proc.stderr and int(proc.stdout.split()[-1]) < 250, proc.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["error"] and float(rows[1]["volume_ml"]) > 0


def test_measure_errors_are_one_line_and_cells_safe(tmp_path: Path, capsys, monkeypatch):
    """Item 15: a file name that is no UTF-8 is measured and written escaped; a cell starting with ``=`` is
    neutralised; a failed --csv write is one line with exit 2."""
    name = os.fsdecode(b"=lab\xff.nii.gz")
    path = labelmap(tmp_path / name)
    out = tmp_path / "m.csv"
    assert main(["measure", str(path), "--csv", str(out), "--json", str(tmp_path / "m.json")]) == 0
    cell = next(csv.DictReader(open(out, newline="")))["labelmap"]
    assert "\\xff" in cell and not cell.startswith("=")
    assert "\\xff" in json.loads((tmp_path / "m.json").read_text())["rows"][0]["labelmap"]
    monkeypatch.chdir(tmp_path)
    assert main(["measure", name, "--csv", "m2.csv"]) == 0
    assert next(csv.DictReader(open(tmp_path / "m2.csv", newline="")))["labelmap"].startswith("'=lab")
    capsys.readouterr()
    assert main(["measure", str(path), "--csv", str(out / "sub.csv")]) == 2  # under a file: no such folder
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1


def test_folder_fifo_and_device_are_named_as_what_they_are(tmp_path: Path, capsys):
    """Item 18: a folder, a FIFO or /dev/null given to measure is named as such, not "no such file"."""
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    assert main(["measure", str(tmp_path), str(fifo), "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "a folder" in err and "a named pipe (FIFO)" in err and "a character device" in err
    assert "no such file" not in err


def test_velocity_over_a_short_interval_has_a_remark(tmp_path: Path, capsys):
    """Item 19: a velocity over one day is given with a remark that it extrapolates the interval."""
    big = np.zeros((30, 30, 14), np.uint8)
    big[5:25, 5:25, 2:12] = 1
    small = np.zeros_like(big)
    small[8:22, 8:22, 3:11] = 1
    a, b = labelmap(tmp_path / "a.nii.gz", big), labelmap(tmp_path / "b.nii.gz", small)
    assert main(["growth", str(a), str(b), "--dates", "2020-01-01", "2020-01-02", "--json", str(tmp_path / "g.json")]) == 0
    assert "extrapolates a 1-day interval" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["remarks"]


def test_growth_images_checks_its_scans_like_segment(tmp_path: Path, capsys):
    """Item 8: with --images, a label map is refused (segment skips it) and a phantom gets segment's input checks:
    the change is flagged for review, never a bare RANO category."""
    from conftest import SAMPLE_FLAIR, SAMPLE_LABEL
    from monaiunetseg.trust.phantoms import noise

    lab = nib.load(SAMPLE_LABEL)
    labels = (np.asarray(lab.dataobj) > 0).astype(np.int16) * 2
    labels[:5, :5, :] = 1
    label_map = tmp_path / "visit2.nii.gz"
    nib.Nifti1Image(labels, lab.affine).to_filename(label_map)
    assert main(["growth", "--images", str(SAMPLE_FLAIR), str(label_map), "--device", "cpu"]) == 2
    assert "looks like a label map" in capsys.readouterr().err
    array, affine = noise(shape=(128, 128, 12))
    phantom = tmp_path / "phantom.nii.gz"
    nib.Nifti1Image(array.astype(np.float32), affine).to_filename(phantom)
    out = tmp_path / "g.json"
    assert main(["growth", "--images", str(SAMPLE_FLAIR), str(phantom), "--device", "cpu", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("REVIEW (followup: ")
    change = json.loads(out.read_text())
    assert change["review"] == "yes" and change["followup"]["review"] == "yes"
    assert change["baseline"]["review_reasons"] != change["followup"]["review_reasons"]


def test_documented_notes_of_issue_31(tmp_path: Path):
    """Item 19: the bundle page says, where the warning filter is shown, that it hides the config-runs-code
    warning; the measurement page says which way a SEG's axial_slice counts, and it is so."""
    import sys as _sys

    from conftest import REPO

    bundle = (REPO / "docs" / "bundle.md").read_text()
    first = bundle.index('-W "ignore:parsing config_file"')
    assert "hides MONAI's warning that a config runs code" in bundle[:first + 400]
    assert "counts along the SEG's frame axis" in (REPO / "docs" / "measurements.md").read_text()
    _sys.path.insert(0, str(REPO / "tests"))
    from test_measure import grid_affine, write_seg

    from monaiunetseg.measure.read import read_labelmap
    from monaiunetseg.measure.shape import measure_labelmap

    shape = (31, 31, 21)
    affine = grid_affine((0.9, 0.9, 2.0), shape)
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 10:22, 3:6] = 1
    mask[12:14, 12:14, 3] = 0
    seg = read_labelmap(write_seg(mask, affine, tmp_path, "20200101"))
    nifti_row, seg_row = measure_labelmap(mask, affine), measure_labelmap(seg.array, seg.affine)
    assert seg_row["axial_axis"] == 0 and seg_row["axial_slice"] == shape[2] - 1 - nifti_row["axial_slice"]
