"""Label maps among the inputs (issue 25.4): reference masks beside the scans are not segmented as scans.

``segment`` skips image files named ``*_label``, ``*_seg`` or ``*_mask`` and integer volumes with at most 8 distinct
values, with the note "looks like a label map" (status skipped); ``--include-labelmaps`` segments them.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.labelmap import LABELMAP_NOTE, labelmap_reason

SAMPLE = Path(__file__).resolve().parents[1] / "MONAIUNetSeg" / "Resources" / "Sample"
FLAIR = SAMPLE / "TCGA_DU_A5TR_19970726_flair.nii.gz"
LABEL = SAMPLE / "TCGA_DU_A5TR_19970726_label.nii.gz"


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def test_sample_folder_segments_the_scan_and_skips_the_label(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli_main(["segment", str(SAMPLE), "-o", str(out), "--model", "fast", "--quiet"]) == 0
    rows = _rows(out)
    assert rows[FLAIR.name]["status"] == "ok"
    assert rows[LABEL.name]["status"] == "skipped"
    assert LABELMAP_NOTE in rows[LABEL.name]["error"] and "--include-labelmaps" in rows[LABEL.name]["error"]
    assert not (out / "TCGA_DU_A5TR_19970726_label_seg.nii.gz").exists()


def test_include_labelmaps_segments_the_label(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli_main(["segment", str(SAMPLE), "-o", str(out), "--model", "fast", "--quiet",
                     "--include-labelmaps"]) == 0
    rows = _rows(out)
    assert rows[FLAIR.name]["status"] == "ok" and rows[LABEL.name]["status"] == "ok"
    assert (out / "TCGA_DU_A5TR_19970726_label_seg.nii.gz").is_file()


def _write(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 3.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("name, ending", [("case_label.nii.gz", "_label"), ("case_SEG.nii", "_seg"),
                                          ("case_mask.nrrd", "_mask"), ("case_mask.mha", "_mask")])
def test_names_say_label_map(name: str, ending: str) -> None:
    assert labelmap_reason(name) == f"{LABELMAP_NOTE} (name ends in {ending})"


def test_content_says_label_map(tmp_path: Path) -> None:
    """Judged by the voxels when the name says nothing: integer with few values is a label map; a float volume
    with the same values, an integer scan with many values, and a name merely containing 'label' are scans."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(32, 32, 8)).astype(np.int16)  # 4 values
    few = _write(tmp_path / "regions.nii.gz", labels)
    as_float = _write(tmp_path / "float_regions.nii.gz", labels.astype(np.float32))
    scan = _write(tmp_path / "scan.nii.gz", rng.integers(0, 1000, size=(64, 64, 40)).astype(np.int16))
    labelled = shutil.copy(scan, tmp_path / "labelled_scan.nii.gz")
    assert labelmap_reason(few) == f"{LABELMAP_NOTE} (integer voxels, 4 distinct value(s))"
    assert labelmap_reason(as_float) is None and labelmap_reason(scan) is None and labelmap_reason(labelled) is None

    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.uint8)), str(tmp_path / "regions.nrrd"))
    assert labelmap_reason(tmp_path / "regions.nrrd") == f"{LABELMAP_NOTE} (integer voxels, 4 distinct value(s))"

    cases = {c.source.name: c for c in discover_cases([tmp_path])}
    assert cases["regions.nii.gz"].status == "skipped" and LABELMAP_NOTE in cases["regions.nii.gz"].problem
    assert cases["regions.nrrd"].status == "skipped"
    assert {n for n, c in cases.items() if c.kind != "problem"} == {"float_regions.nii.gz", "scan.nii.gz",
                                                                    "labelled_scan.nii.gz"}
    included = discover_cases([tmp_path], include_labelmaps=True)
    assert all(c.kind != "problem" for c in included) and len(included) == 5
