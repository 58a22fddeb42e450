"""Batch inference: find cases in the inputs, shard them, segment each once, and keep a report.

Designed for long unattended runs: one bad file fails its own case and the batch goes on; every output is
written atomically and a rerun skips cases whose outputs exist (each labelmap records which input it is the
result of, so another input's result is never taken for or written over this one's), so a killed batch resumes
where it stopped; the report is rewritten (atomically) after every case; the model is loaded once and per-case
arrays are freed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from monaiunetseg.batch.discover import Case, discover_cases, shard
from monaiunetseg.batch.naming import OutputPaths, output_paths
from monaiunetseg.batch.record import RunRecord
from monaiunetseg.batch.report import (
    FAILED,
    OK,
    PENDING,
    SKIPPED,
    CaseResult,
    Status,
    earlier_rows,
    report_path,
    write_report,
)
from monaiunetseg.batch.resume import base_result, existing_result, no_seg_note, source_record
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.io.dicom_series import DicomSeriesError
from monaiunetseg.io.itk_reader import ItkInputError
from monaiunetseg.io.labelmap import write_labelmap
from monaiunetseg.io.nifti import NiftiInputError
from monaiunetseg.io.nrrd_mha import ImageInputError

# Input errors whose message already names the file and the problem (reported as they are).
INPUT_ERRORS = (NiftiInputError, ImageInputError, ItkInputError, DicomSeriesError)

try:
    from tqdm import tqdm
except ImportError:  # e.g. Slicer's Python: the same batch, without a progress bar

    class tqdm:  # type: ignore[no-redef]
        """Stand-in for the few ``tqdm`` features used here: iterates and shows nothing."""

        def __init__(self, iterable, **_kwargs) -> None:
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix_str(self, _text: str) -> None:
            pass

        def close(self) -> None:
            pass

        @staticmethod
        def write(text: str, file=None) -> None:
            print(text, file=file)


@dataclass
class BatchOptions:
    """What ``monaiunetseg segment`` was asked to do (see ``segment_cli``)."""

    device: str = "auto"
    dicom_seg: bool = False
    overwrite: bool = False
    all_series: bool = False
    overlay: bool = False
    num_shards: int = 1
    shard_id: int = 0
    bundle: str | None = None
    weights: str | None = None
    progress: bool = True
    output_format: str = "same"  # labelmap format: same (as the input; NIfTI for DICOM), nifti, nrrd or mha


@dataclass
class BatchResult:
    results: list[CaseResult]
    report: Path
    n_cases_total: int  # before sharding
    seconds: float

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def n_existing(self) -> int:
        return sum(r.status == OK and r.seconds is None for r in self.results)

    @property
    def exit_code(self) -> int:
        return 1 if self.count(FAILED) else 0

    def summary(self) -> str:
        shard = f" (this shard of {self.n_cases_total})" if len(self.results) != self.n_cases_total else ""
        return (f"segment: {len(self.results)} case(s){shard}: {self.count(OK)} ok ({self.n_existing} already done), "
                f"{self.count(FAILED)} failed, {self.count(SKIPPED)} skipped in {self.seconds:.1f} s; report: {self.report}")


def check_out_dir(inputs: Iterable[str | os.PathLike], out_dir: Path) -> None:
    """Refuse an output folder inside an input folder or equal to an input file's folder: results are never
    written among the inputs (and a later scan of the inputs would pick them up)."""
    out = Path(out_dir).resolve()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            continue
        real = p.resolve()
        if real.is_dir() and (out == real or real in out.parents):
            raise ValueError(f"output folder {out_dir} is inside the input folder {p}; choose an output folder "
                             "outside the inputs")
        if real.is_file() and out == real.parent:
            raise ValueError(f"output folder {out_dir} is the folder of the input {p}; choose another output folder "
                             "so that results are not written next to the inputs")


def read_volume(case: Case):
    """The case's volume (``.array`` float32 (i, j, k), ``.affine`` RAS, plus what its writer needs), by kind."""
    if case.kind == "nifti":
        from monaiunetseg.io.nifti import read_nifti_volume

        return read_nifti_volume(case.source)
    if case.kind in ("nrrd", "metaimage"):
        from monaiunetseg.io.nrrd_mha import read_image_volume

        return read_image_volume(case.source)
    if case.kind == "itk":
        from monaiunetseg.io.itk_reader import read_itk_volume

        return read_itk_volume(case.source)
    from monaiunetseg.io.dicom_volume import load_volume

    return load_volume(case.series)  # type: ignore[arg-type]


def segment_case(case: Case, paths: OutputPaths, segmenter, options: BatchOptions,
                 input_files: frozenset[str] = frozenset()) -> CaseResult:
    """Read, segment and write one case; raises on any problem (the caller turns it into a failed row)."""
    for p in (paths.labelmap, paths.dicom_seg, paths.overlay):
        if os.path.realpath(p) in input_files:
            raise ValueError(f"{p}: output would overwrite an input file")
    res = base_result(case)
    t0 = time.perf_counter()
    volume = read_volume(case)
    array, affine = volume.array, volume.affine
    t_read = time.perf_counter()
    labels = segmenter.segment(array, affine)
    t_seg = time.perf_counter()
    write_labelmap(labels, volume, paths.labelmap, source=source_record(case))
    res.output = str(paths.labelmap)
    t_write = time.perf_counter()
    if options.dicom_seg:
        if case.kind == "dicom":
            from monaiunetseg.io.dicom_seg import write_dicom_seg

            res.dicom_seg = str(write_dicom_seg(labels, volume.datasets, paths.dicom_seg, volume.frame_slices))
        else:
            res.note = no_seg_note(case)
    if options.overlay:
        from monaiunetseg.io.overlay import write_overlay

        res.overlay = str(write_overlay(array, labels, affine, paths.overlay, title=f"{case.name} (research use only)"))
    t_end = time.perf_counter()
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    res.seconds = t_end - t0
    st = segmenter.timings
    res.timings = {"read": t_read - t0, "preprocess": st.preprocess, "model": st.model, "invert": st.postprocess,
                   "segment": t_seg - t_read, "write": t_write - t_seg, "extras": t_end - t_write, "total": t_end - t0}
    return res


def failure_result(case: Case, exc: Exception) -> CaseResult:
    res = base_result(case)
    res.status = FAILED
    message = str(exc) or exc.__class__.__name__
    if isinstance(exc, INPUT_ERRORS):
        res.error = message
    else:
        where = case.series.label() if case.series else str(case.source)
        res.error = f"{where}: {exc.__class__.__name__}: {message}"
    return res


def require_inputs(files: list[str], folder: str | os.PathLike) -> list[str]:
    """``files`` if there are any, else a clear error naming ``folder`` (the bundle's ``inference`` inputs)."""
    if not files:
        raise FileNotFoundError(f"{folder}: no NIfTI files (*.nii, *.nii.gz) to segment; give --input_dir")
    return files


def run_batch(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, options: BatchOptions | None = None,
              segmenter=None) -> BatchResult:
    """Segment every case of this shard of ``inputs`` into ``out_dir``; never raises for a bad case.

    ``segmenter`` (an :class:`~monaiunetseg.model.predictor.Segmenter`) is created on first need when not given.
    """
    options = options or BatchOptions()
    started = time.perf_counter()
    inputs = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    check_out_dir(inputs, out_dir)
    all_cases = discover_cases(inputs, all_series=options.all_series)
    cases = shard(all_cases, options.num_shards, options.shard_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_path(out_dir, options.num_shards, options.shard_id)
    input_files = frozenset(os.path.realpath(c.source) for c in all_cases if c.is_file)

    earlier = earlier_rows(report, {str(c.source) for c in cases})  # a rerun with other inputs adds rows
    results: list[CaseResult] = []
    todo: list[tuple[int, Case, OutputPaths]] = []
    for case in cases:
        if case.status:  # decided at discovery
            res = base_result(case)
            res.status, res.error = case.status, case.problem
            results.append(res)
            continue
        paths = output_paths(out_dir, case, options.output_format)
        existing = None if options.overwrite else existing_result(case, paths, options)
        if existing is None:
            existing = base_result(case)
            existing.status = PENDING
        results.append(existing)
        if existing.status == PENDING:
            todo.append((len(results) - 1, case, paths))
    write_report(results, report, earlier)
    record = RunRecord.start(out_dir, options, inputs, started)  # run.json: what produced these results

    def show(result: CaseResult, case: Case) -> None:  # one line per case, live, so a long batch reads as it goes
        if options.progress:
            tqdm.write(result.line(case.name), file=sys.stderr if result.status == FAILED else sys.stdout)

    for case, result in zip(cases, results):
        if result.status != PENDING:
            show(result, case)
    if todo and segmenter is None:  # once per batch; a missing model or device is a batch error, not per case
        from monaiunetseg.model.predictor import Segmenter

        segmenter = Segmenter(options.bundle, device=options.device, weights=options.weights)
    # The bar (stderr) only where it can redraw: disable=None lets tqdm turn it off when stderr is no terminal.
    bar = tqdm(todo, desc="segment", unit="case", disable=True if not options.progress or not todo else None)
    for index, case, paths in bar:
        bar.set_postfix_str(case.name[-40:])
        t0 = time.perf_counter()
        try:
            results[index] = segment_case(case, paths, segmenter, options, input_files)
        except Exception as exc:  # a bad case never stops the batch
            results[index] = failure_result(case, exc)
            results[index].seconds = time.perf_counter() - t0
        show(results[index], case)
        write_report(results, report, earlier)
    bar.close()
    record.finish(cases, results, segmenter if todo else None)
    return BatchResult(results, report, len(all_cases), time.perf_counter() - started)
