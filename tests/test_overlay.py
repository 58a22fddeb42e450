"""The overlay PNG: radiological display with orientation letters, the slice number in the input's own order and
the finding's volume in mL, on synthetic volumes whose answer is known (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monaiunetseg.visual.overlay import orientation_marks, write_overlay

from segment_data import flipped, permuted


def _scan_with_left_lesion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 40 x 40 x 9 LPS-stored volume (1 x 1 x 3 mm); a 6 x 6 x 3 lesion on the patient's left, slices 5-7."""
    image = np.full((40, 40, 9), 100.0, dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[28:34, 17:23, 4:7] = 1  # axis 0 runs toward patient Left: high i = left
    image[labels > 0] = 400.0
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    return image, labels, affine


def _outline_columns(png: Path) -> np.ndarray:
    """Columns (as fractions of the width) holding the blue outline (grey pixels have r = g = b)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    blue = (rgb[..., 2] - rgb[..., 0] > 80) & (rgb[..., 2] - rgb[..., 1] > 30)
    return np.nonzero(blue.any(axis=0))[0] / rgb.shape[1]


@pytest.mark.parametrize("storage", ["as_is", "slices_reversed", "sagittal"])
def test_overlay_marks_sides_slice_and_volume(storage: str, tmp_path: Path):
    image, labels, affine = _scan_with_left_lesion()
    if storage == "slices_reversed":  # same scan stored superior-to-inferior: the input's slice 4 is the middle
        (image, affine), labels = flipped(image, affine, (2,)), flipped(labels, affine, (2,))[0]
    if storage == "sagittal":
        (image, affine), labels = permuted(image, affine, (1, 2, 0)), permuted(labels, affine, (1, 2, 0))[0]
    png = write_overlay(image, labels, affine, tmp_path / "overlay.png", title="case (research use only)")
    description = Image.open(png).text["Description"]
    assert "FLAIR abnormality 0.3 mL" in description  # 6 x 6 x 3 voxels of 3 uL
    if storage == "sagittal":
        assert description.startswith("slice 31/40 (sagittal)")  # middle of columns 28-33, counted from 1
        assert orientation_marks(0) == ("A", "P", "S", "I")
        return
    expected_slice = 6 if storage == "as_is" else 4  # middle of slices 5-7 (1-based), or 3-5 when reversed
    assert description.startswith(f"slice {expected_slice}/9 (axial)")
    assert orientation_marks(2) == ("R", "L", "A", "P")
    columns = _outline_columns(png)
    assert columns.size and columns.min() > 0.6  # patient left is on the image right (radiological)


def test_overlay_of_nothing_found_says_zero(tmp_path: Path):
    image, labels, affine = _scan_with_left_lesion()
    png = write_overlay(image, np.zeros_like(labels), affine, tmp_path / "none.png")
    assert Image.open(png).text["Description"] == "slice 5/9 (axial), FLAIR abnormality 0.0 mL"
    assert _outline_columns(png).size == 0
