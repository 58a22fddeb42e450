"""Finding the MONAI bundle and building its predictor from plain data.

The network definition and the model sets are read from the bundle's ``configs/inference.json`` as JSON:
no ``$`` expression of a config is evaluated on this path, so segmenting never runs code from a bundle
folder (the ``monai.bundle`` commands do run config code: only run bundles you trust).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where networks are built: the ONNX Runtime path never needs it
    import torch

from monaiunetseg.errors import describe
from monaiunetseg.model.state_dict import archive_problem
from monaiunetseg.model.intensity import LEGACY_NORMALISATION, check_normalisation

INFERENCE_CONFIG = Path("configs") / "inference.json"
WEIGHTS = Path("models") / "model.pt"
ENV_VAR = "MONAIUNETSEG_BUNDLE"
DEFAULT_MODEL = "default"
# The networks a bundle may name; anything else is refused rather than imported.
NETWORKS = {"UNet": "UNet", "monai.networks.nets.UNet": "UNet", "monai.networks.nets.unet.UNet": "UNet"}


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
    # installed with ``pip install .``: the bundle ships as package ``monaiunetseg_bundle``; else the source
    # checkout's / Slicer module's
    candidates += shipped_bundles()
    for c in candidates:
        if (c / INFERENCE_CONFIG).is_file():
            return c
    raise FileNotFoundError(f"MONAI bundle not found (looked in: {', '.join(map(str, candidates))})")


def checkout_bundle() -> Path:
    """The source checkout's bundle folder (``monai_bundle/`` beside ``MONAIUNetSeg/``; it may not exist)."""
    return Path(__file__).resolve().parents[3] / "monai_bundle"


def shipped_bundles() -> list[Path]:
    """The bundle folders that come with this installation (the installed package, the source checkout's)."""
    found = [checkout_bundle()]
    installed = installed_bundle()
    return found if installed is None else [installed, *found]


def installed_bundle() -> Path | None:
    """The bundle installed as the package ``monaiunetseg_bundle`` (``pip install``), None in a source checkout."""
    try:
        import monaiunetseg_bundle  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(monaiunetseg_bundle.__file__).resolve().parent


def is_shipped(root: str | os.PathLike) -> bool:
    """True when ``root`` is a bundle that came with this installation (its configs are ours)."""
    real = Path(root).resolve()
    return any(real == b for b in shipped_bundles())


def _plain(value, where: str):
    """``value`` unchanged if it holds no config expression/reference (``$...``, ``@...``, ``%...``)."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"{where}: {value!r} is a config expression; the predictor takes plain values only")
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    return value


@dataclass
class BundleSpec:
    """What inference needs from a bundle, as plain data: network arguments, 2.5D context, model sets, and the
    post-processing and test-time augmentation every entry point applies."""

    root: Path
    network_args: dict
    context: int
    models: dict[str, list[Path]]
    postprocessing: dict = field(default_factory=dict)
    flip_tta: bool = False  # average over left-right flipped slices (chosen by cross-validation)
    trust: dict = field(default_factory=dict)  # the confidence model and review thresholds (trust.assessment)
    normalisation: str = LEGACY_NORMALISATION  # the input intensities the weights were trained on (model.intensity)

    @property
    def in_channels(self) -> int:
        return int(self.network_args.get("in_channels", 1))

    def with_context(self, context: int) -> BundleSpec:
        """The same network for a 2.5D ``context`` (its input channels follow: ``2 * context + 1``)."""
        return replace(self, context=int(context), network_args={**self.network_args, "in_channels": 2 * int(context) + 1})

    def weights(self, model: str = DEFAULT_MODEL) -> list[Path]:
        if model not in self.models:
            raise ValueError(f"unknown model {model!r} in {self.root / INFERENCE_CONFIG} (choose from: "
                             f"{', '.join(sorted(self.models))})")
        return self.models[model]


def read_spec(root: str | os.PathLike | None = None) -> BundleSpec:
    """The bundle's inference spec from ``configs/inference.json`` read as JSON (never evaluated)."""
    root = bundle_root(root)
    path = root / INFERENCE_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    net = dict(_plain(config.get("network_def") or {}, f"{path}: network_def"))
    target = net.pop("_target_", None)
    if target not in NETWORKS:
        raise ValueError(f"{path}: network_def._target_ {target!r} is not one of {sorted(NETWORKS)}")
    context = _plain(config.get("context", 0), f"{path}: context")
    if not isinstance(context, int) or context < 0:
        raise ValueError(f"{path}: context must be a non-negative integer, got {context!r}")
    if int(net.get("in_channels", 1)) != 2 * context + 1:
        raise ValueError(f"{path}: network_def.in_channels ({net.get('in_channels')}) must be 2 * context + 1 "
                         f"({2 * context + 1})")
    raw_models = _plain(config.get("models") or {DEFAULT_MODEL: [WEIGHTS.as_posix()]}, f"{path}: models")
    models = {name: [root / p for p in ([files] if isinstance(files, str) else files)] for name, files in raw_models.items()}
    if DEFAULT_MODEL not in models or any(not files for files in models.values()):
        raise ValueError(f"{path}: models must name a non-empty {DEFAULT_MODEL!r} list of weights files")
    postprocessing = _plain(config.get("postprocessing") or {}, f"{path}: postprocessing")
    if not isinstance(postprocessing, dict):
        raise ValueError(f"{path}: postprocessing must be an object of options, got {postprocessing!r}")
    flip_tta = _plain(config.get("flip_tta", False), f"{path}: flip_tta")
    if not isinstance(flip_tta, bool):
        raise ValueError(f"{path}: flip_tta must be true or false, got {flip_tta!r}")
    trust = _plain(config.get("trust") or {}, f"{path}: trust")
    if not isinstance(trust, dict):
        raise ValueError(f"{path}: trust must be an object, got {trust!r}")
    _check_blocks(path, postprocessing, trust)
    normalisation = check_normalisation(config.get("normalisation", LEGACY_NORMALISATION), str(path))
    return BundleSpec(root, net, context, models, postprocessing, flip_tta, trust, normalisation)


def _check_blocks(path: Path, postprocessing: dict, trust: dict) -> None:
    """The post-processing and trust blocks checked as they will be used, so a model folder with a bad value is
    refused when it is loaded (exit 2, naming the file), never applied wrongly or failed case by case."""
    from monaiunetseg.model.postprocess import PostProcessing
    from monaiunetseg.trust.assessment import TrustSpec

    try:
        PostProcessing.from_dict(postprocessing)
        if trust:
            TrustSpec.from_dict(trust)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def build_network(network_args: dict) -> torch.nn.Module:
    """The MONAI UNet with the given plain arguments (see :data:`NETWORKS`)."""
    from monai.networks.nets import UNet

    return UNet(**network_args)


def check_fits(network_args: dict, state: dict, problem: str) -> None:
    """Raise ``ValueError`` (``problem``: what it is, naming the file) when ``state`` does not fit the network of
    ``network_args``, compared on the meta device: no memory is spent on a network whose declared size (a model
    folder's ``channels``) has nothing to do with its weights."""
    import torch

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_network(network_args).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    if missing or extra or wrong:
        detail = (f"{wrong[0]}: shape {got[wrong[0]]} in the file, {expected[wrong[0]]} in the network" if wrong else
                  f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}")
        raise ValueError(f"{problem} ({detail})")


def network_from_config(root: str | os.PathLike | None = None) -> torch.nn.Module:
    """The bundle's network, untrained (as ``network_def`` of ``configs/inference.json`` defines it)."""
    return build_network(read_spec(root).network_args)


def load_state_dict(path: str | os.PathLike) -> dict:
    """Weights only (``weights_only=True``): a checkpoint can never run code on load. Raises ``ValueError``
    for a file that is no readable PyTorch state_dict."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"{path}: not a readable PyTorch state_dict (the file is empty: 0 bytes)")
    problem = archive_problem(path)
    if problem:
        raise ValueError(problem)
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage, truncated or pickled code: UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path}: not a readable PyTorch state_dict ({_load_error(exc)})") from exc
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]  # a full training checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a readable PyTorch state_dict (it holds a {type(state).__name__})")
    return state


def _load_error(exc: Exception) -> str:
    """Why torch refused the file, without torch's advice to retry with ``weights_only=False`` (which would run
    the file's code: never to be suggested for a file that is not a plain state_dict)."""
    text = str(exc)
    if "weights_only" not in text:
        return describe(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = [line for line in lines if "weights_only" not in line and "Check the documentation" not in line]
    return (f"{type(exc).__name__}: the file holds Python objects beyond tensors (pickled code?) and was not "
            f"loaded{': ' + detail[0] if detail else ''}")


def load_networks(spec: BundleSpec, weights: list[str | os.PathLike]) -> list[torch.nn.Module]:
    """One network per weights file, in eval mode on the CPU."""
    import torch

    nets = []
    for w in weights:
        w = Path(w)
        if not w.is_file():
            raise FileNotFoundError(f"{w}: model weights not found")
        state = load_state_dict(w)
        check_fits(spec.network_args, state, f"{w}: weights do not fit the bundle's network")
        net = build_network(spec.network_args)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:  # wrong architecture: shapes/keys do not match the bundle's network
            raise ValueError(f"{w}: weights do not fit the bundle's network ({str(exc).splitlines()[0]})") from exc
        bad = [k for k, v in state.items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # such a network outputs NaN: every case would be "nothing found"
            raise ValueError(f"{w}: the weights hold NaN or infinite values ({len(bad)} tensor(s), e.g. {bad[0]}); "
                             "a broken checkpoint (e.g. from a diverged training)")
        nets.append(net.eval())
    return nets
