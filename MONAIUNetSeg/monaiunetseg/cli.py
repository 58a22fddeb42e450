"""``monaiunetseg`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare_lgg(args: argparse.Namespace) -> int:
    from monaiunetseg.training.prepare import prepare_lgg

    results, datalist = prepare_lgg(args.kaggle_dir, args.out_dir, n_folds=args.folds, seed=args.seed,
                                    workers=args.workers, progress=not args.quiet)
    failed = [r for r in results if r.error]
    for r in sorted(results, key=lambda r: r.folder):
        if r.error:
            print(f"FAILED  {r.folder}: {r.error}")
        else:
            print(f"{'skipped' if r.skipped else 'ok':7s} {r.folder}: {r.n_slices} slices")
    done = len(results) - len(failed)
    print(f"prepare-lgg: {done} patients ready ({sum(r.skipped for r in results)} already done), "
          f"{len(failed)} failed; datalist: {datalist}")
    return 1 if failed else 0


def _train_cv(args: argparse.Namespace) -> int:
    from monaiunetseg.training.cv import train_cv

    overrides = {"device": args.device, "num_workers": args.num_workers, "context": args.context}
    runs = train_cv(args.dataset_dir, args.out_dir, args.folds, args.epochs, bundle=args.bundle,
                    configs=args.config, overrides=overrides)
    failed = [r.fold for r in runs if r.status == "failed"]
    print(f"train-cv: {sum(r.status == 'done' for r in runs)} fold(s) trained, "
          f"{sum(r.status == 'skipped' for r in runs)} finished earlier, {len(failed)} failed"
          + (f" (folds {failed}; rerun to resume them)" if failed else ""))
    return 1 if failed else 0


def _evaluate_oof(args: argparse.Namespace) -> int:
    from monaiunetseg.training.oof import evaluate_oof, predict_oof

    probs_dir = args.cv_dir / ("oof_probs_tta" if args.flip_tta else "oof_probs")
    probs = predict_oof(args.cv_dir, args.dataset_dir, probs_dir, folds=args.folds, bundle=args.bundle,
                        device=args.device, flip_tta=args.flip_tta)
    evaluate_oof(probs, args.dataset_dir, args.docs_dir, prefix=args.prefix)
    return 0


def _add_unavailable_segment(subparsers: argparse._SubParsersAction, exc: ImportError) -> None:
    """``segment`` whose imports failed: any use of it exits 2 naming what is missing (``prepare-lgg`` still works)."""
    missing = f"; install the missing package ({exc.name})" if exc.name else ""
    message = f"the segment command cannot be loaded in this Python ({sys.executable}): {exc}{missing}"

    def unavailable(_args: argparse.Namespace) -> int:
        raise RuntimeError(message)

    # No option prefix: every argument, --help included, is taken as-is and the message is shown instead.
    p = subparsers.add_parser("segment", help=f"(unavailable: {exc})", add_help=False, prefix_chars="\x00")
    p.add_argument("args", nargs="*")
    p.set_defaults(func=unavailable)


def _add_bundle_and_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder (default: the installed/shipped one)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monaiunetseg", description="LGG FLAIR abnormality segmentation (research use only).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-lgg", help="stack Kaggle LGG slice folders into NIfTI volumes + k-fold datalist")
    p.add_argument("kaggle_dir", type=Path, help="the kaggle_3m folder (TCGA_<inst>_<id>_<date>/ subfolders)")
    p.add_argument("out_dir", type=Path, help="output folder (images/, labels/, datalist.json)")
    p.add_argument("--folds", type=int, default=5, help="number of patient-level folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare_lgg)

    p = sub.add_parser("train-cv", help="train the bundle on every patient-level fold (resumable cross-validation)",
                       description="Train configs/train.json of the bundle once per fold of a prepare-lgg dataset "
                                   "into OUT/fold<k>/. Rerun the same command to resume: finished folds are "
                                   "skipped, an interrupted fold resumes from its newest checkpoint.")
    p.add_argument("dataset_dir", type=Path, help="prepare-lgg output (datalist.json with folds)")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, help="CV output folder")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="folds to train (default: 0-4)")
    p.add_argument("--epochs", type=int, default=180, help="epochs per fold (default 180)")
    p.add_argument("--context", type=int, default=0, help="2.5D: neighbouring slices on either side as channels")
    p.add_argument("--config", nargs="+", default=None, metavar="FILE",
                   help="bundle config file(s), relative to the bundle (default: configs/train.json)")
    _add_bundle_and_device(p)
    p.add_argument("--num-workers", type=int, default=1, help="data loader workers (default 1)")
    p.set_defaults(func=_train_cv)

    p = sub.add_parser("evaluate-oof", help="out-of-fold per-patient metrics of a cross-validation",
                       description="Predict every patient with the fold model that never trained on it, choose "
                                   "the post-processing on these predictions and write per-patient metrics and a "
                                   "summary (by institution and lesion size) to DOCS_DIR.")
    p.add_argument("cv_dir", type=Path, help="train-cv output folder (fold<k>/model.pt)")
    p.add_argument("dataset_dir", type=Path, help="prepare-lgg output the CV was trained on")
    p.add_argument("--docs-dir", type=Path, default=Path("monai_bundle/docs"), help="where the tables go")
    p.add_argument("--prefix", default="oof", help="file-name prefix of the tables (default: oof)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="only these folds (default: all)")
    p.add_argument("--flip-tta", action="store_true", help="average over left-right flips (test-time augmentation)")
    _add_bundle_and_device(p)
    p.set_defaults(func=_evaluate_oof)

    try:
        from monaiunetseg.batch.cli import add_segment_parser
    except ImportError as exc:  # a missing dependency: say which, never drop the command silently
        _add_unavailable_segment(sub, exc)
    else:
        add_segment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"monaiunetseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
