"""Out-of-fold (OOF) evaluation of a cross-validation: every patient predicted by the fold model that never
trained on it, scored per patient, summarised by institution and lesion size, and post-processing chosen on
these predictions.

Probabilities are cached per patient (uint8, 1/255 steps) so post-processing and summaries can be redone
without the networks.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monaiunetseg.files import atomic_path, file_sha256, write_csv_atomic, write_text_atomic
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.metrics import dice, hd95
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.model.intensity import LEGACY_NORMALISATION
from monaiunetseg.training.cv import fold_normalisation, fold_weights, read_record

SIZE_BUCKETS = ((0.0, 15.0, "< 15 mL"), (15.0, 50.0, "15-50 mL"), (50.0, math.inf, "> 50 mL"))
# Post-processing candidates scored on the OOF predictions (the first is the reference: none).
CANDIDATES = [PostProcessing(), PostProcessing(largest_only=True),
              *(PostProcessing(min_fraction=f) for f in (0.02, 0.05, 0.1, 0.2, 0.3)),
              *(PostProcessing(min_mean_prob=p) for p in (0.6, 0.7, 0.8))]
# ``dice``: with the chosen post-processing; ``dice_raw``: without any (what ablations compare recipes on).
CSV_COLUMNS = ["patient", "institution", "fold", "label_ml", "dice", "hd95_mm", "pred_ml", "abs_vol_diff_ml", "dice_raw"]


@dataclass
class OOFCase:
    patient: str
    institution: str
    fold: int
    image: Path
    label: Path


def oof_cases(dataset_dir: str | os.PathLike, folds: list[int] | None = None) -> list[OOFCase]:
    """Every patient of a prepared dataset (``datalist.json``) in ``folds`` (default: all)."""
    from monaiunetseg.training.datalist import resolve_dataset

    path = resolve_dataset(dataset_dir)
    datalist = json.loads(path.read_text())
    cases = [OOFCase(e["patient"], e.get("institution", ""), int(e["fold"]), path.parent / e["image"], path.parent / e["label"])
             for e in datalist["training"]]
    return [c for c in cases if folds is None or c.fold in folds]


def predict_oof(cv_root: str | os.PathLike, dataset_dir: str | os.PathLike, probs_dir: str | os.PathLike,
                folds: list[int] | None = None, bundle: str | os.PathLike | None = None, device: str = "auto",
                flip_tta: bool = False, log=print) -> dict[str, Path]:
    """Foreground probabilities of every patient of ``folds`` from its own fold's model, cached in
    ``probs_dir/<patient>.npz``; a cached file is kept while its image, the fold's weights and the options are the
    ones it was made from (:func:`cached_key`), else redone."""
    import nibabel as nib

    from monaiunetseg.model.predictor import Segmenter

    probs_dir = Path(probs_dir)
    refuse_installed(probs_dir)
    probs_dir.mkdir(parents=True, exist_ok=True)
    cases = oof_cases(dataset_dir, folds)
    out: dict[str, Path] = {}
    for fold in sorted({c.fold for c in cases}):
        weights = fold_weights(cv_root, fold)
        context = int((read_record(cv_root, fold).get("overrides") or {}).get("context", 0))
        normalisation = fold_normalisation(cv_root, fold)
        model = (f"{file_sha256(weights) if weights.is_file() else weights} flip_tta={flip_tta} context={context}"
                 f"{'' if normalisation == LEGACY_NORMALISATION else ' normalisation=' + normalisation}")
        keys = {c.patient: f"{file_sha256(c.image)} {model}" for c in cases if c.fold == fold}
        todo = [c for c in cases if c.fold == fold and cached_key(probs_dir / f"{c.patient}.npz") != keys[c.patient]]
        out.update({c.patient: probs_dir / f"{c.patient}.npz" for c in cases if c.fold == fold})
        if not todo:
            continue
        segmenter = Segmenter(bundle, device=device, weights=weights, flip_tta=flip_tta, context=context,
                              normalisation=normalisation)
        for c in tqdm(todo, desc=f"evaluate-oof fold {fold}", unit="patient", disable=None):
            img = nib.load(c.image)
            prob = segmenter.probabilities(img.get_fdata(dtype=np.float32), img.affine)
            with atomic_path(probs_dir / f"{c.patient}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, prob=np.round(prob * 255).astype(np.uint8), affine=img.affine,
                                        key=np.array(keys[c.patient]))
        log(f"fold {fold}: {len(todo)} patient(s) predicted with {weights}")
    return out


def cached_key(path: Path) -> str | None:
    """What a cached prediction was made from (the image's and the weights' SHA-256, flip TTA, context); None for
    no file or one of an earlier version: a cache keyed by the patient's name alone would serve another data set
    with the same names, or a retrained fold, stale predictions."""
    try:
        with np.load(path) as z:
            return str(z["key"]) if "key" in z.files else None
    except (OSError, ValueError, KeyError):
        return None


def refuse_installed(folder: Path) -> None:
    """Never write a cache into the installed bundle (a CV folder given as the shipped one): it is the
    installation's, and may be read-only or shared. An editable install's bundle is the checkout's own working
    tree (``monai_bundle/``, where the project's CV is trained and evaluated), not an installation."""
    from monaiunetseg.model.bundle import checkout_bundle, installed_bundle

    installed = installed_bundle()
    real = folder.resolve()
    if installed is None or installed == checkout_bundle().resolve():
        return
    if real == installed or installed in real.parents:
        raise ValueError(f"{folder} is inside the installed bundle {installed}: copy the CV folder elsewhere "
                         "(its fold records and weights) and give the copy")


def load_prob(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["prob"].astype(np.float32) / 255.0, z["affine"]


def score_case(case: OOFCase, prob: np.ndarray, affine: np.ndarray, pp: PostProcessing, with_hd95: bool = True) -> dict:
    """One patient's row: Dice, HD95 (mm), volumes (mL) of the post-processed prediction."""
    import nibabel as nib

    label = np.asanyarray(nib.load(case.label).dataobj) > 0
    pred = pp(prob > 0.5, prob).astype(bool)
    vox = voxel_volume_ml(affine)
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    row = {"patient": case.patient, "institution": case.institution, "fold": case.fold,
           "label_ml": float(label.sum()) * vox, "dice": dice(pred, label),
           "hd95_mm": hd95(pred, label, spacing) if with_hd95 else math.nan, "pred_ml": float(pred.sum()) * vox}
    row["abs_vol_diff_ml"] = abs(row["pred_ml"] - row["label_ml"])
    return row


def size_bucket(label_ml: float) -> str:
    return next(name for lo, hi, name in SIZE_BUCKETS if lo <= label_ml < hi)


def dice_stats(values) -> dict:
    """``n``, mean, std (ddof 1), median and min of per-patient Dice values; just ``n: 0`` for none."""
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "median": float(np.median(a)), "min": float(a.min())} if a.size else {"n": 0}


def summarise_dice(rows: list[dict]) -> dict:
    """Mean, std, median and min of per-patient Dice, overall, by institution and by lesion size."""
    summary = {"all": dice_stats([r["dice"] for r in rows]), "by_institution": {}, "by_size": {}}
    for inst in sorted({r["institution"] for r in rows}):
        summary["by_institution"][inst] = dice_stats([r["dice"] for r in rows if r["institution"] == inst])
    for _, _, name in SIZE_BUCKETS:
        summary["by_size"][name] = dice_stats([r["dice"] for r in rows if size_bucket(r["label_ml"]) == name])
    folds = sorted({r["fold"] for r in rows})
    summary["by_fold"] = {str(f): dice_stats([r["dice"] for r in rows if r["fold"] == f]) for f in folds}
    finite = [r["hd95_mm"] for r in rows if not math.isnan(r["hd95_mm"])]
    summary["hd95_mm_mean"] = float(np.mean(finite)) if finite else math.nan
    summary["abs_vol_diff_ml_mean"] = float(np.mean([r["abs_vol_diff_ml"] for r in rows])) if rows else math.nan
    return summary


def evaluate_oof(probs: dict[str, Path], dataset_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 candidates: list[PostProcessing] | None = None, prefix: str = "oof", log=print,
                 pictures_dir: str | os.PathLike | None = None) -> dict:
    """Score every candidate post-processing on the OOF probabilities (Dice), choose the best mean Dice among
    those that erase no patient's whole found lesion (Dice > 0 raw, 0 after: ``patients_erased``), and
    write for it ``<prefix>_metrics_per_patient.csv`` (columns :data:`CSV_COLUMNS`), ``<prefix>_summary.json``
    and the candidates' table ``<prefix>_postprocessing.csv`` into ``out_dir``; with ``pictures_dir``, also the
    evaluation pictures there (:func:`write_oof_pictures`; kept apart from ``out_dir``, often the model card's
    folder, as they are many)."""
    candidates = list(candidates or CANDIDATES)
    if candidates[0] != PostProcessing():  # the reference row (and ``dice_raw``): no post-processing
        candidates.insert(0, PostProcessing())
    cases = [c for c in oof_cases(dataset_dir) if c.patient in probs]
    if not cases:
        raise ValueError(f"no out-of-fold predictions for the patients of {dataset_dir}")
    loaded = {c.patient: load_prob(probs[c.patient]) for c in cases}
    table, raw = [], {}
    for pp in candidates:
        rows = [score_case(c, *loaded[c.patient], pp, with_hd95=False) for c in cases]
        if not raw:  # the first candidate: no post-processing
            raw = {r["patient"]: r["dice"] for r in rows}
        s = summarise_dice(rows)
        # A patient whose found lesion the post-processing removes entirely (e.g. the smaller focus kept by
        # nothing but "largest component"): such a candidate is never chosen, whatever its mean.
        erased = sum(raw[r["patient"]] > 0 and r["dice"] == 0 for r in rows)
        table.append({"postprocessing": pp.name, "options": json.dumps(pp.to_dict()), "mean": s["all"]["mean"],
                      "std": s["all"]["std"], "median": s["all"]["median"], "min": s["all"]["min"],
                      **{f"mean {k}": v.get("mean", math.nan) for k, v in s["by_size"].items()},
                      "patients_erased": erased})
    eligible = [i for i in range(len(candidates)) if table[i]["patients_erased"] == 0]
    best = max(eligible, key=lambda i: (round(table[i]["mean"], 4), -i))
    chosen = candidates[best]
    rows = [{**score_case(c, *loaded[c.patient], chosen), "dice_raw": raw[c.patient]} for c in cases]
    summary = summarise_dice(rows)
    summary.update({"postprocessing": chosen.to_dict(), "postprocessing_name": chosen.name,
                    "dice_mean_without_postprocessing": table[0]["mean"], "n_patients": len(rows)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out_dir / f"{prefix}_metrics_per_patient.csv", sorted(rows, key=lambda r: r["patient"]), CSV_COLUMNS)
    write_csv_atomic(out_dir / f"{prefix}_postprocessing.csv", table, list(table[0]))
    write_text_atomic(out_dir / f"{prefix}_summary.json", json.dumps(summary, indent=1))
    a = summary["all"]
    log(f"OOF ({len(rows)} patients, post-processing: {chosen.name}): Dice mean {a['mean']:.4f} +- {a['std']:.4f}, "
        f"median {a['median']:.4f}, min {a['min']:.4f} (without post-processing {table[0]['mean']:.4f})")
    if pictures_dir is not None:
        index = write_oof_pictures(cases, loaded, chosen, rows, pictures_dir,
                                   f"Out-of-fold evaluation: {len(rows)} patients, post-processing: {chosen.name}")
        log(f"pictures: {index}")
    return summary


def write_oof_pictures(cases: list[OOFCase], loaded: dict[str, tuple[np.ndarray, np.ndarray]], pp: PostProcessing,
                       rows: list[dict], out_dir: str | os.PathLike, title: str) -> Path:
    """A panel per patient of its out-of-fold prediction (post-processed with ``pp``), the summary figure and
    ``index.html`` in ``out_dir`` (:mod:`monaiunetseg.visual.evaluation`); returns the index."""
    import nibabel as nib

    from monaiunetseg.visual.evaluation import write_case_panel, write_evaluation_pictures

    by_patient = {r["patient"]: r for r in rows}
    for c in cases:
        prob, _ = loaded[c.patient]
        img = nib.load(c.image)
        label = np.asanyarray(nib.load(c.label).dataobj) > 0
        write_case_panel(out_dir, c.patient, img.get_fdata(dtype=np.float32), label, pp(prob > 0.5, prob),
                         img.affine, by_patient[c.patient])
    return write_evaluation_pictures(out_dir, rows, title)
