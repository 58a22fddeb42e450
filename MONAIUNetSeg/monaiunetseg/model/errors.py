"""Errors of the inference path that callers tell apart without importing torch (the batch imports this)."""

from __future__ import annotations


class NonFiniteOutputError(RuntimeError):
    """The network gave NaN or infinite logits/probabilities for an input. Thresholding them would give an empty
    labelmap, i.e. a silent "nothing found", so the case fails instead; the message names the weights."""


class InputRangeError(ValueError):
    """The input's intensities are so large (e.g. float32 values near +-3e38) that its intensity scaling
    overflows to NaN/infinity: the input's problem, not the model's (the batch fails the case and goes on, and
    never counts it against the weights)."""


def input_out_of_range(array) -> InputRangeError:
    """The one wording of that failure, with the input's value range."""
    import numpy as np

    finite = np.asarray(array)[np.isfinite(array)]
    span = f"{finite.min():.3g} to {finite.max():.3g}" if finite.size else "none finite"
    return InputRangeError(f"the image's intensities ({span}) are so large that the intensity scaling overflows "
                           "(NaN); no labelmap written: store the image with smaller values (e.g. rescaled to "
                           "its scanner's range)")


def non_finite_output(weights) -> NonFiniteOutputError:
    """The one wording of that failure, naming the weights (a path or a list of paths)."""
    names = ", ".join(map(str, weights)) if isinstance(weights, (list, tuple)) else str(weights)
    return NonFiniteOutputError(f"the network gave NaN or infinite output (weights {names}); no labelmap written: "
                                "an empty one would look like 'nothing found'")
