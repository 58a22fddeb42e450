"""Which model made a labelmap: the weights' SHA-256s and every option that changes the labels.

Resume keeps an earlier labelmap only when it was made from the same input content *and* the same model: a rerun
with ``--model fast`` after ``--model default`` (or a bundle whose post-processing or flip TTA changed) must not
keep the other model's result. The key is recorded in each labelmap's source record and named in the report row.
It is computed from the bundle's plain values and the weights files, without loading a network, so a resume that
finds every case done never loads the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.resume import file_sha256, model_label

THRESHOLD = 0.5  # Segmenter.segment's default: the batch never changes it


def make_key(name: str, weights: list[Path], flip_tta: bool, postprocessing: dict, context: int,
             threshold: float = THRESHOLD) -> dict:
    """The model's record: ``name`` (model set or weights file), weights SHA-256s (in order), the
    label-changing options, and ``sha256``: one digest of all of these but the name (what resume compares)."""
    key = {"weights_sha256": [file_sha256(w) for w in weights], "flip_tta": bool(flip_tta),
           "postprocessing": dict(sorted(postprocessing.items())), "context": int(context),
           "threshold": float(threshold)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    return {"name": name, **key, "sha256": digest}


def model_name(options: BatchOptions) -> str:
    """The model as the user named it: the model set, or the weights file given instead."""
    return os.path.basename(str(options.weights)) if options.weights else options.model


def key_of(options: BatchOptions, segmenter=None) -> dict | None:
    """The key of the model this run uses: the loaded ``segmenter``'s when given (None for a stand-in without
    weights files, whose labels nothing can key), else the one ``options`` select in the bundle."""
    if segmenter is not None:
        weights = getattr(segmenter, "weights", None)
        pp = getattr(segmenter, "postprocessing", None)
        spec = getattr(segmenter, "spec", None)
        if not weights or pp is None or spec is None:
            return None
        return make_key(model_name(options), list(weights), getattr(segmenter, "flip_tta", False), pp.to_dict(),
                        spec.context)
    from monaiunetseg.model.bundle import read_spec
    from monaiunetseg.model.postprocess import PostProcessing

    spec = read_spec(options.bundle)
    weights = [Path(options.weights)] if options.weights else spec.weights(options.model)
    for w in weights:
        if not w.is_file():  # as the Segmenter would say it
            raise FileNotFoundError(f"{w}: model weights not found")
    pp = PostProcessing.from_dict(spec.postprocessing).to_dict()
    return make_key(model_name(options), weights, spec.flip_tta, pp, spec.context)


def describe(key: dict | None) -> str:
    """``fast (model 1a2b3c4d5e6f)``: the report's ``model`` cell (as resume names a kept output's model)."""
    return model_label(key)
