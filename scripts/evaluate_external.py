"""Per-case Dice and verdict of a model on labelled volumes from outside the LGG data (the external dev set by
default: skull-stripped, 1 mm BraTS-format FLAIR; the FLAIR abnormality is every label > 0).

For choosing between recipes, not for reporting a test: the dev cases are the ones recipes were chosen on.

    python scripts/evaluate_external.py [--data DIR] [--bundle DIR] [--model default]
        [--weights W.pt ... --normalisation tissue] [--csv OUT.csv]

``--weights`` scores weights files that are not yet a bundle's model set (e.g. the fold models of a new
cross-validation) with the bundle's network, post-processing and trust block and the given normalisation.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))
DEV_DIR = REPO.parent / "shared" / "data" / "external-dev"


def evaluate(data: Path, bundle: str | None, model: str, weights: list[str] | None,
             normalisation: str | None) -> list[dict]:
    """One row per ``*_flair.nii.gz`` of ``data`` with a ``*_labels.nii.gz`` beside it."""
    from monaiunetseg.geometry import voxel_volume_ml
    from monaiunetseg.metrics import dice
    from monaiunetseg.model.predictor import Segmenter

    segmenter = Segmenter(bundle, device="cpu", model=model, weights=weights, normalisation=normalisation)
    rows = []
    for flair_path in sorted(data.glob("*_flair.nii.gz")):
        label_path = Path(str(flair_path).replace("_flair.nii.gz", "_labels.nii.gz"))
        if not label_path.is_file():
            continue
        image = nib.load(flair_path)
        array = image.get_fdata(dtype=np.float32)
        truth = np.asarray(nib.load(label_path).dataobj) > 0
        t0 = time.perf_counter()
        pred = segmenter.segment(array, image.affine) > 0
        seconds = time.perf_counter() - t0
        verdict = segmenter.assess(array, image.affine)
        ml = voxel_volume_ml(image.affine)
        rows.append({"case": flair_path.name.replace("_flair.nii.gz", ""), "dice": round(dice(pred, truth), 4),
                     "label_ml": round(float(truth.sum()) * ml, 1), "pred_ml": round(float(pred.sum()) * ml, 1),
                     "confidence": "" if verdict is None else round(verdict.confidence, 3),
                     "review": "" if verdict is None else ("yes" if verdict.review else "no"),
                     "review_reasons": "" if verdict is None else "; ".join(verdict.reasons),
                     "seconds": round(seconds, 2)})
        print("\t".join(str(v) for v in rows[-1].values()), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEV_DIR, help="folder of *_flair.nii.gz + *_labels.nii.gz")
    ap.add_argument("--bundle", default=None, help="bundle or model folder (default: the shipped bundle)")
    ap.add_argument("--model", default="default", help="model set of the bundle (default: default)")
    ap.add_argument("--weights", nargs="+", default=None, help="weights files to score instead of a model set")
    ap.add_argument("--normalisation", default=None, help="override the bundle's (tissue or percentile)")
    ap.add_argument("--csv", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"evaluate_external: {args.data}: no such folder", file=sys.stderr)
        return 2
    rows = evaluate(args.data, args.bundle, args.model, args.weights, args.normalisation)
    if not rows:
        print(f"evaluate_external: {args.data}: no *_flair.nii.gz with *_labels.nii.gz beside it", file=sys.stderr)
        return 2
    scores = [r["dice"] for r in rows]
    print(f"{len(rows)} cases: Dice mean {statistics.mean(scores):.3f}, median {statistics.median(scores):.3f}, "
          f"min {min(scores):.3f}; review {sum(r['review'] == 'yes' for r in rows)}/{len(rows)}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
