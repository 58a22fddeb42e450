"""The ablation table of cross-validation recipes: each recipe's out-of-fold per-patient Dice (``evaluate-oof``
CSVs) compared on the patients they share, against a reference recipe, paired patient by patient.

Recipes are compared on raw predictions (``dice_raw``: no post-processing) and with each one's own chosen
post-processing (``dice``). The paired difference to the reference comes with a bootstrap 95 % interval over
patients and the count of patients better / worse, because a mean over 16-77 patients with Dice spread of
0.1-0.2 moves by a few hundredths from one split to the next.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from monaiunetseg.files import write_csv_atomic, write_text_atomic
from monaiunetseg.training.oof import SIZE_BUCKETS, dice_stats, size_bucket

BOOTSTRAP = 10_000
COLUMNS = ["recipe", "n", "folds", "raw_mean", "raw_std", "raw_median", "postprocessing", "mean", "std", "median",
           "min", *(f"mean {name}" for _, _, name in SIZE_BUCKETS), "raw_diff", "raw_diff_ci", "diff", "diff_ci",
           "better", "worse"]


def read_oof_csv(path: str | os.PathLike) -> dict[str, dict]:
    """``<prefix>_metrics_per_patient.csv`` by patient, with numbers as floats."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if "dice" not in row or "patient" not in row:
                raise ValueError(f"{path}: not an evaluate-oof per-patient table (needs patient and dice columns)")
            for key in ("dice", "dice_raw", "label_ml"):
                row[key] = float(row[key]) if row.get(key) not in (None, "") else math.nan
            rows[row["patient"]] = row
    if not rows:
        raise ValueError(f"{path}: no patients")
    return rows


def _postprocessing_name(csv_path: Path) -> str:
    """The chosen post-processing, from the summary written beside the CSV (``<prefix>_summary.json``)."""
    summary = csv_path.with_name(csv_path.name.replace("_metrics_per_patient.csv", "_summary.json"))
    try:
        return str(json.loads(summary.read_text()).get("postprocessing_name", ""))
    except (OSError, ValueError):
        return ""


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its bootstrap 95 % interval (patients resampled with replacement)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(BOOTSTRAP, d.size))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare_recipes(recipes: dict[str, str | os.PathLike], reference: str | None = None) -> list[dict]:
    """One row per recipe (name -> per-patient CSV), all on the patients every recipe has; the first recipe is
    the reference unless ``reference`` names another."""
    tables = {name: read_oof_csv(path) for name, path in recipes.items()}
    reference = reference or next(iter(tables))
    if reference not in tables:
        raise ValueError(f"reference {reference!r} is not one of the recipes {list(tables)}")
    patients = sorted(set.intersection(*(set(t) for t in tables.values())))
    if not patients:
        raise ValueError("the recipes share no patient: compare them on the same folds")
    ref = tables[reference]
    out = []
    for name, table in tables.items():
        dice = np.array([table[p]["dice"] for p in patients])
        raw = np.array([table[p]["dice_raw"] for p in patients])
        ml = [table[p]["label_ml"] for p in patients]
        s, r = dice_stats(dice), dice_stats(raw)
        row = {"recipe": name, "n": len(patients), "folds": " ".join(sorted({str(table[p].get("fold", "")) for p in patients})),
               "raw_mean": r["mean"], "raw_std": r["std"], "raw_median": r["median"],
               "postprocessing": _postprocessing_name(Path(recipes[name])),
               "mean": s["mean"], "std": s["std"], "median": s["median"], "min": s["min"]}
        for _, _, bucket in SIZE_BUCKETS:
            chosen = [d for d, v in zip(dice, ml) if not math.isnan(v) and size_bucket(v) == bucket]
            row[f"mean {bucket}"] = dice_stats(chosen).get("mean", math.nan)
        if name != reference:
            ref_dice = np.array([ref[p]["dice"] for p in patients])
            ref_raw = np.array([ref[p]["dice_raw"] for p in patients])
            if not np.isnan(raw).any() and not np.isnan(ref_raw).any():
                d, lo, hi = paired_difference(raw, ref_raw)
                row.update(raw_diff=d, raw_diff_ci=f"{lo:+.3f} to {hi:+.3f}")
            d, lo, hi = paired_difference(dice, ref_dice)
            row.update(diff=d, diff_ci=f"{lo:+.3f} to {hi:+.3f}", better=int((dice > ref_dice + 1e-9).sum()),
                       worse=int((dice < ref_dice - 1e-9).sum()))
        out.append(row)
    return out


def markdown_table(rows: list[dict]) -> str:
    """The rows as the model card's ablation table."""
    def f(value, fmt: str = ".3f") -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    buckets = [name for _, _, name in SIZE_BUCKETS]
    lines = ["| recipe | patients (folds) | raw mean ± std | post-processing | mean ± std | median | min | "
             + " | ".join(buckets) + " | Δ raw (95 % CI) | Δ post-processed (95 % CI) | better / worse |",
             "|---" * (10 + len(buckets)) + "|"]
    for r in rows:
        delta_raw = f"{r['raw_diff']:+.3f} ({r['raw_diff_ci']})" if "raw_diff" in r else "reference"
        delta = f"{r['diff']:+.3f} ({r['diff_ci']})" if "diff" in r else "reference"
        wins = f"{r['better']} / {r['worse']}" if "better" in r else ""
        lines.append(f"| {r['recipe']} | {r['n']} ({r['folds']}) | {f(r['raw_mean'])} ± {f(r['raw_std'])} | "
                     f"{r['postprocessing'] or '?'} | {f(r['mean'])} ± {f(r['std'])} | {f(r['median'])} | {f(r['min'])} | "
                     + " | ".join(f(r[f'mean {b}']) for b in buckets) + f" | {delta_raw} | {delta} | {wins} |")
    return "\n".join(lines) + "\n"


def write_ablation(rows: list[dict], out_dir: str | os.PathLike, prefix: str = "ablation") -> tuple[Path, Path]:
    """``<prefix>.csv`` and ``<prefix>.md`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out_dir / f"{prefix}.csv", rows, COLUMNS)
    write_text_atomic(out_dir / f"{prefix}.md", markdown_table(rows))
    return out_dir / f"{prefix}.csv", out_dir / f"{prefix}.md"
