"""Knowing when it is wrong: the per-case confidence / review / reasons, the input checks, the prediction signals,
and the verdict in every output (report.csv/json, run.json, segment-case JSON, overlay, --strict)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.geometry import kaggle_affine, voxel_volume_ml
from monaiunetseg.model.bundle import read_spec
from monaiunetseg.trust.assessment import TrustSpec, assess
from monaiunetseg.trust.input_checks import check_image
from monaiunetseg.trust.phantoms import PHANTOMS, empty, flair_phantom, noise, uniform_cylinder
from monaiunetseg.trust.signals import PredictionStats
from monaiunetseg.training.trust_fit import auroc, fit_ridge, member_features

from conftest import BUNDLE_DIR, SAMPLE_FLAIR, SMALL_PATIENTS

SPEC = TrustSpec.from_dict(read_spec().trust)


def _sample() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(SAMPLE_FLAIR)
    return img.get_fdata(dtype=np.float32), img.affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
    return path


# --- the pieces ---------------------------------------------------------------------------------------------

def test_signals_count_members_uncertainty_and_agreement():
    a = np.zeros((2, 10, 10), np.float32)
    a[:, :5] = 0.9  # 100 voxels found, none unsure
    b = a.copy()
    b[:, :5, 5:] = 0.3  # member 2 finds half of them, unsure there
    stats = PredictionStats(2)
    stats.update(np.stack([a, b], axis=1))  # (N, M, H, W)
    f = stats.member_features()
    assert f[0] == {"uncertain_ratio": 0.0, "mean_probability": pytest.approx(0.9)}
    assert f[1]["uncertain_ratio"] == pytest.approx(50 / 50) and f[1]["mean_probability"] == pytest.approx(0.9)
    assert stats.agreement() == pytest.approx(2 * 50 / 150)
    assert PredictionStats(1).agreement() is None


def test_ridge_and_auroc():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = 0.3 * x[:, 0] - 0.1 * x[:, 1] + 0.7
    coef, icpt = fit_ridge(x, y, alpha=1e-9)
    assert coef == pytest.approx([0.3, -0.1], abs=1e-6) and icpt == pytest.approx(0.7, abs=1e-6)
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == 1.0
    assert auroc(np.array([0.0, 1.0, 1.0]), np.array([True, False, True])) == pytest.approx(0.25)


def test_shipped_confidence_model_is_the_calibrated_one():
    """configs/inference.json ships what calibrate-trust fitted (docs/trust_calibration.json), and the
    out-of-fold figures the model card states hold in that file."""
    calibration = json.loads((BUNDLE_DIR / "docs" / "trust_calibration.json").read_text())
    shipped = read_spec().trust
    assert shipped["confidence"] == calibration["confidence"]
    assert shipped["review_below"] == calibration["review_below"]
    table = {r["dice"]: r for r in calibration["cv_review_table"]}
    assert calibration["n_patients"] == 77 and calibration["cv_auroc_bad"] >= 0.85
    assert table["< 0.70"]["share"] >= 0.75 and table[">= 0.80"]["share"] <= 0.15
    rows = list(csv.DictReader(open(BUNDLE_DIR / "docs" / "trust_oof_per_patient.csv")))
    assert len(rows) == 77
    assert sum(r["review_cv"] == "yes" for r in rows if float(r["dice"]) < 0.7) == table["< 0.70"]["review_yes"]


def test_member_features_are_what_the_runner_gathers(segmenter):
    """The calibration computes a model's signals from its probability map; the runner gathers them from the
    ONNX graph's member output (in sub-pixel order): the same numbers."""
    from monaiunetseg.model.predictor import Segmenter

    fast = Segmenter(model="fast", device="cpu")
    array, affine = _sample()
    prob = fast.probabilities(array, affine)
    expected = member_features(prob)
    got = fast.stats.member_features()[0]
    assert got["mean_probability"] == pytest.approx(expected["mean_probability"], abs=2e-3)
    assert got["uncertain_ratio"] == pytest.approx(expected["uncertain_ratio"], rel=0.03)


def test_onnx_and_torch_backends_gather_the_same_signals():
    from monaiunetseg.model.predictor import Segmenter

    array, affine = _sample()
    stats = []
    for backend in ("onnx", "torch"):
        s = Segmenter(device="cpu", backend=backend)
        s.probabilities(array[:, :, 14:22], affine)
        stats.append(s.stats)
    assert stats[0].n_members == stats[1].n_members == 3
    np.testing.assert_allclose(stats[0].found, stats[1].found, rtol=0.01, atol=20)
    assert stats[0].agreement() == pytest.approx(stats[1].agreement(), abs=0.01)


def test_image_checks_pass_the_sample_and_name_each_phantom():
    array, affine = _sample()
    check = check_image(array, affine)
    assert check.reasons == [] and not check.hard
    expected = {"empty volume": "no head found", "noise": "no head found", "uniform cylinder": "no tissue contrast"}
    for name, make in PHANTOMS.items():
        check = check_image(*make())
        if name in expected:
            assert check.hard and any(r.startswith(expected[name]) for r in check.reasons), (name, check.reasons)


def test_noise_inside_a_head_shape_is_named_noise():
    rng = np.random.default_rng(1)
    array, affine = _sample()
    head = array > np.percentile(array, 60)
    noisy = np.where(head, rng.uniform(100, 1000, array.shape), 0).astype(np.float32)
    check = check_image(noisy, affine)
    assert check.hard and any("noise-like" in r for r in check.reasons), check.reasons


def test_thin_isotropic_3d_and_odd_field_of_view_are_named():
    array, _ = _sample()
    iso = np.diag([0.9, 0.9, 0.9, 1.0])
    assert any("3D isotropic" in r for r in check_image(array, iso).reasons)
    tiny = np.diag([0.3, 0.3, 3.0, 1.0])  # 77 mm across
    assert any("field of view" in r for r in check_image(array, tiny).reasons)


def test_verdict_rules():
    stats = PredictionStats(2)
    none = assess(SPEC, stats)
    assert none.review and none.confidence == 0.0 and "nothing found" in none.reasons_text
    good = np.zeros((1, 2, 20, 20), np.float32)
    good[:, :, 5:15, 5:15] = 0.99
    stats.update(good)
    ok = assess(SPEC, stats)
    assert not ok.review and ok.confidence >= SPEC.review_below and ok.reasons == []
    assert ok.caption().startswith("confidence ")
    from monaiunetseg.trust.input_checks import InputCheck

    bad_input = InputCheck()
    bad_input.add("no head found (0 mL of signal)", hard=True)
    flagged = assess(SPEC, stats, bad_input)
    assert flagged.review and flagged.confidence == 0.0 and flagged.caption().startswith("REVIEW")


# --- the shipped model on real and synthetic inputs ---------------------------------------------------------

def test_sample_flair_is_trusted(segmenter):
    array, affine = _sample()
    segmenter.segment(array, affine)
    verdict = segmenter.assess(array, affine)
    assert not verdict.review, verdict.reasons
    assert verdict.confidence >= 0.8 and verdict.agreement >= 0.8


@pytest.mark.parametrize("make", [empty, noise, uniform_cylinder, flair_phantom], ids=lambda f: f.__name__)
def test_phantoms_are_flagged_or_empty(segmenter, make):
    array, affine = make()
    labels = segmenter.segment(array, affine)
    verdict = segmenter.assess(array, affine)
    ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    assert verdict.review or ml <= 1.0, (ml, verdict)


def test_t1_channels_are_flagged_or_empty(segmenter, kaggle_dir):
    """The pre- and post-contrast T1 channels of real patients (wrong sequence): flagged, or at most 1 mL."""
    from monaiunetseg.training.lgg import read_patient

    for folder in SMALL_PATIENTS:
        image = read_patient(kaggle_dir / folder).image.astype(np.float32)
        affine = kaggle_affine(image.shape[:3])
        for channel in (0, 2):
            if np.array_equal(image[..., channel], image[..., 1]):
                continue
            array = np.ascontiguousarray(image[..., channel])
            labels = segmenter.segment(array, affine)
            verdict = segmenter.assess(array, affine)
            ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
            assert verdict.review or ml <= 1.0, (folder, channel, ml, verdict)


@pytest.fixture(scope="module")
def disagreeing_weights(tmp_path_factory) -> list[Path]:
    """The shipped weights and a heavily perturbed copy: two real networks that disagree."""
    import torch

    root = tmp_path_factory.mktemp("disagree")
    state = torch.load(BUNDLE_DIR / "models" / "model.pt", map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point() and value.ndim == 4:
            value += 0.6 * value.std() * torch.randn(value.shape, generator=g)
    torch.save(state, root / "perturbed.pt")
    return [BUNDLE_DIR / "models" / "model.pt", root / "perturbed.pt"]


def test_members_disagreeing_are_flagged(disagreeing_weights):
    from monaiunetseg.model.predictor import Segmenter

    s = Segmenter(device="cpu", weights=disagreeing_weights)
    array, affine = _sample()
    s.segment(array, affine)
    verdict = s.assess(array, affine)
    assert verdict.agreement < SPEC.min_agreement
    assert verdict.review and "ensemble members disagree" in verdict.reasons_text


# --- the verdict in every output ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flagged_batch(tmp_path_factory, segmenter):
    root = tmp_path_factory.mktemp("trust_batch")
    inputs = root / "in"
    inputs.mkdir()
    shutil.copy(SAMPLE_FLAIR, inputs / "flair.nii.gz")
    _save(*uniform_cylinder(), inputs / "phantom.nii.gz")
    out = root / "out"
    result = run_batch([inputs], out, BatchOptions(progress=False, overlay=True), segmenter=segmenter)
    return inputs, out, result


def test_report_run_json_and_overlay_carry_the_verdict(flagged_batch):
    from PIL import Image

    inputs, out, result = flagged_batch
    assert result.exit_code == 0
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "report.csv"))}
    assert rows["flair.nii.gz"]["review"] == "no" and float(rows["flair.nii.gz"]["confidence"]) >= 0.8
    assert rows["phantom.nii.gz"]["review"] == "yes" and float(rows["phantom.nii.gz"]["confidence"]) == 0.0
    assert "no tissue contrast" in rows["phantom.nii.gz"]["review_reasons"]
    assert (out / "phantom_seg.nii.gz").is_file()  # flagged, still written
    report = json.loads((out / "report.json").read_text())
    by_name = {Path(r["input"]).name: r for r in report["rows"]}
    assert by_name["phantom.nii.gz"]["review"] == "yes" and isinstance(by_name["flair.nii.gz"]["confidence"], float)
    run = json.loads((out / "run.json").read_text())
    cases = {Path(c["input"]).name: c for c in run["runs"][-1]["cases"]}
    assert cases["phantom.nii.gz"]["review"] == "yes" and cases["flair.nii.gz"]["review"] == "no"
    png = Image.open(out / "phantom_overlay.png")
    assert "REVIEW" in png.info["Description"] and "no tissue contrast" in png.info["Description"]
    assert "REVIEW" not in Image.open(out / "flair_overlay.png").info["Description"]


def test_resumed_rows_keep_the_verdict(flagged_batch, segmenter):
    inputs, out, _ = flagged_batch
    again = run_batch([inputs], out, BatchOptions(progress=False, overlay=True), segmenter=segmenter)
    kept = {Path(r.input).name: r for r in again.results}
    assert kept["phantom.nii.gz"].seconds is None and kept["phantom.nii.gz"].review == "yes"
    assert kept["flair.nii.gz"].confidence >= 0.8


def test_strict_skips_flagged_inputs(tmp_path, segmenter):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLE_FLAIR, inputs / "flair.nii.gz")
    _save(*empty(), inputs / "empty.nii.gz")
    out = tmp_path / "out"
    result = run_batch([inputs], out, BatchOptions(progress=False, strict=True, overlay=True), segmenter=segmenter)
    by_name = {Path(r.input).name: r for r in result.results}
    assert str(by_name["empty.nii.gz"].status) == "skipped" and "flagged for review" in by_name["empty.nii.gz"].error
    assert not (out / "empty_seg.nii.gz").exists() and not (out / "empty_overlay.png").exists()
    assert str(by_name["flair.nii.gz"].status) == "ok" and (out / "flair_seg.nii.gz").is_file()
    assert result.exit_code == 0


def test_segment_case_json_carries_the_verdict_and_strict(tmp_path):
    from monaiunetseg.cli import main as cli_main

    phantom = _save(*uniform_cylinder(), tmp_path / "in" / "phantom.nii.gz")
    code = cli_main(["segment-case", str(phantom), "-o", str(tmp_path / "out"), "--result-json",
                     str(tmp_path / "r.json"), "--device", "cpu"])
    data = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and data["review"] == "yes" and data["confidence"] == 0.0 and data["review_reasons"]
    code = cli_main(["segment-case", str(phantom), "-o", str(tmp_path / "strict"), "--result-json",
                     str(tmp_path / "s.json"), "--device", "cpu", "--strict"])
    data = json.loads((tmp_path / "s.json").read_text())
    assert code == 1 and data["status"] == "skipped" and not list((tmp_path / "strict").glob("*_seg.*"))


def test_report_of_an_earlier_version_is_kept_and_extended(tmp_path, segmenter):
    """A report.csv written before the verdict columns existed is this tool's: its rows are kept."""
    out = tmp_path / "out"
    out.mkdir()
    old = ["input", "output", "status", "error", "volume_ml", "seconds", "series_uid", "series_description",
           "dicom_seg", "overlay", "probabilities", "note"]
    with open(out / "report.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(old)
        w.writerow(["/elsewhere/old.nii.gz", "", "failed", "earlier", "", "", "", "", "", "", "", ""])
    result = run_batch([SAMPLE_FLAIR], out, BatchOptions(progress=False), segmenter=segmenter)
    assert result.exit_code == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [r["input"] for r in rows][0] == "/elsewhere/old.nii.gz" and rows[-1]["review"] == "no"


def test_dicom_series_that_is_not_flair_is_flagged_by_its_header(tmp_path, segmenter):
    """A T1 series segmented anyway (``--all-series``): the header says so in the reasons, confidence 0."""
    from dicom_factory import write_series

    array, affine = _sample()
    folder = tmp_path / "dicom" / "t1"
    write_series(np.clip(array[:, :, 14:22], 0, None), affine, folder, description="AX T1 MPRAGE")
    result = run_batch([tmp_path / "dicom"], tmp_path / "out", BatchOptions(progress=False, all_series=True),
                       segmenter=segmenter)
    (row,) = result.results
    assert str(row.status) == "ok", row.error
    assert row.review == "yes" and row.confidence == 0.0
    assert "DICOM header does not say FLAIR ('AX T1 MPRAGE'" in row.review_reasons


def test_calibrate_trust_command_on_a_small_cv(prepared_small, tmp_path):
    """``monaiunetseg calibrate-trust``: out-of-fold signals of each patient from its own fold's model, the fit
    and its cross-validated table written where asked (3 patients, 3 folds: the machinery, not the figures)."""
    from monaiunetseg.cli import main as cli_main
    from monaiunetseg.training.cv import RECORD

    cv = tmp_path / "cv"
    for fold in range(3):
        (cv / f"fold{fold}").mkdir(parents=True)
        shutil.copy(BUNDLE_DIR / "models" / "model.pt", cv / f"fold{fold}" / "model.pt")
        (cv / f"fold{fold}" / RECORD).write_text(json.dumps({"status": "done", "epochs": 1, "overrides": {"context": 0}}))
    docs = tmp_path / "docs"
    assert cli_main(["calibrate-trust", str(cv), str(prepared_small), "--docs-dir", str(docs), "--device", "cpu"]) == 0
    calibration = json.loads((docs / "trust_calibration.json").read_text())
    assert calibration["n_patients"] == 3 and calibration["confidence"]["features"] == ["uncertain_ratio", "mean_probability"]
    assert sum(r["patients"] for r in calibration["cv_review_table"]) == 3
    rows = list(csv.DictReader(open(docs / "trust_oof_per_patient.csv")))
    assert len(rows) == 3 and all(0.0 <= float(r["confidence_cv"]) <= 1.0 for r in rows)
    assert (cv / "oof_probs").is_dir() and len(list((cv / "oof_probs").glob("*.npz"))) == 3
