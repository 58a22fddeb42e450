"""The model card's tables for "When to trust it": a shipped model set run exactly as ``segment`` runs it
(labelmap and verdict) on the FLAIR of the Kaggle LGG patients and on inputs that are not what it reads.

* FLAIR: the review flag by Dice band, of the set's own labelmap (optimistic: every patient was in the training
  data of at least one member, of two for ``default``) and of the patient's out-of-fold prediction (the model
  card's ``oof_metrics_per_patient.csv``): which hard patients the shipped verdict finds.
* Negatives, with the predicted volume (mL) and whether the case is flagged for review: the pre-contrast and
  post-contrast T1 channels of the same patients (wrong sequence; channels the data set filled with a copy of
  the FLAIR are left out), the synthetic phantoms (``trust.phantoms``), and any NIfTI files given with
  ``--extra`` (e.g. the MNI152 T1 template inside the nilearn wheel).

    python scripts/trust_report.py [--kaggle ../shared/data/lgg/kaggle_3m] [--model default]
                                   [--limit N] [--extra FILE.nii.gz ...] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))

from monaiunetseg.geometry import kaggle_affine, voxel_volume_ml  # noqa: E402
from monaiunetseg.model.predictor import Segmenter  # noqa: E402
from monaiunetseg.trust.phantoms import PHANTOMS  # noqa: E402


def row(segmenter: Segmenter, group: str, name: str, array: np.ndarray, affine: np.ndarray,
        label: np.ndarray | None = None) -> dict:
    from monaiunetseg.metrics import dice

    labels = segmenter.segment(array, affine)
    verdict = segmenter.assess(array, affine)
    return {"set": group, "case": name, "predicted_ml": float(np.count_nonzero(labels)) * voxel_volume_ml(affine),
            "dice": dice(labels > 0, label > 0) if label is not None else None, **verdict.to_dict()}


def flair_table(rows: list[dict], oof: dict[str, float]) -> list[str]:
    """The shipped set's review flag by Dice band: of its own labelmap (optimistic: every patient was in the
    training data of a member) and of the patient's out-of-fold prediction (the model card's OOF Dice)."""
    lines = ["| Dice band | patients by the shipped set's Dice: flagged | by the out-of-fold Dice: flagged |", "|---|---|---|"]
    for lo, hi, name in ((0.0, 0.7, "< 0.70"), (0.7, 0.8, "0.70-0.80"), (0.8, 2.0, ">= 0.80")):
        own = [r for r in rows if lo <= r["dice"] < hi]
        out = [r for r in rows if lo <= oof.get(r["case"][:12], -1.0) < hi]
        lines.append(f"| {name} | {sum(r['review'] == 'yes' for r in own)} of {len(own)} | "
                     f"{sum(r['review'] == 'yes' for r in out)} of {len(out)} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kaggle", type=Path, default=REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=None, help="only the first N patients")
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="more negative NIfTI files")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    segmenter = Segmenter(model=args.model)
    rows = []
    for name, make in PHANTOMS.items():
        rows.append(row(segmenter, "phantoms", name, *make()))
    for path in args.extra:
        import nibabel as nib

        img = nib.load(path)
        rows.append(row(segmenter, "extra", path.name, img.get_fdata(dtype=np.float32), img.affine))
    if args.kaggle.is_dir():
        from monaiunetseg.training.lgg import list_patients, read_patient

        for folder in list_patients(args.kaggle)[:args.limit]:
            patient = read_patient(folder)
            image = patient.image.astype(np.float32)
            affine = kaggle_affine(image.shape[:3])
            rows.append(row(segmenter, "FLAIR", folder.name, np.ascontiguousarray(image[..., 1]), affine, patient.label))
            for channel, group in ((0, "T1 pre-contrast"), (2, "T1 post-contrast")):
                if np.array_equal(image[..., channel], image[..., 1]):  # a missing sequence, filled with the FLAIR
                    continue
                rows.append(row(segmenter, group, folder.name, np.ascontiguousarray(image[..., channel]), affine))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"model set: {args.model}\n")
    flair = [r for r in rows if r["set"] == "FLAIR"]
    if flair:
        with open(REPO / "monai_bundle" / "docs" / "oof_metrics_per_patient.csv", newline="") as fh:
            oof = {r["patient"]: float(r["dice"]) for r in csv.DictReader(fh)}
        print("\n".join(flair_table(flair, oof)) + "\n")
    print("| set | cases | flagged | not flagged and > 1 mL | predicted mL, median (max) |")
    print("|---|---|---|---|---|")
    for group in [g for g in dict.fromkeys(r["set"] for r in rows) if not g.startswith("FLAIR")]:
        g = [r for r in rows if r["set"] == group]
        ml = [r["predicted_ml"] for r in g]
        missed = [r for r in g if r["review"] == "no" and r["predicted_ml"] > 1.0]
        print(f"| {group} | {len(g)} | {sum(r['review'] == 'yes' for r in g)} | {len(missed)} | "
              f"{statistics.median(ml):.1f} ({max(ml):.1f}) |")
    for r in rows:
        if r["set"] in ("phantoms", "extra"):
            print(f"- {r['case']}: {r['predicted_ml']:.1f} mL, review {r['review']}: {r['review_reasons']}")
    missed = [r for r in rows if r["review"] == "no" and r["predicted_ml"] > 1.0 and not r["set"].startswith("FLAIR")]
    for r in missed:
        print(f"NOT FLAGGED: {r['set']} {r['case']}: {r['predicted_ml']:.1f} mL, confidence {r['confidence']}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
