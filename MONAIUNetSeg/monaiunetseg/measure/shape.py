"""Size, shape and position of a labelmap's finding, in world millimetres on the labelmap's own grid.

Every distance is between voxel centres placed in the world by the labelmap's affine (no resampling), so
anisotropic, oblique and sagittally or coronally stored grids give the same numbers as an axial one up to the
voxel size. Any non-zero voxel is lesion; a lesion is a 26-connected component. Each lesion is measured on its
own, and the labelmap's row (``lesion`` 0) on all lesion voxels together: with several lesions its diameters
span them (a segment from one to another); ``sum_products_mm2`` adds the lesions' own products instead.

* ``max_diameter_mm``: the largest distance between two lesion voxel centres (3D), found among the vertices of
  their convex hull.
* "Axial" is the patient's axial plane: the slices of the voxel axis whose slice planes are closest to
  perpendicular to the patient S axis (``axial_axis``: 2 for an axial stack; for coronal or sagittal DICOM slices
  the row axis, 1). On an oblique grid these planes are tilted by ``axial_tilt_deg`` from true axial and the
  measurement stays in them; nothing is resampled.
* ``axial_longest_mm``: on one axial slice, the longest segment between two lesion voxel centres.
* ``axial_perpendicular_mm``: the longest chord *inside* the lesion perpendicular to that segment on the same
  slice: lines exactly perpendicular to the longest segment, every half voxel across it, are sampled every
  quarter voxel; each run of samples inside lesion voxels (nearest voxel) counts from the first to the last
  voxel centre it crosses (projected on the line). Unlike the caliper width (the lesion's extent across the
  long axis) it never spans a gap: for an L or C shape it is the width of one limb.
* ``bidimensional_mm2``: their product, on the axial slice where the product is largest (``axial_slice``, the
  voxel index along the axial axis; ``axial_longest_mm`` and ``axial_perpendicular_mm`` are that slice's).
* ``sum_products_mm2``: the sum of the lesions' ``bidimensional_mm2`` (RANO's sum of products of perpendicular
  diameters); for one lesion, its own product.
* ``mean_tumour_diameter_mm``: (2 x volume in mm3)^(1/3), the mean tumour diameter of the LGG growth literature.
* ``centroid_r/a/s``: centre of the lesion voxels, patient RAS millimetres.
* ``side``: ``left``/``right`` when at least 95 % of the lesion voxels lie on that side of the midline,
  ``both`` otherwise. The midline is the sagittal plane through the centre of mass of the head (the head mask of
  ``trust.input_checks``: the largest bright object, holes filled) when the scan is given, else x = 0 of the scanner's RAS
  coordinates (which is the head's midline only if the scan was centred on it); ``midline_r`` says which.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from monaiunetseg.geometry import check_affine, voxel_volume_ml

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
SIDE_SHARE = 0.95  # share of a lesion's voxels on one side of the midline for it to be on that side
LINE_STEP, SAMPLE_STEP = 0.5, 0.25  # perpendicular lines and samples along them, in finest in-plane voxel sizes
TIE_MM2 = 1e-6  # products (and lengths) this close count as equal
_PAIR_CHUNK, _LINE_CHUNK = 2048, 256

# The measurement columns, in the order the CSV writes them (``labelmap`` and ``error`` are added by the command).
COLUMNS = ["lesion", "volume_ml", "components", "max_diameter_mm", "axial_longest_mm", "axial_perpendicular_mm",
           "bidimensional_mm2", "axial_slice", "sum_products_mm2", "mean_tumour_diameter_mm", "centroid_r",
           "centroid_a", "centroid_s", "side", "midline_r", "axial_axis", "axial_tilt_deg"]


def axial_axis(affine: np.ndarray) -> tuple[int, float]:
    """The voxel axis whose slices are closest to the patient's axial plane, and their tilt from it in degrees.

    A slice of axis k is spanned by the two other axes; its normal is their cross product (on a sheared grid it
    is not axis k itself). The chosen axis has the normal most parallel to S.
    """
    cols = np.asarray(affine, dtype=float)[:3, :3]
    best, best_cos = 0, -1.0
    for k in range(3):
        a, b = (i for i in range(3) if i != k)
        normal = np.cross(cols[:, a], cols[:, b])
        cos = abs(normal[2]) / float(np.linalg.norm(normal))
        if cos > best_cos + 1e-12:
            best, best_cos = k, cos
    return best, math.degrees(math.acos(min(1.0, best_cos)))


def _independent_coordinates(points: np.ndarray) -> np.ndarray:
    """``points`` in coordinates of the subspace they span (distances kept): a flat or straight set, which has no
    full-dimensional convex hull, becomes 2D or 1D."""
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-9 * max(float(singular[0]), 1e-12)).sum())
    return centred @ vt[:rank].T


def _hull_vertices(points: np.ndarray) -> np.ndarray | None:
    """Indices of the convex hull's vertices; None for a set without a full-dimensional hull."""
    if len(points) <= points.shape[1] + 1:
        return np.arange(len(points))
    try:
        return ConvexHull(points).vertices
    except QhullError:
        return None


def farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points farthest apart and their distance (among convex hull vertices: fast)."""
    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return 0, 0, 0.0
    coords, candidates = points, _hull_vertices(points)
    if candidates is None:  # flat or straight: measure in the subspace the points span
        coords = _independent_coordinates(points)
        if coords.shape[1] == 0:
            return 0, 0, 0.0
        if coords.shape[1] == 1:
            i, j = int(np.argmin(coords[:, 0])), int(np.argmax(coords[:, 0]))
            return i, j, float(coords[j, 0] - coords[i, 0])
        candidates = _hull_vertices(coords)
        if candidates is None:  # nearly flat beyond the rank tolerance: every point stays a candidate
            candidates = np.arange(len(points))
    p = coords[candidates]
    best = (0, 0, -1.0)
    for start in range(0, len(p), _PAIR_CHUNK):
        d2 = ((p[start:start + _PAIR_CHUNK, None, :] - p[None, :, :]) ** 2).sum(axis=-1)
        i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
        if d2[i, j] > best[2]:
            best = (int(candidates[start + i]), int(candidates[j]), float(d2[i, j]))
    return best[0], best[1], math.sqrt(best[2])


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face neighbour outside it (or on the grid's edge): the only ones that can be
    vertices of the convex hull of voxel centres (any other is the midpoint of two neighbours), so distances
    between the farthest voxels need only these."""
    return mask & ~ndimage.binary_erosion(mask)


def _plane_frame(affine: np.ndarray, axis: int) -> tuple[tuple[int, int], np.ndarray]:
    """The two in-plane voxel axes of slices of ``axis`` and the 2x2 matrix from their indices to in-plane mm."""
    a, b = (i for i in range(3) if i != axis)
    ca, cb = affine[:3, a], affine[:3, b]
    e1 = ca / np.linalg.norm(ca)
    e2 = cb - (cb @ e1) * e1
    e2 /= np.linalg.norm(e2)
    return (a, b), np.array([[ca @ e1, cb @ e1], [ca @ e2, cb @ e2]])


def slice_chords(mask2d: np.ndarray, to_mm: np.ndarray) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
    """(longest, perpendicular, longest end points, perpendicular end points) of the lesion voxels of one slice;
    ``to_mm`` maps the slice's two voxel indices to in-plane mm (see the module docstring for the definitions).
    End points are 2x2 arrays of (fractional) slice indices, so a viewer can draw exactly what was measured: the
    longest segment's are voxel centres, the perpendicular chord's lie on its line where the first and last
    voxel centres of its run project."""
    idx = np.argwhere(surface(mask2d))
    if len(idx) < 2:
        return 0.0, 0.0, None, None
    pts = idx @ to_mm.T
    i, j, longest = farthest_pair(pts)
    u = (pts[j] - pts[i]) / longest
    v = np.array([-u[1], u[0]])
    step = float(np.sqrt((to_mm ** 2).sum(axis=0)).min())
    t, s = pts @ u, pts @ v
    ts = np.arange(t.min(), t.max() + 1e-9, LINE_STEP * step)
    ss = np.arange(s.min() - step, s.max() + step + 1e-9, SAMPLE_STEP * step)
    to_index = np.linalg.inv(to_mm).T
    perpendicular, chord = 0.0, None  # chord: (t of its line, first s, last s)
    for start in range(0, len(ts), _LINE_CHUNK):  # in chunks of lines: bounded memory for large lesions
        samples = ts[start:start + _LINE_CHUNK, None, None] * u + ss[None, :, None] * v  # (line, sample, 2) mm
        ind = np.rint(samples @ to_index).astype(np.int64)
        valid = ((ind >= 0) & (ind < mask2d.shape)).all(axis=-1)
        inside = np.zeros(valid.shape, dtype=bool)
        inside[valid] = mask2d[ind[valid][:, 0], ind[valid][:, 1]]
        runs, n = ndimage.label(inside, structure=[[0, 0, 0], [1, 1, 1], [0, 0, 0]])  # runs along each line
        if n == 0:
            continue
        across = (ind @ to_mm.T) @ v  # where each sample's voxel centre lies across the long axis
        labels = np.arange(1, n + 1)
        low = np.asarray(ndimage.minimum(across, runs, labels))
        high = np.asarray(ndimage.maximum(across, runs, labels))
        best = int(np.argmax(high - low))
        if high[best] - low[best] > perpendicular:
            line = start + int(np.argwhere(runs == best + 1)[0, 0])
            perpendicular, chord = float(high[best] - low[best]), (ts[line], low[best], high[best])
    longest_ends = idx[[i, j]].astype(float)
    perpendicular_ends = None
    if chord is not None:
        perpendicular_ends = np.array([chord[0] * u + chord[1] * v, chord[0] * u + chord[2] * v]) @ to_index
    return longest, perpendicular, longest_ends, perpendicular_ends


def slice_diameters(mask2d: np.ndarray, to_mm: np.ndarray) -> tuple[float, float]:
    """(longest, perpendicular) in mm of the lesion voxels of one slice (``slice_chords`` without end points)."""
    return slice_chords(mask2d, to_mm)[:2]


def _ends_3d(ends: np.ndarray | None, axis: int, k: int, plane_axes: tuple[int, int]) -> np.ndarray | None:
    """2x3 voxel indices of a slice's 2x2 end points on slice ``k`` of ``axis``."""
    if ends is None:
        return None
    out = np.empty((2, 3))
    out[:, axis] = k
    out[:, plane_axes[0]], out[:, plane_axes[1]] = ends[:, 0], ends[:, 1]
    return out


def axial_diameters(mask: np.ndarray, affine: np.ndarray) -> dict:
    """Longest and perpendicular axial diameters on the slice where their product is largest, with their end
    points as 2x3 voxel indices (``_longest_ijk``, ``_perpendicular_ijk``; None when there is no segment)."""
    axis, tilt = axial_axis(affine)
    (a, b), to_mm = _plane_frame(affine, axis)
    result = {"axial_longest_mm": 0.0, "axial_perpendicular_mm": 0.0, "bidimensional_mm2": 0.0,
              "axial_slice": None, "axial_axis": axis, "axial_tilt_deg": tilt,
              "_longest_ijk": None, "_perpendicular_ijk": None}
    slices = [k for k in np.flatnonzero(mask.any(axis=(a, b)))]
    if not slices:
        return result
    # Longest diameters first (cheap); the perpendicular chord is at most the caliper width, so slices whose
    # longest x width cannot reach the best product so far are skipped.
    bounds = []
    for k in slices:
        plane = np.take(mask, k, axis=axis)
        pts = np.argwhere(surface(plane)) @ to_mm.T
        i, j, longest = farthest_pair(pts)
        width = 0.0
        if longest > 0:
            u = (pts[j] - pts[i]) / longest
            across = pts @ np.array([-u[1], u[0]])
            width = float(across.max() - across.min())
        bounds.append((longest * width, int(k), int(np.count_nonzero(plane))))
    # Ties (a lesion with equal cross-sections) go to the larger area, then to the slice nearest the lesion's
    # centre: the same slice whichever way the volume is stored.
    centre = float(np.average(slices, weights=[b[2] for b in bounds]))
    best_key, best = None, (0.0, 0.0, None, 0.0, None, None)  # product, longest, slice, perpendicular, ends
    for bound, k, area in sorted(bounds, key=lambda x: -x[0]):
        if best_key is not None and bound < best[0] - TIE_MM2:
            break
        longest, perpendicular, ends_l, ends_p = slice_chords(np.take(mask, k, axis=axis), to_mm)
        product = longest * perpendicular
        key = (round(product / TIE_MM2), round(longest / TIE_MM2), area, -abs(k - centre))
        if best_key is None or key > best_key:
            best_key, best = key, (product, longest, k, perpendicular, ends_l, ends_p)
    result.update(axial_longest_mm=best[1], axial_perpendicular_mm=best[3], bidimensional_mm2=best[0],
                  axial_slice=best[2], _longest_ijk=_ends_3d(best[4], axis, best[2], (a, b)),
                  _perpendicular_ijk=_ends_3d(best[5], axis, best[2], (a, b)))
    return result


def head_midline_r(image: np.ndarray, affine: np.ndarray) -> float:
    """R coordinate (RAS mm) of the head's sagittal midline: centre of mass of the head mask
    (``model.intensity.head_mask``, the one definition of the head)."""
    from monaiunetseg.model.intensity import head_mask

    data = np.asarray(image, dtype=np.float32)
    if not np.isfinite(data).all() or not (data > 0).any():
        raise ValueError("the scan has no positive voxels (or non-finite ones): no head to find the midline of")
    head = head_mask(data)
    if not head.any():
        raise ValueError("no head found in the scan: no midline")
    centre = np.argwhere(head).mean(axis=0)  # the mean of positions is the position of the mean index (linear)
    return float(np.asarray(affine, dtype=float)[0, :3] @ centre + affine[0, 3])


def _side(r: np.ndarray, midline: float) -> str:
    right = float((r > midline).mean())
    return "right" if right >= SIDE_SHARE else "left" if right <= 1 - SIDE_SHARE else "both"


def _crop(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of the part ``box`` of a grid (the same world positions)."""
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    return affine @ shift


def _measure(mask: np.ndarray, affine: np.ndarray, midline: float, box: tuple[slice, ...]) -> dict:
    """The columns of one mask (a lesion, or all of them) apart from ``lesion``, ``components`` and
    ``sum_products_mm2``. ``mask`` and ``affine`` are its crop to ``box``, its bounding box in the labelmap, from
    whose start ``axial_slice`` is counted."""
    count = int(np.count_nonzero(mask))
    volume_ml = count * voxel_volume_ml(affine)
    row = {"volume_ml": volume_ml, "max_diameter_mm": 0.0,
           "mean_tumour_diameter_mm": (2.0 * volume_ml * 1000.0) ** (1.0 / 3.0),
           "centroid_r": None, "centroid_a": None, "centroid_s": None, "side": "", "midline_r": midline}
    row.update(axial_diameters(mask, affine))
    if row["axial_slice"] is not None:
        row["axial_slice"] += box[row["axial_axis"]].start
    start = np.array([b.start for b in box], dtype=float)
    row["diameters"] = {name: _segment(row.pop(f"_{name}_ijk"), start, affine)
                        for name in ("longest", "perpendicular")}
    if count:
        edge = np.argwhere(surface(mask))
        row["max_diameter_mm"] = farthest_pair(edge @ affine[:3, :3].T)[2]
        idx = np.nonzero(mask)
        centre = affine[:3, :3] @ [float(i.mean()) for i in idx] + affine[:3, 3]
        row["centroid_r"], row["centroid_a"], row["centroid_s"] = (float(c) for c in centre)
        r = sum(affine[0, axis] * i for axis, i in enumerate(idx)) + affine[0, 3]  # each voxel's R coordinate
        row["side"] = _side(r, midline)
    return row


def _segment(ijk: np.ndarray | None, start: np.ndarray, affine: np.ndarray) -> dict | None:
    """End points of a diameter as voxel indices of the labelmap (fractional for the perpendicular chord) and as
    patient RAS mm: ``ijk`` is on the crop starting at ``start`` whose affine is ``affine``."""
    if ijk is None:
        return None
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return {"ijk": (ijk + start).tolist(), "ras": ras.tolist(),
            "length_mm": float(np.linalg.norm(ras[1] - ras[0]))}


def _image_midline(image) -> float | None:
    if image is None:
        return None
    array, affine = image if isinstance(image, tuple) else (image.array, image.affine)
    return head_midline_r(array, check_affine(affine, "image"))


def measure_labelmap(mask: np.ndarray, affine: np.ndarray, image=None) -> dict:
    """The measurement row of a labelmap (non-zero voxels: lesion), with its per-lesion rows under ``lesions``.

    ``image``: the scan, as ``(array, affine)`` or anything with ``.array`` and ``.affine`` (on any grid), to find
    the head's midline for ``side``; without it the midline is x = 0. The labelmap row has ``lesion`` 0; lesions
    are numbered 1, 2, ... by decreasing volume. ``diameters`` (beyond ``COLUMNS``: in the JSON, not the CSV)
    holds the end points of the measured ``longest`` and ``perpendicular`` axial diameters (``ijk`` voxel
    indices, ``ras`` patient mm, ``length_mm``; None without a segment), for drawing them (overlay, Slicer).
    """
    affine = check_affine(affine, "labelmap")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"labelmap of {mask.ndim} dimensions: expected 3")
    mask = mask != 0
    # Nothing to place on a side when nothing is found: an empty labelmap (e.g. of an all-zero scan, which has
    # no head to find the midline of) measures without the image.
    midline = _image_midline(image) if mask.any() else None
    midline = 0.0 if midline is None else midline
    components, n = ndimage.label(mask, structure=CONNECTIVITY)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(components)
    lesions = []
    for number, label in enumerate(np.argsort(-sizes, kind="stable") + 1, start=1):
        box = boxes[label - 1]
        lesion = {"lesion": number, "components": 1,
                  **_measure(components[box] == label, _crop(affine, box), midline, box)}
        lesion["sum_products_mm2"] = lesion["bidimensional_mm2"]
        lesions.append(lesion)
    if n == 1:  # the labelmap is its one lesion
        row = {**lesions[0], "lesion": 0}
    else:
        box = ndimage.find_objects(mask.astype(np.int8))
        box = box[0] if box else tuple(slice(0, 0) for _ in range(3))
        row = {"lesion": 0, "components": n, **_measure(mask[box], _crop(affine, box), midline, box)}
    row["sum_products_mm2"] = float(sum(lesion["bidimensional_mm2"] for lesion in lesions))
    row = {**{c: row[c] for c in COLUMNS}, "diameters": row["diameters"]}
    row["lesions"] = [{**{c: lesion[c] for c in COLUMNS}, "diameters": lesion["diameters"]} for lesion in lesions]
    return row
