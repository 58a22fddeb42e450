"""Slice-wise inference of the 2D network over volumes, and the ``Segmenter`` every entry point uses."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monaiunetseg.model.bundle import DEFAULT_MODEL, load_networks, read_spec
from monaiunetseg.model.errors import NonFiniteOutputError
from monaiunetseg.model.postprocess import PostProcessing
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
    """Run a 2D network over the last spatial axis of ``(B, C, H, W, D)`` volumes, ``batch_size`` slices a call.

    ``context > 0``: 2.5D, each slice goes in with ``context`` neighbours on either side as extra channels
    (edge slices repeated at the volume's ends), in the layout of ``transforms.neighbour_stack``.
    """

    def __init__(self, batch_size: int = 32, amp: bool | None = None, context: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.amp = amp
        self.context = int(context)

    def slices(self, volume: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Network inputs ``(stop - start, C * (2 * context + 1), H, W)`` for slices ``start..stop-1`` of a
        ``(C, H, W, D)`` volume; built per chunk so a long volume never holds all stacks at once."""
        c, h, w, d = volume.shape
        k = 2 * self.context + 1
        index = torch.arange(start, stop, device=volume.device)[:, None] + torch.arange(-self.context, self.context + 1, device=volume.device)
        slabs = volume[..., index.clamp(0, d - 1)]  # (C, H, W, n, K)
        return slabs.permute(3, 0, 4, 1, 2).reshape(stop - start, c * k, h, w)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        b, c, h, w, d = inputs.shape
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs  # slicing keeps no metadata
        use_amp = self.amp if self.amp is not None else plain.device.type == "cuda"
        amp_ctx = torch.autocast("cuda") if use_amp and plain.device.type == "cuda" else contextlib.nullcontext()
        outs = []
        with amp_ctx:
            for i in range(b):
                for start in range(0, d, self.batch_size):
                    x = self.slices(plain[i], start, min(start + self.batch_size, d))
                    outs.append(network(x, *args, **kwargs).float())
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
    """The one inference path (CLI, bundle ``inference``, Slicer): load the bundle's model(s) once, then segment
    volumes given as (array, RAS affine) on their own grid.

    ``model`` names a model set of the bundle (``default``; e.g. the fold ensemble) whose members' softmax
    foreground probabilities are averaged (probabilities, not labels); ``weights`` overrides it with explicit
    files. ``flip_tta`` also averages over left-right flipped slices (the model is trained with such flips).
    """

    def __init__(self, bundle: str | os.PathLike | None = None, device: str = "auto",
                 weights: str | os.PathLike | list[str | os.PathLike] | None = None, batch_size: int = 32,
                 model: str = DEFAULT_MODEL, flip_tta: bool = False, context: int | None = None,
                 postprocessing: dict | None = None) -> None:
        self.device = resolve_device(device)
        self.spec = read_spec(bundle)
        if context is not None:  # e.g. the folds of a cross-validation of another recipe
            self.spec = self.spec.with_context(context)
        self.postprocessing = PostProcessing.from_dict(self.spec.postprocessing if postprocessing is None else postprocessing)
        if weights is None:
            files = self.spec.weights(model)
        else:
            files = list(weights) if isinstance(weights, (list, tuple)) else [weights]
        self.weights = [Path(w) for w in files]
        self.networks = [net.to(self.device) for net in load_networks(self.spec, self.weights)]
        self.flip_tta = flip_tta
        self.inferer = SliceBatchInferer(batch_size=batch_size, context=self.spec.context)
        self.preprocessing = preprocessing(["image"])
        self.timings = SegmentationTimings()

    @property
    def network(self) -> torch.nn.Module:
        """The first (for a single model: the only) network."""
        return self.networks[0]

    def foreground(self, slices: torch.Tensor) -> torch.Tensor:
        """Mean foreground probability ``(N, 1, H, W)`` over the models (and flips) for network inputs."""
        views = [slices, torch.flip(slices, dims=(-2,))] if self.flip_tta else [slices]
        total = None
        for net, weights in zip(self.networks, self.weights):
            for i, view in enumerate(views):
                logits = net(view).float()
                if not torch.isfinite(logits).all():  # -inf logits give finite softmax: check before it
                    raise NonFiniteOutputError(f"the network gave NaN or infinite output (weights {weights}); "
                                               "no labelmap written: an empty one would look like 'nothing found'")
                prob = torch.softmax(logits, dim=1)[:, 1:2]
                if i:
                    prob = torch.flip(prob, dims=(-2,))
                total = prob if total is None else total + prob
        return total / (len(self.networks) * len(views))

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
            prob = self.inferer(x, self.foreground)[0].cpu()
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
        """uint8 labelmap (0 background, 1 FLAIR abnormality) with exactly the input's shape, post-processed
        as the bundle says (``postprocessing`` in ``configs/inference.json``)."""
        prob = self.probabilities(array, affine)
        return self.postprocessing(prob > threshold, prob)
