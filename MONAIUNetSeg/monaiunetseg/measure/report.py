"""``measure`` and ``growth`` on files: one row per labelmap, written as CSV and JSON (numbers as numbers)."""

from __future__ import annotations

import datetime
import json
import os

from monaiunetseg import TOOL_NAME, __version__
from monaiunetseg.files import write_csv_atomic, write_text_atomic
from monaiunetseg.measure.growth import growth
from monaiunetseg.measure.read import read_labelmap, read_scan
from monaiunetseg.measure.shape import COLUMNS as SHAPE_COLUMNS
from monaiunetseg.measure.shape import measure_labelmap

MEASURE_COLUMNS = ["labelmap", *SHAPE_COLUMNS, "error"]
READ_ERRORS = (OSError, ValueError, RuntimeError)  # GeometryError and the readers' errors are ValueErrors


def measure_file(path: str | os.PathLike, image=None) -> dict:
    """The measurement row of the labelmap at ``path`` (``labelmap``: the path as given; lesion rows under
    ``lesions``); ``image``: a scan from :func:`read_scan`, for the midline."""
    labels = read_labelmap(path)
    return {"labelmap": str(path), **measure_labelmap(labels.array, labels.affine, image), "error": ""}


def measure_files(paths: list[str | os.PathLike], image_path: str | os.PathLike | None = None) -> list[dict]:
    """One row per labelmap, in the order given; a labelmap that cannot be read or measured gets a row with only
    ``labelmap`` and ``error`` (the others are still measured). A bad ``image_path`` raises."""
    image = None if image_path is None else read_scan(image_path)
    rows = []
    for path in paths:
        try:
            rows.append(measure_file(path, image))
        except READ_ERRORS as exc:
            rows.append({"labelmap": str(path), "error": str(exc), "lesions": []})
    return rows


def csv_rows(rows: list[dict], lesions: bool = False) -> list[dict]:
    """The rows as the CSV writes them: one per labelmap, followed by its lesion rows when ``lesions``."""
    out = []
    for row in rows:
        out.append(row)
        if lesions:
            out.extend({"labelmap": row["labelmap"], **lesion, "error": ""} for lesion in row.get("lesions", []))
    return out


def write_measure_csv(rows: list[dict], path: str | os.PathLike, lesions: bool = False) -> None:
    write_csv_atomic(path, csv_rows(rows, lesions), MEASURE_COLUMNS)


def write_json(document: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps({"tool": TOOL_NAME, "version": __version__, **document}, indent=1,
                                       ensure_ascii=False) + "\n")


def write_measure_json(rows: list[dict], path: str | os.PathLike) -> None:
    write_json({"columns": MEASURE_COLUMNS, "rows": rows}, path)


def _time_point(path: str | os.PathLike, segmenter) -> tuple[dict, object]:
    """The measurement row of one time point and its date (or None): a labelmap, or with ``segmenter`` a scan
    segmented with it (measured against its own head midline)."""
    if segmenter is None:
        labels = read_labelmap(path)
        return {"labelmap": str(path), **measure_labelmap(labels.array, labels.affine)}, labels.study_date
    scan = read_scan(path)
    labels = segmenter.segment(scan.array, scan.affine)
    return {"labelmap": str(path), **measure_labelmap(labels, scan.affine, image=scan)}, None


def growth_files(baseline: str | os.PathLike, followup: str | os.PathLike,
                 dates: tuple[datetime.date, datetime.date] | None = None, segmenter=None) -> dict:
    """The change from ``baseline`` to ``followup``, with both measurement rows: labelmaps, or with ``segmenter``
    (e.g. ``model.predictor.Segmenter``) scans segmented with it. Without ``dates``, the StudyDates of DICOM SEG
    labelmaps are used when both have one."""
    (row0, date0), (row1, date1) = (_time_point(p, segmenter) for p in (baseline, followup))
    if dates is None and date0 and date1:
        dates = (date0, date1)
    return {**growth(row0, row1, dates), "baseline": row0, "followup": row1}


def summary(row: dict) -> str:
    """One console line per labelmap."""
    if row.get("error"):
        return f"FAILED  {row['error']}"
    if not row["components"]:
        return f"{row['labelmap']}: empty (no lesion voxels)"
    slice_ = f"slice {row['axial_slice']} of axis {row['axial_axis']}"
    return (f"{row['labelmap']}: {row['volume_ml']:.2f} mL in {row['components']} lesion(s); max diameter "
            f"{row['max_diameter_mm']:.1f} mm; axial {row['axial_longest_mm']:.1f} x "
            f"{row['axial_perpendicular_mm']:.1f} mm ({slice_}); MTD {row['mean_tumour_diameter_mm']:.1f} mm; "
            f"side {row['side']}")


def write_growth_json(change: dict, path: str | os.PathLike) -> None:
    write_json(change, path)
