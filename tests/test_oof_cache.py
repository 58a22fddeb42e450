"""Issue 31 item 10: out-of-fold probabilities are cached by what they were made from (image, weights, options),
not by the case's name; a CV folder inside the installed bundle gets no cache written into it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.cli import main
from monaiunetseg.training.oof import load_prob, predict_oof

from conftest import BUNDLE_DIR, SAMPLE_FLAIR, SAMPLE_LABEL


def dataset(root: Path, blank: bool) -> Path:
    """Two cases c0, c1 (a few lesion slices of the sample; with ``blank`` the same names holding empty scans)."""
    flair, label = nib.load(SAMPLE_FLAIR), nib.load(SAMPLE_LABEL)
    lab = np.asarray(label.dataobj)
    k = int(np.argmax((lab > 0).sum(axis=(0, 1))))
    image = np.asarray(flair.dataobj, np.float32)[:, :, k - 2:k + 2]
    for i in range(2):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros_like(image) if blank else image, flair.affine), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab[:, :, k - 2:k + 2].astype(np.uint8), flair.affine), root / "labels" / f"c{i}.nii.gz")
    out = root / "prepared"
    assert main(["prepare-pairs", str(root / "images"), str(root / "labels"), "-o", str(out), "--folds", "2"]) == 0
    return out


def cv_folder(root: Path) -> Path:
    for fold in (0, 1):
        (root / f"fold{fold}").mkdir(parents=True)
        (root / f"fold{fold}" / "cv_fold.json").write_text(json.dumps(
            {"fold": fold, "status": "done", "weights": str((BUNDLE_DIR / "models" / "model.pt").resolve())}))
    return root


def test_same_names_in_another_data_set_are_predicted_again(tmp_path: Path, capsys):
    cv = cv_folder(tmp_path / "cv")
    first = predict_oof(cv, dataset(tmp_path / "a", blank=False), cv / "oof_probs", device="cpu", log=lambda _: None)
    assert max(load_prob(p)[0].max() for p in first.values()) > 0.5  # the lesion is found
    second = predict_oof(cv, dataset(tmp_path / "b", blank=True), cv / "oof_probs", device="cpu", log=lambda _: None)
    assert max(load_prob(p)[0].max() for p in second.values()) < 0.5  # the empty scans' own predictions
    capsys.readouterr()


def test_no_cache_is_written_into_the_installed_bundle(tmp_path: Path):
    """The shipped CV folder of an installed bundle (package ``monaiunetseg_bundle``) is refused as a cache
    place before any prediction; nothing is created in it."""
    site = tmp_path / "site"
    installed = site / "monaiunetseg_bundle"
    shutil.copytree(BUNDLE_DIR / "configs", installed / "configs")
    (installed / "__init__.py").write_text("")
    cv_folder(installed / "models" / "cv")
    before = sorted(p.relative_to(installed) for p in installed.rglob("*"))
    prepared = dataset(tmp_path / "a", blank=False)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", "calibrate-trust", str(installed / "models" / "cv"),
                           str(prepared), "--docs-dir", str(tmp_path / "docs"), "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, timeout=300)
    assert proc.returncode == 2 and "inside the installed bundle" in proc.stderr, proc.stderr
    assert sorted(p.relative_to(installed) for p in installed.rglob("*")) == before
