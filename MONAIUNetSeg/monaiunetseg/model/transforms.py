"""The one preprocessing definition: any scan -> the model's orientation, in-plane grid and intensities.

Used by the bundle's training, evaluation and inference configs, the batch CLI and the Slicer module.
All spatial steps are invertible MONAI transforms, so a prediction is mapped back onto the input's own
voxel grid with ``preprocessing(...).inverse``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    Pad,
    Resized,
    ScaleIntensityRangePercentilesd,
)
from monai.transforms.inverse import InvertibleTransform

from monaiunetseg.geometry import MODEL_AXCODES, MODEL_GRID

INTENSITY_PERCENTILES = (1.0, 99.0)
# Affines are NIfTI-style RAS everywhere in the core; these are the labels of the negative axis ends.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class PadToSquareInPlaned(MapTransform, InvertibleTransform):
    """Pad axes 1 and 2 (the in-plane axes after orientation) symmetrically to a square field of view.

    Keeps the pixel aspect ratio of rectangular-FOV scans before the in-plane resize.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.padder = Pad()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = d[key].shape[1:]
            side = max(shape[0], shape[1])
            to_pad = [(0, 0)]
            for size in shape[:2]:
                extra = side - size
                to_pad.append((extra // 2, extra - extra // 2))
            to_pad += [(0, 0)] * (len(shape) - 2)
            d[key] = self.padder(d[key], to_pad=to_pad)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.padder.inverse(d[key])
        return d


def preprocessing(image_keys: Sequence[str] = ("image",), label_keys: Sequence[str] = ()) -> Compose:
    """Orientation -> square in-plane FOV -> ``MODEL_GRID`` x ``MODEL_GRID`` -> percentile intensity scaling.

    Inputs are channel-first MetaTensors with an affine (what ``LoadImaged`` + ``EnsureChannelFirstd`` give).
    Slices along the third spatial axis are kept as they are: the model is slice-wise 2D.
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    keys = image_keys + label_keys
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    return Compose(
        [
            Orientationd(keys=keys, axcodes=MODEL_AXCODES, labels=RAS_LABELS),
            PadToSquareInPlaned(keys=keys),
            Resized(
                keys=keys,
                spatial_size=(MODEL_GRID, MODEL_GRID, -1),
                mode=modes,
                anti_aliasing=[True] * len(image_keys) + [False] * len(label_keys),
            ),
            ScaleIntensityRangePercentilesd(
                keys=image_keys,
                lower=INTENSITY_PERCENTILES[0],
                upper=INTENSITY_PERCENTILES[1],
                b_min=0.0,
                b_max=1.0,
                clip=False,
                channel_wise=True,
            ),
        ]
    )
