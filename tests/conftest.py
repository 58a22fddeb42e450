"""Shared fixtures: real LGG data from ../shared (skipped only where absent), the shipped model, temp dirs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAGGLE_DIR = Path(os.environ.get("LGG_KAGGLE_DIR", REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
SAMPLE_DIR = REPO / "MONAIUNetSeg" / "Resources" / "Sample"
SAMPLE_FLAIR = SAMPLE_DIR / "TCGA_DU_A5TR_19970726_flair.nii.gz"
SAMPLE_LABEL = SAMPLE_DIR / "TCGA_DU_A5TR_19970726_label.nii.gz"
BUNDLE_DIR = REPO / "monai_bundle"
MODULE_DIR = REPO / "MONAIUNetSeg"
# The Slicer glue (MONAIUNetSegLib) is not pip-installed: Slicer finds it beside the module file, the tests here
# (first on the path, so a git worktree tests its own core rather than the editable install).
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
# Small, fixed patients used by several tests (all exist in the shared 77).
SMALL_PATIENTS = ["TCGA_CS_4944_20010208", "TCGA_HT_7602_19951103", "TCGA_CS_6186_20000601"]


@pytest.fixture(scope="session")
def kaggle_dir() -> Path:
    if not KAGGLE_DIR.is_dir():
        pytest.skip(f"shared LGG data not found at {KAGGLE_DIR}")
    return KAGGLE_DIR


@pytest.fixture(scope="session")
def small_kaggle_dir(kaggle_dir: Path, tmp_path_factory) -> Path:
    """A kaggle_3m-shaped folder with copies of three small patients and data.csv."""
    root = tmp_path_factory.mktemp("kaggle_small")
    for name in SMALL_PATIENTS:
        shutil.copytree(kaggle_dir / name, root / name)
    shutil.copy(kaggle_dir / "data.csv", root / "data.csv")
    return root


@pytest.fixture(scope="session")
def prepared_small(small_kaggle_dir: Path, tmp_path_factory) -> Path:
    """``prepare-lgg`` output of the three small patients (3 folds so each fold holds one patient)."""
    from monaiunetseg.training.prepare import prepare_lgg

    out = tmp_path_factory.mktemp("prepared_small")
    results, _ = prepare_lgg(small_kaggle_dir, out, n_folds=3, progress=False)
    assert all(r.error is None for r in results)
    return out


@pytest.fixture(scope="session")
def segmenter():
    """The shipped model, loaded once, on the CPU."""
    from monaiunetseg.model.predictor import Segmenter

    return Segmenter(device="cpu")
