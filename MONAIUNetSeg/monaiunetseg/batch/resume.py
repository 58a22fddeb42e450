"""Resuming a batch: which earlier outputs are this input's finished result (each labelmap records its source),
which belong to another input (never taken over), and which are stale."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from monaiunetseg.batch.discover import Case
from monaiunetseg.batch.naming import OutputPaths
from monaiunetseg.batch.report import FAILED, CaseResult
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.io.dicom_volume import volume_grid
from monaiunetseg.io.labelmap import grid_of, read_labels, read_source_record

if TYPE_CHECKING:
    from monaiunetseg.batch.run import BatchOptions

FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "itk": "an ITK image file"}


def no_seg_note(case: Case) -> str:
    """The report note of a file input when ``--dicom-seg`` was asked for."""
    return f"DICOM SEG not written: it needs a DICOM source series (this input is {FORMAT_NAMES.get(case.kind, case.kind)})"


def base_result(case: Case) -> CaseResult:
    return CaseResult(input=str(case.source), series_uid=case.series_uid, series_description=case.series_description)


def source_record(case: Case) -> dict[str, str]:
    """What a labelmap records as its source: the input file's kind and resolved path, or the DICOM
    SeriesInstanceUID (with the series folder, for messages)."""
    if case.is_file:
        return {"kind": case.kind, "input": os.path.realpath(case.source)}
    return {"kind": "dicom", "series_uid": case.series_uid, "input": str(case.source)}


def _is_source(record: dict | None, case: Case) -> bool:
    mine = source_record(case)
    key = "input" if case.is_file else "series_uid"
    return record is not None and record.get("kind") == mine["kind"] and record.get(key) == mine[key]


def _describe_source(record: dict | None) -> str:
    if record is None:
        return "another input (the file has no MONAIUNetSeg source record)"
    if record.get("kind") == "dicom":
        return f"DICOM series {record.get('series_uid')} ({record.get('input')})"
    return str(record.get("input"))


def input_grid(case: Case) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, RAS affine) the input will be segmented on, from its headers where the format allows."""
    if case.kind == "dicom":
        return volume_grid(case.series)  # type: ignore[arg-type]
    if case.kind == "itk":
        from monaiunetseg.io.itk_reader import grid_of as itk_grid_of

        return itk_grid_of(case.source)
    return grid_of(case.source)


def existing_result(case: Case, paths: OutputPaths, options: BatchOptions) -> CaseResult | None:
    """The row of a case finished by an earlier run (all requested outputs present, the labelmap recording
    this input as its source and on the input's grid), a failed row when the labelmap's name is taken by the
    result of another input (never written over without ``--overwrite``), or None if it has to be (re)done."""
    if os.path.lexists(paths.labelmap):
        try:
            record = read_source_record(paths.labelmap)
        except Exception:  # not a readable NIfTI: not ours to replace either
            record = None
        if not _is_source(record, case):
            res = base_result(case)
            res.status = FAILED
            where = case.series.label() if case.series else str(case.source)
            res.error = (f"{where}: {paths.labelmap} already holds the result of {_describe_source(record)}; "
                         "use another -o or --overwrite")
            return res
    wanted = [paths.labelmap]
    if options.dicom_seg and case.kind == "dicom":
        wanted.append(paths.dicom_seg)
    if options.overlay:
        wanted.append(paths.overlay)
    if not all(p.is_file() for p in wanted):
        return None
    try:
        shape, affine = grid_of(paths.labelmap)
        expected_shape, expected_affine = input_grid(case)
        if tuple(shape) != tuple(expected_shape) or not np.allclose(affine, expected_affine, atol=1e-3):
            return None  # stale: the input changed since
        labels = read_labels(paths.labelmap)
    except Exception:
        return None  # unreadable or input now broken: redo, and let that report the problem
    res = base_result(case)
    res.output = str(paths.labelmap)
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    res.dicom_seg = str(paths.dicom_seg) if paths.dicom_seg.is_file() and case.kind == "dicom" else ""
    res.overlay = str(paths.overlay) if paths.overlay.is_file() else ""
    res.note = "existing output kept (--overwrite redoes it)"
    if options.dicom_seg and case.is_file:
        res.note += "; " + no_seg_note(case)
    return res
