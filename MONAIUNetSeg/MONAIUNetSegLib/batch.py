"""Batch inference: find cases in the inputs, shard them, segment each once, and keep a report.

Designed for long unattended runs: one bad file fails its own case and the batch goes on; every output is
written atomically and a rerun skips cases whose outputs exist (each labelmap records which input it is the
result of, so another input's result is never taken for or written over this one's), so a killed batch resumes
where it stopped; the report is rewritten (atomically) after every case; the model is loaded once and per-case
arrays are freed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .atomic import write_text_atomic
from .background import REPORT_NAME
from .convention import voxel_volume_ml
from .dicom_series import (
    DICOM_SUFFIXES,
    LPS_TO_RAS,
    DicomFile,
    DicomSeries,
    DicomSeriesError,
    flair_evidence,
    group_series,
    has_dicom_magic,
    is_image_series,
    load_series_volume,
    not_a_volume,
    read_header,
    sort_slices,
)
from .nifti_io import (
    NiftiInputError,
    grid_of,
    is_nifti_path,
    is_our_labelmap,
    nifti_stem,
    read_nifti_volume,
    read_source_record,
    write_labelmap,
    write_labelmap_like,
)

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


REPORT_COLUMNS = ["input", "output", "status", "error", "volume_ml", "seconds", "series_uid", "series_description",
                  "dicom_seg", "overlay", "note"]
OK, FAILED, SKIPPED, PENDING = "ok", "failed", "skipped", "pending"  # pending: not reached (yet)
LABELMAP_SUFFIX, SEG_SUFFIX, OVERLAY_SUFFIX = "_seg.nii.gz", "_seg.dcm", "_overlay.png"
NO_SEG_FOR_NIFTI = "DICOM SEG not written: it needs a DICOM source series (this input is NIfTI)"
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


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


@dataclass
class Case:
    """One unit of work: a NIfTI file or a DICOM series; or a problem found while looking for them."""

    kind: str  # "nifti", "dicom" or "problem"
    source: Path  # NIfTI file, DICOM series folder, or the offending file/folder
    series: DicomSeries | None = None
    status: str | None = None  # preset (failed/skipped) when discovery already decided
    problem: str = ""
    name: str = ""  # output stem, unique in the batch

    @property
    def key(self) -> tuple[str, str]:
        """Sort/shard key: stable for the same inputs, whatever order the file system lists them in."""
        return (str(self.source), self.series.uid if self.series else "")

    @property
    def series_uid(self) -> str:
        return self.series.uid if self.series else ""

    @property
    def series_description(self) -> str:
        return self.series.description if self.series else ""


@dataclass
class CaseResult:
    """One report row, plus stage timings for benchmarks (not written to the report)."""

    input: str
    output: str = ""
    status: str = OK
    error: str = ""
    volume_ml: float | None = None
    seconds: float | None = None
    series_uid: str = ""
    series_description: str = ""
    dicom_seg: str = ""
    overlay: str = ""
    note: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, str]:
        values = {c: getattr(self, c) for c in REPORT_COLUMNS}
        values["volume_ml"] = "" if self.volume_ml is None else f"{self.volume_ml:.3f}"
        values["seconds"] = "" if self.seconds is None else f"{self.seconds:.3f}"
        return {k: str(v) for k, v in values.items()}


@dataclass
class OutputPaths:
    labelmap: Path
    dicom_seg: Path
    overlay: Path


@dataclass
class BatchResult:
    results: list[CaseResult]
    report: Path
    n_cases_total: int  # before sharding
    seconds: float

    def count(self, status: str) -> int:
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


# ----------------------------------------------------------------------------------------------- discovery


def _problem(path: Path, status: str, message: str) -> Case:
    return Case("problem", path, status=status, problem=message)


def _scan_file(path: Path, explicit: bool) -> Path | DicomFile | Case | None:
    """Classify one file: a NIfTI path, a DICOM header, a problem case, or None (neither; ignored in folders).

    ``explicit``: the file was named on the command line, so "not an image" is a failure, not a skip.
    """
    if is_nifti_path(path):
        if is_our_labelmap(path):
            return _problem(path, SKIPPED, f"{path}: a labelmap written by MONAIUNetSeg (an earlier output), not a scan")
        return path
    if path.name.upper() == "DICOMDIR":  # the media index, not an image
        return None
    suffix_says_dicom = path.suffix.lower() in DICOM_SUFFIXES
    magic = has_dicom_magic(path)
    if magic or suffix_says_dicom or explicit:
        try:
            return read_header(path, force=not magic)
        except InvalidDicomError:
            if suffix_says_dicom:
                return _problem(path, FAILED, f"{path}: not a readable DICOM file (no DICOM header)")
        except DicomSeriesError as exc:
            if magic or suffix_says_dicom:
                return _problem(path, FAILED, str(exc))
    elif not path.suffix:  # extension-less files are common in DICOM exports; a few lack the preamble
        try:
            return read_header(path, force=True)
        except Exception:  # anything unparseable is simply not DICOM
            pass
    if explicit:
        return _problem(path, FAILED, f"{path}: not a NIfTI (.nii, .nii.gz) or DICOM file")
    return None


def _walk(folder: Path, onerror=None) -> Iterable[Path]:
    """Files under ``folder``, sorted, hidden files/folders (and our own temporary files) left out;
    ``onerror(OSError)`` is called for each folder that cannot be listed."""
    for root, dirs, files in os.walk(folder, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _series_uid_of_unreadable(path: Path) -> str:
    """SeriesInstanceUID of a file whose full header failed to read, if that one element still reads, else ''."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
        return str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:
        return ""


def _series_case(series: DicomSeries, all_series: bool, unreadable: list[str] | None = None) -> Case:
    if unreadable:  # a stack without those files may still look complete (first/last slice): never segment it
        return Case("problem", series.folder, series=series, status=FAILED,
                    problem=f"{series.label()}: incomplete series: {len(unreadable)} of its file(s) could not be "
                            f"read (e.g. {unreadable[0]}); not segmented")
    not_image = is_image_series(series)
    if not_image:
        return Case("problem", series.folder, series=series, status=SKIPPED, problem=f"{series.label()}: {not_image}")
    flair = flair_evidence(series)
    if not flair and not all_series:
        return Case("problem", series.folder, series=series, status=SKIPPED,
                    problem=f"{series.label()}: not a FLAIR series (use --all-series to segment every 3D series)")
    problem = not_a_volume(series)
    if problem:
        status = FAILED if flair else SKIPPED
        return Case("problem", series.folder, series=series, status=status, problem=f"{series.label()}: {problem}")
    return Case("dicom", series.folder, series=series)


def discover_cases(inputs: Iterable[str | os.PathLike], all_series: bool = False) -> list[Case]:
    """All cases in ``inputs`` (files and folder trees), sorted by :attr:`Case.key`.

    DICOM files from all inputs are grouped into series by SeriesInstanceUID; by default only FLAIR series
    are segmented (the others are reported as skipped). Problems (missing paths, unreadable files, empty
    folders) become failed cases; files that are neither NIfTI nor DICOM inside a folder become one skipped
    case per folder.
    """
    cases: list[Case] = []
    dicom_files: list[DicomFile] = []
    seen: set[str] = set()  # real paths already taken (the same file reached through two inputs counts once)
    unreadable: dict[str, list[str]] = {}  # SeriesInstanceUID -> its files that failed to read

    def scan(file: Path, explicit: bool) -> Path | DicomFile | Case | None:
        try:
            item = _scan_file(file, explicit)
        except Exception as exc:  # one unreadable file never stops the batch
            item = _problem(file, FAILED, f"{file}: cannot be read ({exc.__class__.__name__}: {exc})")
        if isinstance(item, Case) and item.status == FAILED:  # remember which series it would have belonged to
            uid = _series_uid_of_unreadable(file)
            if uid:
                unreadable.setdefault(uid, []).append(str(file))
        return item

    def unreadable_folder(exc: OSError) -> None:  # os.walk's onerror
        folder = Path(exc.filename) if exc.filename else path
        add(_problem(folder, FAILED, f"{folder}: cannot list folder ({exc.strerror or exc})"))

    def add(item: Path | DicomFile | Case) -> None:
        path = item.path if isinstance(item, DicomFile) else item.source if isinstance(item, Case) else item
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if isinstance(item, DicomFile):
            dicom_files.append(item)
        elif isinstance(item, Case):
            cases.append(item)
        else:
            cases.append(Case("nifti", item))

    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if path.is_file():
            add(scan(path, explicit=True))  # type: ignore[arg-type]  # explicit: never None
        elif path.is_dir():
            found = 0
            others: dict[Path, list[str]] = {}
            for f in _walk(path, onerror=unreadable_folder):
                item = scan(f, explicit=False)
                if item is None:
                    others.setdefault(f.parent, []).append(f.name)
                else:
                    add(item)
                    found += 1
            if not found:
                if os.path.realpath(path) not in seen:  # else the folder could not be listed: already reported
                    n_other = sum(len(v) for v in others.values())
                    extra = f" ({n_other} other file(s), e.g. {next(iter(others.values()))[0]})" if n_other else ""
                    cases.append(_problem(path, FAILED, f"{path}: no DICOM or NIfTI files found{extra}"))
            else:
                for folder, names in others.items():
                    cases.append(_problem(folder, SKIPPED, f"{folder}: {len(names)} file(s) that are neither NIfTI nor "
                                                           f"DICOM ignored (e.g. {names[0]})"))
        else:
            cases.append(_problem(path, FAILED, f"{path}: no such file or folder"))
    cases.extend(_series_case(s, all_series, unreadable.get(s.uid)) for s in group_series(dicom_files))
    cases.sort(key=lambda c: c.key)
    assign_names(cases)
    return cases


def shard(cases: list[Case], num_shards: int = 1, shard_id: int = 0) -> list[Case]:
    """Every ``num_shards``-th case starting at ``shard_id``: disjoint shards whose union is the batch."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard-id must be in [0, {num_shards - 1}], got {shard_id}")
    return cases[shard_id::num_shards]


# ------------------------------------------------------------------------------------------------- naming


def safe_name(text: str, fallback: str = "case") -> str:
    """A file-name stem: letters, digits, ``._-`` only, no ``..``, no leading dot, not a Windows device name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "")
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = re.sub(r"_{2,}", "_", stem).strip("._-")[:96].strip("._-")
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    return stem or fallback


def base_name(case: Case) -> str:
    if case.kind == "nifti":
        return safe_name(nifti_stem(case.source))
    f = case.series.first  # type: ignore[union-attr]
    parts = [f.patient_id, f.study_date, f"S{f.series_number}" if f.series_number else "", case.series_description]
    text = "_".join(p for p in parts if p)
    return safe_name(text) if text else safe_name(case.series_uid, "series")


def assign_names(cases: list[Case]) -> None:
    """Unique output stems: a clash (case-insensitively, for case-insensitive file systems) gets a short hash
    of the source path / series UID, which stays the same when the batch is rerun."""
    runnable = [c for c in cases if c.kind in ("nifti", "dicom")]
    counts: dict[str, int] = {}
    for c in runnable:
        c.name = base_name(c)
        counts[c.name.lower()] = counts.get(c.name.lower(), 0) + 1
    for c in runnable:
        if counts[c.name.lower()] > 1:
            digest = hashlib.sha1("\0".join(c.key).encode()).hexdigest()[:8]
            c.name = f"{c.name}_{digest}"


def output_paths(out_dir: Path, case: Case) -> OutputPaths:
    return OutputPaths(out_dir / f"{case.name}{LABELMAP_SUFFIX}", out_dir / f"{case.name}{SEG_SUFFIX}",
                       out_dir / f"{case.name}{OVERLAY_SUFFIX}")


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


# --------------------------------------------------------------------------------------------------- running


def _base_result(case: Case) -> CaseResult:
    return CaseResult(input=str(case.source), series_uid=case.series_uid, series_description=case.series_description)


def source_record(case: Case) -> dict[str, str]:
    """What a labelmap records as its source: the resolved NIfTI path, or the DICOM SeriesInstanceUID (with
    the series folder, for messages)."""
    if case.kind == "nifti":
        return {"kind": "nifti", "input": os.path.realpath(case.source)}
    return {"kind": "dicom", "series_uid": case.series_uid, "input": str(case.source)}


def _is_source(record: dict | None, case: Case) -> bool:
    mine = source_record(case)
    key = "input" if case.kind == "nifti" else "series_uid"
    return record is not None and record.get("kind") == mine["kind"] and record.get(key) == mine[key]


def _describe_source(record: dict | None) -> str:
    if record is None:
        return "another input (the file has no MONAIUNetSeg source record)"
    if record.get("kind") == "dicom":
        return f"DICOM series {record.get('series_uid')} ({record.get('input')})"
    return str(record.get("input"))


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
            res = _base_result(case)
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
        if case.kind == "nifti":
            expected_shape, expected_affine = grid_of(case.source)
        else:
            stack = sort_slices(case.series)  # type: ignore[arg-type]
            first = stack.files[0]
            expected_shape = (first.columns, first.rows, len(stack.files))
            expected_affine = LPS_TO_RAS @ stack.affine_lps
        if tuple(shape) != tuple(expected_shape) or not np.allclose(affine, expected_affine, atol=1e-3):
            return None  # stale: the input changed since
        labels = np.asarray(nib.load(paths.labelmap).dataobj)
    except Exception:
        return None  # unreadable or input now broken: redo, and let that report the problem
    res = _base_result(case)
    res.output = str(paths.labelmap)
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    res.dicom_seg = str(paths.dicom_seg) if paths.dicom_seg.is_file() and case.kind == "dicom" else ""
    res.overlay = str(paths.overlay) if paths.overlay.is_file() else ""
    res.note = "existing output kept (--overwrite redoes it)"
    if options.dicom_seg and case.kind == "nifti":
        res.note += "; " + NO_SEG_FOR_NIFTI
    return res


def segment_case(case: Case, paths: OutputPaths, segmenter, options: BatchOptions,
                 input_files: frozenset[str] = frozenset()) -> CaseResult:
    """Read, segment and write one case; raises on any problem (the caller turns it into a failed row)."""
    for p in (paths.labelmap, paths.dicom_seg, paths.overlay):
        if os.path.realpath(p) in input_files:
            raise ValueError(f"{p}: output would overwrite an input file")
    res = _base_result(case)
    t0 = time.perf_counter()
    if case.kind == "nifti":
        volume = read_nifti_volume(case.source)
        array, affine = volume.array, volume.affine
    else:
        volume = load_series_volume(case.series)  # type: ignore[arg-type]
        array, affine = volume.array, volume.affine
    t_read = time.perf_counter()
    labels = segmenter.segment(array, affine)
    t_seg = time.perf_counter()
    if case.kind == "nifti":
        write_labelmap_like(labels, volume, paths.labelmap, source=source_record(case))
    else:
        write_labelmap(labels, affine, paths.labelmap, source=source_record(case))
    res.output = str(paths.labelmap)
    t_write = time.perf_counter()
    if options.dicom_seg:
        if case.kind == "dicom":
            from .dicom_seg import write_dicom_seg

            res.dicom_seg = str(write_dicom_seg(labels, volume.datasets, paths.dicom_seg))
        else:
            res.note = NO_SEG_FOR_NIFTI
    if options.overlay:
        from .overlay import write_overlay

        res.overlay = str(write_overlay(array, labels, affine, paths.overlay, title=f"{case.name} (research use only)"))
    t_end = time.perf_counter()
    res.volume_ml = float(np.count_nonzero(labels)) * voxel_volume_ml(affine)
    res.seconds = t_end - t0
    st = segmenter.timings
    res.timings = {"read": t_read - t0, "preprocess": st.preprocess, "model": st.model, "invert": st.postprocess,
                   "segment": t_seg - t_read, "write": t_write - t_seg, "extras": t_end - t_write, "total": t_end - t0}
    return res


def _failure(case: Case, exc: Exception) -> CaseResult:
    res = _base_result(case)
    res.status = FAILED
    message = str(exc) or exc.__class__.__name__
    if isinstance(exc, (NiftiInputError, DicomSeriesError)):
        res.error = message
    else:
        where = case.series.label() if case.series else str(case.source)
        res.error = f"{where}: {exc.__class__.__name__}: {message}"
    return res


def earlier_rows(path: Path, inputs: set[str]) -> list[dict[str, str]]:
    """Rows of an existing report whose ``input`` is not one of ``inputs`` (this batch's): the results of
    earlier runs on other inputs; none when there is no readable report."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [r for r in rows if r.get("input") not in inputs]


def write_report(results: list[CaseResult], path: Path, earlier: Iterable[dict[str, str]] = ()) -> Path:
    """``earlier`` rows (see :func:`earlier_rows`) first, then this batch's; an earlier row naming an output
    that this batch reports as its own is left out (``--overwrite`` gave that file to another input)."""
    outputs = {r.output for r in results if r.output}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n", restval="", extrasaction="ignore")
    writer.writeheader()
    for row in earlier:
        if row.get("output") not in outputs:
            writer.writerow(row)
    for r in results:
        writer.writerow(r.row())
    write_text_atomic(path, buf.getvalue())
    return path


def report_path(out_dir: Path, num_shards: int = 1, shard_id: int = 0) -> Path:
    """``report.csv``; one file per shard when sharded, so that shards sharing ``out_dir`` never clash."""
    return out_dir / (REPORT_NAME if num_shards == 1 else f"report.shard{shard_id}of{num_shards}.csv")


def run_batch(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, options: BatchOptions | None = None,
              segmenter=None) -> BatchResult:
    """Segment every case of this shard of ``inputs`` into ``out_dir``; never raises for a bad case.

    ``segmenter`` (an :class:`~MONAIUNetSegLib.inference.Segmenter`) is created on first need when not given.
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
    input_files = frozenset(os.path.realpath(c.source) for c in all_cases if c.kind == "nifti")

    earlier = earlier_rows(report, {str(c.source) for c in cases})  # a rerun with other inputs adds rows
    results: list[CaseResult] = []
    todo: list[tuple[int, Case, OutputPaths]] = []
    for case in cases:
        if case.status:  # decided at discovery
            res = _base_result(case)
            res.status, res.error = case.status, case.problem
            results.append(res)
            continue
        paths = output_paths(out_dir, case)
        existing = None if options.overwrite else existing_result(case, paths, options)
        if existing is None:
            existing = _base_result(case)
            existing.status = PENDING
        results.append(existing)
        if existing.status == PENDING:
            todo.append((len(results) - 1, case, paths))
    write_report(results, report, earlier)

    if todo and segmenter is None:  # once per batch; a missing model or device is a batch error, not per case
        from .inference import Segmenter

        segmenter = Segmenter(options.bundle, device=options.device, weights=options.weights)
    bar = tqdm(todo, desc="segment", unit="case", disable=not options.progress or not todo)
    for index, case, paths in bar:
        bar.set_postfix_str(case.name[-40:])
        t0 = time.perf_counter()
        try:
            results[index] = segment_case(case, paths, segmenter, options, input_files)
        except Exception as exc:  # a bad case never stops the batch
            results[index] = _failure(case, exc)
            results[index].seconds = time.perf_counter() - t0
            if options.progress:  # live, so that a long batch shows problems as they happen
                tqdm.write(f"FAILED  {results[index].error}", file=sys.stderr)
        write_report(results, report, earlier)
    bar.close()
    return BatchResult(results, report, len(all_cases), time.perf_counter() - started)
