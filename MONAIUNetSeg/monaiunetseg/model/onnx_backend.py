"""The lean inference backend: a model set as one ONNX Runtime session, without torch or MONAI.

The graph is built at load time from the ``.pt`` weights themselves (``state_dict.read_state_dict`` +
``unet_graph.ensemble_graph``, about 0.05 s per member), so there is no exported file that could go stale:
whatever weights a model set (or ``--weights``) names are the weights that run. Any weights or network this
cannot reproduce exactly raise, and ``Segmenter`` uses :class:`~monaiunetseg.model.torch_backend.TorchRunner`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from monaiunetseg.model.state_dict import read_state_dict
from monaiunetseg.model.unet_graph import ensemble_graph

# Slices per session run: small batches keep each layer's activations in cache (measured on 2 cores: 4 slices
# a run used ~15 % less CPU time than 38) and the memory of inference independent of the volume's size.
BATCH = 4


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OnnxRunner:
    """The members of a model set in one ONNX Runtime graph that averages their softmax foregrounds."""

    name = "onnx"

    def __init__(self, network_args: dict, weights: list[str | os.PathLike], threads: int | None = None) -> None:
        import onnxruntime as ort  # ImportError: the caller falls back to torch

        paths = [Path(w) for w in weights]
        states = [read_state_dict(p) for p in paths]
        for p, state in zip(paths, states):  # such a network outputs NaN: every case would be "nothing found"
            bad = [k for k, v in state.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
                   and not np.isfinite(v).all()]
            if bad:
                raise ValueError(f"{p}: the weights hold NaN or infinite values ({len(bad)} tensor(s), e.g. "
                                 f"{bad[0]}); a broken checkpoint (e.g. from a diverged training)")
        metadata = {f"weights_{i}": f"{p.name} sha256:{_sha256(p)}" for i, p in enumerate(paths)}
        self.graph = ensemble_graph(network_args, states, metadata)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1
        # No busy-waiting between ops: on a shared CPU the spinning threads only take time from other work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])
        self.batch_size = BATCH
        self.n_members = len(paths)

    def foreground(self, slices: np.ndarray, flip_tta: bool = False) -> np.ndarray:
        """``(N, C, H, W)`` float32 network inputs -> ``(N, H, W)`` float32 mean foreground probability (over the
        members and, with ``flip_tta``, the left-right flipped view flipped back)."""
        return self.run(slices, flip_tta)[0]

    def run(self, slices: np.ndarray, flip_tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`foreground` and each member's foreground of the unflipped view, ``(N, M, K)`` with the pixels
        in the graph's order (for ``trust.signals``, which only counts them)."""
        x = np.ascontiguousarray(slices, dtype=np.float32)
        n = x.shape[0]
        if flip_tta:
            x = np.concatenate([x, x[:, :, ::-1]])
        out, members = self.session.run(None, {"image": x})
        out = out[:, 0]
        if flip_tta:
            out = (out[:n] + out[n:, ::-1]) / 2
        return out, members[:n].reshape(n, self.n_members, -1)
