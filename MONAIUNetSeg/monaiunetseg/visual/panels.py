"""One patient's evaluation panel: a few telling slices with the expert and model outlines.

Slices shown: where the reference lesion is largest, where prediction and reference disagree most, and where the
largest false-positive island (a predicted component that touches no reference voxel) is widest, when there is
one; a slice chosen for several reasons is shown once. FLAIR in grey, shown radiologically as the batch overlay
is (``visual.overlay``: patient right on the image left). Outlines are drawn on pixels, 2 pixels per voxel: the expert's
(orange) on the ring just outside the reference, the model's (blue) on the ring just inside the prediction, so
where the two agree both lines are seen side by side and neither hides the other. The panel's pixel layout is
fixed by :func:`layout`, so a test can find every voxel in the PNG.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg.visual.overlay import display_plane, to_lps
from monaiunetseg.model.postprocess import connected_components
from monaiunetseg.visual.style import PREDICTION_RGB, REFERENCE_RGB, grey_palette, hex_colour, new_figure, save_png

TILE_PX = 512  # target size of a tile's longer side
MARGIN, GAP, HEADER, CAPTION = 8, 8, 58, 24  # pixels
# Edge marks of the displayed plane (left, right) for slices along LPS axis 0, 1, 2 (sagittal, coronal, axial).
SIDE_MARKS = {0: ("A", "P"), 1: ("R", "L"), 2: ("R", "L")}


@dataclass
class SliceChoice:
    index: int  # along the acquisition axis, in the LPS-reoriented volume (0 = most right/anterior/inferior)
    reasons: list[str]


@dataclass
class Layout:
    """Pixel geometry of a panel: figure size and each tile's (top, left) corner, rows from the top."""

    width: int
    height: int
    tile_shape: tuple[int, int]  # (rows, columns) in pixels
    repeat: tuple[int, int]  # pixels per voxel (rows, columns)
    corners: list[tuple[int, int]]


def layout(plane_shape: tuple[int, int], spacing: tuple[float, float], n_tiles: int) -> Layout:
    """Panel geometry for ``n_tiles`` tiles of a displayed plane of ``plane_shape`` (rows, columns) whose pixels
    measure ``spacing`` (row, column) mm: every voxel becomes a whole number of pixels, square in mm."""
    mm = max(plane_shape[0] * spacing[0], plane_shape[1] * spacing[1])
    per_mm = TILE_PX / mm
    repeat = (max(1, round(per_mm * spacing[0])), max(1, round(per_mm * spacing[1])))
    tile = (plane_shape[0] * repeat[0], plane_shape[1] * repeat[1])
    width = 2 * MARGIN + n_tiles * tile[1] + (n_tiles - 1) * GAP
    height = HEADER + CAPTION + tile[0] + MARGIN
    corners = [(HEADER + CAPTION, MARGIN + i * (tile[1] + GAP)) for i in range(n_tiles)]
    return Layout(width, height, tile, repeat, corners)


def choose_slices(label: np.ndarray, pred: np.ndarray, axis: int) -> list[SliceChoice]:
    """The slices worth looking at (see the module docstring), in that order, each once."""
    other = tuple(a for a in range(3) if a != axis)
    chosen: list[SliceChoice] = []

    def add(index: int, reason: str) -> None:
        for c in chosen:
            if c.index == index:
                c.reasons.append(reason)
                return
        chosen.append(SliceChoice(int(index), [reason]))

    ref_area, pred_area = label.sum(axis=other), pred.sum(axis=other)
    if ref_area.any():
        add(int(np.argmax(ref_area)), "largest lesion")
    elif pred_area.any():
        add(int(np.argmax(pred_area)), "largest prediction (no reference)")
    else:
        add(label.shape[axis] // 2, "middle slice (nothing found)")
    error = np.logical_xor(label, pred).sum(axis=other)
    if error.any():
        add(int(np.argmax(error)), "worst error")
    island = largest_false_positive_island(label, pred)
    if island is not None:
        add(int(np.argmax(island.sum(axis=other))), "false-positive island")
    return chosen


def largest_false_positive_island(label: np.ndarray, pred: np.ndarray) -> np.ndarray | None:
    """The largest predicted component (26-connected, as post-processing counts them) with no reference voxel."""
    components, n = connected_components(pred)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    touched = np.unique(components[label.astype(bool)])
    sizes[0] = 0  # the background
    sizes[touched] = 0  # components overlapping the reference are not islands
    best = int(np.argmax(sizes))
    return components == best if sizes[best] else None


def ring(mask: np.ndarray, outside: bool) -> np.ndarray:
    """One-pixel boundary of a 2D mask: just outside it (``outside``) or just inside it (8-neighbourhood)."""
    from scipy import ndimage

    square = np.ones((3, 3), dtype=bool)
    if outside:
        return ndimage.binary_dilation(mask, square) & ~mask
    return mask & ~ndimage.binary_erosion(mask, square, border_value=0)


def tile_rgb(image: np.ndarray, label: np.ndarray, pred: np.ndarray, window: tuple[float, float],
             repeat: tuple[int, int]) -> np.ndarray:
    """RGB uint8 tile of displayed 2D planes: grey image, orange ring outside ``label``, blue ring inside ``pred``."""
    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, repeat[0], axis=0), repeat[1], axis=1)

    lo, hi = window
    grey = np.clip((up(image).astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    rgb[ring(up(label.astype(bool)), outside=True)] = REFERENCE_RGB
    rgb[ring(up(pred.astype(bool)), outside=False)] = PREDICTION_RGB
    return rgb


def title_lines(patient: str, metrics: dict) -> tuple[str, str]:
    """Panel title: who, Dice; then the volumes (nominal mL on Kaggle data) and HD95 when defined."""
    where = " | ".join(str(metrics[k]) for k in ("institution",) if metrics.get(k))
    first = f"{patient}{' (' + where + ')' if where else ''}   Dice {float(metrics['dice']):.3f}"
    second = f"reference {float(metrics['label_ml']):.1f} mL, predicted {float(metrics['pred_ml']):.1f} mL"
    hd = float(metrics.get("hd95_mm", math.nan) or math.nan)
    if not math.isnan(hd):
        second += f", HD95 {hd:.1f} mm"
    return first, second


def write_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, affine: np.ndarray, target: str | os.PathLike,
                patient: str, metrics: dict) -> Path:
    """Write ``target`` (PNG): ``image``, ``label`` and ``pred`` share the grid of the RAS ``affine``; ``metrics``
    holds ``dice``, ``label_ml``, ``pred_ml`` (and optionally ``hd95_mm``, ``institution``) for the title."""
    from matplotlib.lines import Line2D

    img, spacing, axis, _ = to_lps(np.asarray(image, dtype=np.float32), affine)
    lab = to_lps(np.asarray(label).astype(np.uint8), affine)[0].astype(bool)
    prd = to_lps(np.asarray(pred).astype(np.uint8), affine)[0].astype(bool)
    choices = choose_slices(lab, prd, axis)
    in_plane = [s for a, s in enumerate(spacing) if a != axis]  # (columns, rows) of the displayed plane
    plane_shape = display_plane(np.take(img, 0, axis=axis), axis).shape
    geo = layout(plane_shape, (in_plane[1], in_plane[0]), len(choices))
    window = tuple(float(v) for v in np.percentile(img, (1.0, 99.5)))

    fig = new_figure(geo.width, geo.height, facecolor="#111111")
    first, second = title_lines(patient, metrics)
    fig.text(MARGIN / geo.width, 1 - 6 / geo.height, first, color="white", fontsize=13, va="top", weight="bold")
    fig.text(MARGIN / geo.width, 1 - 32 / geo.height, second, color="#dddddd", fontsize=10.5, va="top")
    handles = [Line2D([], [], color=hex_colour(REFERENCE_RGB), lw=3, label="expert (reference)"),
               Line2D([], [], color=hex_colour(PREDICTION_RGB), lw=3, label="model prediction")]
    fig.legend(handles=handles, loc="upper right", frameon=False, labelcolor="white", fontsize=10,
               bbox_to_anchor=(1 - MARGIN / geo.width, 1 - 2 / geo.height), ncol=1)
    left_mark, right_mark = SIDE_MARKS[axis]
    n_slices = img.shape[axis]
    for choice, (top, left) in zip(choices, geo.corners):
        planes = [display_plane(np.take(v, choice.index, axis=axis), axis) for v in (img, lab, prd)]
        fig.figimage(tile_rgb(*planes, window, geo.repeat), xo=left, yo=geo.height - top - geo.tile_shape[0],
                     origin="upper")
        caption = f"slice {choice.index + 1}/{n_slices}: {', '.join(choice.reasons)}"
        fig.text(left / geo.width, 1 - (top - 5) / geo.height, caption, color="white", fontsize=9.5, va="bottom")
        middle = 1 - (top + geo.tile_shape[0] / 2) / geo.height
        for x, mark, ha in ((left + 4, left_mark, "left"), (left + geo.tile_shape[1] - 4, right_mark, "right")):
            fig.text(x / geo.width, middle, mark, color="white", fontsize=11, weight="bold", ha=ha, va="center",
                     bbox={"facecolor": "black", "edgecolor": "none", "pad": 1.5})
    return save_png(fig, target, palette=grey_palette(REFERENCE_RGB, PREDICTION_RGB))
