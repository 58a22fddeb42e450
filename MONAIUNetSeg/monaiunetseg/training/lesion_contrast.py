"""Fainter lesions for training: the FLAIR abnormality as a site with low-contrast lesions shows it.

At DU, 61 % of the lesions as their experts outlined them are less than 35 % brighter than the tissue around
them; at the other LGG sites 9-21 % (``scripts/lesion_contrast.py``). A model trained without such lesions draws
only their bright core (leave DU out: Dice 0.38 on them, 0.76 on the others), and no normalisation reaches them,
since the contrast is a ratio. With probability ``prob`` a training crop's lesion keeps only a random share of its
excess brightness over the tissue around it, under a smoothed copy of the label, so there is no edge at the
outline for the network to learn instead of the lesion. train.json key ``lesion_contrast_aug_prob`` (default 0).
Declared and screened as candidate V4 (``monai_bundle/docs/lesion_contrast_rule.md``): at 0.5 it lowered the
leave-DU-out Dice (two seeds, 0.513 against 0.537) and is off in the shipped recipe; kept for experiments. It is the
last random transform, so adding it moved no index the shipped folds' records override.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

RING_PX = 5  # the surrounding tissue: up to this many pixels outside the outline
MIN_RING_PX = 20  # fewer tissue pixels than this around the lesion (a crop's edge): no reference, no change
TISSUE_FLOOR = 0.3  # normalised intensity (air 0, brain 1) below which a ring pixel is CSF or air, not tissue


def lesion_excess_weight(label: np.ndarray, sigma: float) -> np.ndarray:
    """The label (2D) smoothed by a Gaussian of ``sigma`` pixels: 1 deep inside, about 0.5 at the outline."""
    from scipy import ndimage

    return np.clip(ndimage.gaussian_filter(label.astype(np.float32), sigma), 0.0, 1.0)


def surrounding_tissue(image: np.ndarray, label: np.ndarray) -> float | None:
    """Median of the tissue in a ring of :data:`RING_PX` around the lesion (2D), None where too little is seen."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(label, iterations=RING_PX) & ~label
    values = image[ring]
    values = values[values > TISSUE_FLOOR]
    return float(np.median(values)) if values.size >= MIN_RING_PX else None


class RandLesionContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, every channel of ``keys`` (a 2D crop: channels, H, W) loses ``1 - k`` of its
    brightness above the surrounding tissue inside the lesion of ``label_key`` (the centre slice's label), ``k``
    drawn from ``keep``; crops without lesion are left alone."""

    def __init__(self, keys: KeysCollection = ("image",), label_key: str = "label", prob: float = 0.0,
                 keep: tuple[float, float] = (0.25, 0.75), sigma: float = 2.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= keep[0] <= keep[1] <= 1.0:
            raise ValueError(f"lesion contrast keep range must lie in [0, 1], got {keep}")
        self.label_key, self.keep, self.sigma, self._k = label_key, keep, sigma, 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._k = float(self.R.uniform(*self.keep))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        label = np.asarray(d[self.label_key])[0] > 0
        if not label.any():
            return d
        weight = lesion_excess_weight(label, self.sigma)
        for key in self.key_iterator(d):
            image = d[key]
            centre = np.asarray(image[image.shape[0] // 2], dtype=np.float32)
            tissue = surrounding_tissue(centre, label)
            if tissue is None:  # the lesion fills the crop: nothing to compare it with
                continue
            w = torch.as_tensor(weight * (1.0 - self._k), dtype=image.dtype, device=image.device)
            d[key] = image - w * torch.clamp(image - tissue, min=0.0)
        return d
