"""What fine-tuning at a new site buys: leave one institution out, train on the others, fine-tune on a few of the
left-out institution's patients, and score the rest of them (per-patient Dice, before and after).

Steps (each resumable: a finished model folder is reused):

1. ``base``: every patient not of ``--site`` (their prepare-lgg folds; fold 0 validates), ``finetune --from none``
   for ``--base-epochs`` epochs: a model that never saw the site;
2. ``--site`` patients shuffled with ``--seed``: the first 6 are the site's labelled cases, the rest the test
   set; ``site3`` fine-tunes on 2 and validates on 1 (the first 3), ``site6`` fine-tunes on 5 and validates on 1,
   each ``finetune --from base`` once per declared candidate (:data:`CANDIDATES`, issue 29: declared before any
   test patient was scored; ``recipe`` is finetune's own defaults);
3. base and every candidate model segment every test patient (each model folder as ``segment --model-dir`` runs
   it). A candidate that ``finetune`` refused (worse than the base on its validation patient) is scored as what
   the site gets, the base, and its refused model is reported beside it.

Prints the table for the model card, with each training's wall time, and writes ``OUT/results.json``.

    python scripts/leave_one_institution_out.py PREPARED -o OUT [--site DU] [--base-epochs 60]
        [--candidates recipe replay ...] [--finetune-epochs N] [--test-limit N]
        [--train-seed N] [--base-normalisation percentile] [--base-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))


def write_subset(prepared: Path, out: Path, entries: list[dict], fold_of) -> Path:
    """A prepared-dataset folder of ``entries`` (images and labels linked to ``prepared``'s) with new folds."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels"):
        if not (out / sub).exists():
            os.symlink(prepared.resolve() / sub, out / sub)
    datalist = json.loads((prepared / "datalist.json").read_text())
    datalist["training"] = [dict(e, fold=fold_of(i, e)) for i, e in enumerate(entries)]
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return out


# Declared in advance (issue 29), each a set of finetune options on top of its defaults (finetune.FINETUNE: lr 2e-4,
# 20 epochs, L2-SP 0.01, best validation epoch, early stop after 8); "replay" mixes 2 base-training volumes per
# site training case in. The rule: a candidate becomes the default only if it beats "recipe" on the validation
# patients of the development runs, never on these test patients; every one is guarded by "never below its start".
CANDIDATES: dict[str, dict] = {
    "recipe": {},
    "replay": {"replay": True},
    "l2sp0.1": {"l2sp": 0.1},
    "no_l2sp": {"l2sp": 0.0},
    "lr0.002": {"learning_rate": 0.002},
    "old_defaults": {"learning_rate": 0.002, "epochs": 30, "l2sp": 0.0, "best_checkpoint": False, "patience": None},
    # Declared 2026-12-07 before any test patient was scored with it: the site's cases only re-estimate the
    # batch-norm statistics (learning rate 0: no weight changes), best epoch on the validation patient as usual.
    "bn_stats": {"learning_rate": 0.0, "l2sp": 0.0},
    # Declared 2026-12-07 03:20 before it ran (monai_bundle/docs/frozen_bn_rule.md): the recipe with the batch-norm
    # running statistics frozen at the base's (bn_stats showed that re-estimating them is what loses Dice).
    "frozen_bn": {"freeze_bn": True},
}


def train(prepared: Path, model_dir: Path, source: str, epochs: int | None, **options) -> tuple[float, str]:
    """``finetune`` into ``model_dir`` (reused when finished); (training wall seconds of all its runs, status:
    ``done``, or ``worse`` when finetune kept it aside as worse than its start)."""
    from monaiunetseg.training.finetune import finetune, read_record

    record = read_record(model_dir / "train")
    if record.get("status") not in ("done", "worse") or not (model_dir / "train" / "model.pt").is_file():
        record = finetune(prepared, model_dir, source=source, epochs=epochs, fold=0, device="cpu", **options)
        if record.get("status") not in ("done", "worse"):
            raise RuntimeError(f"{model_dir}: training did not finish ({record.get('status')})")
    return float(record.get("train_seconds") or 0.0), record["status"]


def score(model_dir: Path, prepared: Path, patients: list[str]) -> dict[str, float]:
    """Per-patient Dice of ``model_dir``'s default set (with its post-processing) on ``patients``."""
    import nibabel as nib

    from monaiunetseg.metrics import dice
    from monaiunetseg.model.predictor import Segmenter

    segmenter = Segmenter(str(model_dir), device="cpu")
    entries = {e["patient"]: e for e in json.loads((prepared / "datalist.json").read_text())["training"]}
    out = {}
    for p in patients:
        img = nib.load(prepared / entries[p]["image"])
        label = np.asarray(nib.load(prepared / entries[p]["label"]).dataobj) > 0
        out[p] = dice(segmenter.segment(img.get_fdata(dtype=np.float32), img.affine) > 0, label)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prepared", type=Path, help="prepare-lgg output")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--site", default="DU", help="the institution left out (default DU, the largest)")
    ap.add_argument("--base-epochs", type=int, default=60)
    ap.add_argument("--finetune-epochs", type=int, default=None, help="default: each candidate's (recipe: 20)")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the site's patients: labelled vs test (default 0)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="the base training's random seed (default: the bundle's, 0): a recipe over seeds")
    ap.add_argument("--base-normalisation", default=None, choices=("tissue", "percentile"),
                    help="the base's input normalisation (default: the bundle's; percentile: the 0.4.0 recipe)")
    ap.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a train.json key for the base training (repeatable; e.g. extra_intensity_aug_prob=0.3)")
    ap.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES),
                    help="the declared fine-tuning candidates to run (default: all; none: the base only)")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test patients (smoke runs)")
    args = ap.parse_args()
    entries = json.loads((args.prepared / "datalist.json").read_text())["training"]
    site = sorted((e for e in entries if e["institution"] == args.site), key=lambda e: e["patient"])
    random.Random(args.seed).shuffle(site)
    labelled, test = site[:6], sorted(e["patient"] for e in site[6:])[: args.test_limit]
    out = args.out
    base_data = write_subset(args.prepared, out / "base", [e for e in entries if e["institution"] != args.site],
                             lambda i, e: e["fold"])
    base_set = dict(item.split("=", 1) for item in args.base_set)
    seconds = {"base": train(base_data, out / "base_model", "none", args.base_epochs, seed=args.train_seed,
                             normalisation=args.base_normalisation, bundle_overrides=base_set or None)[0]}
    base_model = out / "base_model"
    rows = [("base", "other institutions", base_model, "done")]
    for n in (3, 6):
        data = write_subset(args.prepared, out / f"site{n}", labelled[:n], lambda i, e, n=n: 0 if i == n - 1 else 1)
        for cand in args.candidates:
            options = dict(CANDIDATES[cand])
            epochs = options.pop("epochs", args.finetune_epochs)
            if options.pop("replay", False):
                options["replay"] = base_data
            name = f"site{n}_{cand}"
            seconds[name], status = train(data, out / f"{name}_model", str(base_model), epochs, **options)
            rows.append((name, f"base + {n - 1} {args.site} (1 validates), {cand}", out / f"{name}_model", status))
    results = {"site": args.site, "labelled": [e["patient"] for e in labelled], "test": test,
               "base_epochs": args.base_epochs, "finetune_epochs": args.finetune_epochs,
               "train_seed": args.train_seed, "base_normalisation": args.base_normalisation, "base_set": base_set,
               "candidates": {c: CANDIDATES[c] for c in args.candidates}, "models": {}}
    print(f"Leave {args.site} out: base trained on {len(entries) - len(site)} patients of the other institutions; "
          f"{len(test)} {args.site} test patients\n")
    print("| model | trained on | training wall time (this run) | delivered | Dice mean | median | min | "
          "refused model's Dice mean |")
    print("|---|---|---|---|---|---|---|---|")
    base_scores = None
    for name, trained, model_dir, status in rows:
        refused = None
        if status == "worse":  # finetune kept it aside: the site goes on with the base
            from monaiunetseg.training.finetune import WORSE

            refused = score(model_dir / WORSE, args.prepared, test)
            d = base_scores
        else:
            d = score(model_dir, args.prepared, test)
        base_scores = base_scores or d
        results["models"][name] = {"dice": d, "train_seconds": seconds[name], "status": status,
                                   "refused_dice": refused}
        v = list(d.values())
        print(f"| {name} | {trained} | {seconds[name] / 60:.1f} min | {'base (refused)' if refused else 'yes'} | "
              f"{statistics.mean(v):.3f} | {statistics.median(v):.3f} | {min(v):.3f} | "
              f"{f'{statistics.mean(refused.values()):.3f}' if refused else '-'} |")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
