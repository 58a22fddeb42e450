"""Knowing when a result needs a second look: prediction signals (``signals``), checks of the input image
(``input_checks``) and the per-case ``confidence`` / ``review`` / ``review_reasons`` they make (``assessment``).

The confidence model and its thresholds are chosen out of fold (``training.trust_fit``) and live in the
bundle's ``configs/inference.json`` (``trust``); the model card's "When to trust it" says how they were measured.
"""
