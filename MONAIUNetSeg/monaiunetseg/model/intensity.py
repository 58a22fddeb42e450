"""The model's input intensities: one definition, independent of what surrounds the brain.

MR intensities have no absolute unit, so every scan is rescaled before the network sees it. Percentiles of the
whole volume (what the first models used) depend on what else is in the field of view: on a head the 99th
percentile is scalp fat, on a skull-stripped brain it is the lesion itself, so the same brain came out at
0.30-0.45 on one and 0.60-0.77 on the other. Here two reference points are taken from tissue instead:

* ``lo``: the 1st percentile of the volume, the signal-free level (air, or the zero outside a stripped brain);
* ``peak``: the mode of the intensities inside the head (the largest bright object, holes filled), above the
  dark CSF and bone: on FLAIR that is normal-appearing brain parenchyma, whether the skull is there or not.

``normalised = (x - lo) / (peak - lo)`` puts air at 0 and normal brain at 1; the FLAIR abnormality lies at
about 1.2-2.5. That is ``"tissue"``; ``"percentile"`` (1st/99th percentiles of the volume -> 0/1) is kept for the
models trained with it: a bundle or model folder names its method in ``inference.json`` (``normalisation``;
absent: ``"percentile"``, what every config written before the key existed was trained with). On the 77 LGG FLAIR volumes and the same volumes skull-stripped (``training.skull_strip``) the
median normalised brain intensity differs by 1.9 % (median over patients; at most 9 %), against 61 % (at most 193 %) for
the 1st/99th-percentile scaling (``tests/test_intensity.py`` checks it). Numpy only: the inference path
imports neither torch nor MONAI.
"""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 1.0  # the signal-free level
HIGH_PERCENTILE = 99.5  # the top of the histogram the peak is looked for in (brighter: fat, vessels, artefacts)
TISSUE_FLOOR = 0.1  # voxels below this fraction of the lo-hi range are CSF, bone or air, not parenchyma
PEAK_BINS, PEAK_SMOOTH_BINS, PEAK_WINDOW = 128, 2.0, 0.1
NORMALISATIONS = ("tissue", "percentile")
LEGACY_NORMALISATION = "percentile"  # configs without a ``normalisation`` key were trained with it
LEGACY_PERCENTILES = (1.0, 99.0)


def check_normalisation(method: object, where: str) -> str:
    """``method`` if it names a normalisation, else a ValueError naming ``where``."""
    if method not in NORMALISATIONS:
        raise ValueError(f"{where}: normalisation must be one of {', '.join(NORMALISATIONS)}, got {method!r}")
    return str(method)


def head_mask(v: np.ndarray) -> np.ndarray:
    """The head of a ``(x, y, z)`` volume: the largest bright object (10 % of the 0.5-99.5 percentile range above
    the 0.5th percentile, opened once to cut thin noise bridges), holes filled slice by slice (the brain inside
    the bright scalp ring, the dark ventricles). The one definition: the normalisation, the input checks
    (``trust.input_checks``) and the midline of ``measure.shape`` use it."""
    from scipy import ndimage as ndi

    if v.ndim == 3 and v.shape[2] == 1:  # one slice: opened in its plane (a 3D opening would erase it)
        return head_mask(v[:, :, 0])[:, :, None]
    lo, hi = np.percentile(v, [0.5, 99.5])
    if not hi > lo:
        return np.zeros(v.shape, bool)
    mask = ndi.binary_opening(v > lo + 0.1 * (hi - lo))
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == sizes.argmax()
    if mask.ndim == 2:
        return ndi.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndi.binary_fill_holes(mask[:, :, z])
    return mask


def tissue_reference(volume: np.ndarray) -> tuple[float, float]:
    """``(lo, peak)`` of a ``(x, y, z)`` volume (z the slice axis): see the module docstring. Computed on every
    second voxel in-plane (a histogram statistic; a quarter of the work). ``peak == lo`` for a constant image."""
    from scipy import ndimage as ndi

    s = np.asarray(volume[::2, ::2, :], dtype=np.float32)
    finite = np.isfinite(s)
    if not finite.all():  # NaN/inf are the caller's to report; they must not move the statistics
        s = np.where(finite, s, np.float32(np.nanmin(np.where(finite, s, np.nan)) if finite.any() else 0.0))
    lo, hi = (float(x) for x in np.percentile(s, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if not hi > lo:
        return lo, lo
    if not np.isfinite(hi - lo) or hi - lo > np.finfo(np.float32).max:  # values near +-FLT_MAX: no histogram;
        return lo, hi  # the scaling overflows as the percentiles' does and the caller reports the input's range
    values = s[head_mask(s)]
    tissue = values[(values > lo + TISSUE_FLOOR * (hi - lo)) & (values <= hi)]
    if tissue.size < 100:  # no head (noise, a tiny phantom): fall back on the whole volume's median
        above = s[s > lo]
        return lo, float(np.median(above)) if above.size else hi
    counts, edges = np.histogram(tissue, bins=PEAK_BINS)
    counts = ndi.gaussian_filter1d(counts.astype(np.float64), PEAK_SMOOTH_BINS)
    peak = float((edges[np.argmax(counts)] + edges[np.argmax(counts) + 1]) / 2)
    near = tissue[np.abs(tissue - peak) <= PEAK_WINDOW * (peak - lo)]  # the bin centre refined: the local mean
    return lo, float(near.mean()) if near.size else peak


def normalise_channel(channel: np.ndarray, slice_axis: int = -1, method: str = "tissue") -> np.ndarray:
    """In place where ``channel`` is float32 (else a float32 copy): ``(x - lo) / (ref - lo)``, with ``(lo, ref)``
    of :func:`tissue_reference` (``"tissue"``) or the 1st/99th percentiles (``"percentile"``); ``slice_axis``
    says which axis holds the slices. Equal references: shift only."""
    channel = np.asarray(channel)
    if channel.dtype != np.float32:
        channel = channel.astype(np.float32)
    if method == "tissue":
        lo, ref = tissue_reference(np.moveaxis(channel, slice_axis, -1))
    else:
        lo, ref = (float(x) for x in np.percentile(channel, LEGACY_PERCENTILES).astype(np.float32))
    with np.errstate(over="ignore", invalid="ignore"):  # values near +-FLT_MAX: the caller checks for NaN
        channel -= np.float32(lo)
        if ref != lo:
            channel /= np.float32(ref - lo)
    return channel
