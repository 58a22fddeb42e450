"""Quick-look PNG: one FLAIR slice in grey with the predicted abnormality outlined in blue (Okabe-Ito, colour-blind
safe, the model's colour in the evaluation pictures too).

Meant for checking a batch at a glance (did it find the lesion, is the outline on the bright region), not for
reading. The volume is first reoriented to LPS without interpolation so that every image is shown the same way
(radiological: patient right on the image left; axial anterior up, sagittal/coronal superior up), and the slice
is taken along the voxel axis the scan was acquired along, at the middle of the predicted abnormality's extent
(the middle slice when nothing was found). Orientation letters on the edges, the slice number (in the input's
own slice order) and the finding's volume in mL are drawn on the image, and the same text is stored in the
PNG's Description, so nobody has to guess which side is left or which slice this is.

With measurements (``segment --overlay --measure``: a ``measure.shape.measure_labelmap`` row) the slice shown is
the measured one instead, in the patient's axial plane whatever the stored plane, with the two RANO diameters
drawn at the end points that were measured and labelled in mm, and their product in the caption: the reader sees
what the numbers in the report are, not a re-measurement. A grid whose measured plane does not reorient to
axial (too oblique) keeps the usual slice and says the diameters are not drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg import TOOL_NAME, __version__
from monaiunetseg.files import atomic_path
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.visual.style import PREDICTION_RGB

LINE_PX = 13.5  # one line of 8 pt text at 100 dpi, with matplotlib's line spacing

PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}
# Patient directions at the (left, right, top, bottom) edges of the displayed image, per LPS slice axis.
EDGE_MARKS = {2: ("R", "L", "A", "P"), 1: ("R", "L", "S", "I"), 0: ("A", "P", "S", "I")}


def orientation_marks(axis: int) -> tuple[str, str, str, str]:
    """Patient direction at the left, right, top and bottom edge of the image shown for LPS slice ``axis``."""
    return EDGE_MARKS[axis]


def caption(labels: np.ndarray, affine: np.ndarray, slice_number: int, n_slices: int, axis: int) -> str:
    """``slice 5/8 (axial), FLAIR abnormality 12.3 mL``: what the image shows, in words."""
    volume = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    return f"slice {slice_number}/{n_slices} ({PLANES[axis]}), FLAIR abnormality {volume:.1f} mL"


def lps_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform of the grid to LPS voxel axes: row ``i`` is (new axis, +1/-1 flip) of axis
    ``i``."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("L", "P", "S")))


def to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Array reoriented to LPS voxel axes, its spacing, where the original slice axis went and whether it was
    reversed on the way."""
    transform = lps_transform(affine)
    out = nib.orientations.apply_orientation(array, transform)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new_spacing = np.empty(3)
    for old_axis, (new_axis, _) in enumerate(transform.astype(int)):
        new_spacing[new_axis] = spacing[old_axis]
    slice_axis = int(transform[2, 0])
    return out, new_spacing, slice_axis, bool(transform[2, 1] < 0)


def pick_slice(labels: np.ndarray, axis: int) -> int:
    """Middle of the labelled extent along ``axis``, or the middle slice if nothing is labelled."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    present = np.nonzero(labels.any(axis=other))[0]
    if present.size == 0:
        return labels.shape[axis] // 2
    return int((present[0] + present[-1]) // 2)


def display_plane(plane_lps: np.ndarray, axis: int) -> np.ndarray:
    """2D LPS plane (the two remaining axes in order) -> image rows/columns in radiological display."""
    if axis == 2:  # axial: rows = P (anterior up), columns = L (patient right on the left)
        return plane_lps.T
    return plane_lps.T[::-1]  # sagittal (P, S) / coronal (L, S): superior up


def index_to_lps(ijk: np.ndarray, shape: tuple[int, ...], transform: np.ndarray) -> np.ndarray:
    """(n, 3) voxel indices of the input grid -> the same points' indices on the LPS-reoriented grid."""
    ijk = np.asarray(ijk, dtype=float)
    out = np.empty_like(ijk)
    for axis, (new_axis, flip) in enumerate(transform):
        out[:, int(new_axis)] = shape[axis] - 1 - ijk[:, axis] if flip < 0 else ijk[:, axis]
    return out


def measured_view(shape: tuple[int, ...], affine: np.ndarray, measurements: dict) -> tuple[int, dict] | None:
    """The LPS axial slice of the measured diameters and their end points as (column, row) pixel coordinates of
    the displayed axial image (``display_plane``), or None when the measured slices are not LPS axial slices."""
    diameters = measurements.get("diameters") or {}
    if measurements.get("axial_slice") is None or not diameters.get("longest"):
        return None
    transform = lps_transform(affine)
    if int(transform[measurements["axial_axis"], 0]) != 2:
        return None
    lines = {}
    for name, segment in diameters.items():
        if segment:
            lps = index_to_lps(np.asarray(segment["ijk"]), shape, transform)
            lines[name] = lps[:, :2]  # axial display: columns along L (axis 0), rows along P (axis 1)
    k = int(round(float(index_to_lps(np.asarray(diameters["longest"]["ijk"]), shape, transform)[0, 2])))
    return k, lines


def measurement_text(measurements: dict) -> str:
    """``RANO 62.1 x 40.3 mm = 2502 mm²``: the bidimensional measurement the lines show."""
    return (f"RANO {measurements['axial_longest_mm']:.1f} x {measurements['axial_perpendicular_mm']:.1f} mm = "
            f"{measurements['bidimensional_mm2']:.0f} mm²")


LINE_COLOURS = {"longest": "#D55E00", "perpendicular": "#009E73"}  # Okabe-Ito vermillion and bluish green
LENGTH_KEYS = {"longest": "axial_longest_mm", "perpendicular": "axial_perpendicular_mm"}


MARGIN_PX = 6  # kept free at either edge of a header line


def wrap_to_pixels(text: str, max_px: float, fontsize: float = 8, bold: bool = False) -> list[str]:
    """``text`` in lines no wider than ``max_px`` (at 100 dpi) as the font draws them: a fixed number of
    characters per line cut long reasons at both edges of a narrow picture (capitals and bold run wider)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font = FontProperties(size=fontsize, weight="bold" if bold else "normal")
    measure = TextToPath()

    def fits(line: str) -> bool:
        return measure.get_text_width_height_descent(line, font, ismath=False)[0] * 100 / 72 <= max_px

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while not fits(word) and len(word) > 1:  # a word wider than the picture: cut where it must be
            n = max((i for i in range(1, len(word)) if fits(word[:i])), default=1)
            lines.append(word[:n])
            word = word[n:]
        lines.append(word)
    return lines


def write_overlay(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, target: str | os.PathLike,
                  title: str | None = None, verdict: str | None = None, review: bool = False,
                  measurements: dict | None = None) -> Path:
    """Write the PNG atomically; ``image`` and ``labels`` share the grid described by the RAS ``affine``.
    ``verdict``: the case's confidence line (``Assessment.caption``), drawn under the caption, in orange when
    the case is flagged for ``review`` (a result that needs a second look must not look like the others).
    ``measurements``: the labelmap's ``measure_labelmap`` row, to show its measured slice and diameters."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import patheffects
    from matplotlib.figure import Figure

    img_lps, spacing, axis, reversed_slices = to_lps(np.asarray(image, dtype=np.float32), affine)
    lab_lps = to_lps(np.asarray(labels, dtype=np.uint8), affine)[0]
    k = pick_slice(lab_lps, axis)
    n_slices = lab_lps.shape[axis]
    input_k = n_slices - 1 - k if reversed_slices else k  # the slice number as the input counts its slices
    view = measured_view(np.shape(labels), affine, measurements) if measurements else None
    lines: dict = {}
    if view is not None:  # the measured slice, counted along the measured axis of the input
        axis, (k, lines) = 2, view
        input_k, n_slices = int(measurements["axial_slice"]), np.shape(labels)[measurements["axial_axis"]]
    text = caption(labels, affine, input_k + 1, n_slices, axis)
    if view is not None:
        text += f"; {measurement_text(measurements)} (measured slice)"
    elif measurements and measurements.get("axial_slice") is not None:
        text += f"; {measurement_text(measurements)} (diameters not drawn: measured plane not shown)"
    img2d = display_plane(np.take(img_lps, k, axis=axis), axis)
    lab2d = display_plane(np.take(lab_lps, k, axis=axis), axis)
    in_plane = [s for a, s in enumerate(spacing) if a != axis]  # (columns, rows) of the displayed image
    lo, hi = np.percentile(img2d, (1, 99)) if img2d.size else (0.0, 1.0)
    rows, cols = img2d.shape
    height_mm, width_mm = rows * in_plane[1], cols * in_plane[0]
    scale = 512.0 / max(height_mm, width_mm)
    # The verdict wrapped to the picture's width as the font measures it, a line of the header each.
    verdict_lines = wrap_to_pixels(verdict, width_mm * scale - 2 * MARGIN_PX, bold=review) if verdict else []
    header_px = (44 if title else 26) + LINE_PX * len(verdict_lines) + (12 if "; RANO" in text else 0)
    fig = Figure(figsize=(width_mm * scale / 100, (height_mm * scale + header_px) / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, height_mm * scale / (height_mm * scale + header_px)))
    ax.imshow(img2d, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
              aspect=in_plane[1] / in_plane[0])
    if lab2d.any():
        ax.contour(lab2d, levels=[0.5], colors=[tuple(c / 255 for c in PREDICTION_RGB)], linewidths=1.5)
    for name, ends in lines.items():
        ax.plot(ends[:, 0], ends[:, 1], color=LINE_COLOURS[name], linewidth=2, solid_capstyle="butt")
        label = f"{measurements[LENGTH_KEYS[name]]:.1f} mm"
        ax.annotate(label, ends[1], xytext=(4, 4), textcoords="offset points", color=LINE_COLOURS[name],
                    fontsize=9, fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    mark = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = orientation_marks(axis)
    ax.text(0.01, 0.5, left, ha="left", va="center", **mark)
    ax.text(0.99, 0.5, right, ha="right", va="center", **mark)
    ax.text(0.5, 0.99, top, ha="center", va="top", **mark)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **mark)
    shown = text.replace("; RANO", "\nRANO")  # the measurement on a line of its own
    caption_lines = "\n".join(t for t in (title, shown) if t)
    fig.text(0.5, 1.0 - 4 / fig.bbox.height, caption_lines, ha="center", va="top", fontsize=8, color="white")
    if verdict:  # right under the caption
        top_px = 4 + LINE_PX * (caption_lines.count("\n") + 1)
        fig.text(0.5, 1.0 - top_px / fig.bbox.height, "\n".join(verdict_lines), ha="center", va="top", fontsize=8,
                 fontweight="bold" if review else "normal", color="#E69F00" if review else "white")
        text = f"{text}; {verdict}"
    extra = {}
    if measurements and measurements.get("axial_slice") is not None:
        extra = {"RANO longest": f"{measurements['axial_longest_mm']:.1f} mm",
                 "RANO perpendicular": f"{measurements['axial_perpendicular_mm']:.1f} mm",
                 "RANO product": f"{measurements['bidimensional_mm2']:.0f} mm2",
                 "RANO lines": "drawn" if lines else "not drawn"}
    target = Path(target)
    with atomic_path(target) as tmp:
        # the Software text is how a later run knows this PNG is its own (batch.outdir)
        fig.savefig(tmp, format="png", facecolor="black",
                    metadata={"Description": text, "Software": f"{TOOL_NAME} {__version__}",
                              "Disclaimer": "research use only", **extra})
    return target
