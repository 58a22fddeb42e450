"""``monaiunetseg`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _prepare_lgg(args: argparse.Namespace) -> int:
    from monaiunetseg.training.prepare import SUMMARY_PNG, prepare_lgg

    results, datalist = prepare_lgg(args.kaggle_dir, args.out_dir, n_folds=args.folds, seed=args.seed,
                                    workers=args.workers, progress=not args.quiet, subset=args.subset)
    failed = [r for r in results if r.error]
    for r in sorted(results, key=lambda r: r.folder):
        if r.error:
            print(f"FAILED  {r.folder}: {r.error}")
        else:
            print(f"{'skipped' if r.skipped else 'ok':7s} {r.folder}: {r.n_slices} slices")
    done = len(results) - len(failed)
    summary = datalist.with_name(SUMMARY_PNG)
    print(f"prepare-lgg: {done} patients ready ({sum(r.skipped for r in results)} already done), "
          f"{len(failed)} failed; datalist: {datalist}" + (f"; summary: {summary}" if summary.is_file() else ""))
    return 1 if failed else 0


def _add_unavailable(subparsers: argparse._SubParsersAction, name: str, exc: ImportError) -> None:
    """A command whose imports failed: any use of it exits 2 naming what is missing (``prepare-lgg`` still works)."""
    missing = f"; install the missing package ({exc.name})" if exc.name else ""
    message = f"the {name} command cannot be loaded in this Python ({sys.executable}): {exc}{missing}"

    def unavailable(_args: argparse.Namespace) -> int:
        raise RuntimeError(message)

    # No option prefix: every argument, --help included, is taken as-is and the message is shown instead.
    p = subparsers.add_parser(name, help=f"(unavailable: {exc})", add_help=False, prefix_chars="\x00")
    p.add_argument("args", nargs="*")
    p.set_defaults(func=unavailable)


# Commands that need the inference stack: (name, module, registering function), imported only to build the parser.
INFERENCE_COMMANDS = (
    ("segment", "monaiunetseg.batch.cli", "add_segment_parser"),
    ("segment-case", "monaiunetseg.batch.single", "add_segment_case_parser"),
    ("merge-reports", "monaiunetseg.batch.cli", "add_merge_reports_parser"),
)
# Commands on labelmaps (nibabel, scipy; highdicom for a DICOM SEG), registered the same way.
MEASURE_COMMANDS = (
    ("measure", "monaiunetseg.measure.cli", "add_measure_parser"),
    ("growth", "monaiunetseg.measure.cli", "add_growth_parser"),
)
# The DICOM node (pynetdicom; the inference stack once a study is complete), registered the same way.
NODE_COMMANDS = (("listen", "monaiunetseg.node.cli", "add_listen_parser"),)


def _add_inference_commands(subparsers: argparse._SubParsersAction) -> None:
    for name, module, register in INFERENCE_COMMANDS + MEASURE_COMMANDS + NODE_COMMANDS:
        try:
            add_parser = getattr(importlib.import_module(module), register)
        except ImportError as exc:  # a missing dependency: say which, never drop the command silently
            _add_unavailable(subparsers, name, exc)
        else:
            add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    from monaiunetseg import __version__

    parser = argparse.ArgumentParser(prog="monaiunetseg", description="LGG FLAIR abnormality segmentation (research use only).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-lgg", help="stack Kaggle LGG slice folders into NIfTI volumes + k-fold datalist")
    p.add_argument("kaggle_dir", type=Path, help="the kaggle_3m folder (TCGA_<inst>_<id>_<date>/ subfolders)")
    p.add_argument("out_dir", type=Path, help="output folder (images/, labels/, datalist.json)")
    p.add_argument("--folds", type=int, default=5, help="number of patient-level folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="prepare only the first N patients of each fold (folds as for the full set): a small "
                        "dataset for smoke tests, enough for the bundle's --subset N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare_lgg)

    _add_inference_commands(sub)
    from monaiunetseg.training.cli import add_training_parsers  # argparse only: cheap

    add_training_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from monaiunetseg.console import quiet_third_party

    quiet_third_party()  # once, before any command imports torch/MONAI/pydicom
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"monaiunetseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; locks and temporary files are already undone
        print(f"monaiunetseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
