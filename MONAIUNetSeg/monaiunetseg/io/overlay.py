"""Quick-look PNG: one FLAIR slice in grey with the predicted abnormality outlined in red.

Meant for checking a batch at a glance (did it find the lesion, is the outline on the bright region), not for
reading. The volume is first reoriented to LPS without interpolation so that every image is shown the same way
(radiological: patient right on the image left; axial anterior up, sagittal/coronal superior up), and the slice
is taken along the voxel axis the scan was acquired along, at the middle of the predicted abnormality's extent
(the middle slice when nothing was found).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg import TOOL_NAME, __version__
from monaiunetseg.files import atomic_path


def _to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Array reoriented to LPS voxel axes, its spacing and where the original slice axis went."""
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("L", "P", "S")))
    out = nib.orientations.apply_orientation(array, transform)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new_spacing = np.empty(3)
    for old_axis, (new_axis, _) in enumerate(transform.astype(int)):
        new_spacing[new_axis] = spacing[old_axis]
    slice_axis = int(transform[2, 0])
    return out, new_spacing, slice_axis


def pick_slice(labels: np.ndarray, axis: int) -> int:
    """Middle of the labelled extent along ``axis``, or the middle slice if nothing is labelled."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    present = np.nonzero(labels.any(axis=other))[0]
    if present.size == 0:
        return labels.shape[axis] // 2
    return int((present[0] + present[-1]) // 2)


def _display(plane_lps: np.ndarray, axis: int) -> np.ndarray:
    """2D LPS plane (the two remaining axes in order) -> image rows/columns in radiological display."""
    if axis == 2:  # axial: rows = P (anterior up), columns = L (patient right on the left)
        return plane_lps.T
    return plane_lps.T[::-1]  # sagittal (P, S) / coronal (L, S): superior up


def write_overlay(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, target: str | os.PathLike,
                  title: str | None = None) -> Path:
    """Write the PNG atomically; ``image`` and ``labels`` share the grid described by the RAS ``affine``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    img_lps, spacing, axis = _to_lps(np.asarray(image, dtype=np.float32), affine)
    lab_lps, _, _ = _to_lps(np.asarray(labels, dtype=np.uint8), affine)
    k = pick_slice(lab_lps, axis)
    img2d = _display(np.take(img_lps, k, axis=axis), axis)
    lab2d = _display(np.take(lab_lps, k, axis=axis), axis)
    in_plane = [s for a, s in enumerate(spacing) if a != axis]  # (columns, rows) of the displayed image
    lo, hi = np.percentile(img2d, (1, 99)) if img2d.size else (0.0, 1.0)
    rows, cols = img2d.shape
    height_mm, width_mm = rows * in_plane[1], cols * in_plane[0]
    scale = 512.0 / max(height_mm, width_mm)
    fig = Figure(figsize=(width_mm * scale / 100, height_mm * scale / 100 + (0.3 if title else 0)), dpi=100)
    ax = fig.add_axes((0, 0, 1, height_mm * scale / (height_mm * scale + (30 if title else 0))))
    ax.imshow(img2d, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
              aspect=in_plane[1] / in_plane[0])
    if lab2d.any():
        ax.contour(lab2d, levels=[0.5], colors="red", linewidths=1.0)
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8, y=0.995, color="white")
    target = Path(target)
    with atomic_path(target) as tmp:
        # the Software text is how a later run knows this PNG is its own (batch.outdir)
        fig.savefig(tmp, format="png", facecolor="black", metadata={"Software": f"{TOOL_NAME} {__version__}"})
    return target
