"""The one preprocessing definition: any scan -> the model's orientation, in-plane grid and intensities.

Used by the bundle's training, evaluation and inference configs, the batch CLI and the Slicer module.
All spatial steps are invertible MONAI transforms, so a prediction is mapped back onto the input's own
voxel grid with ``preprocessing(...).inverse``. Inference runs their numpy equal (``fast_preprocess``, tested
against these transforms), which needs neither torch nor MONAI.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    Pad,
    Resized,
    SqueezeDim,
)
from monai.transforms.inverse import InvertibleTransform

from monaiunetseg.geometry import MODEL_AXCODES, MODEL_GRID, RAS_LABELS
from monaiunetseg.model.fast_preprocess import fill_value, replace_fill
from monaiunetseg.model.intensity import check_normalisation, normalise_channel


class ReplaceFillValued(MapTransform):
    """Per channel, a fill value (a background of -1e6 or -FLT_MAX in place of 0) -> the lowest real intensity,
    before anything else: otherwise the percentile scaling collapses and nothing is found. The rule is
    ``fast_preprocess.fill_value``'s (the inference path's); a normal scan passes unchanged."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = d[key].as_tensor() if isinstance(d[key], MetaTensor) else d[key]
            array = values.detach().cpu().numpy()  # (C, ...): the rule runs on numpy, as in inference
            fills = [fill_value(array[c]) for c in range(array.shape[0])]
            if any(fills):  # a copy (metadata kept): the caller's tensor is left as it is
                replaced = d[key].clone()
                replaced.copy_(torch.from_numpy(replace_fill(array, fills)))
                d[key] = replaced
        return d


class NormaliseIntensityd(MapTransform):
    """Per channel of ``(C, H, W, D)``: ``intensity.normalise_channel`` with ``method`` (``"tissue"``: air 0,
    normal brain 1), the same numpy code the inference path runs; metadata kept."""

    def __init__(self, keys: KeysCollection, method: str = "tissue", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = check_normalisation(method, "NormaliseIntensityd")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            values = d[key].as_tensor() if isinstance(d[key], MetaTensor) else d[key]
            array = values.detach().cpu().numpy().astype(np.float32)  # a copy: the input is left as it is
            for c in range(array.shape[0]):
                normalise_channel(array[c], slice_axis=-1, method=self.method)
            normalised = d[key].clone()  # metadata and the applied (invertible) operations kept
            normalised.copy_(torch.from_numpy(array))
            d[key] = normalised
        return d


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


def neighbour_stack(volume: torch.Tensor, context: int) -> torch.Tensor:
    """``(C, H, W, K)`` slab of ``K = 2 * context + 1`` neighbouring slices -> ``(C * K, H, W)`` channels.

    Channel ``c * K + k`` is channel ``c`` of slab slice ``k`` (slice ``z - context + k``): the one 2.5D input
    layout, used by training (:class:`SlicesToChannelsd`) and inference (``SliceBatchInferer``) alike.
    """
    c, h, w, k = volume.shape
    if k != 2 * context + 1:
        raise ValueError(f"expected a slab of {2 * context + 1} slices, got {k}")
    return volume.permute(0, 3, 1, 2).reshape(c * k, h, w)


class SlicesToChannelsd(MapTransform):
    """2.5D training input: the image slab's slices become channels, the label keeps its centre slice.

    ``context = 0`` is the plain 2D model (the slab is one slice), so the configs need no second code path.
    """

    def __init__(self, image_keys: KeysCollection, label_keys: KeysCollection = (), context: int = 0) -> None:
        image_keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
        label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        super().__init__(image_keys + label_keys)
        self.image_keys, self.label_keys, self.context = image_keys, label_keys, int(context)
        self.squeeze = SqueezeDim(dim=-1, update_meta=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        c = self.context
        for key in self.key_iterator(d):
            centre = self.squeeze(d[key][..., c:c + 1])  # 2D metadata (affine) for the later 2D transforms
            if key in self.label_keys:
                d[key] = centre
                continue
            plain = d[key].as_tensor() if isinstance(d[key], MetaTensor) else d[key]
            stacked = neighbour_stack(plain, c)
            d[key] = MetaTensor(stacked, meta=centre.meta) if isinstance(centre, MetaTensor) else stacked
        return d


def preprocessing(image_keys: Sequence[str] = ("image",), label_keys: Sequence[str] = (),
                  normalisation: str = "tissue") -> Compose:
    """Fill value replaced -> orientation -> square in-plane FOV -> ``MODEL_GRID`` x ``MODEL_GRID`` -> intensities
    normalised (``intensity``; ``"tissue"``: air 0, normal brain 1).

    Inputs are channel-first MetaTensors with an affine (what ``LoadImaged`` + ``EnsureChannelFirstd`` give).
    Slices along the third spatial axis are kept as they are: the model is slice-wise 2D.
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    keys = image_keys + label_keys
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    return Compose(
        [
            ReplaceFillValued(keys=image_keys),
            Orientationd(keys=keys, axcodes=MODEL_AXCODES, labels=RAS_LABELS),
            PadToSquareInPlaned(keys=keys),
            Resized(
                keys=keys,
                spatial_size=(MODEL_GRID, MODEL_GRID, -1),
                mode=modes,
                anti_aliasing=[True] * len(image_keys) + [False] * len(label_keys),
            ),
            NormaliseIntensityd(keys=image_keys, method=normalisation),
        ]
    )
