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


@pytest.fixture(scope="session")
def ensemble_bundle(tmp_path_factory) -> Path:
    """A copy of the shipped bundle whose ``default`` model set is a 2-member ensemble (the shipped weights and
    a perturbed copy: two real, different networks) with flip TTA and component post-processing, as a
    cross-validation would ship it; ``fast`` is the first member alone."""
    import json

    import torch

    root = tmp_path_factory.mktemp("ensemble") / "bundle"
    shutil.copytree(BUNDLE_DIR / "configs", root / "configs")
    (root / "models").mkdir()
    shutil.copy(BUNDLE_DIR / "models" / "model.pt", root / "models" / "fold0.pt")
    state = torch.load(BUNDLE_DIR / "models" / "model.pt", map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point() and value.ndim == 4:  # convolution kernels
            value += 0.1 * value.std() * torch.randn(value.shape, generator=g)
    torch.save(state, root / "models" / "fold1.pt")
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config.update({"models": {"default": ["models/fold0.pt", "models/fold1.pt"], "fast": ["models/fold0.pt"]},
                   "flip_tta": True, "postprocessing": {"min_fraction": 0.1}})
    path.write_text(json.dumps(config, indent=1))
    return root
