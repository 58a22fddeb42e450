"""Slice-wise inference of the 2D network over volumes, and the ``Segmenter`` every entry point uses."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monaiunetseg.model.bundle import load_network
from monaiunetseg.model.transforms import preprocessing


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for CUDA without it is an error, not a fallback."""
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available (torch "
                           f"{torch.__version__}, built for CUDA {torch.version.cuda})")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}: use auto, cuda or cpu")
    return torch.device(device)


class SliceBatchInferer(Inferer):
    """Run a 2D network over the last spatial axis of ``(B, C, H, W, D)`` volumes, ``batch_size`` slices a call."""

    def __init__(self, batch_size: int = 32, amp: bool | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.amp = amp

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        b, c, h, w, d = inputs.shape
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs  # slicing keeps no metadata
        slices = plain.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        use_amp = self.amp if self.amp is not None else slices.device.type == "cuda"
        amp_ctx = torch.autocast("cuda") if use_amp and slices.device.type == "cuda" else contextlib.nullcontext()
        outs = []
        with amp_ctx:
            for start in range(0, slices.shape[0], self.batch_size):
                outs.append(network(slices[start:start + self.batch_size], *args, **kwargs).float())
        out = torch.cat(outs)
        k = out.shape[1]
        return out.reshape(b, d, k, h, w).permute(0, 2, 3, 4, 1)


@dataclass
class SegmentationTimings:
    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    extra: dict = field(default_factory=dict)


class Segmenter:
    """Load the bundle's network once; segment volumes given as (array, RAS affine) on their own grid."""

    def __init__(self, bundle: str | os.PathLike | None = None, device: str = "auto",
                 weights: str | os.PathLike | None = None, batch_size: int = 32) -> None:
        self.device = resolve_device(device)
        self.network = load_network(bundle, weights).to(self.device)
        self.inferer = SliceBatchInferer(batch_size=batch_size)
        self.preprocessing = preprocessing(["image"])
        self.timings = SegmentationTimings()

    def probabilities(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Foreground probability on the input grid: ``array`` is (x, y, z) or (C, x, y, z), affine RAS 4x4."""
        t0 = time.perf_counter()
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"expected a 3D volume, got an array of shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite voxels")
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.as_tensor(affine, dtype=torch.float64))
        data = self.preprocessing({"image": image})
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = data["image"].as_tensor()[None].to(self.device)
            logits = self.inferer(x, self.network)
            prob = torch.softmax(logits, dim=1)[0, 1:2].cpu()
        t2 = time.perf_counter()
        pred = MetaTensor(prob, affine=data["image"].affine, applied_operations=data["image"].applied_operations)
        restored = self.preprocessing.inverse({"image": pred})["image"]
        out = restored.as_tensor()[0].numpy()
        t3 = time.perf_counter()
        self.timings = SegmentationTimings(t1 - t0, t2 - t1, t3 - t2)
        if out.shape != array.shape[1:]:
            raise AssertionError(f"internal error: output shape {out.shape} != input shape {array.shape[1:]}")
        return out

    def segment(self, array: np.ndarray, affine: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """uint8 labelmap (0 background, 1 FLAIR abnormality) with exactly the input's shape."""
        return (self.probabilities(array, affine) > threshold).astype(np.uint8)
