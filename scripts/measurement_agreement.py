"""The model card's "Measurements: agreement with the expert": each ``monaiunetseg measure`` figure of the
out-of-fold (OOF) prediction against the same figure of the expert mask, on the 77 Kaggle LGG patients.

* Model mask: the cached OOF probabilities of the shipped sets' cross-validation
  (``models/cv_tissue_v1/oof_probs/<patient>.npz``, uint8 x 255, written by ``evaluate-oof``) > 0.5, then the shipped
  post-processing (``postprocessing`` of ``configs/inference.json``); expert mask: ``labels/`` of the prepared data set.
  Both are read in place and measured with ``measure.shape.measure_labelmap`` on the same grid (the Kaggle
  spacing is nominal, 1 x 1 x 3 mm: millimetres are as exact as that).
* Per measurement: median absolute % error ``|model - expert| / expert`` and a Bland-Altman plot of the
  relative difference ``(model - expert) / mean`` against the mean (log axis: sizes span two orders), with the
  bias and 95 % limits of agreement.
* RANO-LGG category of a simulated change (``measure.growth.rano_lgg_category`` on the sum of products): the
  baseline read by one reader and the follow-up by the other. The follow-up is the same lesion with its product
  multiplied by a true factor g; a reader's error on this patient is assumed to carry over (its follow-up reading
  is g x its own baseline product). Mixed readers give ``category(P_expert, g x P_model)`` (expert then model)
  and ``category(P_model, g x P_expert)`` (model then expert); the reference is ``category(P, g x P)``, which
  any single reader gets. The table counts patients whose mixed-reader category differs. g = 1 is no change:
  every category but "stable disease" is a false call.

    python scripts/measurement_agreement.py [--prepared /work/prepared] [--probs .../oof_probs] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))

from monaiunetseg.measure.growth import rano_lgg_category  # noqa: E402
from monaiunetseg.measure.shape import measure_labelmap  # noqa: E402
from monaiunetseg.model.bundle import read_spec  # noqa: E402
from monaiunetseg.model.postprocess import PostProcessing  # noqa: E402

POSTPROCESSING = PostProcessing.from_dict(read_spec(REPO / "monai_bundle").postprocessing)
THRESHOLD = 0.5
# (column, label in the table and plot, unit)
MEASURES = [("bidimensional_mm2", "bidimensional product", "mm²"), ("sum_products_mm2", "sum of products", "mm²"),
            ("max_diameter_mm", "maximum diameter", "mm"), ("axial_longest_mm", "axial longest diameter", "mm"),
            ("volume_ml", "volume", "mL")]
PLOTTED = ["bidimensional_mm2", "max_diameter_mm", "volume_ml"]
FACTORS = [0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6]


def model_mask(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """The OOF labelmap as the shipped model set would post-process it, and its affine."""
    with np.load(npz) as z:
        prob, affine = z["prob"], z["affine"]
    return POSTPROCESSING(prob > THRESHOLD * 255, prob, prob_scale=255.0), affine


def measure_patients(prepared: Path, probs: Path, limit: int | None) -> list[dict]:
    """One row per patient: expert_<column> and model_<column> of every measured column."""
    cases = json.loads((prepared / "datalist.json").read_text())["training"][:limit]
    rows = []
    for case in cases:
        label = nib.load(prepared / case["label"])
        expert = measure_labelmap(np.asarray(label.dataobj), label.affine)
        mask, affine = model_mask(probs / f"{case['patient']}.npz")
        if not np.allclose(affine, label.affine):
            raise ValueError(f"{case['patient']}: the OOF probabilities are not on the label's grid")
        model = measure_labelmap(mask, affine)
        row = {"patient": case["patient"]}
        for column, _, _ in MEASURES:
            row[f"expert_{column}"], row[f"model_{column}"] = expert[column], model[column]
        rows.append(row)
        print(f"{case['patient']}: product expert {expert['bidimensional_mm2']:.0f} model "
              f"{model['bidimensional_mm2']:.0f} mm2", file=sys.stderr)
    return rows


def abs_pct_errors(rows: list[dict], column: str) -> list[float]:
    return [abs(r[f"model_{column}"] - r[f"expert_{column}"]) / r[f"expert_{column}"] * 100.0
            for r in rows if r[f"expert_{column}"] > 0]


def relative_differences(rows: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 100 x (model - expert) / mean) of the patients where either reader measured something."""
    e = np.array([r[f"expert_{column}"] for r in rows], dtype=float)
    m = np.array([r[f"model_{column}"] for r in rows], dtype=float)
    mean = (e + m) / 2
    keep = mean > 0
    return mean[keep], 100.0 * (m[keep] - e[keep]) / mean[keep]


def agreement_table(rows: list[dict]) -> list[str]:
    lines = ["| measurement | median abs. % error (IQR) | bias % | 95 % limits of agreement % | patients |",
             "|---|---|---|---|---|"]
    for column, name, unit in MEASURES:
        errors = abs_pct_errors(rows, column)
        q1, q2, q3 = np.percentile(errors, (25, 50, 75))
        _, diff = relative_differences(rows, column)
        bias, sd = float(diff.mean()), float(diff.std(ddof=1))
        lines.append(f"| {name} ({unit}) | {q2:.1f} ({q1:.1f}-{q3:.1f}) | {bias:+.1f} | "
                     f"{bias - 1.96 * sd:+.1f} to {bias + 1.96 * sd:+.1f} | {len(errors)} |")
    return lines


def category_table(rows: list[dict]) -> list[str]:
    """Patients whose RANO-LGG category from mixed readers differs from a single reader's (see the docstring)."""
    lines = ["| true change of the product | single reader | expert -> model differs | model -> expert differs | "
             "either |", "|---|---|---|---|---|"]
    for g in FACTORS:
        n = both = em = me = 0
        reference = ""
        for r in rows:
            pe, pm = r["expert_sum_products_mm2"], r["model_sum_products_mm2"]
            if pe <= 0:
                continue
            n += 1
            reference = rano_lgg_category(pe, g * pe)
            a = rano_lgg_category(pe, g * pm) != reference
            b = rano_lgg_category(pm, g * pe) != reference
            em, me, both = em + a, me + b, both + (a or b)
        lines.append(f"| x {g:g} ({(g - 1) * 100:+.0f} %) | {reference} | {em} of {n} ({em / n:.0%}) | "
                     f"{me} of {n} ({me / n:.0%}) | {both} of {n} ({both / n:.0%}) |")
    return lines


def bland_altman(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.8), constrained_layout=True)
    names = {c: (n, u) for c, n, u in MEASURES}
    for ax, column in zip(axes, PLOTTED):
        mean, diff = relative_differences(rows, column)
        bias, sd = float(diff.mean()), float(diff.std(ddof=1))
        ax.scatter(mean, diff, s=14, color="#0072B2", alpha=0.8)
        for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
            ax.axhline(y, color="#D55E00", linestyle=style, linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xscale("log")
        name, unit = names[column]
        ax.set_xlabel(f"mean of expert and model {name} ({unit})")
        ax.set_ylabel("(model - expert) / mean (%)")
        ax.set_title(f"{name}: bias {bias:+.1f} %, LoA {bias - 1.96 * sd:+.0f} to {bias + 1.96 * sd:+.0f} %",
                     fontsize=9)
    fig.suptitle(f"Out-of-fold model vs expert, {len(rows)} patients (nominal 1 x 1 x 3 mm spacing)", fontsize=10)
    fig.savefig(target, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, default=Path("/work/prepared"))
    ap.add_argument("--probs", type=Path, default=REPO / "monai_bundle" / "models" / "cv_tissue_v1" / "oof_probs")
    ap.add_argument("--out", type=Path, default=REPO / "monai_bundle" / "docs")
    ap.add_argument("--limit", type=int, default=None, help="only the first N patients")
    args = ap.parse_args()
    rows = measure_patients(args.prepared, args.probs, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "measurement_agreement.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    bland_altman(rows, args.out / "measurement_agreement.png")
    print("\n".join(agreement_table(rows)))
    print()
    print("\n".join(category_table(rows)))
    print(f"\nmedian expert product {statistics.median(r['expert_bidimensional_mm2'] for r in rows):.0f} mm2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
