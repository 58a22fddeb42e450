"""The torch side of inference: the bundle's networks in eager PyTorch (CUDA with AMP, or the CPU when ONNX
Runtime is unavailable), and the slice-batch inferer of the training/evaluation configs.

Imported only when used: torch and MONAI take 2-5 s to import, which the lean ONNX Runtime path avoids.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monaiunetseg.model.errors import non_finite_output
from monaiunetseg.model.bundle import BundleSpec, load_networks


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


class TorchRunner:
    """The model set's networks in eager PyTorch: mean softmax foreground over members (and flips)."""

    name = "torch"

    def __init__(self, spec: BundleSpec, weights: list[str | os.PathLike], device: str, batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.weights = [str(w) for w in weights]
        self.networks = [net.to(self.device) for net in load_networks(spec, weights)]
        self.batch_size = batch_size

    def foreground(self, slices: np.ndarray, flip_tta: bool = False) -> np.ndarray:
        """``(N, C, H, W)`` float32 network inputs -> ``(N, H, W)`` float32 mean foreground probability."""
        return self.run(slices, flip_tta)[0]

    def run(self, slices: np.ndarray, flip_tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`foreground` and each member's foreground of the unflipped view, ``(N, M, H * W)``."""
        amp = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            x = torch.from_numpy(np.ascontiguousarray(slices)).to(self.device)
            views = [x, torch.flip(x, dims=(-2,))] if flip_tta else [x]
            total, members = None, []
            for net, weights in zip(self.networks, self.weights):
                for i, view in enumerate(views):
                    logits = net(view).float()
                    if not torch.isfinite(logits).all():  # -inf logits give a finite softmax: check before it
                        raise non_finite_output(weights)
                    prob = torch.softmax(logits, dim=1)[:, 1]
                    if i:
                        prob = torch.flip(prob, dims=(-2,))
                    else:
                        members.append(prob)
                    total = prob if total is None else total + prob
            mean = (total / (len(self.networks) * len(views))).cpu().numpy()
            stacked = torch.stack(members, dim=1).flatten(2).cpu().numpy()
            return mean, stacked

    @property
    def n_members(self) -> int:
        return len(self.networks)
