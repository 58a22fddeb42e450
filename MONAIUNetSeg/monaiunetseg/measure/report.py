"""``measure`` and ``growth`` on files: one row per labelmap, written as CSV and JSON (numbers as numbers)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Callable

from monaiunetseg import TOOL_NAME, __version__
from monaiunetseg.errors import describe
from monaiunetseg.files import check_output_file, printable, write_csv_atomic, write_error, write_text_atomic
from monaiunetseg.io.labelmap import labelmap_reason
from monaiunetseg.measure.growth import growth
from monaiunetseg.measure.read import read_labelmap, read_scan
from monaiunetseg.measure.shape import COLUMNS as SHAPE_COLUMNS
from monaiunetseg.measure.shape import measure_labelmap

MEASURE_COLUMNS = ["labelmap", *SHAPE_COLUMNS, "error"]
READ_ERRORS = (OSError, ValueError, RuntimeError)  # GeometryError and the readers' errors are ValueErrors


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\r\n")


def _json_of(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("tool") == TOOL_NAME else {}


def is_measure_csv(path: Path) -> bool:
    """An earlier ``measure --csv`` output (its header row), which a rerun may replace."""
    return path.stat().st_size == 0 or _first_line(path) == ",".join(MEASURE_COLUMNS)


def is_measure_json(path: Path) -> bool:
    return path.stat().st_size == 0 or _json_of(path).get("columns") == MEASURE_COLUMNS


def is_growth_json(path: Path) -> bool:
    return path.stat().st_size == 0 or "rano_lgg_category" in _json_of(path)


def check_outputs(inputs: list[str | os.PathLike | None],
                  outputs: list[tuple[str | os.PathLike | None, str, Callable[[Path], bool], str]]) -> None:
    """Refuse, before anything is read, an output (``(path, option, is_ours, kind)``) that is an input, lies in an
    input folder, is a link or a file this command did not write (``files.check_output_file``, as segment-case's
    ``--result-json``); two outputs on one file are refused too."""
    named = [o for o in outputs if o[0] is not None]
    for path, option, is_ours, kind in named:
        check_output_file(path, [p for p in inputs if p is not None], is_ours, option, kind)
    real = [os.path.realpath(o[0]) for o in named]
    if len(set(real)) < len(real):
        raise ValueError(f"{' and '.join(o[1] for o in named)} name the same file; give each its own")


def _write(target: str | os.PathLike, write: Callable[[], None]) -> None:
    """One write of an output; an OSError (no such folder, disk full) is a one-line command error (exit 2)."""
    try:
        write()
    except OSError as exc:
        raise write_error(exc, target) from exc


def measure_file(path: str | os.PathLike, image=None) -> dict:
    """The measurement row of the labelmap at ``path`` (``labelmap``: the path as given; lesion rows under
    ``lesions``); ``image``: a scan from :func:`read_scan`, for the midline."""
    labels = read_labelmap(path)
    return {"labelmap": printable(str(path)), **measure_labelmap(labels.array, labels.affine, image), "error": ""}


def measure_files(paths: list[str | os.PathLike], image_path: str | os.PathLike | None = None) -> list[dict]:
    """One row per labelmap, in the order given; a labelmap that cannot be read or measured gets a row with only
    ``labelmap`` and ``error`` (the others are still measured). A bad ``image_path`` raises."""
    image = None if image_path is None else read_scan(image_path)
    rows = []
    for path in paths:
        try:
            rows.append(measure_file(path, image))
        except READ_ERRORS as exc:
            rows.append({"labelmap": printable(str(path)), "error": printable(str(exc)), "lesions": []})
        except MemoryError as exc:  # this labelmap's problem: the rows of the others are kept
            rows.append({"labelmap": printable(str(path)), "error": f"{printable(str(path))}: {describe(exc)}",
                         "lesions": []})
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
    """The CSV, its text cells made safe for spreadsheets (``files.csv_text``, as segment's report)."""
    _write(path, lambda: write_csv_atomic(path, csv_rows(rows, lesions), MEASURE_COLUMNS, safe_text=True))


def write_json(document: dict, path: str | os.PathLike) -> None:
    text = json.dumps({"tool": TOOL_NAME, "version": __version__, **document}, indent=1, ensure_ascii=False) + "\n"
    _write(path, lambda: write_text_atomic(path, text))


def write_measure_json(rows: list[dict], path: str | os.PathLike) -> None:
    write_json({"columns": MEASURE_COLUMNS, "rows": rows}, path)


def _time_point(path: str | os.PathLike, segmenter) -> tuple[dict, object]:
    """The measurement row of one time point and its date (or None): a labelmap, or with ``segmenter`` a scan
    segmented with it (measured against its own head midline)."""
    name = printable(str(path))
    if segmenter is None:
        labels = read_labelmap(path)
        return {"labelmap": name, **measure_labelmap(labels.array, labels.affine)}, labels.study_date
    reason = labelmap_reason(path)  # as segment skips it: a label map is no scan to segment
    if reason:
        raise ValueError(f"{name}: {reason}, not a scan (growth --images segments FLAIR scans)")
    scan = read_scan(path)
    labels = segmenter.segment(scan.array, scan.affine)
    row = {"labelmap": name, **measure_labelmap(labels, scan.affine, image=scan)}
    verdict = segmenter.assess(scan.array, scan.affine) if hasattr(segmenter, "assess") else None
    if verdict is not None:  # the same input checks and verdict as segment's
        row.update(confidence=round(verdict.confidence, 4), review=verdict.review_text,
                   review_reasons=verdict.reasons_text)
    return row, None


def growth_files(baseline: str | os.PathLike, followup: str | os.PathLike,
                 dates: tuple[datetime.date, datetime.date] | None = None, segmenter=None) -> dict:
    """The change from ``baseline`` to ``followup``, with both measurement rows: labelmaps, or with ``segmenter``
    (e.g. ``model.predictor.Segmenter``) scans segmented with it. Without ``dates``, the StudyDates of DICOM SEG
    labelmaps are used when both have one."""
    (row0, date0), (row1, date1) = (_time_point(p, segmenter) for p in (baseline, followup))
    if dates is None and date0 and date1:
        dates = (date0, date1)
    flagged = [f"{when}: {row['review_reasons']}" for when, row in (("baseline", row0), ("followup", row1))
               if row.get("review") == "yes"]
    review = {} if segmenter is None else {"review": "yes" if flagged else "no", "review_reasons": "; ".join(flagged)}
    return {**growth(row0, row1, dates), **review, "baseline": row0, "followup": row1}


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
