"""The one geometric convention of the project.

The Kaggle LGG slices carry no physical geometry, so the project fixes one and uses it everywhere:

* Voxel axes of a prepared volume are (column, row, slice) of the TIFF slices.
* Columns run toward patient Left, rows toward Posterior (radiological display, as in the TIFFs), and
  slices toward Superior (slice 1 is the most inferior). That is the LPS axis order, i.e. an identity
  direction matrix in DICOM/ITK (LPS) world coordinates, ``diag(-1, -1, 1)`` in NIfTI (RAS) terms.
* Nominal spacing: 1.0 x 1.0 mm in-plane and 3.0 mm between slices; the volume is centred on the world
  origin. Millimetre and millilitre values on Kaggle data are therefore nominal.

The model sees every scan in the same orientation (``MODEL_AXCODES``) on a square ``MODEL_GRID`` in-plane
grid: real scans are reoriented (no interpolation) and their in-plane field of view is padded to a square
and resampled to that grid, which is how the Kaggle slices themselves were made.
"""

from __future__ import annotations

import numpy as np

MODEL_AXCODES = "LPS"  # MONAI/nibabel axis codes: axis 0 -> Left, 1 -> Posterior, 2 -> Superior
MODEL_GRID = 256
# Affines are NIfTI-style RAS everywhere in the core; these are the labels of the negative axis ends.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
INTENSITY_PERCENTILES = (1.0, 99.0)  # the model's input intensities: these percentiles of a volume -> 0 and 1
KAGGLE_SPACING = (1.0, 1.0, 3.0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres: |det| of the affine's 3x3 block (also right for sheared grids)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def kaggle_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = KAGGLE_SPACING) -> np.ndarray:
    """NIfTI (RAS) affine of a prepared Kaggle volume of ``shape`` (columns, rows, slices), centred on 0."""
    spacing_arr = np.asarray(spacing, dtype=float)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(lps_to_ras * spacing_arr)
    centre_offset = (np.asarray(shape, dtype=float) - 1.0) / 2.0 * spacing_arr
    affine[:3, 3] = lps_to_ras * -centre_offset
    return affine
