"""``monaiunetseg train-cv``, ``evaluate-oof``, ``calibrate-trust``, ``compare-oof``, ``prepare-pairs`` and
``finetune``: argparse wiring of ``training.cv``, ``training.oof``, ``training.trust_fit``, ``training.ablation``,
``training.pairs`` and ``training.finetune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monaiunetseg.batch.array_task import number_or_auto
from monaiunetseg.model.intensity import NORMALISATIONS


def _train_cv(args: argparse.Namespace) -> int:
    from monaiunetseg.training.cv import train_cv

    from monaiunetseg.batch.array_task import resolve

    folds = args.folds if args.fold is None else [resolve(args.fold, "--fold", counting=False)]
    overrides = {"device": args.device, "num_workers": args.num_workers, "context": args.context}
    if args.subset:
        overrides["subset"] = args.subset
    runs = train_cv(args.dataset_dir, args.out_dir, folds, args.epochs, bundle=args.bundle,
                    configs=args.config, overrides=overrides)
    failed = [r.fold for r in runs if r.status in ("failed", "busy")]
    print(f"train-cv: {sum(r.status == 'done' for r in runs)} fold(s) trained, "
          f"{sum(r.status == 'skipped' for r in runs)} finished earlier, {len(failed)} failed or busy"
          + (f" (folds {failed}; rerun to resume them)" if failed else ""))
    return 1 if failed else 0


def _evaluate_oof(args: argparse.Namespace) -> int:
    from monaiunetseg.training.cv import fold_finished
    from monaiunetseg.training.oof import evaluate_oof, oof_cases, predict_oof

    folds = args.folds
    if folds is None:  # every fold whose training finished; a CV in progress is evaluated on what exists
        all_folds = sorted({c.fold for c in oof_cases(args.dataset_dir)})
        folds = [k for k in all_folds if fold_finished(args.cv_dir, k)]
        missing = sorted(set(all_folds) - set(folds))
        if not folds:
            raise FileNotFoundError(f"{args.cv_dir}: no finished fold (fold<k>/cv_fold.json with status done)")
        if missing:
            print(f"evaluate-oof: folds {missing} have not finished training in {args.cv_dir}: evaluating folds "
                  f"{folds} only ({sum(c.fold in folds for c in oof_cases(args.dataset_dir))} patients)")
    probs_dir = args.cv_dir / ("oof_probs_tta" if args.flip_tta else "oof_probs")
    probs = predict_oof(args.cv_dir, args.dataset_dir, probs_dir, folds=folds, bundle=args.bundle,
                        device=args.device, flip_tta=args.flip_tta)
    evaluate_oof(probs, args.dataset_dir, args.docs_dir, prefix=args.prefix, pictures_dir=args.pictures)
    return 0


def _calibrate_trust(args: argparse.Namespace) -> int:
    from monaiunetseg.model.bundle import read_spec
    from monaiunetseg.model.postprocess import PostProcessing
    from monaiunetseg.training.oof import oof_cases, predict_oof
    from monaiunetseg.training.trust_fit import calibrate_trust

    folds = sorted({c.fold for c in oof_cases(args.dataset_dir)})
    probs = predict_oof(args.cv_dir, args.dataset_dir, args.cv_dir / "oof_probs", folds=folds, bundle=args.bundle,
                        device=args.device)
    pp = PostProcessing.from_dict(read_spec(args.bundle).postprocessing)
    calibrate_trust(probs, args.dataset_dir, args.docs_dir, pp, review_below=args.review_below)
    return 0


def _compare_oof(args: argparse.Namespace) -> int:
    from monaiunetseg.training.ablation import compare_recipes, markdown_table, write_ablation

    recipes = {}
    for item in args.recipes:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{item!r}: give recipes as NAME=PATH (an evaluate-oof *_metrics_per_patient.csv)")
        recipes[name] = path
    rows = compare_recipes(recipes, args.reference)
    csv_path, md_path = write_ablation(rows, args.out_dir, args.prefix)
    print(markdown_table(rows), end="")
    print(f"compare-oof: {csv_path}, {md_path}")
    return 0


def _prepare_pairs(args: argparse.Namespace) -> int:
    from monaiunetseg.training.pairs import prepare_pairs

    rows, datalist = prepare_pairs(args.images, args.out_dir, args.labels, n_folds=args.folds, seed=args.seed,
                                   group_regex=args.group_regex)
    from monaiunetseg.io.image2d import LOSSY_MASK_NOTE, is_lossy

    for r in rows:
        print(f"ok      {r['case']}: {r['kind']} {r['shape']}, patient {r['patient']}, fold {r['fold']}, "
              f"{r['foreground_voxels']} foreground voxels")
        if is_lossy(r["label_source"]):
            print(f"warning {r['case']}: {r['label_source']} is {LOSSY_MASK_NOTE}; check the count, or save masks "
                  "as PNG")
    n_folds = json.loads(datalist.read_text())["n_folds"]
    print(f"prepare-pairs: {len(rows)} pairs of {len({r['patient'] for r in rows})} patients in {n_folds} folds; "
          f"datalist: {datalist}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from monaiunetseg.training.finetune import finetune

    record = finetune(args.prepared, args.out_dir, source=args.source, epochs=args.epochs, fold=args.fold,
                      device=args.device, batch_size=args.batch_size, num_samples=args.num_samples,
                      learning_rate=args.learning_rate, num_workers=args.num_workers, l2sp=args.l2sp,
                      patience=args.patience, best_checkpoint=args.best_checkpoint, members=args.members,
                      replay=args.replay, keep_worse=args.keep_worse, seed=args.seed,
                      normalisation=args.normalisation, freeze_bn=args.freeze_bn)
    return {"done": 0, "worse": 3}.get(record.get("status"), 1)


def add_finetune_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prepare-pairs`` and ``finetune``: training on your own data."""
    p = subparsers.add_parser(
        "prepare-pairs", help="your image/label pairs -> a prepared data set with patient-level folds",
        description="Pair images with their labels by name and write them as prepare-lgg does (images/, labels/, "
                    "datalist.json with patient-level folds, dataset_summary.csv) for finetune/train-cv. Inputs: 3D "
                    "volumes (NIfTI, NRRD, MetaImage) or 2D pictures (PNG, TIFF, JPEG; RGB -> grey; 1-slice "
                    "volumes); labels binary or instance-labelled (foreground = value > 0). Pairs must share "
                    "their grid. With LABELS: IMAGES/x.* pairs with LABELS/x.* (or x_label/x_mask/x_seg); without: "
                    "x.* with x_label.* / x_mask.* / x_seg.* in IMAGES.")
    p.add_argument("images", type=Path, help="folder of images (and, without LABELS, their labels)")
    p.add_argument("labels", type=Path, nargs="?", default=None, help="folder of labels (optional)")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, metavar="PREPARED",
                   help="output folder")
    p.add_argument("--folds", type=int, default=None,
                   help="number of patient-level folds (default 5, or one per patient for 2-4 patients)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--group-regex", default=None, metavar="REGEX",
                   help="the patient of a case: the first group (or whole match) of REGEX in its name, so a "
                        "patient's cases share a fold (default: every pair is its own patient)")
    p.set_defaults(func=_prepare_pairs)

    p = subparsers.add_parser(
        "finetune", help="train or fine-tune the model on a prepared data set into a model folder",
        description="Train configs/train.json of the shipped bundle on every fold of PREPARED but --fold, starting "
                    "from the shipped weights (--from default or fast: the set's first model) or from scratch "
                    "(--from none), then write MODEL_DIR: models/model.pt, configs/inference.json (post-processing "
                    "chosen on the validation fold), docs/README.md (model card). Fine-tuning uses a conservative "
                    "recipe (options below) and scores the start and the result on the validation fold: a result "
                    "worse than its start is kept in MODEL_DIR/worse-than-start (exit code 3) unless --keep-worse. "
                    "Rerun the same command to resume from the newest checkpoint. Use it with: monaiunetseg segment "
                    "--model-dir MODEL_DIR ...")
    p.add_argument("prepared", type=Path, help="prepare-pairs (or prepare-lgg) output")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, metavar="MODEL_DIR",
                   help="the model folder to write (its train/ subfolder holds checkpoints and the log)")
    p.add_argument("--from", dest="source", default="default", metavar="SOURCE",
                   help="default, fast (the shipped weights), none (from scratch), a model folder or a weights file "
                        "(default: default)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 20 fine-tuning, 50 from scratch)")
    p.add_argument("--fold", type=int, default=0, help="the validation fold (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="volumes per step (default: the bundle's, 4)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="random crops per volume and step (default: the bundle's, 8)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="default: 0.0002 fine-tuning, the bundle's 0.002 from scratch; 0: only the batch-norm "
                        "statistics adapt to the new cases (no weight changes)")
    p.add_argument("--l2sp", type=float, default=None, metavar="WEIGHT",
                   help="L2-SP: add WEIGHT x squared distance to the starting weights to the loss (default: 0.01 "
                        "fine-tuning, 0 from scratch)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation Dice (default: 8 fine-tuning, "
                        "never from scratch)")
    p.add_argument("--best-checkpoint", action=argparse.BooleanOptionalAction, default=None,
                   help="validate every epoch and keep the best epoch (default: on fine-tuning, off from scratch)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the batch-norm layers' running statistics at the start's while training (default: off)")
    p.add_argument("--members", choices=("all", "first"), default=None,
                   help="fine-tune every member of the starting model set or only the first (default: all)")
    p.add_argument("--replay", type=Path, default=None, metavar="PREPARED",
                   help="mix source volumes of this prepare-lgg/prepare-pairs output into training (2 per site "
                        "training case)")
    p.add_argument("--keep-worse", action="store_true",
                   help="deliver the model even when it scores below its start on the validation case(s)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed of the crops and augmentations (default: the bundle's, 0)")
    p.add_argument("--normalisation", choices=NORMALISATIONS, default=None,
                   help="input normalisation, from scratch only (default: the bundle's; fine-tuning keeps the "
                        "starting weights')")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers (default 0)")
    p.set_defaults(func=_finetune)


def _bundle_and_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder (default: the installed/shipped one)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")


def add_training_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-cv`` and ``evaluate-oof`` (called by ``monaiunetseg.cli.build_parser``)."""
    p = subparsers.add_parser(
        "train-cv", help="train the bundle on every patient-level fold (resumable cross-validation)",
        description="Train configs/train.json of the bundle once per fold of a prepare-lgg dataset into "
                    "OUT/fold<k>/. Rerun the same command to resume: finished folds are skipped, an interrupted "
                    "fold resumes from its newest checkpoint.")
    p.add_argument("dataset_dir", type=Path, help="prepare-lgg output (datalist.json with folds)")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, help="CV output folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="folds to train (default: 0-4)")
    which.add_argument("--fold", type=number_or_auto, default=None, metavar="K|auto",
                       help="train fold K only (one task of a job array); auto: $SLURM_ARRAY_TASK_ID or "
                            "$JOB_COMPLETION_INDEX")
    p.add_argument("--epochs", type=int, default=180, help="epochs per fold (default 180)")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="train and validate on the first N patients of each side only (smoke tests)")
    p.add_argument("--context", type=int, default=0, help="2.5D: neighbouring slices on either side as channels")
    p.add_argument("--config", nargs="+", default=None, metavar="FILE",
                   help="bundle config file(s), relative to the bundle (default: configs/train.json)")
    _bundle_and_device(p)
    p.add_argument("--num-workers", type=int, default=1, help="data loader workers (default 1)")
    p.set_defaults(func=_train_cv)

    p = subparsers.add_parser(
        "evaluate-oof", help="out-of-fold per-patient metrics of a cross-validation",
        description="Predict every patient with the fold model that never trained on it, choose the "
                    "post-processing on these predictions and write per-patient metrics and a summary (by "
                    "institution and lesion size) to DOCS_DIR.")
    p.add_argument("cv_dir", type=Path, help="train-cv output folder (fold<k>/model.pt)")
    p.add_argument("dataset_dir", type=Path, help="prepare-lgg output the CV was trained on")
    p.add_argument("--docs-dir", type=Path, default=Path("monai_bundle/docs"), help="where the tables go")
    p.add_argument("--prefix", default="oof", help="file-name prefix of the tables (default: oof)")
    p.add_argument("--pictures", type=Path, default=None, metavar="DIR",
                   help="also write a panel per patient, summary.png and index.html into DIR")
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="only these folds (default: every fold that has finished training)")
    p.add_argument("--flip-tta", action="store_true", help="average over left-right flips (test-time augmentation)")
    _bundle_and_device(p)
    p.set_defaults(func=_evaluate_oof)

    p = subparsers.add_parser(
        "calibrate-trust", help="fit the per-case confidence model on out-of-fold predictions",
        description="Predict every patient with the fold model that never trained on it (cached as evaluate-oof "
                    "caches), fit the confidence model (expected Dice from the prediction signals) and write "
                    "trust_calibration.json and trust_oof_per_patient.csv to DOCS_DIR; copy its 'confidence' "
                    "block into the bundle's configs/inference.json 'trust' to ship it.")
    p.add_argument("cv_dir", type=Path, help="train-cv output folder (fold<k>/model.pt)")
    p.add_argument("dataset_dir", type=Path, help="prepare-lgg output the CV was trained on")
    p.add_argument("--docs-dir", type=Path, default=Path("monai_bundle/docs"), help="where the tables go")
    p.add_argument("--review-below", type=float, default=0.80,
                   help="flag a case for review below this expected Dice (default 0.80, set in advance)")
    _bundle_and_device(p)
    p.set_defaults(func=_calibrate_trust)

    p = subparsers.add_parser(
        "compare-oof", help="ablation table of cross-validation recipes (paired, on the patients they share)",
        description="Compare the out-of-fold per-patient Dice of several recipes (evaluate-oof tables) on the "
                    "patients they all have: raw and post-processed mean, std, median, min, by lesion size, and "
                    "the paired difference to the reference with a bootstrap 95 %% interval. Writes "
                    "OUT/<prefix>.csv and .md (the model card's table).")
    p.add_argument("recipes", nargs="+", metavar="NAME=CSV", help="recipe name and its <prefix>_metrics_per_patient.csv")
    p.add_argument("--reference", default=None, help="the recipe the others are compared with (default: the first)")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, default=Path("monai_bundle/docs"),
                   help="where the table goes (default: monai_bundle/docs)")
    p.add_argument("--prefix", default="ablation", help="file-name prefix (default: ablation)")
    p.set_defaults(func=_compare_oof)

    add_finetune_parsers(subparsers)
