"""Checks of the input from the image itself (no metadata needed), and from the DICOM header where there is one.

They catch what the network cannot know it was not made for: no head in the field of view, pure noise, a
volume without tissue contrast (an empty or uniform phantom) or without tissue texture (a phantom of flat
compartments), and acquisitions outside the training data (thin isotropic 3D slices, a field of view no head
has). Each finding is a short reason for ``review_reasons``;
``hard`` findings (the image is not a head scan of the kind the model reads) also set the confidence to 0.

The thresholds sit far outside what the 77 training patients' FLAIR volumes show (head 1,222-5,102 mL at the
nominal spacing, neighbour correlation >= 0.81, coefficient of variation >= 0.44, flatness <= 0.21; none of the
77 is flagged), so a real scan of the training kind is not flagged by them; see the model card's "When to
trust it".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monaiunetseg.geometry import voxel_sizes
from monaiunetseg.model.intensity import head_mask

MIN_HEAD_ML = 300.0  # smaller than any adult head (the training FLAIR: >= 1,222 mL)
MAX_FILL = 0.95  # an "object" filling the field of view is noise or a phantom, not a head in air
MIN_NEIGHBOUR_CORRELATION = 0.5  # real images are smooth at the voxel scale (training data >= 0.81)
MIN_CONTRAST = 0.05  # coefficient of variation inside the head (training FLAIR >= 0.44, T1 >= 0.18)
# Median voxel-to-voxel step over the interquartile range inside the head: a phantom of flat compartments has
# a tiny range within its main compartment and noise-sized steps (0.46 for trust.phantoms.flair_phantom); tissue
# has texture at every scale (training FLAIR 0.07-0.21).
MAX_FLATNESS = 0.40
ISOTROPIC_MAX_MM, ISOTROPIC_MAX_RATIO = 1.5, 1.5  # thin isotropic 3D (the training slices: 2.5-6 mm)
FOV_MM = (120.0, 400.0)  # in-plane field of view a head scan has
# The geometry rule a bundle's trust block may switch off (``ignore_checks``): a model trained to read thin
# isotropic scans (the tissue-normalised recipe) is judged on them by its confidence, not flagged for the voxels.
ISOTROPIC = "isotropic"
# A 2D picture (one slice, unit pixels) is always flagged, for what is true of it: not for "no head" or a "3D
# isotropic acquisition", which its made-up 1 mm geometry would otherwise give.
PICTURE_REASON = ("a 2D picture: no physical size, so the head and acquisition checks of a scan do not apply "
                  "(trained on FLAIR volumes)")


@dataclass
class InputCheck:
    """What the checks found: ``reasons`` (empty when the input looks right), ``hard`` whether any of them
    says the image is not a head scan the model reads, and the measured ``features``."""

    reasons: list[str] = field(default_factory=list)
    hard: bool = False
    kinds: list[str] = field(default_factory=list)  # one per reason: the rule that gave it (``ISOTROPIC``, ...)
    features: dict[str, float] = field(default_factory=dict)

    def add(self, reason: str, hard: bool = False, kind: str = "") -> None:
        self.reasons.append(reason)
        self.kinds.append(kind)
        self.hard = self.hard or hard


def check_image(array: np.ndarray, affine: np.ndarray) -> InputCheck:
    """Image checks of a ``(x, y, z)`` (or ``(1, x, y, z)``) volume with its RAS affine. Works on every second
    voxel in-plane (the checks are about tens of millimetres), so it costs a few tens of milliseconds."""
    result = InputCheck()
    v = np.asarray(array)
    if v.ndim == 4:
        v = v[0]
    sizes = voxel_sizes(affine)
    step = 2 if min(v.shape[:2]) >= 64 else 1
    full = v
    v = np.asarray(full[::step, ::step, :], dtype=np.float32)
    spacing = sizes * np.array([step, step, 1])
    head = head_mask(v)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    f = result.features
    f["head_ml"] = float(head.sum()) * voxel_ml
    f["head_fraction"] = float(head.mean()) if head.size else 0.0
    picture = v.shape[2] == 1  # a 2D picture: no physical size, so no head volume or acquisition geometry
    if picture:
        result.add(PICTURE_REASON)
        if not head.any():
            result.add("no object found in the picture", hard=True)
            return result
    elif f["head_ml"] < MIN_HEAD_ML:
        result.add(f"no head found ({f['head_ml']:.0f} mL of signal)", hard=True)
        return _geometry(result, np.asarray(array).shape[-3:], sizes)
    if f["head_fraction"] > MAX_FILL:
        result.add(f"no head found: the signal fills {100 * f['head_fraction']:.0f} % of the field of view", hard=True)
    # voxel-to-voxel pairs at the input's own spacing: each kept voxel and its neighbour along the first axis
    nxt = np.asarray(full[1::step, ::step, :], dtype=np.float32)
    n = min(len(v), len(nxt))
    inside = head[:n]
    a, b = v[:n][inside], nxt[:n][inside]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 10 and a.std() > 0 and b.std() > 0 else 0.0
    f["neighbour_correlation"] = corr
    values = v[head]
    cv = float(values.std() / (abs(float(values.mean())) + 1e-6))
    f["contrast"] = cv
    q25, q75 = np.percentile(values, [25, 75])
    flatness = float(np.median(np.abs(a - b)) / max(float(q75 - q25), 1e-6)) if a.size else 0.0
    f["flatness"] = flatness
    if cv < MIN_CONTRAST:
        result.add(f"no tissue contrast (variation {cv:.2f}): an empty or uniform phantom?", hard=True)
    elif corr < MIN_NEIGHBOUR_CORRELATION:
        result.add(f"noise-like image (neighbour correlation {corr:.2f})", hard=True)
    elif flatness > MAX_FLATNESS:
        result.add(f"flat compartments, no tissue texture (flatness {flatness:.2f}): a phantom?", hard=True)
    return result if picture else _geometry(result, np.asarray(array).shape[-3:], sizes)


def _geometry(result: InputCheck, shape: tuple[int, ...], sizes: np.ndarray) -> InputCheck:
    """Acquisition geometry outside the training data: thin isotropic 3D voxels; an in-plane field of view
    (the two largest extents) no head scan has."""
    sizes = np.asarray(sizes, dtype=float)
    if sizes.max() <= ISOTROPIC_MAX_MM and sizes.max() / max(sizes.min(), 1e-6) <= ISOTROPIC_MAX_RATIO:
        result.add(f"3D isotropic acquisition outside the training data ({'x'.join(f'{s:.2g}' for s in sizes)} mm voxels; "
                   "trained on 2D slices of 2.5-6 mm)", kind=ISOTROPIC)
    extents = np.sort(np.asarray(shape, dtype=float) * sizes)[::-1][:2]
    result.features["fov_mm"] = float(extents[0])
    if extents[0] < FOV_MM[0] or extents[0] > FOV_MM[1]:
        result.add(f"field of view {extents[0]:.0f} mm outside a head scan's ({FOV_MM[0]:.0f}-{FOV_MM[1]:.0f} mm)")
    return result


def check_dicom_series(series) -> list[str]:
    """Header findings of a DICOM series (``io.dicom_series.DicomSeries``): a series whose description,
    protocol, sequence name and inversion/echo times do not say FLAIR."""
    from monaiunetseg.io.dicom_series import flair_evidence

    if flair_evidence(series) is not None:
        return []
    f = series.first
    ti = f"inversion time {f.inversion_time:.0f} ms" if f.inversion_time else "no inversion time"
    return [f"DICOM header does not say FLAIR ('{series.description}', {ti})"]
