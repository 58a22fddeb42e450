"""Fine-tuning that keeps what the network knew: L2-SP and frozen batch-norm statistics.

L2-SP: a fine-tuning loss that pulls the weights toward the ones it started from (Li, Grandvalet, Davoine,
"Explicit inductive bias for transfer learning with convolutional networks", ICML 2018).

Why: fine-tuning on a site's 2-5 volumes fits them within a few steps and forgets the base (the model card's
leave-DU-out runs); ``alpha * sum((w - w0)^2)`` over the trained parameters keeps the network near what it knew,
so what it learns from the site must pay for the distance. The reference ``w0`` is read from the starting weights
file (``weights_only=True``), not from the network when the loss is built: the bundle loads the starting weights
after the loss exists, and a resumed run must still be pulled toward the start, not toward its checkpoint.

Frozen batch norm: re-estimated on a handful of a site's lesion-centred training crops, the batch-norm running
statistics drift away from what inference needs; with the learning rate at 0 (no weight moving) the validation
Dice of the leave-DU-out runs still fell 0.60 -> 0.46 in 9 epochs. :func:`freeze_batch_norm` keeps every
batch-norm layer in evaluation mode while training (statistics of the start; scale and shift still train).
"""

from __future__ import annotations

import os

import torch

from monaiunetseg.model.bundle import load_state_dict


class L2SPLoss(torch.nn.Module):
    """``loss(input, target) + weight * sum over the network's parameters of (w - w0)^2``."""

    def __init__(self, loss: torch.nn.Module, network: torch.nn.Module, reference: str | os.PathLike,
                 weight: float) -> None:
        super().__init__()
        network = getattr(network, "module", network)  # DistributedDataParallel: the wrapped network's names
        self.loss, self.weight, self._network = loss, float(weight), [network]  # a list: not a submodule
        state = load_state_dict(reference)
        params = dict(network.named_parameters())
        missing = sorted(set(params) - set(state))
        if missing:
            raise ValueError(f"{reference}: no starting value for {len(missing)} parameter(s) of the network "
                             f"(first: {missing[0]}); L2-SP needs weights of the same network")
        self.reference = {name: state[name].detach().float() for name in params}

    def penalty(self) -> torch.Tensor:
        total = None
        for name, p in self._network[0].named_parameters():
            if not p.requires_grad:
                continue
            w0 = self.reference[name]
            if w0.device != p.device:
                w0 = self.reference[name] = w0.to(p.device)
            term = (p.float() - w0).pow(2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(input, target) + self.weight * self.penalty()


def l2sp_loss(loss: torch.nn.Module, network: torch.nn.Module, reference: str | os.PathLike | None,
              weight: float | None) -> torch.nn.Module:
    """The bundle's ``train#trainer`` loss: ``loss`` itself unless a weight > 0 and starting weights are given
    (train.json's ``l2sp`` and ``pretrained``; both off by default)."""
    if not weight or reference is None or str(reference).lower() in ("", "none", "null"):
        return loss
    print(f"L2-SP: loss + {float(weight):g} x squared distance to {reference}", flush=True)
    return L2SPLoss(loss, network, reference, weight)


def freeze_batch_norm(network: torch.nn.Module, enabled: bool | None) -> torch.utils.hooks.RemovableHandle | None:
    """train.json's ``freeze_bn``: before every forward pass put the network's batch-norm layers in evaluation
    mode (the trainer sets the whole network to training mode each iteration), so their running statistics stay
    the starting weights' and normalise as at inference; returns the hook's handle (None when off)."""
    if not enabled:
        return None
    network = getattr(network, "module", network)
    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise ValueError("freeze_bn: the network has no batch-norm layer")

    def hold(module: torch.nn.Module, args: tuple) -> None:
        for layer in layers:
            layer.eval()

    print(f"freeze_bn: {len(layers)} batch-norm layers keep their running statistics", flush=True)
    return network.register_forward_pre_hook(hold)
