"""What fine-tuning at a new site buys: leave one institution out, train on the others, fine-tune on a few of the
left-out institution's patients, and score the rest of them (per-patient Dice, before and after).

Steps (each resumable: a finished model folder is reused):

1. ``base``: every patient not of ``--site`` (their prepare-lgg folds; fold 0 validates), ``finetune --from none``
   for ``--base-epochs`` epochs: a model that never saw the site;
2. ``--site`` patients shuffled with ``--seed``: the first 6 are the site's labelled cases, the rest the test
   set; ``site3`` fine-tunes on 2 and validates on 1 (the first 3), ``site6`` fine-tunes on 5 and validates on 1,
   each ``finetune --from base`` for ``--finetune-epochs`` epochs;
3. base, site3 and site6 segment every test patient (each model folder as ``segment --model-dir`` uses it).

Prints the table for the model card, with each training's wall time, and writes ``OUT/results.json``.

    python scripts/leave_one_institution_out.py PREPARED -o OUT [--site DU] [--base-epochs 60] [--finetune-epochs 30]
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


def train(prepared: Path, model_dir: Path, source: str, epochs: int, learning_rate: float | None = None) -> float:
    """``finetune`` into ``model_dir`` (reused when finished); its training wall seconds (all its runs)."""
    from monaiunetseg.training.finetune import finetune

    if not (model_dir / "models" / "model.pt").is_file():
        record = finetune(prepared, model_dir, source=source, epochs=epochs, fold=0, device="cpu",
                          learning_rate=learning_rate)
        if record.get("status") != "done":
            raise RuntimeError(f"{model_dir}: training did not finish ({record.get('status')})")
    return float(json.loads((model_dir / "train" / "finetune.json").read_text()).get("train_seconds") or 0.0)


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
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="fine-tuning learning rate (default: the recipe's); its models get a suffix")
    args = ap.parse_args()
    entries = json.loads((args.prepared / "datalist.json").read_text())["training"]
    site = sorted((e for e in entries if e["institution"] == args.site), key=lambda e: e["patient"])
    random.Random(args.seed).shuffle(site)
    labelled, test = site[:6], sorted(e["patient"] for e in site[6:])
    out = args.out
    base_data = write_subset(args.prepared, out / "base", [e for e in entries if e["institution"] != args.site],
                             lambda i, e: e["fold"])
    seconds = {"base": train(base_data, out / "base_model", "none", args.base_epochs)}
    base_weights = str(out / "base_model" / "models" / "model.pt")
    tag = "" if args.finetune_lr is None else f"_lr{args.finetune_lr:g}"
    for n in (3, 6):
        data = write_subset(args.prepared, out / f"site{n}", labelled[:n], lambda i, e, n=n: 0 if i == n - 1 else 1)
        seconds[f"site{n}{tag}"] = train(data, out / f"site{n}{tag}_model", base_weights, args.finetune_epochs,
                                         args.finetune_lr)
    results = {"site": args.site, "labelled": [e["patient"] for e in labelled], "test": test,
               "base_epochs": args.base_epochs, "finetune_epochs": args.finetune_epochs,
               "finetune_lr": args.finetune_lr, "models": {}}
    print(f"Leave {args.site} out: base trained on {len(entries) - len(site)} patients of the other institutions; "
          f"{len(test)} {args.site} test patients\n")
    print("| model | trained on | training wall time (this run) | Dice mean | median | min |")
    print("|---|---|---|---|---|---|")
    for name, trained in (("base", "other institutions"), (f"site3{tag}", f"base + 2 {args.site} (1 validates)"),
                          (f"site6{tag}", f"base + 5 {args.site} (1 validates)")):
        d = score(out / f"{name}_model", args.prepared, test)
        results["models"][name] = {"dice": d, "train_seconds": seconds[name]}
        v = list(d.values())
        print(f"| {name} | {trained} | {seconds[name] / 60:.1f} min | {statistics.mean(v):.3f} | "
              f"{statistics.median(v):.3f} | {min(v):.3f} |")
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
