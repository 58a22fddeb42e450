"""Batch inference: find cases in the inputs, shard them, segment each once, and keep a report.

Designed for long unattended runs: one bad file fails its own case and the batch goes on; a case's outputs
are written together or not at all (``batch.case``); a rerun skips cases whose outputs exist and were made
from the same input content (each labelmap records its source and a hash of it), so a killed batch resumes
where it stopped and a replaced scan is redone; the output folder is held by one run at a time
(``batch.lock``), and files the tool did not write are never replaced (``batch.outdir``); the report is
rebuilt from per-case records (``batch.records``) after every case, and ``run.json`` (``batch.record``) says
what produced the results; the model is loaded once and per-case arrays are freed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from monaiunetseg.batch.case import (  # noqa: F401  (re-exported: segment_case, failure_result, read_volume)
    CaseStepError,
    failure_result,
    is_non_finite,
    read_volume,
    segment_case,
)
from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.discover import discover_cases, shard
from monaiunetseg.batch.lock import OutputLock
from monaiunetseg.batch.model_key import key_of
from monaiunetseg.batch.naming import OutputPaths, output_paths
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.outdir import (
    check_out_dir,
    folder_error,
    foreign_files,
    is_output_name,
    prepare_out_dir,
    refuse_foreign,
    remove_stale_outputs,
    stale_note,
)
from monaiunetseg.batch.record import RunRecord, record_path
from monaiunetseg.batch.records import CaseRecords
from monaiunetseg.batch.report import (
    FAILED,
    OK,
    PENDING,
    SKIPPED,
    CaseResult,
    Status,
    foreign_reports,
    json_path,
    report_path,
    shard_label,
    write_report,
)
from monaiunetseg.batch.resume import base_result, existing_result
from monaiunetseg.files import printable, stale_parts

# A model whose output is NaN/infinite on each of its first cases is broken, not the cases: stop the batch.
ABORT_AFTER_NON_FINITE = 3

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
        return printable(f"segment: {len(self.results)} case(s){shard}: {self.count(OK)} ok ({self.n_existing} already done), "
                f"{self.count(FAILED)} failed, {self.count(SKIPPED)} skipped in {self.seconds:.1f} s; report: {self.report}")


class ModelOutputError(RuntimeError):
    """The model gave non-finite output on every case it ran: the batch stopped (exit code 2)."""


def require_inputs(files: list[str], folder: str | os.PathLike) -> list[str]:
    """``files`` if there are any, else a clear error naming ``folder`` (the bundle's ``inference`` inputs)."""
    if not files:
        raise FileNotFoundError(f"{folder}: no NIfTI files (*.nii, *.nii.gz) to segment; give --input_dir")
    return files


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def output_candidates(paths: OutputPaths, case: Case, options: BatchOptions) -> list[tuple[Path, str]]:
    """The files a case may write, with their kinds (what ``outdir.is_ours`` checks them as)."""
    found = [(paths.labelmap, "labelmap")]
    if options.dicom_seg and case.kind == "dicom":
        found.append((paths.dicom_seg, "dicom_seg"))
    if options.overlay:
        found.append((paths.overlay, "overlay"))
    if options.save_probabilities:
        found.append((paths.probabilities, "labelmap"))  # same headers as a labelmap, float32
    return found


class _Report:
    """This run's rows, their records and the report files rebuilt from them; write errors are exit-2 errors."""

    def __init__(self, out_dir: Path, path: Path, inputs: list[Path], legacy: bool, shard: str = "") -> None:
        self.path, self.shard = path, shard
        self.records = CaseRecords(out_dir, path.name)
        try:
            self.records.start(inputs, legacy_report=path if legacy else None)
        except OSError as exc:
            raise folder_error(exc, f"the case records in {out_dir}") from exc

    def put(self, results: list[CaseResult], indices: Iterable[int]) -> None:
        try:
            for i in indices:
                results[i].shard = self.shard  # where a merge of the shards finds it (merge-reports)
                self.records.put(results[i], i)
            write_report(self.records.rows(), self.path)
        except OSError as exc:
            raise folder_error(exc, f"the report {self.path}") from exc


def run_batch(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, options: BatchOptions | None = None,
              segmenter=None) -> BatchResult:
    """Segment every case of this shard of ``inputs`` into ``out_dir``; never raises for a bad case.

    Raises :class:`~monaiunetseg.batch.outdir.OutputFolderError` (and ``ValueError`` for outputs among the
    inputs) before any work when the output folder cannot be used. ``segmenter`` (an
    :class:`~monaiunetseg.model.predictor.Segmenter`) is created on first need when not given.
    """
    options = options or BatchOptions()
    started = time.perf_counter()
    inputs = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    check_out_dir(inputs, out_dir)
    shard([], options.num_shards, options.shard_id)  # validates N and K before anything is created
    prepare_out_dir(out_dir)
    lock = OutputLock(out_dir, options.num_shards, options.shard_id, wait=options.wait, on_wait=_say)
    try:
        lock.acquire()
    except OSError as exc:
        raise folder_error(exc, f"the lock file in {out_dir}") from exc
    try:
        return _run_held(inputs, out_dir, options, segmenter, lock.exclusive, started)
    finally:
        lock.release()


def _run_held(inputs: list[Path], out_dir: Path, options: BatchOptions, segmenter, whole_folder: bool,
              started: float) -> BatchResult:
    """:func:`run_batch` once the output folder is held (``whole_folder``: not just this shard's part)."""
    all_cases = discover_cases(inputs, all_series=options.all_series, include_labelmaps=options.include_labelmaps)
    cases = shard(all_cases, options.num_shards, options.shard_id)
    report = report_path(out_dir, options.num_shards, options.shard_id)
    run_json = record_path(out_dir, options.num_shards, options.shard_id)
    CaseRecords(out_dir, report.name).check_folders()  # before any work: never write through a link
    mine: Callable[[str], bool] | set[str] = is_output_name  # whose temporary files a killed run may have left: all of ours, or only this shard's
    if not whole_folder:
        mine = {report.name, json_path(report).name, run_json.name}
        mine |= {p.name for c in cases for p in dataclasses.astuple(output_paths(out_dir, c, options.output_format))}
    for part in stale_parts(out_dir, mine):  # no one else writes these now: the folder (or shard) is held
        part.unlink()
    foreign = foreign_reports(report)
    if not options.overwrite:
        refuse_foreign(foreign + foreign_files([(run_json, "run_record")]))
    input_files = frozenset(os.path.realpath(c.source) for c in all_cases if c.is_file)
    model = key_of(options, segmenter)  # resume keeps only this model's outputs

    results: list[CaseResult] = []
    todo: list[tuple[int, Case, OutputPaths, str]] = []
    for case in cases:
        if case.status:  # decided at discovery
            res = base_result(case)
            res.status, res.error = case.status, case.problem
            results.append(res)
            continue
        paths = output_paths(out_dir, case, options.output_format)
        existing = "" if options.overwrite else existing_result(case, paths, options, model)
        if isinstance(existing, CaseResult):
            results.append(existing)
            continue
        res = base_result(case)
        res.status = PENDING
        results.append(res)
        todo.append((len(results) - 1, case, paths, existing))
    if not options.overwrite:
        candidates = [pair for _, case, paths, _ in todo for pair in output_candidates(paths, case, options)]
        refuse_foreign(foreign_files(candidates))

    if todo and segmenter is None:  # before any report is written: a bad model or device is a command error
        from monaiunetseg.model.predictor import Segmenter

        segmenter = Segmenter(options.bundle, device=options.device, weights=options.weights, model=options.model)
    book = _Report(out_dir, report, inputs, legacy=report.exists() and report not in foreign,
                   shard=shard_label(options.num_shards, options.shard_id))
    book.put(results, range(len(results)))
    try:
        record = RunRecord.start(out_dir, options, inputs, started)  # run.json: what produced these results
    except OSError as exc:
        raise folder_error(exc, f"the run record {run_json}") from exc
    for case, res in zip(cases, results):
        if res.status != PENDING:
            _show(res, case, options)
    try:
        _segment_all(todo, results, book, segmenter, options, input_files, model)
        _remove_stale(out_dir, cases, results, book)
    finally:  # a batch stopped for a broken model is recorded too
        try:
            record.finish(cases, results, segmenter if todo else None)
        except OSError as exc:
            raise folder_error(exc, f"the run record {run_json}") from exc
    return BatchResult(results, report, len(all_cases), time.perf_counter() - started)


def _remove_stale(out_dir: Path, cases: list[Case], results: list[CaseResult], book: _Report) -> None:
    """Earlier outputs of file inputs whose row is now skipped or failed are removed (``resume``), saying so in
    the row: an input changed into a label map, or into something unreadable, leaves no old labelmap behind."""
    failed = {os.path.realpath(c.source): i for i, (c, r) in enumerate(zip(cases, results))
              if r.status in (SKIPPED, FAILED) and c.source.is_file() and " already holds the result of " not in r.error}
    removed = remove_stale_outputs(out_dir, set(failed))
    for source, files in removed.items():
        res = results[failed[source]]
        res.note = "; ".join(t for t in (res.note, stale_note(files)) if t)
    if removed:
        book.put(results, [failed[s] for s in removed])


def _show(result: CaseResult, case: Case, options: BatchOptions) -> None:
    """One line per case, live, so that a long batch reads as it goes (failures on stderr)."""
    if options.progress:
        tqdm.write(result.line(case.name), file=sys.stderr if result.status == FAILED else sys.stdout)


def _segment_all(todo: list[tuple[int, Case, OutputPaths, str]], results: list[CaseResult], book: _Report,
                 segmenter, options: BatchOptions, input_files: frozenset[str], model: dict | None) -> None:
    """Segment the ``todo`` cases in order, recording each; stop when the model itself is broken."""
    # The bar (stderr) only where it can redraw: disable=None lets tqdm turn it off when stderr is no terminal.
    bar = tqdm(todo, desc="segment", unit="case", disable=True if not options.progress or not todo else None)
    model_ok = non_finite = 0
    for n, (index, case, paths, reason) in enumerate(bar):
        bar.set_postfix_str(case.name[-40:])
        t0 = time.perf_counter()
        try:
            res = segment_case(case, paths, segmenter, options, input_files, model)
            model_ok += 1
        except Exception as exc:  # a bad case never stops the batch
            res = failure_result(case, exc)
            res.seconds = time.perf_counter() - t0
            if is_non_finite(exc):
                non_finite += 1
            elif isinstance(exc, CaseStepError) and exc.step not in ("read", "segment"):
                model_ok += 1
        res.note = "; ".join(t for t in (reason, res.note) if t)
        results[index] = res
        _show(res, case, options)
        book.put(results, [index])
        if non_finite and not model_ok and (non_finite >= ABORT_AFTER_NON_FINITE or n == len(todo) - 1):
            bar.close()
            _abort(todo[n + 1:], results, book, res.error)
    bar.close()


def _abort(rest: list[tuple[int, Case, OutputPaths, str]], results: list[CaseResult], book: _Report,
           error: str) -> None:
    """Fail the cases not run, record them, and raise :class:`ModelOutputError`."""
    why = error.split(": segment: ", 1)[-1]
    for index, case, _, _ in rest:
        res = base_result(case)
        res.status = FAILED
        res.error = f"{case.series.label() if case.series else case.source}: not run: the batch stopped ({why})"
        results[index] = res
    book.put(results, [index for index, *_ in rest])
    not_run = f"; {len(rest)} case(s) not run" if rest else ""
    raise ModelOutputError(f"the model gave NaN or infinite output for every case it ran ({why}): the batch "
                           f"stopped{not_run}; check the weights. Report: {book.path}")
