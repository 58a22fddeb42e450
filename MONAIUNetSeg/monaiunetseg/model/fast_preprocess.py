"""``transforms.preprocessing`` and its inverse in numpy, streamed slice chunk by slice chunk.

The MONAI transforms stay the training definition; this is their equal for inference without importing torch
or MONAI (``import monai`` alone takes 3.6-5 s) and without whole-volume float copies at the input's grid:

* orientation to ``MODEL_AXCODES``: a flip/transpose view (nibabel orientation codes, as MONAI's
  ``Orientation`` computes them), no interpolation;
* the square in-plane padding and the resize to ``MODEL_GRID`` (trilinear with the slice axis kept, i.e.
  bilinear per slice, ``align_corners=False``, after MONAI's anti-aliasing Gaussian when shrinking) are linear
  along each in-plane axis, so each axis is one small ``MODEL_GRID x n`` matrix (the zero padding is a column
  slice of it) applied to every slice;
* a fill value (a background of -1e6 or -FLT_MAX written in place of 0: see :func:`fill_value`) replaced by the
  lowest real intensity, per channel, before anything else (``transforms.ReplaceFillValued``);
* the intensity normalisation of the resized volume, per channel (``intensity.normalise_channel``: air at 0,
  normal brain at 1);
* the inverse: the per-axis matrices of MONAI's inverse resize (bilinear, no anti-aliasing), cropped by the
  padding, then the inverse flip/transpose.

``tests/test_fast_predictor.py`` compares every step with the MONAI transforms on real volumes of several
storage variants (axial, sagittal, flipped, 512 grid, rectangular field of view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from monaiunetseg.geometry import MODEL_AXCODES, MODEL_GRID, RAS_LABELS
from monaiunetseg.model.intensity import normalise_channel


def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of torch's linear interpolation (``align_corners=False``), in float32 as torch
    computes the source coordinates."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = (src - i0).astype(np.float64)
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1.0 - l1)
    np.add.at(weights, (rows, i1), l1)
    return weights


def _gaussian_kernel(sigma: float) -> list[tuple[int, float]]:
    """(offset, weight) of MONAI's anti-aliasing kernel (``gaussian_1d``, erf, not normalized, truncated at 4
    sigma)."""
    tail = int(max(sigma * 4.0, 0.5) + 0.5)
    t = 0.70710678 / sigma
    return [(x, max(0.0, 0.5 * (math.erf(t * (x + 0.5)) - math.erf(t * (x - 0.5))))) for x in range(-tail, tail + 1)]


def _smoothed(matrix: np.ndarray, sigma: float) -> np.ndarray:
    """``matrix @ G`` where ``G`` is the ``(n, n)`` zero-padded convolution with the anti-aliasing kernel, built
    from its diagonals: ``G`` itself (2 GiB for a 16384-voxel axis, and minutes to fill) is never formed."""
    n = matrix.shape[1]
    out = np.zeros_like(matrix)
    for offset, k in _gaussian_kernel(sigma):  # G[i, i + offset] = k
        if abs(offset) >= n:
            continue
        if offset >= 0:
            out[:, offset:] += matrix[:, :n - offset] * k
        else:
            out[:, :n + offset] += matrix[:, -offset:] * k
    return out


def axis_matrices(n: int, side: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Forward ``(MODEL_GRID, n)`` and inverse ``(n, MODEL_GRID)`` float32 matrices of one in-plane axis of
    length ``n`` padded to ``side``; ``(None, None)`` when neither pads nor resizes (``n == MODEL_GRID``)."""
    if n == side == MODEL_GRID:
        return None, None
    before = (side - n) // 2
    if side == MODEL_GRID:  # padded only: MONAI's Resize leaves an image of the target size as it is
        forward = inverse = np.eye(side)
    else:
        forward, inverse = _interpolation(side, MODEL_GRID), _interpolation(MODEL_GRID, side)
    if side > MODEL_GRID:  # Resize's anti-aliasing: sigma = (in / out - 1) / 2 (float32, as MONAI computes it)
        sigma = float((np.float32(side) / np.float32(MODEL_GRID) - np.float32(1)) / np.float32(2))
        forward = _smoothed(forward, sigma)
    return (np.ascontiguousarray(forward[:, before:before + n], dtype=np.float32),
            np.ascontiguousarray(inverse[before:before + n], dtype=np.float32))


@dataclass(frozen=True)
class GridPlan:
    """How one input grid maps onto the model grid and back: the orientation and the per-axis matrices."""

    shape: tuple[int, int, int]  # the input's spatial shape
    ornt: np.ndarray  # nibabel orientation: input axis i -> oriented axis ornt[i, 0], flipped if ornt[i, 1] < 0
    oriented_shape: tuple[int, int, int]
    forward: tuple[np.ndarray | None, np.ndarray | None]
    inverse: tuple[np.ndarray | None, np.ndarray | None]

    @classmethod
    def of(cls, shape: tuple[int, ...], affine: np.ndarray) -> GridPlan:
        affine = np.asarray(affine, dtype=np.float64)
        ornt = ornt_transform(io_orientation(affine), axcodes2ornt(MODEL_AXCODES, labels=RAS_LABELS))
        oriented = [0, 0, 0]
        for axis, (target, _) in enumerate(ornt):
            oriented[int(target)] = int(shape[axis])
        side = max(oriented[0], oriented[1])
        (f0, b0), (f1, b1) = axis_matrices(oriented[0], side), axis_matrices(oriented[1], side)
        return cls(tuple(int(s) for s in shape), ornt, tuple(oriented), (f0, f1), (b0, b1))

    @property
    def n_slices(self) -> int:
        return self.oriented_shape[2]

    def orient(self, array: np.ndarray) -> np.ndarray:
        """View of ``array`` (spatial axes last three) in model orientation; writes go through to ``array``."""
        lead = array.ndim - 3
        for axis, flip in enumerate(self.ornt[:, 1]):
            if flip < 0:
                array = np.flip(array, axis=lead + axis)
        order = np.argsort(self.ornt[:, 0])
        return array.transpose(*range(lead), *(lead + int(a) for a in order))

    def to_model(self, chunk: np.ndarray) -> np.ndarray:
        """Oriented ``(C, n0, n1, k)`` slices -> ``(k, C, MODEL_GRID, MODEL_GRID)`` float32 (padded, resized)."""
        return _apply(np.ascontiguousarray(chunk.transpose(3, 0, 1, 2), dtype=np.float32), *self.forward)

    def from_model(self, slices: np.ndarray) -> np.ndarray:
        """``(k, MODEL_GRID, MODEL_GRID)`` model-grid slices -> ``(k, n0, n1)`` on the oriented input grid."""
        return _apply(np.ascontiguousarray(slices, dtype=np.float32), *self.inverse)


def _apply(x: np.ndarray, m0: np.ndarray | None, m1: np.ndarray | None) -> np.ndarray:
    """``m0 @ s @ m1.T`` for every 2D slice ``s`` of the last two axes of ``x``, as two flat matrix products
    (one BLAS call each rather than one per slice)."""
    lead = x.shape[:-2]
    if m1 is not None:
        x = (x.reshape(-1, x.shape[-1]) @ m1.T).reshape(*lead, x.shape[-2], m1.shape[0])
    if m0 is not None:
        xt = np.ascontiguousarray(x.swapaxes(-1, -2))
        x = (xt.reshape(-1, xt.shape[-1]) @ m0.T).reshape(*lead, xt.shape[-2], m0.shape[0]).swapaxes(-1, -2)
    return np.ascontiguousarray(x)


# A fill value: the minimum, held by at least this share of the voxels, and this many times the range of the other
# voxels below the lowest of them. A normal scan's background (0, just below its tissue) is never one.
FILL_MIN_SHARE = 0.01
FILL_MIN_GAP = 10.0


def fill_value(channel: np.ndarray, chunk: int = 16) -> tuple[float, float] | None:
    """``(fill, replacement)`` when one channel ``(..., z)`` holds a fill value, else None.

    Some exports write the background outside the head as -1e6 or -FLT_MAX instead of 0: the 1st percentile is
    then the fill, the brain is squeezed into a sliver of the scaled range and the network finds nothing. Such a
    fill is the minimum, shared by many voxels, and lies far below every other voxel; it is replaced by the lowest
    other value (what the background would have been). Computed in slice chunks, so no copy of the volume is made.
    """
    lo = float(np.min(channel))
    count, above_lo, hi, n = 0, np.inf, -np.inf, 0
    for start in range(0, channel.shape[-1], chunk):
        part = np.asarray(channel[..., start:start + chunk], dtype=np.float64)
        at_lo = part == lo
        count += int(np.count_nonzero(at_lo))
        n += part.size
        rest = part[~at_lo]
        if rest.size:
            above_lo, hi = min(above_lo, float(rest.min())), max(hi, float(rest.max()))
    if not np.isfinite(above_lo) or hi <= above_lo or count < FILL_MIN_SHARE * n:
        return None
    if above_lo - lo <= FILL_MIN_GAP * (hi - above_lo):
        return None
    return lo, above_lo


def replace_fill(chunk: np.ndarray, fills: list[tuple[float, float] | None]) -> np.ndarray:
    """``(C, ...)`` ``chunk`` with each channel's fill value (:func:`fill_value`) replaced; as it is when none."""
    if not any(fills):
        return chunk
    chunk = np.array(chunk, dtype=np.float32)
    for c, fill in enumerate(fills):
        if fill is not None:
            channel = chunk[c]
            channel[channel == np.float32(fill[0])] = np.float32(fill[1])
    return chunk


def scale_intensities(volume: np.ndarray, normalisation: str = "tissue") -> None:
    """In place, per channel of float32 ``(D, C, H, W)``: ``intensity.normalise_channel`` (the slices on axis 0),
    as ``transforms.NormaliseIntensityd`` does in training."""
    for c in range(volume.shape[1]):
        normalise_channel(volume[:, c], slice_axis=0, method=normalisation)


def model_grid_volume(array: np.ndarray, plan: GridPlan, chunk: int = 16, normalisation: str = "tissue") -> np.ndarray:
    """The network's input volume ``(D, C, MODEL_GRID, MODEL_GRID)`` float32 of ``(C, x, y, z)`` ``array``
    (any real dtype), built ``chunk`` slices at a time so that no float copy of the input grid is made."""
    fills = [fill_value(array[c]) for c in range(array.shape[0])]
    oriented = plan.orient(array)
    d = plan.n_slices
    out = np.empty((d, array.shape[0], MODEL_GRID, MODEL_GRID), dtype=np.float32)
    for start in range(0, d, chunk):
        out[start:start + chunk] = plan.to_model(replace_fill(oriented[..., start:start + chunk], fills))
    scale_intensities(out, normalisation)
    return out


def neighbour_slices(volume: np.ndarray, start: int, stop: int, context: int) -> np.ndarray:
    """Network inputs ``(stop - start, C * (2 * context + 1), H, W)`` of ``(D, C, H, W)`` ``volume``: each slice
    with ``context`` neighbours either side (edge slices repeated), channel ``c * K + k`` as
    ``transforms.neighbour_stack`` lays them out."""
    d, c, h, w = volume.shape
    index = np.clip(np.arange(start, stop)[:, None] + np.arange(-context, context + 1), 0, d - 1)
    stacks = volume[index]  # (n, K, C, H, W)
    return np.ascontiguousarray(stacks.transpose(0, 2, 1, 3, 4)).reshape(stop - start, c * index.shape[1], h, w)
