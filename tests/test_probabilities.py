"""``--save-probabilities``: the (averaged) foreground probability on the input's grid, float32 0-1, from the
same network run as the labelmap, in the labelmap's format; part of a case's outputs for resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.labelmap import is_our_labelmap
from monaiunetseg.model.predictor import Segmenter

from conftest import SAMPLE_FLAIR

OPTS = BatchOptions(progress=False, save_probabilities=True)


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_probability_map_is_the_segmenters_on_the_input_grid(segmenter, tmp_path: Path):
    (res,) = run_batch([SAMPLE_FLAIR], tmp_path / "out", OPTS, segmenter=segmenter).results
    assert res.status == "ok" and res.probabilities.endswith("_prob.nii.gz")
    src, prob_img = nib.load(SAMPLE_FLAIR), nib.load(res.probabilities)
    assert prob_img.shape == src.shape and np.array_equal(prob_img.affine, src.affine)
    assert prob_img.get_data_dtype() == np.float32
    prob = np.asarray(prob_img.dataobj)
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob.max() > 0.99
    np.testing.assert_array_equal(prob, segmenter.probabilities(np.asarray(src.dataobj), src.affine))
    # the labelmap is this probability above 0.5, post-processed as the bundle says
    expected = segmenter.postprocessing(prob > 0.5, np.rint(prob * 255).astype(np.uint8), prob_scale=255.0)
    np.testing.assert_array_equal(_data(res.output), expected)
    assert is_our_labelmap(res.probabilities)  # never taken for a scan when the output folder is an input
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rows"][0]["probabilities"] == res.probabilities


def test_post_processing_applies_to_the_labelmap_not_the_probabilities(ensemble_bundle, tmp_path: Path):
    """With post-processing (component filter) the labelmap is a subset of the thresholded probability."""
    out = tmp_path / "out"
    assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(out), "--bundle", str(ensemble_bundle), "--quiet",
                     "--save-probabilities", "--device", "cpu"]) == 0
    (label_file,) = out.glob("*_seg.nii.gz")
    (prob_file,) = out.glob("*_prob.nii.gz")
    labels, prob = _data(label_file), _data(prob_file)
    assert labels.any() and not np.any(labels & (prob <= 0.5))
    direct = Segmenter(ensemble_bundle, device="cpu")
    src = nib.load(SAMPLE_FLAIR)
    np.testing.assert_array_equal(prob, direct.probabilities(np.asarray(src.dataobj), src.affine))


def test_nrrd_probability_map_keeps_the_geometry(segmenter, tmp_path: Path):
    img = nib.load(SAMPLE_FLAIR)
    scan = tmp_path / "in" / "scan.nrrd"
    scan.parent.mkdir()
    image = sitk.ReadImage(str(SAMPLE_FLAIR))
    sitk.WriteImage(image, str(scan), True)
    (res,) = run_batch([scan], tmp_path / "out", OPTS, segmenter=segmenter).results
    assert res.status == "ok" and res.probabilities.endswith("_prob.nrrd")
    prob = sitk.ReadImage(res.probabilities)
    assert prob.GetPixelID() == sitk.sitkFloat32
    assert prob.GetSize() == image.GetSize()
    np.testing.assert_allclose(prob.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(prob.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(prob.GetDirection(), image.GetDirection())
    from_nifti = segmenter.probabilities(np.asarray(img.dataobj), img.affine)
    np.testing.assert_allclose(sitk.GetArrayFromImage(prob).transpose(2, 1, 0), from_nifti, atol=1e-6)


def test_resume_asks_for_the_probability_map(segmenter, tmp_path: Path):
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    shutil.copy(SAMPLE_FLAIR, scan)
    out = tmp_path / "out"
    (first,) = run_batch([scan], out, BatchOptions(progress=False), segmenter=segmenter).results
    assert first.status == "ok" and not first.probabilities and not list(out.glob("*_prob*"))
    (again,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    assert again.seconds is not None and "no probability map" in again.note, again.note
    assert Path(again.probabilities).is_file()
    (kept,) = run_batch([scan], out, OPTS, segmenter=segmenter).results
    assert kept.seconds is None and kept.probabilities == again.probabilities


def test_a_foreign_file_with_the_probability_name_is_not_replaced(segmenter, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "TCGA_DU_A5TR_19970726_flair_prob.nii.gz"
    foreign.write_bytes(b"my own notes")
    assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(out), "--quiet", "--save-probabilities",
                     "--device", "cpu"]) == 2
    assert foreign.read_bytes() == b"my own notes"
