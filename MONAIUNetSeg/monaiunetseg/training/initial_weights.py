"""The bundle's ``pretrained`` key: start training from given weights (fine-tuning) instead of random ones.

Why here and not a ``CheckpointLoader``: that one resumes a run (optimizer, scheduler, epoch) and, as it comes
later (when the trainer starts), a resumed fine-tuning still continues from its own newest checkpoint. The
file is read with ``torch.load(weights_only=True)`` (``model.bundle.load_state_dict``): weights never run code.
"""

from __future__ import annotations

import os

import torch

from monaiunetseg.model.bundle import check_fits, load_state_dict


def check_initial_weights(path: str | os.PathLike, network_args: dict) -> None:
    """Refuse (``ValueError`` naming the file and why) weights that training would fail on: a corrupt file, a
    pickle, another network's weights. Checked before training starts, so the reason is said on the console, not
    only in the training log, and no rerun is suggested for a file that can never load."""
    check_fits(network_args, load_state_dict(path), f"--from {path}: the weights do not fit the network trained here")


def load_initial_weights(network: torch.nn.Module, path: str | os.PathLike | None) -> torch.nn.Module:
    """``network`` with the state_dict of ``path`` loaded (strictly: every tensor must fit); unchanged for None."""
    if path is None or str(path).lower() in ("", "none", "null"):
        return network
    state = load_state_dict(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the network being trained ({str(exc).splitlines()[0]})") from exc
    print(f"pretrained: initial weights from {path}", flush=True)
    return network
