"""Errors of the inference path that callers tell apart without importing torch (the batch imports this)."""

from __future__ import annotations


class NonFiniteOutputError(RuntimeError):
    """The network gave NaN or infinite logits/probabilities for an input. Thresholding them would give an empty
    labelmap, i.e. a silent "nothing found", so the case fails instead; the message names the weights."""
