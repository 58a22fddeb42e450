"""``monaiunetseg segment-case``: one input, one labelmap, one JSON result.

For callers that run one case at a time in their own process (the 3D Slicer module's background jobs) and
need its outcome as data, not as a row to find in ``report.csv``. The work is the batch's
(``discover_cases``, ``output_paths``, ``existing_result``, ``segment_case``); only the "exactly one case"
rule and the JSON result are added here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from monaiunetseg.batch.case import failure_result, segment_case
from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.cli import (
    add_input_options,
    add_measure_option,
    add_model_options,
    add_probability_option,
    add_strict_option,
    apply_input_options,
    check_model_options,
)
from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.lock import OutputLock
from monaiunetseg.batch.model_key import key_of
from monaiunetseg.batch.naming import OUTPUT_FORMATS, output_paths
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.outdir import check_out_dir, folder_error, foreign_files, prepare_out_dir, refuse_foreign
from monaiunetseg.batch.record import RunRecord, record_path
from monaiunetseg.batch.report import FAILED, OK, SKIPPED, CaseResult
from monaiunetseg.batch.resume import existing_result
from monaiunetseg.batch.run import output_candidates
from monaiunetseg.files import check_output_file, printable, stale_parts, write_text_atomic

# The caller named one series: it is segmented whatever it shows (no FLAIR check; a series that is no volume is
# still skipped). A folder holding several 3D series fails: which one was meant is not guessed.
ALL_SERIES = True
# Likewise a file that looks like a label map (the Slicer module sends scalar volumes only, whatever their names).
INCLUDE_LABELMAPS = True


def _failed(result: CaseResult, error: str) -> CaseResult:
    result.status, result.error = FAILED, error
    return result


def _not_one_case(input_path: Path, cases: list[Case], runnable: list[Case]) -> CaseResult:
    """The failed result of an input that is not exactly one case (nothing to segment, or several series)."""
    result = CaseResult(input=str(input_path))
    if runnable:
        names = "; ".join(c.series.label() if c.series else str(c.source) for c in runnable)
        return _failed(result, f"{input_path}: {len(runnable)} series found ({names}); give one series folder")
    problems = [c.problem for c in cases if c.problem]
    return _failed(result, "; ".join(problems) or f"{input_path}: nothing to segment")


def single_case(input_path: str | os.PathLike) -> Case | CaseResult:
    """The one case ``input_path`` is, or the failed result saying why it is not exactly one."""
    input_path = Path(os.path.abspath(input_path))
    cases = discover_cases([input_path], all_series=ALL_SERIES, include_labelmaps=INCLUDE_LABELMAPS)
    runnable = [c for c in cases if c.kind != "problem"]
    return runnable[0] if len(runnable) == 1 else _not_one_case(input_path, cases, runnable)


def segment_single(input_path: str | os.PathLike, out_dir: str | os.PathLike, options: BatchOptions | None = None,
                   segmenter=None) -> CaseResult:
    """Segment one image file or DICOM series folder into ``out_dir``; a bad input gives a failed result.

    Raises only for what is wrong with the request rather than the input (output folder among the inputs, not
    writable or in use, a file MONAIUNetSeg did not write under the output's name, unknown device, unusable
    bundle or weights), as ``segment`` does. The model is loaded (when ``segmenter`` is None) only once the
    input is known to be one case that still needs segmenting. The output folder is held as ``segment`` holds it.
    """
    options = options or BatchOptions()
    out_dir = Path(out_dir).absolute()
    check_out_dir([input_path], out_dir)
    case = single_case(input_path)
    if isinstance(case, CaseResult):
        return case
    prepare_out_dir(out_dir)
    lock = OutputLock(out_dir, wait=options.wait)
    try:
        lock.acquire()
    except OSError as exc:
        raise folder_error(exc, f"the lock file in {out_dir}") from exc
    try:
        started = time.perf_counter()
        run_json = record_path(out_dir, 1, 0)
        try:  # run.json, as segment writes it: what produced this result (versions, weights, input hash)
            record = RunRecord.start(out_dir, options, [case.source], started, command="segment-case")
        except OSError as exc:
            raise folder_error(exc, f"the run record {run_json}") from exc
        result, used = _segment_held(case, out_dir, options, segmenter)
        try:
            record.finish([case], [result], used)
        except OSError as exc:
            raise folder_error(exc, f"the run record {run_json}") from exc
        return result
    finally:
        lock.release()


def _segment_held(case: Case, out_dir: Path, options: BatchOptions, segmenter) -> tuple[CaseResult, object]:
    """The case's result, and the segmenter that made it (None when an earlier result was kept)."""
    paths = output_paths(out_dir, case, options.output_format)
    for part in stale_parts(out_dir, [p.name for p, _ in output_candidates(paths, case, options)]):  # left by a killed run
        part.unlink()
    model = key_of(options, segmenter)  # resume keeps only this model's outputs
    existing = "" if options.overwrite else existing_result(case, paths, options, model)
    if isinstance(existing, CaseResult):
        return existing, None
    if not options.overwrite:
        refuse_foreign(foreign_files(output_candidates(paths, case, options)))
    if segmenter is None:
        from monaiunetseg.model.predictor import Segmenter

        segmenter = Segmenter(options.bundle, device=options.device, weights=options.weights, model=options.model)
    input_files = frozenset([os.path.realpath(case.source)] if case.is_file else [])
    t0 = time.perf_counter()
    try:
        result = segment_case(case, paths, segmenter, options, input_files, model)
    except Exception as exc:  # a bad case is a result, not a crash
        result = failure_result(case, exc)
        result.seconds = time.perf_counter() - t0
    result.note = "; ".join(t for t in (existing, result.note) if t)
    return result, segmenter


def result_json(result: CaseResult) -> str:
    """The result file's text: every ``CaseResult`` field, ``status`` as its plain word."""
    data = dataclasses.asdict(result)
    data["status"] = str(result.status)
    return json.dumps(data, indent=2) + "\n"


def _is_result_file(path: Path) -> bool:
    """An empty file (made by the caller to reserve the name) or an earlier result of this command."""
    if path.stat().st_size == 0:
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"status", "input", "output", "error"} <= set(data)


def check_result_path(result_json: str | os.PathLike, input_path: str | os.PathLike,
                      out_dir: str | os.PathLike) -> None:
    """Refuse (``ValueError``: exit code 2, nothing written) a ``--result-json`` that would replace something:
    the input or a file among the inputs, a name of the output folder's own files, a link, or any existing file
    that is no earlier result. Called before any work, since the result file is written even for a bad request."""
    path = Path(os.path.abspath(result_json))
    bad = f"--result-json {path}"
    if os.path.islink(path):
        raise ValueError(f"{bad} is a symbolic link (to {os.readlink(path)}); give the path of a plain file")
    real, out = Path(os.path.realpath(path)), Path(os.path.realpath(out_dir))
    if real != Path(os.path.realpath(input_path)):  # the input itself: check_output_file says so
        ours = real.parent == out and (real.suffix != ".json" or real.name.startswith((".", "run", "report")))
        if ours or (out / ".monaiunetseg") in real.parents:  # outputs, report, run record, lock; per-case records
            raise ValueError(f"{bad} has the name of a file MONAIUNetSeg writes in the output folder {out_dir}; "
                             "give another result path")
    check_output_file(result_json, [input_path], _is_result_file, "--result-json", "segment-case result file")


def _segment_case(args: argparse.Namespace) -> int:
    check_result_path(args.result_json, args.input, args.out_dir)  # before anything, even the failed-result file
    options = BatchOptions(device=args.device, overwrite=args.overwrite, bundle=args.bundle, weights=args.weights,
                           model=args.model, progress=False, output_format=args.output_format, wait=args.wait,
                           save_probabilities=args.save_probabilities, strict=args.strict, measure=args.measure)
    try:
        check_model_options(args)  # fail before any work, as ``segment`` does
        apply_input_options(args)
        result = segment_single(args.input, args.out_dir, options)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # the request itself: still say so in the file
        failed = _failed(CaseResult(input=str(Path(os.path.abspath(args.input)))), str(exc))
        write_text_atomic(args.result_json, result_json(failed))
        raise  # cli.main prints it and exits 2
    write_text_atomic(args.result_json, result_json(result))
    if result.status == OK:
        flag = f"; REVIEW: {result.review_reasons}" if result.review == "yes" else ""
        conf = "" if result.confidence is None else f", confidence {result.confidence:.2f}"
        print(printable(f"segment-case: ok: {result.output} ({result.volume_ml:.1f} mL{conf}{flag}); "
                        f"result: {args.result_json}"))
        return 0
    if result.status == SKIPPED:
        print(printable(f"segment-case: skipped: {result.error}; result: {args.result_json}"))
        return 1
    print(printable(f"FAILED  {result.error}"), file=sys.stderr)
    print(printable(f"segment-case: failed; result: {args.result_json}"))
    return 1


def add_segment_case_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment-case`` on the ``monaiunetseg`` subcommand parsers (called by ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "segment-case",
        help="segment one image file or DICOM series folder and write its result as JSON",
        description="Segment the FLAIR abnormality in exactly one input (research use only, not for diagnosis): "
                    "an image file (NIfTI, NRRD, MetaImage, ...) or a folder holding one 3D DICOM series (any series: no FLAIR check). Writes "
                    "<name>_seg.nii.gz (or the input's format) into OUTDIR (kept when it already holds this input's result, unless "
                    "--overwrite) and the result JSON (status ok/failed, input, output, volume_ml, seconds, "
                    "error, ...). Exit code 0 ok, 1 failed case (JSON written), 2 bad request.",
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="NIfTI file or DICOM series folder")
    p.add_argument("-o", "--out-dir", dest="out_dir", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (must not be inside the input folder)")
    p.add_argument("--result-json", dest="result_json", type=Path, required=True, metavar="PATH",
                   help="where to write the JSON result (atomically)")
    add_model_options(p)
    add_input_options(p)
    add_probability_option(p)
    add_strict_option(p)
    add_measure_option(p)
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="same",
                   help="labelmap format: same (default: the input's own; NIfTI for DICOM), nifti, nrrd or mha")
    p.add_argument("--overwrite", action="store_true",
                   help="redo the case when its output exists; replace a file MONAIUNetSeg did not write there")
    p.add_argument("--wait", action="store_true", help="if another run holds OUTDIR, wait for it (default: exit 2)")
    p.set_defaults(func=_segment_case)
    return p
