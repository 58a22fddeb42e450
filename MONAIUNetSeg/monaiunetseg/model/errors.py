"""Errors of the inference path that callers tell apart without importing torch (the batch imports this)."""

from __future__ import annotations


class NonFiniteOutputError(RuntimeError):
    """The network gave NaN or infinite logits/probabilities for an input. Thresholding them would give an empty
    labelmap, i.e. a silent "nothing found", so the case fails instead; the message names the weights."""


def non_finite_output(weights) -> NonFiniteOutputError:
    """The one wording of that failure, naming the weights (a path or a list of paths)."""
    names = ", ".join(map(str, weights)) if isinstance(weights, (list, tuple)) else str(weights)
    return NonFiniteOutputError(f"the network gave NaN or infinite output (weights {names}); no labelmap written: "
                                "an empty one would look like 'nothing found'")
