"""The per-case verdict: ``confidence`` (0-1, the Dice the result is expected to have), ``review`` and
``review_reasons``, from the prediction signals (``signals``) and the input checks (``input_checks``).

``confidence`` is a linear model of each member's prediction signals, averaged over the members and clipped to
0-1; it was fitted out of fold (``training.trust_fit``) on the Dice of single fold models on patients they
never trained on, so it reads as "expected Dice". ``review`` is ``yes`` when the confidence is below
``review_below``, when the members disagree (mean pairwise Dice below ``min_agreement``), when nothing is found,
or when an input check failed; a hard input failure (no head, noise, no contrast, a DICOM header that is not
FLAIR) also sets the confidence to 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monaiunetseg.trust.input_checks import ISOTROPIC, InputCheck
from monaiunetseg.trust.signals import PredictionStats

REASON_SEPARATOR = "; "
IGNORABLE_CHECKS = (ISOTROPIC,)
FEATURES = ("uncertain_ratio", "mean_probability")  # what ``PredictionStats.member_features`` gives


def _number(value, where: str) -> float:
    """A finite JSON number (not a string, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"trust: {where} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrustSpec:
    """The bundle's ``trust`` block (``configs/inference.json``)."""

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    review_below: float
    min_agreement: float
    ignore_checks: tuple[str, ...] = ()  # input-check kinds (``input_checks.ISOTROPIC``) this model is not flagged for

    @classmethod
    def from_dict(cls, d: dict) -> TrustSpec:
        """The block checked in full (``ValueError`` naming what is wrong), so a malformed one is refused when the
        model is loaded, not in every case's verdict."""
        try:
            c = d["confidence"]
            features, coefficients = tuple(c["features"]), tuple(_number(x, "coefficients") for x in c["coefficients"])
            numbers = [_number(c["intercept"], "intercept"), _number(d["review_below"], "review_below"),
                       _number(d["min_agreement"], "min_agreement")]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"trust: malformed block ({type(exc).__name__}: {exc}); expected confidence.features, "
                             "confidence.coefficients, confidence.intercept, review_below, min_agreement") from exc
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise ValueError(f"trust.confidence: unknown feature(s) {unknown} (known: {list(FEATURES)})")
        if len(features) != len(coefficients):
            raise ValueError(f"trust.confidence: {len(features)} features but {len(coefficients)} coefficients")
        ignore = d.get("ignore_checks", [])
        if not isinstance(ignore, list) or any(k not in IGNORABLE_CHECKS for k in ignore):
            raise ValueError(f"trust.ignore_checks must be a list of {list(IGNORABLE_CHECKS)}, got {ignore!r}")
        return cls(features, coefficients, *numbers, tuple(ignore))

    def expected_dice(self, member_features: dict[str, float]) -> float:
        return self.intercept + sum(w * member_features[f] for f, w in zip(self.features, self.coefficients))


@dataclass
class Assessment:
    """One case's verdict, as the reports, the overlay and the Slicer module show it."""

    confidence: float
    review: bool
    reasons: list[str] = field(default_factory=list)
    agreement: float | None = None

    @property
    def review_text(self) -> str:
        return "yes" if self.review else "no"

    @property
    def reasons_text(self) -> str:
        return REASON_SEPARATOR.join(self.reasons)

    def caption(self) -> str:
        """One line for a picture or a panel: ``confidence 0.91, review no`` / ``REVIEW: reason; reason``."""
        if not self.review:
            return f"confidence {self.confidence:.2f}"
        return f"REVIEW (confidence {self.confidence:.2f}): {self.reasons_text}"

    def to_dict(self) -> dict:
        return {"confidence": round(self.confidence, 4), "review": self.review_text, "review_reasons": self.reasons_text,
                "member_agreement": None if self.agreement is None else round(self.agreement, 4)}


def assess(spec: TrustSpec, stats: PredictionStats | None, check: InputCheck | None = None,
           header_reasons: list[str] | None = None) -> Assessment:
    """The verdict of one case from its prediction ``stats``, image ``check`` and DICOM ``header_reasons``."""
    reasons: list[str] = [r for r, kind in zip(check.reasons, check.kinds) if kind not in spec.ignore_checks] if check else []
    hard = bool(check and check.hard)
    if header_reasons:
        reasons += header_reasons
        hard = True
    confidence, agreement = 0.0, None
    if stats is not None:
        members = stats.member_features()
        confidence = float(np.clip(np.mean([spec.expected_dice(m) for m in members]), 0.0, 1.0))
        agreement = stats.agreement()
        if not stats.found.any():
            confidence = 0.0
            reasons.append("nothing found (the model was trained on scans with a lesion only)")
        elif agreement is not None and agreement < spec.min_agreement:
            reasons.append(f"ensemble members disagree (agreement {agreement:.2f})")
    if hard:
        confidence = 0.0
    elif stats is not None and stats.found.any() and confidence < spec.review_below:
        reasons.append(f"low confidence: uncertain outline (expected Dice {confidence:.2f})")
    return Assessment(confidence, bool(reasons), reasons, agreement)
