"""Skull-stripped training copies: the LGG heads as a user with skull-stripped (BraTS-format) scans brings them.

The Kaggle FLAIR slices all show the whole head; many research scans have the skull, scalp and neck removed. A
model that never saw a bare brain reads the zero around it as it reads air around a head and misplaces the
intensity range. Each training volume therefore gets a stripped twin, chosen at random per sample
(``RandSkullStripd``), with the brain found from the image by a BET-like morphological rule (:func:`brain_mask`):

1. tissue at least 0.6 x normal brain (``model.intensity``: air 0, brain 1), inside the head (``head_mask``)
   and more than ``SHELL_MM`` from its surface (the scalp);
2. eroded by a disk of ``ERODE_MM`` (and one slice up and down) to break the bridges between brain and
   scalp/muscle/fat, the largest 3D object kept, dilated back, closed and holes filled slice by slice (sulci,
   ventricles, dark lesion cores).

On the 77 LGG volumes the median lesion fraction left outside the mask is 0.2 % (at most 24 %, a cystic lesion at
the brain's edge); the label of the twin is cut to the mask likewise, so image and label agree.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from monaiunetseg.model.intensity import head_mask, normalise_channel

TISSUE_MIN = 0.6  # of the normal-brain level: below are CSF, bone and air
SHELL_MM, ERODE_MM, CLOSE_MM = 4, 5, 3  # in voxels of the model grid (about 1 mm on the LGG slices)
SUFFIX = "_brain"  # the twin's keys: image -> image_brain, label -> label_brain


def _disk(radius: int, depth: int = 1) -> np.ndarray:
    """A disk of ``radius`` voxels in-plane, ``depth`` slices thick."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return np.repeat(((xx ** 2 + yy ** 2) <= radius * radius)[..., None], depth, axis=2)


def brain_mask(normalised: np.ndarray) -> np.ndarray:
    """Brain of a normalised ``(x, y, z)`` head volume (slices on the last axis): see the module docstring."""
    from scipy import ndimage as ndi

    head = head_mask(normalised)
    inner = np.zeros_like(head)
    for z in range(head.shape[2]):
        inner[..., z] = ndi.distance_transform_edt(head[..., z]) > SHELL_MM
    tissue = (normalised > TISSUE_MIN) & inner
    core = ndi.binary_erosion(tissue, _disk(ERODE_MM, 3))  # also across slices: fat touches brain in one slice
    labels, n = ndi.label(core)
    if n == 0:
        return tissue
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    brain = ndi.binary_dilation(labels == sizes.argmax(), _disk(ERODE_MM + 1, 3)) & inner & (normalised > TISSUE_MIN / 2)
    for z in range(brain.shape[2]):  # a smooth outline (sulci closed), then ventricles and dark cores filled
        brain[..., z] = ndi.binary_fill_holes(ndi.binary_closing(brain[..., z], _disk(CLOSE_MM)[..., 0]))
    return brain


class SkullStrippedCopyd(MapTransform):
    """Adds ``<key>_brain`` twins of a normalised ``(1, H, W, D)`` image and its label: outside the brain the
    image is air (0) and renormalised as a stripped scan is at inference, the label is cut to the brain.
    Deterministic, so ``CacheDataset`` caches it; ``enabled=False`` adds nothing."""

    def __init__(self, image_key: str = "image", label_key: str = "label", enabled: bool = True) -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key, self.enabled = image_key, label_key, bool(enabled)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.enabled:
            return d
        image, label = d[self.image_key], d[self.label_key]
        array = np.asarray(image.detach().cpu().numpy(), dtype=np.float32)
        mask = brain_mask(array[0])
        stripped = np.where(mask, array[0], np.float32(0.0))[None]
        stripped[0] = normalise_channel(stripped[0], slice_axis=-1)
        twin = image.clone()
        twin.copy_(torch.from_numpy(stripped))
        d[self.image_key + SUFFIX] = twin
        d[self.label_key + SUFFIX] = label * torch.from_numpy(mask[None]).to(label.dtype)
        return d


class RandSkullStripd(RandomizableTransform, MapTransform):
    """With probability ``prob`` the sample's image and label become their stripped twins; the twins' keys are
    removed either way (so batches collate)."""

    def __init__(self, keys: KeysCollection = ("image", "label"), prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        for key in self.keys:
            twin = d.pop(key + SUFFIX, None)
            if twin is not None and self._do_transform:
                d[key] = twin
        return d
