"""``monaiunetseg segment``: argparse wiring of the batch inference in ``monaiunetseg.batch.run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monaiunetseg.batch.discover import shard
from monaiunetseg.batch.naming import OUTPUT_FORMATS
from monaiunetseg.batch.report import FAILED
from monaiunetseg.batch.run import BatchOptions, run_batch


def _segment(args: argparse.Namespace) -> int:
    from monaiunetseg.model.predictor import device_name

    device_name(args.device)  # fail before any work: --device cuda without CUDA is an error, not a fallback
    shard([], args.num_shards, args.shard_id)  # validates N and K
    options = BatchOptions(device=args.device, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
                           all_series=args.all_series, overlay=args.overlay, num_shards=args.num_shards,
                           shard_id=args.shard_id, bundle=args.bundle, weights=args.weights, progress=not args.quiet,
                           output_format=args.output_format)
    result = run_batch(args.inputs, args.out_dir, options)
    if args.quiet:  # otherwise every case, failures included, was shown live
        for r in result.results:
            if r.status == FAILED:
                print(r.line(), file=sys.stderr)
    print(result.summary())
    return result.exit_code


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--bundle``, ``--weights``: the same model choice for every inference command."""
    p.add_argument("--device", default="auto", help="auto (CUDA with AMP when present, else CPU), cuda or cpu")
    p.add_argument("--bundle", default=None, help="MONAI bundle folder (default: the installed/shipped one)")
    p.add_argument("--weights", default=None, help="model weights (default: the bundle's models/model.pt)")


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``monaiunetseg`` subcommand parsers (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "segment",
        help="segment FLAIR abnormality in NIfTI/NRRD/MetaImage files and DICOM series (batch, resumable)",
        description="Segment the FLAIR abnormality of lower-grade gliomas (research use only, not for diagnosis). "
                    "INPUT: image files (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd; MINC, ITK "
                    "HDF5, GIPL, VTK with the itk extra), DICOM series folders or any folder tree (scanned "
                    "recursively; DICOM files, classic or enhanced multi-frame, are grouped into series by "
                    "SeriesInstanceUID). Writes <name>_seg labelmaps (0 background, 1 FLAIR abnormality) on each "
                    "input's own voxel grid, one line per case, and OUTDIR/report.csv. Exit code 1 if any case failed.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image file, DICOM folder or folder tree")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (must not be inside an input folder)")
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG per DICOM input (<name>_seg.dcm)")
    p.add_argument("--overlay", action="store_true",
                   help="also write <name>_overlay.png: the middle slice of the finding with its outline")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="same",
                   help="labelmap format: same (default: the input's own, <name>_seg.nrrd for NRRD, _seg.mha for "
                        "MetaImage, _seg.nii.gz for NIfTI and DICOM), nifti, nrrd or mha")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist (default: skip them)")
    p.add_argument("--all-series", action="store_true",
                   help="segment every 3D DICOM series, not only FLAIR ones (NIfTI files are always segmented)")
    p.add_argument("--num-shards", type=int, default=1, metavar="N", help="split the cases into N shards (default 1)")
    p.add_argument("--shard-id", type=int, default=0, metavar="K", help="run shard K of N (0-based, default 0)")
    add_model_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no line per case (failures still shown)")
    p.set_defaults(func=_segment)
    return p
