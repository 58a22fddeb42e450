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


def _ellipse_scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 61 x 61 x 15 LPS-stored scan (1 x 1 x 3 mm) with an ellipsoidal lesion, 40 x 24 mm in plane, turned by
    30 degrees, on the patient's left."""
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    i, j, k = np.indices((61, 61, 15), dtype=float)
    x, y, z = i - 38, j - 30, (k - 7) * 3
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    u, v = c * x + s * y, -s * x + c * y
    labels = ((u / 20) ** 2 + (v / 12) ** 2 + (z / 10) ** 2 <= 1).astype(np.uint8)
    image = np.where(labels > 0, 400.0, 100.0).astype(np.float32)
    return image, labels, affine


@pytest.mark.parametrize("storage", ["as_is", "sagittal"])
def test_overlay_draws_the_measured_diameters_on_the_measured_axial_slice(storage: str, tmp_path: Path):
    from scipy import ndimage

    from monaiunetseg.measure.shape import measure_labelmap
    from monaiunetseg.visual.overlay import display_plane, measured_view, to_lps

    image, labels, affine = _ellipse_scan()
    if storage == "sagittal":  # stored sagittally: the overlay still shows the measured axial slice
        (image, affine), labels = permuted(image, affine, (1, 2, 0)), permuted(labels, affine, (1, 2, 0))[0]
    measured = measure_labelmap(labels, affine)
    longest, perpendicular = measured["axial_longest_mm"], measured["axial_perpendicular_mm"]
    assert longest == pytest.approx(40, abs=1.5) and perpendicular == pytest.approx(24, abs=1.5)

    k, lines = measured_view(labels.shape, affine, measured)
    lab2d = display_plane(np.take(to_lps(labels, affine)[0], k, axis=2), 2)
    border = np.argwhere(lab2d & ~ndimage.binary_erosion(lab2d))[:, ::-1]  # (column, row) pixel centres
    for name, length in (("longest", longest), ("perpendicular", perpendicular)):
        ends = lines[name]
        assert np.sqrt(((ends[:, None] - border[None]) ** 2).sum(-1)).min(axis=1).max() <= 1.0  # on the border
        assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(length)  # 1 mm pixels in plane

    png = write_overlay(image, labels, affine, tmp_path / "overlay.png", title="case", measurements=measured)
    text = Image.open(png).text
    slice_number = measured["axial_slice"] + 1
    assert text["Description"].startswith(f"slice {slice_number}/{labels.shape[measured['axial_axis']]} (axial)")
    assert (f"RANO {longest:.1f} x {perpendicular:.1f} mm = {measured['bidimensional_mm2']:.0f} mm² "
            "(measured slice)") in text["Description"]
    assert text["RANO longest"] == f"{longest:.1f} mm" and text["RANO perpendicular"] == f"{perpendicular:.1f} mm"
    assert text["RANO lines"] == "drawn"
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    vermillion = (np.abs(rgb - [0xD5, 0x5E, 0x00]).sum(-1) < 40).sum()
    green = (np.abs(rgb - [0x00, 0x9E, 0x73]).sum(-1) < 40).sum()
    assert vermillion > 100 and green > 60  # both lines (and their labels) are drawn


def test_overlay_without_a_measurable_finding_draws_no_lines(tmp_path: Path):
    from monaiunetseg.measure.shape import measure_labelmap

    image, labels, affine = _scan_with_left_lesion()
    empty = np.zeros_like(labels)
    png = write_overlay(image, empty, affine, tmp_path / "none.png", measurements=measure_labelmap(empty, affine))
    text = Image.open(png).text
    assert text["Description"] == "slice 5/9 (axial), FLAIR abnormality 0.0 mL" and "RANO lines" not in text


def test_overlay_says_so_when_the_measured_slices_cannot_be_shown_axially(tmp_path: Path):
    """The fallback for a grid whose measured slices do not reorient to LPS axial ones (a strongly oblique
    acquisition), exercised with a row that names another voxel axis as the measured one."""
    from monaiunetseg.measure.shape import measure_labelmap
    from monaiunetseg.visual.overlay import measured_view

    image, labels, affine = _ellipse_scan()
    measured = {**measure_labelmap(labels, affine), "axial_axis": 0}
    assert measured_view(labels.shape, affine, measured) is None
    png = write_overlay(image, labels, affine, tmp_path / "oblique.png", measurements=measured)
    text = Image.open(png).text
    assert "(diameters not drawn: measured plane not shown)" in text["Description"] and text["RANO lines"] == "not drawn"


@pytest.mark.parametrize("width_vox", [40, 160])
def test_long_verdict_lines_stay_inside_the_picture(width_vox: int, tmp_path: Path):
    """Issue 31 tidy-up: a 1 mm scan's three review reasons are wrapped as the font measures them, so no verdict
    line is cut at either edge, on a narrow picture as on a wide one."""
    image = np.full((width_vox, 200, 5), 100.0, dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[width_vox // 3:width_vox // 2, 80:100, 2] = 1
    verdict = ("REVIEW (confidence 0.00): 3D isotropic acquisition outside the training data (1x1x1 mm voxels; "
               "trained on 2D slices of 2.5-6 mm); field of view 40 mm outside a head scan's (120-400 mm); "
               "LOW CONFIDENCE: UNCERTAIN OUTLINE (EXPECTED DICE 0.42)")
    png = write_overlay(image, labels, np.diag([-1.0, -1.0, 1.0, 1.0]), tmp_path / "o.png", title="case",
                        verdict=verdict, review=True)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    orange = (rgb[..., 0] > 150) & (rgb[..., 1] > 90) & (rgb[..., 2] < 80)  # the flagged verdict's #E69F00
    columns = np.nonzero(orange.any(axis=0))[0]
    assert columns.size and columns.min() > 0 and columns.max() < rgb.shape[1] - 1, (columns.min(), columns.max())
