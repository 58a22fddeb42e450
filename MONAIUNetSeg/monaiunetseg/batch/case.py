"""One case of a batch: read, segment, and write its outputs together, or fail naming the step.

A case's outputs (labelmap, DICOM SEG, overlay, probability map) are written under temporary names and renamed together at
the end (``files.StagedFiles``), the labelmap last: a failure at any step (an overlay on a full disk) leaves none of
them, so the row "failed, no output" is what is on disk. The DICOM SEG alone is optional: highdicom refuses some
real series (an invalid StudyDate, say), and losing the labelmap for that would lose the result; its failure is
the row's note (status ok, ``dicom_seg`` empty) and the next run tries it again.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import numpy as np

from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.naming import OutputPaths
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import FAILED, SKIPPED, CaseResult
from monaiunetseg.batch.resume import base_result, content_digest, model_label, no_seg_note, source_record
from monaiunetseg.batch.volume import read_volume
from monaiunetseg.errors import describe
from monaiunetseg.files import StagedFiles
from monaiunetseg.geometry import GeometryError, voxel_volume_ml
from monaiunetseg.io.dicom_series import DicomSeriesError
from monaiunetseg.io.itk_reader import ItkInputError
from monaiunetseg.io.labelmap import write_labelmap
from monaiunetseg.io.nifti import NiftiInputError
from monaiunetseg.io.nrrd_mha import ImageInputError
from monaiunetseg.model.errors import InputRangeError, NonFiniteOutputError

# Errors whose message already names the input and the problem; and those that need only the input named.
SELF_DESCRIBING = (NiftiInputError, ImageInputError, ItkInputError, DicomSeriesError, GeometryError)
PLAIN_MESSAGE = (NonFiniteOutputError, InputRangeError)


class CaseStepError(Exception):
    """``error`` raised at ``step`` of a case (read, segment, dicom-seg, overlay, labelmap, commit)."""

    def __init__(self, step: str, error: Exception) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    try:
        yield
    except CaseStepError:
        raise
    except Exception as exc:
        raise CaseStepError(name, exc) from exc


def segment_case(case: Case, paths: OutputPaths, segmenter, options: BatchOptions,
                 input_files: frozenset[str] = frozenset(), model: dict | None = None) -> CaseResult:
    """Read, segment and write one case; raises :class:`CaseStepError` (the caller makes it a failed row).
    ``model``: the segmenter's key (``model_key.key_of``), recorded with the outputs and in the row."""
    for p in (paths.labelmap, paths.dicom_seg, paths.overlay, paths.probabilities):
        if os.path.realpath(p) in input_files:
            raise ValueError(f"{p}: output would overwrite an input file")
    res = base_result(case)
    t0 = time.perf_counter()
    with step("read"):
        digest = content_digest(case)  # before reading: a change after this is seen by the next resume
        t_hash = time.perf_counter()
        volume = read_volume(case)
        array, affine = volume.array, volume.affine
    t_read = time.perf_counter()
    with step("segment"):
        probabilities = None
        if options.save_probabilities:
            probabilities = np.empty(np.shape(array)[-3:], np.float32)
            labels = segmenter.segment(array, affine, probabilities=probabilities)
        else:  # any object with segment(array, affine) will do (e.g. a stand-in in tests or a plug-in)
            labels = segmenter.segment(array, affine)
    t_labels = time.perf_counter()
    with step("assess"):
        verdict = assess_case(case, segmenter, array, affine)
        res.set_verdict(verdict)
    if options.strict and verdict is not None and verdict.review:
        res.status = SKIPPED
        where = case.series.label() if case.series else str(case.source)
        res.error = f"{where}: flagged for review, no outputs written (--strict): {verdict.reasons_text}"
        res.model = model_label(model)
        res.seconds = time.perf_counter() - t0
        return res
    t_seg = time.perf_counter()
    measured = None
    if options.measure:
        with step("measure"):  # before any file is written: a failure here leaves nothing, as for the others
            from monaiunetseg.measure.shape import measure_labelmap

            measured = measure_labelmap(labels, affine, image=(array, affine))
            res.add_measurements(measured)

    source = {**source_record(case, digest, model), **res.verdict_record()}
    with StagedFiles() as staged:
        if options.dicom_seg and case.kind == "dicom":
            from monaiunetseg.io.dicom_seg import write_dicom_seg

            seg_tmp = staged.path(paths.dicom_seg)
            try:
                write_dicom_seg(labels, volume.datasets, seg_tmp, volume.frame_slices)  # type: ignore[union-attr]
                res.dicom_seg = str(paths.dicom_seg)
            except Exception as exc:  # noqa: BLE001  the SEG is an extra: the labelmap is still written
                staged.drop(seg_tmp)
                res.note = seg_failed_note(exc)
        elif options.dicom_seg:
            res.note = no_seg_note(case)
        if options.overlay:
            from monaiunetseg.visual.overlay import write_overlay

            with step("overlay"):
                title = f"{case.name} (research use only)"
                write_overlay(array, labels, affine, staged.path(paths.overlay), title=title,
                              verdict=verdict.caption() if verdict else None, review=bool(verdict and verdict.review),
                              measurements=measured)  # the measured slice with its diameters drawn
            res.overlay = str(paths.overlay)
        if probabilities is not None:
            with step("probabilities"):
                write_labelmap(probabilities, volume, staged.path(paths.probabilities), source=source)
            res.probabilities = str(paths.probabilities)
        t_extras = time.perf_counter()
        with step("labelmap"):  # staged last: committed last, so its presence means the case is complete
            write_labelmap(labels, volume, staged.path(paths.labelmap), source=source)
        with step("commit"):
            staged.commit()
    res.output = str(paths.labelmap)
    res.model = model_label(model)
    t_end = time.perf_counter()
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    res.seconds = t_end - t0
    st = segmenter.timings
    res.timings = {"hash": t_hash - t0, "read": t_read - t_hash, "preprocess": st.preprocess, "model": st.model,
                   "invert": st.postprocess, "segment": t_labels - t_read, "assess": t_seg - t_labels,
                   "extras": t_extras - t_seg,
                   "write": t_end - t_extras, "total": t_end - t0}
    return res


def seg_failed_note(exc: Exception) -> str:
    """The row's note when the DICOM SEG could not be made: the case stays ok with its labelmap (the result is
    there; only its DICOM form is missing), and the next run tries the SEG again."""
    return f"DICOM SEG not written (dicom-seg: {describe(exc)}); labelmap written"


def assess_case(case: Case, segmenter, array: np.ndarray, affine: np.ndarray):
    """The case's verdict (``trust.assessment.Assessment``): the segmenter's prediction signals, the image's
    checks and, for a DICOM series, its header's; None for a segmenter without a confidence model."""
    if not hasattr(segmenter, "assess"):
        return None
    header = None
    if case.series is not None:
        from monaiunetseg.trust.input_checks import check_dicom_series

        header = check_dicom_series(case.series)
    return segmenter.assess(array, affine, header)


def failure_result(case: Case, exc: Exception) -> CaseResult:
    """The failed row of ``case`` for ``exc``: the input, the step (when known) and the problem."""
    res = base_result(case)
    res.status = FAILED
    where = case.series.label() if case.series else str(case.source)
    at = ""
    if isinstance(exc, CaseStepError):
        at, exc = f"{exc.step}: ", exc.error  # type: ignore[assignment]
    if isinstance(exc, SELF_DESCRIBING):
        res.error = str(exc)
    elif isinstance(exc, PLAIN_MESSAGE):
        res.error = f"{where}: {at}{exc}"
    else:
        res.error = f"{where}: {at}{describe(exc)}"
    return res


def is_non_finite(exc: Exception) -> bool:
    """Whether a case failed because the model's output was NaN/infinite (see ``run_batch``'s abort rule)."""
    return isinstance(getattr(exc, "error", exc), NonFiniteOutputError)
