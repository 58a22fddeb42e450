"""``monaiunetseg segment``: argparse wiring of the batch inference in ``monaiunetseg.batch.run``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from monaiunetseg.batch.array_task import number_or_auto, resolve
from monaiunetseg.batch.discover import shard
from monaiunetseg.batch.naming import OUTPUT_FORMATS
from monaiunetseg.batch.report import FAILED
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch

BUNDLE_TRUST = ("Segmenting reads only plain values (network parameters, weights file names, post-processing) "
                "from the bundle's configs/inference.json and loads weights with torch.load(weights_only=True): no "
                "config expression ($...) is run. The monai.bundle commands (train, evaluate, run) do run a "
                "bundle's config expressions: use them only with bundles you trust.")


def bundle_warning(bundle: str | None) -> str | None:
    """The one-line warning for a bundle that did not come with this installation (``--bundle`` or
    ``$MONAIUNETSEG_BUNDLE``), else None. Raises as ``bundle_root`` does for a folder that is no bundle."""
    from monaiunetseg.model.bundle import bundle_root, is_shipped

    root = bundle_root(bundle)
    if is_shipped(root):
        return None
    return (f"warning: bundle {root} is not the installed one; segment reads only plain values from it, but its "
            "configs can run code when used with 'python -m monai.bundle': run those only if you trust it")


def check_model_options(args: argparse.Namespace) -> None:
    """Fail before any work on a bad ``--device`` (``cuda`` without CUDA is an error, not a fallback) or
    ``--model``; warn about a bundle from outside the installation."""
    from monaiunetseg.model.predictor import device_name

    from monaiunetseg.model.bundle import read_spec

    device_name(args.device)  # a string: torch is imported only where CUDA may be there
    if not args.weights:
        read_spec(args.bundle).weights(args.model)  # an unknown model set: exit 2 naming the sets there are
    warning = bundle_warning(args.bundle)
    if warning:
        print(warning, file=sys.stderr)


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-data", action="store_true",
                   help="read data files that NRRD/MetaImage headers name outside their own folder tree "
                        "(refused by default: a header must not pull in an unrelated file)")


def apply_input_options(args: argparse.Namespace) -> None:
    """``--allow-outside-data`` for every reader in this process (and the workers it starts): the readers sit
    below the batch, so the switch travels as ``$MONAIUNETSEG_ALLOW_OUTSIDE_DATA``, like the voxel budget."""
    from monaiunetseg.io.data_files import OUTSIDE_DATA_ENV

    if getattr(args, "allow_outside_data", False):
        os.environ[OUTSIDE_DATA_ENV] = "1"


def _segment(args: argparse.Namespace) -> int:
    args.num_shards = resolve(args.num_shards, "--num-shards", counting=True)
    args.shard_id = resolve(args.shard_id, "--shard-id", counting=False)
    shard([], args.num_shards, args.shard_id)  # validates N and K
    check_model_options(args)
    apply_input_options(args)
    options = BatchOptions(device=args.device, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
                           all_series=args.all_series, overlay=args.overlay, num_shards=args.num_shards,
                           shard_id=args.shard_id, bundle=args.bundle, weights=args.weights, model=args.model,
                           progress=not args.quiet,
                           output_format=args.output_format, wait=args.wait or args.merge_when_done,
                           save_probabilities=args.save_probabilities, strict=args.strict, measure=args.measure,
                           include_labelmaps=args.include_labelmaps)
    result = run_batch(args.inputs, args.out_dir, options)
    if args.quiet:  # otherwise every case, failures included, was shown live
        for r in result.results:
            if r.status == FAILED:
                print(r.line(), file=sys.stderr)
    print(result.summary())
    if args.merge_when_done and args.num_shards > 1:
        merged = _merge_if_last(args.out_dir)
        if merged is not None:
            return max(result.exit_code, merged)
    return result.exit_code


def _merge_if_last(out_dir: Path) -> int | None:
    """``--merge-when-done``: merge when this shard finished last; None (with a line why) while others still run
    or have not run. Shards wait for each other's merge (``--wait``), so the last one always finds the folder."""
    from monaiunetseg.batch.lock import FolderBusyError
    from monaiunetseg.batch.merge import IncompleteShardsError, merge_reports

    try:
        merged = merge_reports(out_dir, list_missing=False, grace_s=0)
    except FolderBusyError:
        print("merge-reports: not yet: other shards still hold the folder; the last to finish merges")
        return None
    except IncompleteShardsError as exc:
        print(f"merge-reports: not yet: {len(exc.missing)} case(s) of other shards not done; the last shard to "
              "finish merges (or run merge-reports)")
        return None
    print(merged.summary())
    return merged.exit_code


def _merge_reports(args: argparse.Namespace) -> int:
    from monaiunetseg.batch.merge import IncompleteShardsError, merge_reports

    try:
        merged = merge_reports(args.out_dir, wait=args.wait, on_wait=lambda text: print(text, file=sys.stderr))
    except IncompleteShardsError as exc:
        print(f"monaiunetseg merge-reports: error: {exc}", file=sys.stderr)
        return 3
    print(merged.summary())
    return merged.exit_code


def add_merge_reports_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``merge-reports``: one report of a sharded batch."""
    p = subparsers.add_parser(
        "merge-reports", help="join the shard reports of a sharded segment batch into report.csv/.json and run.json",
        description="Join OUTDIR/report.shardKofN.csv (and .json, run.shardKofN.json) of 'segment --num-shards N' "
                    "into OUTDIR/report.csv, report.json and run.json: every case once, with the shard that ran it. "
                    "Exit code 0 when merged, 1 when merged and a case failed, 2 for a command error (a shard "
                    "still running, two shards disagreeing on a case, files it would replace that are not a "
                    "merge's), 3 when cases are missing (a shard never ran or stopped: they are listed). Merging "
                    "again gives the same files.")
    p.add_argument("out_dir", type=Path, metavar="OUTDIR", help="the output folder the shards wrote into")
    p.add_argument("--wait", action="store_true",
                   help="wait for running shards to finish (default: stop with exit code 2)")
    p.set_defaults(func=_merge_reports)
    return p


def add_strict_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="skip a case flagged for review (review = yes: low confidence, members disagreeing, "
                        "an input that is not a head FLAIR) instead of writing its outputs with the flag")


def add_measure_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measure", action="store_true",
                   help="also fill the report's measurement columns: components, 3D and axial diameters, "
                        "bidimensional product, mean tumour diameter, centroid and side (as 'monaiunetseg "
                        "measure'; about 0.2 s for the sample)")


def add_probability_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <name>_prob.nii.gz (or the labelmap's format): the foreground probability "
                        "(float32, 0-1, averaged over the model set, before post-processing) on the input's grid")


def device_name(text: str) -> str:
    """``--device`` values: a non-empty name (``auto``, ``cpu``, ``cuda``, ``cuda:N``); checked further later."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty device name: use auto, cuda, cuda:N or cpu")
    return text.strip()


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--bundle``, ``--weights``: the same model choice for every inference command."""
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (CUDA with AMP when present, else CPU), cuda, cuda:N or cpu")
    p.add_argument("--bundle", "--model-dir", dest="bundle", default=None,
                   help="MONAI bundle or model folder (configs/inference.json + models/, e.g. made by 'monaiunetseg "
                        "finetune'; default: the installed/shipped one, or $MONAIUNETSEG_BUNDLE). Only plain values "
                        "of its configs/inference.json are read: no config code runs here")
    p.add_argument("--model", default="default", metavar="SET",
                   help="the bundle's model set ('models' in configs/inference.json); shipped: 'default' (fold "
                        "models 0-2, probabilities averaged), 'fast' (fold model 0 alone) and 'full' (all five fold "
                        "models); each with the bundle's post-processing; --weights overrides it")
    p.add_argument("--weights", default=None, help="model weights (default: the bundle's model set)")


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``monaiunetseg`` subcommand parsers (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "segment",
        help="segment FLAIR abnormality in NIfTI/NRRD/MetaImage files and DICOM series (batch, resumable)",
        description="Segment the FLAIR abnormality of lower-grade gliomas (research use only, not for diagnosis). "
                    "INPUT: image files (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd; MINC, ITK "
                    "HDF5, GIPL, VTK with the itk extra), 2D pictures named here (PNG, TIFF, JPEG: a model from 'finetune' on "
                    "pictures; a PNG mask of the picture's size), DICOM series folders or any folder tree (scanned "
                    "recursively; DICOM files, classic or enhanced multi-frame, are grouped into series by "
                    "SeriesInstanceUID). Writes <name>_seg labelmaps (0 background, 1 FLAIR abnormality) on each "
                    "input's own voxel grid, one line per case, and OUTDIR/report.csv (+ report.json, run.json). "
                    "Exit code 1 if any case failed, 2 for a command error (bad arguments, unusable model, output "
                    "folder not writable, in use by another run, or holding files MONAIUNetSeg did not write under "
                    "its output names). " + BUNDLE_TRUST,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image file, DICOM folder or folder tree")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (must not be inside an input folder; one run at a time writes into it)")
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG per DICOM input (<name>_seg.dcm)")
    p.add_argument("--overlay", action="store_true",
                   help="also write <name>_overlay.png: the middle slice of the finding with its outline")
    add_probability_option(p)
    add_strict_option(p)
    add_measure_option(p)
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="same",
                   help="labelmap format: same (default: the input's own, <name>_seg.nrrd for NRRD, _seg.mha for "
                        "MetaImage, _seg.nii.gz for NIfTI and DICOM), nifti, nrrd or mha")
    p.add_argument("--overwrite", action="store_true",
                   help="redo cases whose outputs exist (default: skip those made from the same input content), "
                        "and replace files under output names that MONAIUNetSeg did not write (default: stop)")
    p.add_argument("--wait", action="store_true",
                   help="if another run holds OUTDIR, wait for it to finish (default: stop with exit code 2)")
    p.add_argument("--all-series", action="store_true",
                   help="segment every 3D DICOM series, not only FLAIR ones")
    p.add_argument("--include-labelmaps", action="store_true",
                   help="also segment image files that look like label maps (skipped by default: names ending in "
                        "_label, _seg or _mask, or integer voxels with at most 8 distinct values)")
    p.add_argument("--num-shards", type=number_or_auto, default=1, metavar="N",
                   help="split the cases into N shards (default 1); auto: $SLURM_ARRAY_TASK_COUNT of an array 0-(N-1)")
    p.add_argument("--shard-id", type=number_or_auto, default=0, metavar="K",
                   help="run shard K of N (0-based, default 0); auto: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX "
                        "(a Kubernetes indexed Job)")
    p.add_argument("--merge-when-done", action="store_true",
                   help="with --num-shards: the shard that finishes last also runs merge-reports OUTDIR (implies "
                        "--wait: a shard starting during that merge waits for it)")
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no line per case (failures still shown)")
    p.set_defaults(func=_segment)
    return p
