"""Resuming a batch: which earlier outputs are this input's finished result, which belong to another input (never
taken over), and which are stale.

Each labelmap records its source (NIfTI extension, NRRD/MetaImage header field): the input's path or
SeriesInstanceUID and a SHA-256 of the input's content (the image file; for a DICOM series, the sorted SHA-256s of
its files). An input replaced by another scan, even on the same grid, no longer matches and is redone, with the
reason in the row's note.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.naming import OutputPaths
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import FAILED, CaseResult
from monaiunetseg.files import file_sha256  # noqa: F401  (re-exported: record, model_key)
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.io.labelmap import grid_of, is_our_labelmap, read_labels, read_source_record

KEPT = "existing output kept (--overwrite redoes it)"
DIGEST_KEY = "sha256"
MODEL_KEY = "model"  # the model that made the labelmap (``model_key.make_key``)
FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "itk": "an ITK image file"}


def no_seg_note(case: Case) -> str:
    """The report note of a file input when ``--dicom-seg`` was asked for."""
    return f"DICOM SEG not written: it needs a DICOM source series (this input is {FORMAT_NAMES.get(case.kind, case.kind)})"


def base_result(case: Case) -> CaseResult:
    return CaseResult(input=str(case.source), series_uid=case.series_uid, series_description=case.series_description)


def content_digest(case: Case) -> str:
    """SHA-256 of the input's content: an image file's (with the data file of a detached .nhdr/.mhd header), or
    for a DICOM series the SHA-256 of its files' SHA-256s (sorted, one per line), so renaming or moving files
    changes nothing and changing one does."""
    if case.is_file:
        from monaiunetseg.io.nrrd_mha import input_files

        paths = input_files(case.source)  # regular files only: hashing a FIFO would block
        if len(paths) == 1:
            return file_sha256(case.source)
        files = [file_sha256(f) for f in paths]  # header first, then its data
    else:
        files = sorted(file_sha256(f.path) for f in case.series.files)  # type: ignore[union-attr]
    return hashlib.sha256("\n".join(files).encode("ascii")).hexdigest()


def source_record(case: Case, digest: str | None = None, model: dict | None = None) -> dict:
    """What a labelmap records as its source: the input file's kind and resolved path, or the DICOM
    SeriesInstanceUID (with the series folder, for messages); with ``digest`` (:func:`content_digest`) the
    content it was made from; with ``model`` (``model_key.key_of``) the model that made it."""
    if case.is_file:
        record = {"kind": case.kind, "input": os.path.realpath(case.source)}
    else:
        record = {"kind": "dicom", "series_uid": case.series_uid, "input": str(case.source)}
    if digest:
        record[DIGEST_KEY] = digest
    if model:
        record[MODEL_KEY] = model
    return record


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


def model_label(model: dict | None) -> str:
    """``fast (model 1a2b3c4d5e6f)``: a model key (``model_key.make_key``) as the report names it."""
    return "" if not model else f"{model.get('name')} (model {str(model.get('sha256'))[:12]})"


def _model_change(earlier: object, model: dict | None) -> str:
    """Why an earlier labelmap is not this model's result ("" when it is, or when the model is unknown)."""
    if model is None:
        return ""
    if not isinstance(earlier, dict) or not earlier.get("sha256"):
        return "earlier output has no record of the model that made it (an older version wrote it): redone"
    if earlier["sha256"] != model["sha256"]:
        return (f"model changed since the earlier output (made by {model_label(earlier)}, now "
                f"{model_label(model)}): redone")
    return ""


def existing_result(case: Case, paths: OutputPaths, options: BatchOptions,
                    model: dict | None = None) -> CaseResult | str:
    """The row of a case finished by an earlier run (all requested outputs present, the labelmap recording
    this input, with the same content, as its source), a failed row when the labelmap's name is taken by the
    result of another input (never written over without ``--overwrite``), or else why the case has to be
    (re)done: "" when there is no earlier output, else a note for the row. ``model``: the key of this run's
    model (``model_key.key_of``); an output of another model is redone, as one of another input content is."""
    if not os.path.lexists(paths.labelmap) or not is_our_labelmap(paths.labelmap):
        return ""  # nothing there, or a file the tool did not write (the run refuses to replace it)
    try:
        record = read_source_record(paths.labelmap)
    except Exception:  # not a readable labelmap: not ours to replace either
        record = None
    if not _is_source(record, case):
        res = base_result(case)
        res.status = FAILED
        where = case.series.label() if case.series else str(case.source)
        res.error = (f"{where}: {paths.labelmap} already holds the result of {_describe_source(record)}; "
                     "use another -o or --overwrite")
        return res
    wanted = {"DICOM SEG": paths.dicom_seg} if options.dicom_seg and case.kind == "dicom" else {}
    if options.overlay:
        wanted["overlay"] = paths.overlay
    if options.save_probabilities:
        wanted["probability map"] = paths.probabilities
    missing = [name for name, p in wanted.items() if not p.is_file()]
    if missing:
        return f"earlier output incomplete (no {' or '.join(missing)}): redone"
    if not record.get(DIGEST_KEY):  # type: ignore[union-attr]
        return "earlier output has no content hash of its input (an older version wrote it): redone"
    try:
        digest = content_digest(case)
    except (OSError, ValueError) as exc:  # ValueError: a data file that is no regular file (reading says so)
        return f"input not readable for the resume check ({getattr(exc, 'strerror', None) or exc}): redone"
    if digest != record[DIGEST_KEY]:  # type: ignore[index]
        return (f"input changed since the earlier output (content SHA-256 {digest[:12]}..., was "
                f"{str(record[DIGEST_KEY])[:12]}...): redone")  # type: ignore[index]
    changed = _model_change(record.get(MODEL_KEY), model)  # type: ignore[union-attr]
    if changed:
        return changed
    try:
        _, affine = grid_of(paths.labelmap)
        labels = read_labels(paths.labelmap)
    except Exception:
        return "earlier output unreadable: redone"
    res = base_result(case)
    res.output = str(paths.labelmap)
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    if options.measure:  # as for a new result: the input is read for the head's midline
        try:
            from monaiunetseg.batch.volume import read_volume
            from monaiunetseg.measure.shape import measure_labelmap

            volume = read_volume(case)
            res.add_measurements(measure_labelmap(labels, affine, image=(volume.array, volume.affine)))
        except Exception as exc:  # noqa: BLE001  any problem: segment it again, which says what fails
            return f"earlier output not measurable ({type(exc).__name__}: {exc}): redone"
    res.dicom_seg = str(paths.dicom_seg) if paths.dicom_seg.is_file() and case.kind == "dicom" else ""
    res.overlay = str(paths.overlay) if paths.overlay.is_file() else ""
    res.probabilities = str(paths.probabilities) if options.save_probabilities else ""
    res.note = KEPT
    res.model = model_label(record.get(MODEL_KEY))  # type: ignore[union-attr]
    try:  # the verdict as the run that made the labelmap recorded it
        res.confidence = float(record["confidence"])  # type: ignore[index]
        res.review, res.review_reasons = str(record.get("review", "")), str(record.get("review_reasons", ""))  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError):
        pass
    if options.dicom_seg and case.is_file:
        res.note += "; " + no_seg_note(case)
    return res

