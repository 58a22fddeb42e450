"""Issue 31 item 4: an input changed on disk so that it now gives no result (skipped as a label map, or failed)
leaves no labelmap of its earlier content beside its row; an all-zero image is an empty image, not a label map."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.cli import main

from conftest import SAMPLE_FLAIR


def rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def test_an_input_that_now_gives_no_result_leaves_no_old_labelmap(tmp_path: Path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    flair = nib.load(SAMPLE_FLAIR)
    data = np.asarray(flair.dataobj)
    for name in ("x", "y", "z"):
        nib.save(nib.Nifti1Image(data, flair.affine), src / f"{name}.nii.gz")
    argv = ["segment", str(src), "-o", str(out), "--device", "cpu", "--quiet", "--model", "fast", "--overlay"]
    assert main(argv) == 0
    assert {p.name for p in out.glob("*_seg.nii.gz")} == {"x_seg.nii.gz", "y_seg.nii.gz", "z_seg.nii.gz"}
    labels = np.zeros(data.shape, np.int16)
    labels[10:20, 10:20, 5:8] = 2
    nib.save(nib.Nifti1Image(labels, flair.affine), src / "x.nii.gz")  # now a label map: skipped
    (src / "y.nii.gz").write_bytes(b"not a NIfTI any more")  # now unreadable: failed
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.int16), flair.affine), src / "z.nii.gz")  # all zero
    main(argv)
    report = rows(out)
    assert report["x.nii.gz"]["status"] == "skipped" and "earlier output removed" in report["x.nii.gz"]["note"]
    assert report["y.nii.gz"]["status"] == "failed" and "earlier output removed" in report["y.nii.gz"]["note"]
    assert not (out / "x_seg.nii.gz").exists() and not (out / "x_overlay.png").exists()
    assert not (out / "y_seg.nii.gz").exists()
    z = report["z.nii.gz"]  # an empty image: segmented (nothing found), flagged, never "a label map"
    assert "label map" not in z["error"] + z["note"] and z["status"] == "ok" and z["review"] == "yes"
    assert float(z["volume_ml"]) == 0 and (out / "z_seg.nii.gz").exists()
    capsys.readouterr()
