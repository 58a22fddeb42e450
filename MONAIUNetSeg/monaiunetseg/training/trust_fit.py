"""Fitting the confidence model out of fold: each patient's prediction signals from the one fold model that
never trained on it, regressed on that prediction's Dice, cross-validated by fold for the reported figures.

Why single fold models: an ensemble member that trained on a patient agrees too easily on it, so the signals
of the shipped ensemble cannot be measured on the 77 patients without that leak. Each member of a shipped set
is scored with the model fitted here on its own prediction and the scores are averaged (``trust.assessment``).
The regression is ridge on standardised features (closed form, numpy only); the review threshold is set in
advance (expected Dice below 0.80, the edge of the "good" band), not tuned.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from monaiunetseg.files import write_csv_atomic, write_text_atomic
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.trust.signals import PredictionStats

FEATURES = ("uncertain_ratio", "mean_probability")
DICE_BANDS = ((0.0, 0.70, "< 0.70"), (0.70, 0.80, "0.70-0.80"), (0.80, math.inf, ">= 0.80"))


def member_features(prob: np.ndarray) -> dict[str, float]:
    """A single model's signals of one volume's foreground probability (as the runner gathers them)."""
    stats = PredictionStats(1)
    stats.update(np.asarray(prob, np.float32)[None, None])
    return stats.member_features()[0]


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression on standardised columns, returned in the raw units: ``y ~ x @ coef + intercept``."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    z = (x - mu) / sd
    beta = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    coef = beta / sd
    return coef, float(y.mean() - coef @ mu)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive), ties counted half."""
    pos, neg = scores[positives], scores[~positives]
    if not pos.size or not neg.size:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def review_table(dice: np.ndarray, review: np.ndarray) -> list[dict]:
    """Patients flagged for review in each Dice band."""
    rows = []
    for lo, hi, name in DICE_BANDS:
        band = (dice >= lo) & (dice < hi)
        rows.append({"dice": name, "patients": int(band.sum()), "review_yes": int((review & band).sum()),
                     "share": float((review & band).sum() / band.sum()) if band.any() else math.nan})
    return rows


def calibrate_trust(probs: dict[str, Path], dataset_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    postprocessing: PostProcessing, review_below: float = 0.80, alpha: float = 1.0,
                    bad_dice: float = 0.70, log=print) -> dict:
    """Fit the confidence model on the OOF probabilities ``probs`` and write ``trust_oof_per_patient.csv``
    and ``trust_calibration.json`` (coefficients, the cross-validated AUROC for Dice < ``bad_dice`` and the
    review table) into ``out_dir``; returns the calibration."""
    from monaiunetseg.training.oof import load_prob, oof_cases, score_case

    cases = [c for c in oof_cases(dataset_dir) if c.patient in probs]
    if not cases:
        raise ValueError(f"no out-of-fold predictions for the patients of {dataset_dir}")
    rows = []
    for c in cases:
        prob, affine = load_prob(probs[c.patient])
        row = {"patient": c.patient, "fold": c.fold,
               "dice": score_case(c, prob, affine, postprocessing, with_hd95=False)["dice"], **member_features(prob)}
        rows.append(row)
    x = np.array([[r[f] for f in FEATURES] for r in rows])
    y = np.array([r["dice"] for r in rows])
    folds = np.array([r["fold"] for r in rows])
    cv = np.zeros(len(rows))
    for k in np.unique(folds):
        coef, icpt = fit_ridge(x[folds != k], y[folds != k], alpha)
        cv[folds == k] = x[folds == k] @ coef + icpt
    cv = np.clip(cv, 0.0, 1.0)
    coef, icpt = fit_ridge(x, y, alpha)
    review = cv < review_below
    for r, c_, rv in zip(rows, cv, review):
        r.update({"confidence_cv": float(c_), "review_cv": "yes" if rv else "no"})
    calibration = {
        "confidence": {"features": list(FEATURES), "coefficients": [round(float(c), 6) for c in coef],
                       "intercept": round(icpt, 6)},
        "review_below": review_below, "alpha": alpha, "n_patients": len(rows), "bad_dice": bad_dice,
        "cv_auroc_bad": auroc(-cv, y < bad_dice),
        "cv_review_table": review_table(y, review),
        "postprocessing": postprocessing.to_dict(),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out_dir / "trust_oof_per_patient.csv", sorted(rows, key=lambda r: r["patient"]), list(rows[0]))
    write_text_atomic(out_dir / "trust_calibration.json", json.dumps(calibration, indent=1))
    t = {r["dice"]: r for r in calibration["cv_review_table"]}
    log(f"calibrate-trust ({len(rows)} patients): cross-validated AUROC for Dice < {bad_dice} "
        f"{calibration['cv_auroc_bad']:.3f}; review yes: {t['< 0.70']['review_yes']}/{t['< 0.70']['patients']} "
        f"below 0.70, {t['>= 0.80']['review_yes']}/{t['>= 0.80']['patients']} at 0.80 or more; "
        f"coefficients {calibration['confidence']}")
    return calibration
