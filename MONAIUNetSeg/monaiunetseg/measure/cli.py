"""``monaiunetseg measure`` and ``monaiunetseg growth``: argparse wiring of ``measure.report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# At the top, so that a missing package (nibabel, scipy) is named when the command is registered (``cli.py``).
from monaiunetseg.files import printable
from monaiunetseg.measure.growth import parse_date, summary_line
from monaiunetseg.measure.report import (check_outputs, growth_files, is_growth_json, is_measure_csv, is_measure_json,
                                         measure_files, summary, write_growth_json, write_measure_csv,
                                         write_measure_json)


def _measure(args: argparse.Namespace) -> int:
    check_outputs([*args.labelmaps, args.image], [(args.csv, "--csv", is_measure_csv, "measure CSV"),
                                                  (args.json, "--json", is_measure_json, "measure JSON")])
    rows = measure_files(args.labelmaps, args.image)
    for row in rows:
        print(summary(row), file=sys.stderr if row.get("error") else sys.stdout)
    if args.csv:
        write_measure_csv(rows, args.csv, lesions=args.lesions)
    if args.json:
        write_measure_json(rows, args.json)
    return 1 if any(row.get("error") for row in rows) else 0


def _growth(args: argparse.Namespace) -> int:
    check_outputs([args.baseline, args.followup], [(args.json, "--json", is_growth_json, "growth JSON")])
    dates = None if not args.dates else (parse_date(args.dates[0]), parse_date(args.dates[1]))
    segmenter = None
    if args.images:
        from monaiunetseg.model.predictor import Segmenter

        segmenter = Segmenter(device=args.device)
    change = growth_files(args.baseline, args.followup, dates, segmenter=segmenter)
    print(printable(summary_line(change)))
    if args.json:
        write_growth_json(change, args.json)
    return 0


def add_measure_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``measure`` (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "measure", help="volume, diameters, bidimensional product, centroid and side of labelmaps",
        description="Measure the finding of each labelmap (any non-zero voxel; lesions are 26-connected "
                    "components) in world millimetres on its own grid: volume, components, 3D maximum diameter, "
                    "longest axial diameter and the longest perpendicular chord inside the lesion on the axial "
                    "slice where their product is largest, mean tumour diameter (2 x volume)^(1/3), centroid "
                    "(RAS mm) and side. One line per labelmap; exit code 1 if any labelmap could not be measured, "
                    "2 for a command error. Research use only.")
    p.add_argument("labelmaps", nargs="+", type=Path, metavar="LABELMAP",
                   help="NIfTI, NRRD/NHDR, MetaImage or DICOM SEG labelmap")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per labelmap (column labelmap: the path "
                                                              "as given) to FILE")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the rows, each with its lesions, to FILE")
    p.add_argument("--lesions", action="store_true", help="also write one CSV row per lesion (lesion 1, 2, ... by "
                                                          "decreasing volume; 0 is the whole labelmap)")
    p.add_argument("--image", type=Path, metavar="IMAGE",
                   help="the scan (NIfTI/NRRD/MetaImage, any grid): side is then relative to the head's midline "
                        "found in it, instead of x = 0 of the RAS coordinates")
    p.set_defaults(func=_measure)
    return p


def add_growth_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``growth`` (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "growth", help="change of volume, mean tumour diameter and bidimensional product between two labelmaps",
        description="Compare the labelmaps of two time points: volumes and their change (mL, %), mean tumour "
                    "diameter and its velocity (mm/year), change of the sum of bidimensional products (%) and the "
                    "RANO-LGG category that change alone gives. Research use only: RANO-LGG also needs clinical "
                    "data and imaging beyond this.")
    p.add_argument("baseline", type=Path, help="labelmap (or with --images, scan) of the first time point")
    p.add_argument("followup", type=Path, help="labelmap (or with --images, scan) of the later time point")
    p.add_argument("--images", action="store_true",
                   help="BASELINE and FOLLOWUP are FLAIR scans (NIfTI, NRRD, MetaImage): segment them with the "
                        "shipped model first (side then against each scan's head midline)")
    p.add_argument("--device", default="auto", help="with --images: auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dates", nargs=2, metavar=("D1", "D2"),
                   help="scan dates YYYY-MM-DD (default: the StudyDates of DICOM SEG labelmaps; none: no velocity)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the change and both measurements to FILE")
    p.set_defaults(func=_growth)
    return p
