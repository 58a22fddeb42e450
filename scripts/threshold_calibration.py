"""Site calibration of the foreground threshold (declared in ``monai_bundle/docs/threshold_rule.md``).

A model's weights unchanged, its threshold chosen from :data:`GRID` by the mean Dice over the site's labelled
cases (as ``segment`` runs the model: the folder's post-processing after the threshold), ties to the higher one;
another threshold than 0.5 only if it beats 0.5 by :data:`MARGIN` there. Then the held-out cases are scored at 0.5
and at the chosen threshold.

    python scripts/threshold_calibration.py loio PREPARED LOIO_OUT [-o RESULTS.json]
    python scripts/threshold_calibration.py dev DEV_DIR FINETUNED_A FINETUNED_B [-o RESULTS.json]

``loio``: ``leave_one_institution_out.py``'s base and delivered ``recipe`` models, site 3 and site 6 (their
labelled cases choose), scored on its test patients. ``dev``: the shipped ``default`` and the documented-defaults
fine-tuned folders of the external dev set (A: cases 1-3 in, 4-5 out; B: 4-5 in, 1-3 out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MONAIUNetSeg"))

GRID = (0.5, 0.4, 0.3, 0.2, 0.1)
MARGIN = 0.01
Case = tuple  # (name, image array, affine, label bool array)


def dice_at(segmenter, cases: list[Case], threshold: float) -> dict[str, float]:
    from monaiunetseg.metrics import dice

    return {name: float(dice(segmenter.segment(img, aff, threshold=threshold) > 0, lab))
            for name, img, aff, lab in cases}


def choose_threshold(segmenter, cases: list[Case]) -> tuple[float, dict[float, float]]:
    """(the chosen threshold, mean Dice over ``cases`` at each threshold of the grid)."""
    means = {t: statistics.mean(dice_at(segmenter, cases, t).values()) for t in GRID}
    best = max(GRID, key=lambda t: (round(means[t], 6), t))
    return (best if means[best] >= means[0.5] + MARGIN else 0.5), means


def calibrate(model_dir: str | None, labelled: list[Case], held_out: list[Case]) -> dict:
    from monaiunetseg.model.predictor import Segmenter

    seg = Segmenter(model_dir, device="cpu") if model_dir else Segmenter(None, device="cpu", model="default")
    t, means = choose_threshold(seg, labelled)
    at_half = dice_at(seg, held_out, 0.5)
    chosen = at_half if t == 0.5 else dice_at(seg, held_out, t)
    return {"model": model_dir or "default", "threshold": t, "labelled_means": {str(k): v for k, v in means.items()},
            "held_out_at_0.5": at_half, "held_out_at_threshold": chosen,
            "gain": statistics.mean(chosen.values()) - statistics.mean(at_half.values())}


def prepared_cases(prepared: Path, patients: list[str]) -> list[Case]:
    import nibabel as nib

    entries = {e["patient"]: e for e in json.loads((prepared / "datalist.json").read_text())["training"]}
    out = []
    for p in patients:
        img = nib.load(prepared / entries[p]["image"])
        out.append((p, img.get_fdata(dtype=np.float32), img.affine,
                    np.asarray(nib.load(prepared / entries[p]["label"]).dataobj) > 0))
    return out


def dev_cases(dev: Path, numbers: list[int]) -> list[Case]:
    import nibabel as nib

    out = []
    for p in numbers:
        img = nib.load(dev / f"brats2013_pat000{p}_flair.nii.gz")
        out.append((f"pat000{p}", img.get_fdata(dtype=np.float32), img.affine,
                    np.asarray(nib.load(dev / f"brats2013_pat000{p}_labels.nii.gz").dataobj) > 0))
    return out


def delivered(folder: Path) -> Path | None:
    """The folder the site gets: the fine-tuned one, or None (its start) where finetune refused it, by the run's
    status as ``leave_one_institution_out.py`` reads it."""
    from monaiunetseg.training.finetune import read_record

    return folder if read_record(folder / "train").get("status") == "done" else None


def run_loio(prepared: Path, out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    test = prepared_cases(prepared, r["test"])
    base = statistics.mean(r["models"]["base"]["dice"].values())
    results = {"site": r["site"], "base_test_mean": base, "runs": {}}
    for n in (3, 6):
        labelled = prepared_cases(prepared, r["labelled"][:n])
        recipe = delivered(out / f"site{n}_recipe_model")
        for name, folder in (("base", out / "base_model"), ("recipe", recipe or out / "base_model")):
            row = calibrate(str(folder), labelled, test)
            row["delivered_recipe"] = recipe is not None if name == "recipe" else None
            row["vs_base"] = statistics.mean(row["held_out_at_threshold"].values()) - base
            results["runs"][f"site{n}_{name}+threshold"] = row
            print(f"{r['site']} site{n} {name}{'' if name == 'base' or recipe else ' (refused: base)'}: threshold "
                  f"{row['threshold']} (labelled means {', '.join(f'{k}: {v:.3f}' for k, v in row['labelled_means'].items())}); "
                  f"test {statistics.mean(row['held_out_at_0.5'].values()):.3f} -> "
                  f"{statistics.mean(row['held_out_at_threshold'].values()):.3f} (vs base {row['vs_base']:+.3f})", flush=True)
    return results


def run_dev(dev: Path, folders: dict[str, Path]) -> dict:
    splits = {"A": ([1, 2, 3], [4, 5]), "B": ([4, 5], [1, 2, 3])}
    results = {}
    for split, (inside, outside) in splits.items():
        labelled, held = dev_cases(dev, inside), dev_cases(dev, outside)
        tuned = delivered(folders[split])
        for name, folder in (("default", None), ("finetuned", str(tuned) if tuned else None)):
            row = calibrate(folder, labelled, held)
            results[f"{split}_{name}+threshold"] = row
            print(f"dev {split} ({inside} in) {name}: threshold {row['threshold']} "
                  f"(in means {', '.join(f'{k}: {v:.3f}' for k, v in row['labelled_means'].items())}); held out "
                  f"{statistics.mean(row['held_out_at_0.5'].values()):.3f} -> "
                  f"{statistics.mean(row['held_out_at_threshold'].values()):.3f}; per case "
                  f"{ {k: round(v - row['held_out_at_0.5'][k], 3) for k, v in row['held_out_at_threshold'].items()} }",
                  flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    lo = sub.add_parser("loio")
    lo.add_argument("prepared", type=Path)
    lo.add_argument("loio_out", type=Path)
    dv = sub.add_parser("dev")
    dv.add_argument("dev", type=Path)
    dv.add_argument("finetuned_a", type=Path)
    dv.add_argument("finetuned_b", type=Path)
    for p in (lo, dv):
        p.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    if args.what == "loio":
        results = run_loio(args.prepared, args.loio_out)
    else:
        results = run_dev(args.dev, {"A": args.finetuned_a, "B": args.finetuned_b})
    results["grid"], results["margin"] = list(GRID), MARGIN
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
