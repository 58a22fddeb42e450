"""The ``Segmenter`` every entry point uses (CLI, bundle ``inference``, Slicer), and device resolution.

Preprocessing and its inverse are the numpy equal of ``transforms.preprocessing`` (``fast_preprocess``),
streamed slice chunk by slice chunk; the networks run in ONNX Runtime (``onnx_backend``) on the CPU, or in
PyTorch (``torch_backend``) on CUDA and wherever ONNX Runtime or the graph builder cannot serve the weights.
This module imports neither torch nor MONAI: the CPU path starts in well under a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monaiunetseg.model.bundle import DEFAULT_MODEL, read_spec
from monaiunetseg.model.fast_preprocess import GridPlan, model_grid_volume, neighbour_slices
from monaiunetseg.model.intensity import check_normalisation
from monaiunetseg.model.errors import input_out_of_range, non_finite_output
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.trust.signals import PredictionStats

if TYPE_CHECKING:
    import torch

BACKEND_ENV = "MONAIUNETSEG_BACKEND"  # auto (default), onnx or torch
# Normalised intensities put air at 0 and brain (or the 99th percentile) at 1; an input beyond this many times that range makes a
# network's NaN the input's doing, not the weights'.
SCALED_LIMIT = 1e6
log = logging.getLogger(__name__)


def __getattr__(name: str):
    """``SliceBatchInferer`` (the training config's ``inferer``) lives in ``torch_backend``; imported on use."""
    if name == "SliceBatchInferer":
        from monaiunetseg.model.torch_backend import SliceBatchInferer

        return SliceBatchInferer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cuda_possible() -> bool:
    """False when no NVIDIA driver is visible, so that ``auto`` need not import torch to learn it is the CPU."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
    return sys.platform == "win32" and shutil.which("nvidia-smi") is not None


def device_name(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when present, else ``cpu``; asking for CUDA without it is an error, not a fallback.
    Imports torch only when CUDA may be there."""
    device = (device or "auto").lower()
    if device == "cpu" or (device == "auto" and not _cuda_possible()):
        return "cpu"
    if not (device == "auto" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}: use auto, cuda or cpu")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available (torch "
                           f"{torch.__version__}, built for CUDA {torch.version.cuda})")
    return device


def resolve_device(device: str = "auto") -> torch.device:
    """:func:`device_name` as a ``torch.device`` (training configs)."""
    import torch

    return torch.device(device_name(device))


@dataclass
class SegmentationTimings:
    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0  # mapping the prediction back onto the input grid
    extra: dict = field(default_factory=dict)


class Segmenter:
    """The one inference path (CLI, bundle ``inference``, Slicer): load the bundle's model(s) once, then segment
    volumes given as (array, RAS affine) on their own grid.

    ``model`` names a model set of the bundle (``default``; e.g. the fold ensemble) whose members' softmax
    foreground probabilities are averaged (probabilities, not labels); ``weights`` overrides it with explicit
    files. ``flip_tta`` also averages over left-right flipped slices (the model is trained with such flips);
    ``None``: as the bundle says (``flip_tta`` in ``configs/inference.json``), like ``postprocessing``.
    ``backend``: ``onnx`` (ONNX Runtime, CPU), ``torch``, or ``auto`` (default, or ``$MONAIUNETSEG_BACKEND``):
    ONNX Runtime on the CPU when it is installed and serves the weights, else torch.
    """

    def __init__(self, bundle: str | os.PathLike | None = None, device: str = "auto",
                 weights: str | os.PathLike | list[str | os.PathLike] | None = None, batch_size: int = 32,
                 model: str = DEFAULT_MODEL, flip_tta: bool | None = None, context: int | None = None,
                 postprocessing: dict | None = None, backend: str | None = None,
                 normalisation: str | None = None) -> None:
        self.device_name = device_name(device)
        self.spec = read_spec(bundle)
        if context is not None:  # e.g. the folds of a cross-validation of another recipe
            self.spec = self.spec.with_context(context)
        if normalisation is not None:  # likewise: weights trained with another input normalisation
            self.spec = replace(self.spec, normalisation=check_normalisation(normalisation, "normalisation"))
        self.postprocessing = PostProcessing.from_dict(self.spec.postprocessing if postprocessing is None else postprocessing)
        if weights is None:
            files = self.spec.weights(model)
        else:
            files = list(weights) if isinstance(weights, (list, tuple)) else [weights]
        self.weights = [Path(w) for w in files]
        for w in self.weights:
            if not w.is_file():
                raise FileNotFoundError(f"{w}: model weights not found")
        self.flip_tta = self.spec.flip_tta if flip_tta is None else bool(flip_tta)
        self.batch_size = batch_size
        self.backend_note = ""
        self.runner = self._runner((backend or os.environ.get(BACKEND_ENV) or "auto").lower())
        self.timings = SegmentationTimings()
        self.stats: PredictionStats | None = None  # the last volume's per-member signals (trust.signals)

    def _runner(self, backend: str):
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown backend {backend!r}: use auto, onnx or torch")
        if backend == "onnx" and self.device_name != "cpu":
            raise ValueError("the onnx backend runs on the CPU only")
        if backend == "onnx" or (backend == "auto" and self.device_name == "cpu"):
            from monaiunetseg.model.onnx_backend import OnnxRunner
            from monaiunetseg.model.state_dict import StateDictError
            from monaiunetseg.model.unet_graph import UnsupportedNetwork

            try:
                return OnnxRunner(self.spec.network_args, self.weights)
            except (ImportError, StateDictError, UnsupportedNetwork) as exc:
                if backend == "onnx":
                    raise
                self.backend_note = f"torch: {exc.__class__.__name__}: {exc}"
                log.info("MONAIUNetSeg: ONNX Runtime not used (%s)", exc)
        from monaiunetseg.model.torch_backend import TorchRunner

        return TorchRunner(self.spec, self.weights, self.device_name, self.batch_size)

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def device(self) -> torch.device:
        """The device as a ``torch.device`` (imports torch: use ``device_name`` where a string will do)."""
        import torch

        return torch.device(self.device_name)

    @property
    def networks(self) -> list[torch.nn.Module]:
        """The model set's networks in PyTorch (loaded on first use when the ONNX backend runs them)."""
        if not hasattr(self.runner, "networks"):
            from monaiunetseg.model.bundle import load_networks

            self.runner.networks = load_networks(self.spec, self.weights)
        return self.runner.networks

    @property
    def network(self) -> torch.nn.Module:
        """The first (for a single model: the only) network."""
        return self.networks[0]

    def _predict(self, array: np.ndarray, affine: np.ndarray, sink) -> None:
        """Stream the foreground probability of ``array`` to ``sink(oriented_view_slices, chunk)``: chunk
        ``(n0, n1, k)`` float32 of slices ``start:stop`` of the input grid in model orientation."""
        t0 = time.perf_counter()
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"expected a 3D volume, got an array of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"expected a real-valued image, got {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite voxels")
        plan = GridPlan.of(array.shape[1:], affine)
        volume = model_grid_volume(array, plan, normalisation=self.spec.normalisation)
        if not np.isfinite(volume).all():  # the scaling overflowed: the network would give NaN, blamed on it
            raise input_out_of_range(array)
        t1 = time.perf_counter()
        model = invert = 0.0
        step, context = self.runner.batch_size, self.spec.context
        stats = PredictionStats(self.runner.n_members)
        for start in range(0, plan.n_slices, step):
            stop = min(start + step, plan.n_slices)
            ta = time.perf_counter()
            prob, members = self.runner.run(neighbour_slices(volume, start, stop, context), self.flip_tta)
            if not np.isfinite(prob).all():  # thresholding NaN gives an empty labelmap: a silent "nothing found"
                if np.abs(volume).max() > SCALED_LIMIT:  # finite, but no network is meant for such inputs
                    raise input_out_of_range(array)
                raise non_finite_output(self.weights)
            stats.update(members)
            tb = time.perf_counter()
            sink(slice(start, stop), plan.from_model(prob).transpose(1, 2, 0))
            model, invert = model + tb - ta, invert + time.perf_counter() - tb
        self.timings = SegmentationTimings(t1 - t0, model, invert)
        self.stats = stats

    def assess(self, array: np.ndarray, affine: np.ndarray, header_reasons: list[str] | None = None):
        """The verdict (``trust.assessment.Assessment``) on the volume just segmented: its prediction signals
        (gathered by the last :meth:`segment` / :meth:`probabilities`) and the input checks of ``array``;
        ``header_reasons``: DICOM header findings. None when the bundle has no ``trust`` block."""
        if not self.spec.trust:
            return None
        from monaiunetseg.trust.assessment import TrustSpec, assess
        from monaiunetseg.trust.input_checks import check_image

        return assess(TrustSpec.from_dict(self.spec.trust), self.stats, check_image(array, affine), header_reasons)

    def probabilities(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Foreground probability (float32) on the input grid: ``array`` is (x, y, z) or (C, x, y, z), affine RAS."""
        shape = np.shape(array)[-3:]
        out = np.empty(shape, dtype=np.float32)
        view = GridPlan.of(shape, affine).orient(out)

        def sink(z: slice, chunk: np.ndarray) -> None:
            view[:, :, z] = chunk

        self._predict(array, affine, sink)
        return out

    def segment(self, array: np.ndarray, affine: np.ndarray, threshold: float = 0.5,
                probabilities: np.ndarray | None = None) -> np.ndarray:
        """uint8 labelmap (0 background, 1 FLAIR abnormality) with exactly the input's shape, post-processed
        as the bundle says (``postprocessing`` in ``configs/inference.json``). No float volume of the input's
        grid is made: the mask is thresholded slice chunk by slice chunk (and the probability, when the
        post-processing needs it, kept as uint8 in 1/255 steps). ``probabilities``: a float32 array of the
        input's shape that also receives the (averaged) foreground probability, before post-processing, from
        the same network run (``--save-probabilities``)."""
        shape = np.shape(array)[-3:]
        if probabilities is not None and (probabilities.shape != shape or probabilities.dtype != np.float32):
            raise ValueError(f"probabilities must be float32 of shape {shape}")
        plan = GridPlan.of(shape, affine)
        mask = np.zeros(shape, dtype=np.uint8)
        mask_view = plan.orient(mask)
        needs_prob = bool(self.postprocessing.min_mean_prob)
        prob255 = np.zeros(shape, dtype=np.uint8) if needs_prob else None
        prob_view = plan.orient(prob255) if needs_prob else None
        float_view = plan.orient(probabilities) if probabilities is not None else None

        def sink(z: slice, chunk: np.ndarray) -> None:
            mask_view[:, :, z] = chunk > threshold
            if prob_view is not None:
                prob_view[:, :, z] = np.rint(np.clip(chunk, 0.0, 1.0) * 255)
            if float_view is not None:
                float_view[:, :, z] = np.clip(chunk, 0.0, 1.0)

        self._predict(array, affine, sink)
        return self.postprocessing(mask, prob255, prob_scale=255.0)
