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
KAGGLE_SPACING = (1.0, 1.0, 3.0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres: |det| of the affine's 3x3 block (also right for sheared grids)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


# A grid whose 3x3 block is this close to singular (|det| relative to the product of the voxel sizes, i.e. the
# sine-like "volume" of the three axis directions) is degenerate: two axes (nearly) parallel.
MIN_AXIS_INDEPENDENCE = 1e-6


class GeometryError(ValueError):
    """An image whose voxel-to-world geometry cannot place it in space; the message says where and why."""


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Length of each voxel axis in millimetres (the column norms of the affine's 3x3 block)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


# Voxel sizes no scan has: 1 um (microscopy is not read here) to 1 m. Outside, volumes and pictures are meaningless
# (a 1e-30 mm voxel made an overlay of zero pixels).
MIN_VOXEL_MM, MAX_VOXEL_MM = 1e-3, 1e3


def check_affine(affine: np.ndarray, where: str) -> np.ndarray:
    """``affine`` as a float 4x4 array if it describes a usable grid, else :class:`GeometryError`.

    The one geometry check for every input format (NIfTI, DICOM, and any later reader): a zero, negative or
    non-finite voxel size, or axes that are (nearly) parallel, would make volumes 0 mL and resampling
    meaningless, so such an input fails its case with a message saying so. ``where`` names the input.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        raise GeometryError(f"{where}: invalid geometry: affine of shape {a.shape}, expected 4x4")
    if not np.isfinite(a).all():
        raise GeometryError(f"{where}: invalid geometry: the affine holds NaN or infinite values "
                            f"({np.array2string(a[:3], precision=4, separator=', ')})")
    sizes = voxel_sizes(a)
    if (sizes <= 0).any():
        raise GeometryError(f"{where}: invalid geometry: voxel size {_mm(sizes)} mm has a zero axis "
                            "(e.g. an all-zero sform/qform or PixelSpacing 0)")
    if (sizes < MIN_VOXEL_MM).any() or (sizes > MAX_VOXEL_MM).any():
        raise GeometryError(f"{where}: invalid geometry: voxel size {_mm(sizes)} mm is no scanner's "
                            f"(outside {MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm): a header with the wrong units or scale?")
    independence = abs(float(np.linalg.det(a[:3, :3]))) / float(np.prod(sizes))
    if independence < MIN_AXIS_INDEPENDENCE:
        raise GeometryError(f"{where}: invalid geometry: the affine is not invertible (its voxel axes are "
                            f"parallel; voxel size {_mm(sizes)} mm), so positions and volumes are undefined")
    return a


def _mm(sizes: np.ndarray) -> str:
    return " x ".join(f"{s:.4g}" for s in sizes)


def kaggle_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = KAGGLE_SPACING) -> np.ndarray:
    """NIfTI (RAS) affine of a prepared Kaggle volume of ``shape`` (columns, rows, slices), centred on 0."""
    spacing_arr = np.asarray(spacing, dtype=float)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(lps_to_ras * spacing_arr)
    centre_offset = (np.asarray(shape, dtype=float) - 1.0) / 2.0 * spacing_arr
    affine[:3, 3] = lps_to_ras * -centre_offset
    return affine
