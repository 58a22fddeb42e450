"""How bright the expert's lesion is against the rest of the tissue, per institution: why a site can be hard.

For every patient of a ``prepare-lgg`` folder with a lesion: the median FLAIR value inside the expert's mask over
the median of the other tissue (values above 25 of the 8-bit range, outside the mask) on the slices that hold
lesion. A ratio, so any linear intensity normalisation leaves it as it is. Prints one row per institution, then
the mean Dice of low- and higher-contrast lesions in the model card's per-patient results (out of fold, and the
leave-DU-out ``tissue`` bases averaged over their four training seeds), and writes the per-patient CSV with ``-o``.

    python scripts/lesion_contrast.py PREPARED [-o lesion_contrast.csv]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))
DOCS = REPO / "monai_bundle" / "docs"

TISSUE_FLOOR = 25  # 8-bit FLAIR values at or below it are background, CSF and skull
LOW = 1.35  # "low-contrast" lesion: less than 35 % brighter than the tissue around it


def lesion_contrast(image: np.ndarray, label: np.ndarray) -> float | None:
    """Median inside the mask / median of the other tissue on the lesion's slices (None without a lesion)."""
    if not label.any():
        return None
    slices = label.any(axis=(0, 1))
    img, lab = image[:, :, slices], label[:, :, slices]
    return float(np.median(image[label]) / np.median(img[(img > TISSUE_FLOOR) & ~lab]))


def committed_dice() -> dict[str, dict[str, float]]:
    """Per-patient Dice from the model card's files: out of fold (all, DU), leave-DU-out ``tissue`` seeds 0-3."""
    import csv

    oof = {r["patient"]: float(r["dice"]) for r in csv.DictReader((DOCS / "oof_metrics_per_patient.csv").open())}
    seeds = json.loads((DOCS / "loio_seeds.json").read_text())["DU"]
    seed0 = json.loads((DOCS / "loio_du_tissue_v1.json").read_text())["models"]["base"]["dice"]
    runs = [seed0] + [seeds[f"seed{k}"]["tissue"]["dice"] for k in (1, 2, 3)]
    return {"out of fold, all sites": oof,
            "out of fold, DU": {p: d for p, d in oof.items() if "_DU_" in p},
            "leave DU out, tissue bases, seeds 0-3 (25 DU test patients)":
                {p: statistics.mean(r[p] for r in runs) for p in seeds["test"]}}


def main() -> int:
    import nibabel as nib

    from monaiunetseg.files import write_csv_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prepared", type=Path, help="prepare-lgg output")
    ap.add_argument("-o", "--out", type=Path, help="per-patient CSV")
    args = ap.parse_args()
    rows, by_site = [], defaultdict(list)
    for e in json.loads((args.prepared / "datalist.json").read_text())["training"]:
        image = np.asarray(nib.load(args.prepared / e["image"]).dataobj, dtype=np.float32)
        ratio = lesion_contrast(image, np.asarray(nib.load(args.prepared / e["label"]).dataobj) > 0)
        if ratio is not None:
            rows.append({"patient": e["patient"], "institution": e["institution"], "lesion_contrast": round(ratio, 3)})
            by_site[e["institution"]].append(ratio)
    print(f"| institution | patients | lesion / tissue, median | quartiles | below {LOW} |")
    print("|---|---|---|---|---|")
    for site, v in sorted(by_site.items()):
        q1, _, q3 = statistics.quantiles(v, n=4) if len(v) > 1 else (v[0], v[0], v[0])
        print(f"| {site} | {len(v)} | {statistics.median(v):.2f} | {q1:.2f}-{q3:.2f} | "
              f"{sum(r < LOW for r in v)} ({100 * sum(r < LOW for r in v) / len(v):.0f} %) |")
    contrast = {r["patient"]: r["lesion_contrast"] for r in rows}
    for what, dice in committed_dice().items():
        low = [d for p, d in dice.items() if contrast.get(p, LOW) < LOW]
        high = [d for p, d in dice.items() if contrast.get(p, 0.0) >= LOW]
        print(f"{what}: Dice {statistics.mean(low):.3f} on {len(low)} below {LOW}, "
              f"{statistics.mean(high):.3f} on {len(high)} at or above")
    if args.out:
        write_csv_atomic(args.out, rows, ["patient", "institution", "lesion_contrast"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
