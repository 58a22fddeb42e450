"""One scan stored on different voxel grids: each output is on its input's grid and they agree in world space."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch

from segment_data import dice, flipped, on_grid, permuted, save_nifti, small_volume, upsampled_in_plane


@pytest.fixture(scope="module")
def variants(kaggle_dir: Path, segmenter, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("variants")
    flair, affine = small_volume(kaggle_dir, n_slices=8)
    grids = {
        "axial": (flair, affine),
        "sagittal": permuted(flair, affine, (1, 2, 0)),  # slices along L-R, voxel axes (P, S, L)
        "flipped": flipped(flair, affine, (0, 1, 2)),
        "permuted_flipped": flipped(*permuted(flair, affine, (2, 0, 1)), (1,)),
        "fine512": upsampled_in_plane(flair, affine, 2),
    }
    paths = {}
    for name, (array, aff) in grids.items():
        # qform only for one variant: the affine nibabel (and the output) uses must then come from the qform
        sform_code = 0 if name == "flipped" else 1
        paths[name] = save_nifti(array, aff, root / "in" / f"{name}.nii.gz", sform_code=sform_code)
    singleton = save_nifti(flair[..., None], affine, root / "in" / "singleton4d.nii.gz")  # (x, y, z, 1)
    result = run_batch([root / "in"], root / "out", BatchOptions(progress=False), segmenter=segmenter)
    assert result.exit_code == 0 and result.count("ok") == 6
    outputs = {Path(r.input).name.split(".")[0]: Path(r.output) for r in result.results}
    probs = {name: segmenter.probabilities(*grids[name]) for name in ("axial", "fine512")}
    return {"grids": grids, "paths": {**paths, "singleton4d": singleton}, "outputs": outputs, "probs": probs}


@pytest.mark.parametrize("name", ["axial", "sagittal", "flipped", "permuted_flipped", "fine512", "singleton4d"])
def test_output_is_on_the_input_grid(variants, name):
    src = nib.load(variants["paths"][name])
    out = nib.load(variants["outputs"][name])
    assert out.shape == src.shape
    np.testing.assert_array_equal(out.affine, src.affine)
    for form in ("qform", "sform"):
        src_m, src_code = getattr(src.header, f"get_{form}")(coded=True)
        out_m, out_code = getattr(out.header, f"get_{form}")(coded=True)
        assert out_code == src_code
        if src_code:
            np.testing.assert_array_equal(out_m, src_m)
    np.testing.assert_array_equal(out.header.get_zooms(), src.header.get_zooms())
    assert out.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


@pytest.mark.parametrize("name", ["sagittal", "flipped", "permuted_flipped"])
def test_permutations_and_flips_agree_exactly_in_world_space(variants, name):
    axial_array, axial_affine = variants["grids"]["axial"]
    axial = np.asarray(nib.load(variants["outputs"]["axial"]).dataobj)
    other = nib.load(variants["outputs"][name])
    assert axial.any(), "the model found nothing: the comparison would be vacuous"
    np.testing.assert_array_equal(on_grid(np.asarray(other.dataobj), other.affine, axial.shape, axial_affine), axial)


def test_upsampled_512_grid_agrees_with_axial(variants):
    """512 x 512 at half the spacing: resampling differs slightly, so agreement is by Dice (labels) and by
    mean absolute probability difference (threshold-free, meaningful even for a model that finds little)."""
    fine_array, fine_affine = variants["grids"]["fine512"]
    axial_array, axial_affine = variants["grids"]["axial"]
    fine = nib.load(variants["outputs"]["fine512"])
    assert fine.shape == (512, 512, 8)
    axial = np.asarray(nib.load(variants["outputs"]["axial"]).dataobj)
    axial_on_fine = on_grid(axial, axial_affine, fine.shape, fine_affine, exact=False)
    assert dice(np.asarray(fine.dataobj), axial_on_fine) >= 0.9
    p_axial_on_fine = on_grid(variants["probs"]["axial"], axial_affine, fine.shape, fine_affine, exact=False)
    p_fine = variants["probs"]["fine512"]
    # The provisional model's probabilities are soft everywhere (background around 0.1-0.5), so the bounds
    # are on agreement, not on the model being confident: measured 0.027 and 0.98.
    assert np.abs(p_fine - p_axial_on_fine).mean() < 0.05
    assert np.corrcoef(p_fine.ravel(), p_axial_on_fine.ravel())[0, 1] > 0.95


def test_singleton_fourth_dimension_is_a_3d_volume(variants):
    out = np.asarray(nib.load(variants["outputs"]["singleton4d"]).dataobj)
    axial = np.asarray(nib.load(variants["outputs"]["axial"]).dataobj)
    np.testing.assert_array_equal(out[..., 0], axial)
