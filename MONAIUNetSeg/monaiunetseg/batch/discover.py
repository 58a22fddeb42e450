"""Finding the cases of a batch: image files (NIfTI, NRRD, MetaImage; other ITK formats with the itk extra) and
DICOM series (grouped by SeriesInstanceUID; classic or enhanced multi-frame) in files and folder trees; problems
found on the way become failed or skipped cases, never exceptions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.errors import InvalidDicomError

from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.naming import assign_names
from monaiunetseg.batch.report import FAILED, SKIPPED, Status
from monaiunetseg.io.dicom_series import (
    DICOM_SUFFIXES,
    DicomFile,
    DicomSeries,
    DicomSeriesError,
    flair_evidence,
    group_series,
    has_dicom_magic,
    is_image_series,
    read_header,
)
from monaiunetseg.io.dicom_volume import volume_problem
from monaiunetseg.io.guard import not_regular, open_header
from monaiunetseg.io.image2d import is_image2d_path
from monaiunetseg.io.itk_reader import itk_available, itk_format, missing_extra_message
from monaiunetseg.io.labelmap import is_our_labelmap, labelmap_reason
from monaiunetseg.io.nifti import is_nifti_path
from monaiunetseg.io.data_files import data_files
from monaiunetseg.io.nrrd_mha import image_format

# Data files of detached headers (.nhdr, .mhd): read with their header, never cases of their own.
DETACHED_DATA_SUFFIXES = (".raw", ".raw.gz", ".zraw")


def file_kind(path: str | os.PathLike, explicit: bool = False) -> str | None:
    """The case kind of an image file from its name (``nifti``, ``nrrd``, ``metaimage``, ``itk``; ``picture`` for
    a PNG/TIFF/JPEG named on the command line: in folders such files are thumbnails, screenshots or our own
    overlays, not scans), else None."""
    if is_nifti_path(path):
        return "nifti"
    if explicit and is_image2d_path(path):
        return "picture"
    return image_format(path) or ("itk" if itk_format(path) else None)


def _data_files_of(path: Path) -> set[str]:
    """The data files an NRRD/MetaImage header names (as paths beside it); none when it cannot say."""
    if image_format(path) is None:
        return set()
    try:
        return {os.path.normpath(f) for f in data_files(path, confine=False)}
    except ValueError:  # reading the case will say what is wrong with the header
        return set()


def _problem(path: Path, status: Status, message: str) -> Case:
    return Case("problem", path, status=status, problem=message)


def _scan_file(path: Path, explicit: bool, include_labelmaps: bool = False) -> Path | DicomFile | Case | None:
    """Classify one file: an image file's path, a DICOM header, a problem case, or None (neither; ignored in
    folders).

    ``explicit``: the file was named on the command line, so "not an image" is a failure, not a skip.
    ``include_labelmaps``: segment image files that look like label maps (:func:`labelmap_reason`) too.
    Only regular files are opened (``stat`` first): a FIFO would block and a device never end.
    """
    irregular = not_regular(path)
    if irregular:
        return _problem(path, FAILED if explicit else SKIPPED, f"{path}: {irregular}, not a regular file: not read")
    kind = file_kind(path, explicit)
    if kind == "itk" and not itk_available():
        return _problem(path, FAILED if explicit else SKIPPED, missing_extra_message(path))
    if kind:
        if is_our_labelmap(path):
            return _problem(path, SKIPPED, f"{path}: a labelmap written by MONAIUNetSeg (an earlier output), not a scan")
        reason = None if include_labelmaps else labelmap_reason(path)
        if reason:
            return _problem(path, SKIPPED, f"{path}: {reason}, not a scan (--include-labelmaps segments it)")
        return path
    if path.name.upper() == "DICOMDIR":  # the media index, not an image
        return None
    if not explicit and path.name.lower().endswith(DETACHED_DATA_SUFFIXES):
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
        return _problem(path, FAILED, f"{path}: not a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, "
                                      ".mhd) or DICOM file, nor a 2D picture (.png, .tif, .tiff, .jpg, .jpeg)")
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
        with open_header(path) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=True)
            return str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:
        return ""


def _truncated_candidate(path: Path) -> bool:
    """An empty file that could have been a slice (no suffix, or a DICOM one): a truncated DICOM file, which
    says nothing about its series, so only its folder ties it to one."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        return False
    return empty and (not path.suffix or path.suffix.lower() in DICOM_SUFFIXES)


def _series_case(series: DicomSeries, all_series: bool, unreadable: list[str] | None = None,
                 in_folder: list[str] | None = None) -> Case:
    """``unreadable``: files of this series (by their UID) that failed to read; ``in_folder``: files beside its
    slices that failed to read without saying their series (empty or cut before the UID)."""
    if unreadable:  # a stack without those files may still look complete (first/last slice): never segment it
        return Case("problem", series.folder, series=series, status=FAILED,
                    problem=f"{series.label()}: incomplete series: {len(unreadable)} of its file(s) could not be "
                            f"read (e.g. {unreadable[0]}); not segmented")
    if in_folder:  # e.g. its first or last slice truncated: the rest would still look like a whole series
        return Case("problem", series.folder, series=series, status=FAILED,
                    problem=f"{series.label()}: possibly incomplete series: {len(in_folder)} DICOM file(s) in its "
                            f"folder are empty or truncated (e.g. {in_folder[0]}), so which series they belong to "
                            "cannot be read; not segmented (remove or replace those files)")
    not_image = is_image_series(series)
    if not_image:
        return Case("problem", series.folder, series=series, status=SKIPPED, problem=f"{series.label()}: {not_image}")
    flair = flair_evidence(series)
    if not flair and not all_series:
        return Case("problem", series.folder, series=series, status=SKIPPED,
                    problem=f"{series.label()}: not a FLAIR series (use --all-series to segment every 3D series)")
    problem = volume_problem(series)
    if problem:
        status = FAILED if flair else SKIPPED
        return Case("problem", series.folder, series=series, status=status, problem=f"{series.label()}: {problem}")
    return Case("dicom", series.folder, series=series)


def discover_cases(inputs: Iterable[str | os.PathLike], all_series: bool = False,
                   include_labelmaps: bool = False) -> list[Case]:
    """All cases in ``inputs`` (files and folder trees), sorted by :attr:`Case.key`.

    DICOM files from all inputs are grouped into series by SeriesInstanceUID; by default only FLAIR series
    are segmented (the others are reported as skipped). Problems (missing paths, unreadable files, empty
    folders) become failed cases; files that are neither images nor DICOM inside a folder become one skipped
    case per folder. Image files that look like label maps (``*_label``, ``*_seg``, ``*_mask``, or integer voxels
    with few distinct values) are skipped unless ``include_labelmaps``.
    """
    cases: list[Case] = []
    dicom_files: list[DicomFile] = []
    seen: set[str] = set()  # real paths already taken (the same file reached through two inputs counts once)
    unreadable: dict[str, list[str]] = {}  # SeriesInstanceUID -> its files that failed to read
    orphans: dict[Path, list[str]] = {}  # folder -> files in it that failed to read and name no series

    def scan(file: Path, explicit: bool) -> Path | DicomFile | Case | None:
        try:
            item = _scan_file(file, explicit, include_labelmaps)
        except Exception as exc:  # one unreadable file never stops the batch
            item = _problem(file, FAILED, f"{file}: cannot be read ({exc.__class__.__name__}: {exc})")
        if isinstance(item, Case) and item.status == FAILED and not not_regular(file):  # which series it was of
            uid = _series_uid_of_unreadable(file)
            if uid:
                unreadable.setdefault(uid, []).append(str(file))
            elif not explicit:
                orphans.setdefault(file.parent, []).append(str(file))
        elif item is None and _truncated_candidate(file):
            orphans.setdefault(file.parent, []).append(str(file))
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
            cases.append(Case(file_kind(item, explicit=True) or "nifti", item))  # accepted by _scan_file

    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            found = 0
            others: dict[Path, list[str]] = {}
            data_of: set[str] = set()  # data files of the headers found: read with them, not "other files"
            for f in _walk(path, onerror=unreadable_folder):
                item = scan(f, explicit=False)
                if item is None:
                    others.setdefault(f.parent, []).append(f.name)
                else:
                    add(item)
                    found += 1
                    if isinstance(item, Path):
                        data_of |= _data_files_of(item)
            if not found:
                if os.path.realpath(path) not in seen:  # else the folder could not be listed: already reported
                    n_other = sum(len(v) for v in others.values())
                    extra = f" ({n_other} other file(s), e.g. {next(iter(others.values()))[0]})" if n_other else ""
                    cases.append(_problem(path, FAILED, f"{path}: no DICOM or NIfTI files found (nor NRRD/MetaImage){extra}"))
            else:
                others = {folder: [n for n in names if str(folder / n) not in data_of] for folder, names in others.items()}
                others = {folder: names for folder, names in others.items() if names}
                for folder, names in others.items():
                    cases.append(_problem(folder, SKIPPED, f"{folder}: {len(names)} file(s) that are neither images "
                                                           f"nor DICOM ignored (e.g. {names[0]})"))
        elif os.path.exists(path):  # a file, or a FIFO/device named on the command line (refused unread)
            add(scan(path, explicit=True))  # type: ignore[arg-type]  # explicit: never None
        else:
            cases.append(_problem(path, FAILED, f"{path}: no such file or folder"))
    for s in group_series(dicom_files):
        beside = sorted({o for folder in {f.path.parent for f in s.files} for o in orphans.get(folder, [])})
        cases.append(_series_case(s, all_series, unreadable.get(s.uid), beside))
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
