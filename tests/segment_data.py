"""Small real test volumes for the batch-inference tests, and world-space comparison of labelmaps.

Volumes are a few tumour slices of a shared LGG patient (kaggle_3m), so the model runs in well under a second
per case on a 2-core CPU.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.geometry import kaggle_affine
from monaiunetseg.training.lgg import read_patient
from monaiunetseg.metrics import dice  # noqa: F401  (the tests import it from here)

PATIENT = "TCGA_CS_4944_20010208"  # 20 slices, tumour in the middle (one of conftest.SMALL_PATIENTS)


@lru_cache(maxsize=4)
def _patient(kaggle_dir: str, patient: str):
    return read_patient(Path(kaggle_dir) / patient)


def small_volume(kaggle_dir: Path, n_slices: int = 8, channel: int = 1, patient: str = PATIENT) -> tuple[np.ndarray, np.ndarray]:
    """``n_slices`` around the slice with most tumour: (float32 array (col, row, slice), RAS affine).

    ``channel`` 1 is FLAIR, 0 the pre-contrast (T1-weighted) image of the same slices.
    """
    vol = _patient(str(kaggle_dir), patient)
    centre = int(vol.label.sum(axis=(0, 1)).argmax())
    start = max(0, min(centre - n_slices // 2, vol.label.shape[2] - n_slices))
    array = vol.image[:, :, start:start + n_slices, channel].astype(np.float32)
    return np.ascontiguousarray(array), kaggle_affine(array.shape)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype=np.int16, qform_code: int = 1,
               sform_code: int = 1) -> Path:
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine if sform_code else None, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def permuted(array: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Same voxels stored with axes permuted; world positions unchanged."""
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, list(perm)]
    return np.ascontiguousarray(array.transpose(perm)), new_affine


def flipped(array: np.ndarray, affine: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Same voxels stored with ``axes`` reversed; world positions unchanged."""
    new_affine = affine.copy()
    for a in axes:
        new_affine[:3, 3] += affine[:3, a] * (array.shape[a] - 1)
        new_affine[:3, a] = -affine[:3, a]
    return np.ascontiguousarray(np.flip(array, axis=axes)), new_affine


def upsampled_in_plane(array: np.ndarray, affine: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel split into factor x factor in-plane voxels (spacing / factor) covering the same footprint."""
    new_affine = affine.copy()
    for a in (0, 1):
        new_affine[:3, a] = affine[:3, a] / factor
        new_affine[:3, 3] -= affine[:3, a] * (factor - 1) / (2 * factor)
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1), new_affine


def on_grid(src: np.ndarray, src_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray, exact: bool = True) -> np.ndarray:
    """``src`` sampled at the voxel centres of the grid (``shape``, ``affine``), nearest voxel.

    With ``exact`` the centres must land on ``src`` voxel centres (pure permutations/flips of one grid).
    """
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inv = np.linalg.inv(src_affine)
    src_ijk = inv[:3, :3] @ world + inv[:3, 3:4]
    idx = np.rint(src_ijk).astype(int)
    if exact:
        assert np.abs(src_ijk - idx).max() < 1e-3, "grids are not permutations/flips of each other"
    for a in range(3):
        assert idx[a].min() >= 0 and idx[a].max() < src.shape[a], "grid outside the source volume"
    return src[idx[0], idx[1], idx[2]].reshape(shape)


