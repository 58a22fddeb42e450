"""Finding the MONAI bundle and building its network: the bundle's own config is the one model definition."""

from __future__ import annotations

import os
from pathlib import Path

import torch

INFERENCE_CONFIG = Path("configs") / "inference.json"
WEIGHTS = Path("models") / "model.pt"
ENV_VAR = "MONAIUNETSEG_BUNDLE"


def bundle_root(explicit: str | os.PathLike | None = None) -> Path:
    """The bundle directory: ``explicit`` (which must hold ``configs/inference.json``), else
    ``$MONAIUNETSEG_BUNDLE``, the installed copy, or the repo's."""
    if explicit:
        if not (Path(explicit) / INFERENCE_CONFIG).is_file():
            raise FileNotFoundError(f"{explicit}: not a MONAI bundle folder (no {INFERENCE_CONFIG.as_posix()} in it)")
        return Path(explicit)
    candidates: list[Path] = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    try:  # installed with ``pip install .``: the bundle ships as package ``monaiunetseg_bundle``
        import monaiunetseg_bundle  # type: ignore[import-not-found]

        candidates.append(Path(monaiunetseg_bundle.__file__).parent)
    except ImportError:
        pass
    candidates.append(Path(__file__).resolve().parents[3] / "monai_bundle")  # source checkout / Slicer module
    for c in candidates:
        if (c / INFERENCE_CONFIG).is_file():
            return c
    raise FileNotFoundError(f"MONAI bundle not found (looked in: {', '.join(map(str, candidates))})")


def network_from_config(root: Path) -> torch.nn.Module:
    """Instantiate ``network_def`` from the project's own ``configs/inference.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(root / INFERENCE_CONFIG)
    return parser.get_parsed_content("network_def", instantiate=True)


def load_state_dict(path: str | os.PathLike) -> dict:
    """Weights only (``weights_only=True``): a checkpoint can never run code on load. Raises ``ValueError``
    for a file that is no readable PyTorch state_dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage, truncated or pickled code: UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path}: not a readable PyTorch state_dict ({exc})") from exc
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]  # a full training checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a readable PyTorch state_dict (it holds a {type(state).__name__})")
    return state


def load_network(root: str | os.PathLike | None = None, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """The bundle's network with its shipped (or the given) weights, in eval mode on the CPU."""
    root = bundle_root(root)
    weights = Path(weights) if weights else root / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: model weights not found")
    net = network_from_config(root)
    net.load_state_dict(load_state_dict(weights))
    return net.eval()
