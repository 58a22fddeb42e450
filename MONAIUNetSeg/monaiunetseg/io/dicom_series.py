"""DICOM series: header scan, grouping by SeriesInstanceUID, slice sorting and volume + geometry.

Scanners and PACS exports name and number files arbitrarily, put several series in one folder and
sometimes drop a slice, so nothing here trusts file names or InstanceNumber: slices are ordered by their
position along the slice normal (ImageOrientationPatient x ImagePositionPatient), and the volume is only
built when the positions form one regular stack. Geometry is DICOM's LPS patient frame; the core works in
NIfTI-style RAS, so :func:`load_series_volume` returns a RAS affine.

Volume arrays are indexed (column, row, slice) like the rest of the core (see ``convention.py``): voxel
(i, j, k) is pixel (row j, column i) of the k-th slice in ascending position along the normal.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from monaiunetseg.errors import describe
from monaiunetseg.geometry import check_affine
from monaiunetseg.io.guard import ReadLimitExceeded, open_header, voxel_budget_problem

try:
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom < 3 (Slicer 5.6 and 5.8 ship pydicom 2.4)
    from pydicom.pixel_data_handlers.util import apply_modality_lut

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Header elements the scan needs; reading only these keeps a scan of thousands of files fast.
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "StudyDate",
    "SeriesNumber", "SeriesDescription", "ProtocolName", "SequenceName", "Modality", "ImageType",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel", "InversionTime", "EchoTime",
]
# Values over this are neither loaded nor kept in the headers held for a DICOM SEG: a large private element before
# the pixels (a vendor's raw data, a thumbnail) would otherwise cost its size once per slice, for the whole case.
HEADER_ELEMENT_LIMIT = 64 * 2**10
ORIENTATION_ATOL = 1e-3  # direction cosines written with ~6 decimals agree far better than this
SPACING_ATOL_MM, SPACING_RTOL = 0.05, 0.01  # positions rounded to 0.01 mm still pass; a missing slice never does

# FLAIR by name: FLAIR, T2F / T2-FLAIR, Siemens "dark-fluid" and TIRM (long-TI turbo inversion recovery),
# "fluid attenuated". STIR (short-TI inversion recovery, also "TIRM" on Siemens) is not FLAIR.
FLAIR_NAME = re.compile(r"flair|(?<![a-z0-9])t2[\s_-]?f(?![a-z])|dark[\s_-]?fluid|tirm|fluid[\s_-]?att", re.IGNORECASE)
NOT_FLAIR_NAME = re.compile(r"stir", re.IGNORECASE)
FLAIR_MIN_TI_MS, FLAIR_MIN_TE_MS = 1500.0, 60.0  # fallback when names say nothing: long TI + T2 weighting


class DicomSeriesError(ValueError):
    """A series (or file) that cannot become a volume; the message names the folder/file and the problem."""


@dataclass(frozen=True)
class DicomFile:
    """What the scan keeps of one file: enough to group, select, sort and name, without pixel data."""

    path: Path
    series_uid: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    series_number: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    modality: str = ""
    image_type: tuple[str, ...] = ()
    orientation: tuple[float, ...] | None = None
    position: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    n_frames: int = 1
    samples_per_pixel: int = 1
    inversion_time: float | None = None
    echo_time: float | None = None


@dataclass
class DicomSeries:
    """All files of one SeriesInstanceUID (possibly spread over folders)."""

    uid: str
    files: list[DicomFile] = field(default_factory=list)

    @property
    def first(self) -> DicomFile:
        return self.files[0]

    @property
    def folder(self) -> Path:
        """The series folder: the deepest folder holding all its files (what reports and errors name)."""
        return Path(os.path.commonpath([str(f.path.parent) for f in self.files]))

    @property
    def description(self) -> str:
        return self.first.series_description or self.first.protocol_name or self.first.sequence_name

    def label(self) -> str:
        """Human-readable identification for messages: folder, series number/description and UID."""
        number = f"#{self.first.series_number} " if self.first.series_number else ""
        return f"{self.folder}: series {number}'{self.description}' ({self.uid})"


@dataclass
class SeriesVolume:
    """A series as a volume: float32 array (column, row, slice), RAS affine and the sorted source headers."""

    array: np.ndarray
    affine: np.ndarray
    datasets: list[pydicom.Dataset]  # headers (PixelData dropped) in slice order, e.g. as DICOM SEG sources
    # Multi-frame source (one dataset): the slice index of each of its frames, in frame order (None: one file per slice)
    frame_slices: list[int] | None = None


def has_dicom_magic(path: Path) -> bool:
    """Part 10 files carry ``DICM`` after a 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _starts_like_raw_dicom(path: Path) -> bool:
    """Whether a file without the ``DICM`` preamble begins with a header group (0002 or 0008, either byte order),
    as raw DICOM streams do: anything else (a file of zeros, a text file) is not parsed at all, where pydicom
    would read it 8 bytes at a time up to the header limit (seconds for a few MiB of zeros)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return True  # reading it will say what is wrong
    return len(head) == 2 and (int.from_bytes(head, "little") in (0x0002, 0x0008) or int.from_bytes(head, "big") in (0x0002, 0x0008))


def read_header(path: str | os.PathLike, force: bool = False) -> DicomFile:
    """Header of one file (no pixel data). Raises ``InvalidDicomError`` for non-DICOM files and
    :class:`DicomSeriesError` for DICOM files that cannot be parsed."""
    path = Path(path)
    if force and not _starts_like_raw_dicom(path):
        raise InvalidDicomError(f"{path}: not a DICOM file (no preamble, no header group at its start)")
    try:
        with warnings.catch_warnings(), open_header(path) as fh:  # bounded: a file of zeros is not parsed for minutes
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force, specific_tags=HEADER_TAGS)
            return _header_record(path, ds, force)  # pydicom converts values on access: corrupt ones raise here
    except (InvalidDicomError, DicomSeriesError):
        raise
    except ReadLimitExceeded as exc:
        if not force:
            raise DicomSeriesError(str(exc)) from exc
        raise InvalidDicomError(str(exc)) from exc  # no preamble and no header in the first MiBs: not DICOM
    except Exception as exc:  # truncated or garbled: pydicom raises many types
        raise DicomSeriesError(f"{path}: corrupt DICOM file ({describe(exc)})") from exc


def _header_record(path: Path, ds: pydicom.Dataset, force: bool) -> DicomFile:
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID")
    series_uid = _text(ds, "SeriesInstanceUID")
    if force and not (sop_class or series_uid):
        raise InvalidDicomError(f"{path}: not a DICOM file")
    if not series_uid:
        raise DicomSeriesError(f"{path}: corrupt or incomplete DICOM file (no SeriesInstanceUID)")
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n_frames = 1
    return DicomFile(
        path=path,
        series_uid=series_uid,
        sop_class_uid=sop_class,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        study_date=_text(ds, "StudyDate"),
        series_number=_text(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName"),
        modality=_text(ds, "Modality"),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or [])),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=int(ds.Rows) if ds.get("Rows") is not None else None,
        columns=int(ds.Columns) if ds.get("Columns") is not None else None,
        n_frames=n_frames,
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        inversion_time=_float(ds.get("InversionTime")),
        echo_time=_float(ds.get("EchoTime")),
    )


def group_series(files: list[DicomFile]) -> list[DicomSeries]:
    """Group by SeriesInstanceUID (one instance kept where the same SOPInstanceUID occurs twice),
    series sorted by folder, number and UID so that batches are deterministic."""
    by_uid: dict[str, DicomSeries] = {}
    seen: set[tuple[str, str]] = set()
    for f in sorted(files, key=lambda f: str(f.path)):
        if f.sop_instance_uid:
            key = (f.series_uid, f.sop_instance_uid)
            if key in seen:
                continue
            seen.add(key)
        by_uid.setdefault(f.series_uid, DicomSeries(f.series_uid)).files.append(f)
    return sorted(by_uid.values(), key=lambda s: (str(s.folder), s.first.series_number.zfill(8), s.uid))


def is_image_series(series: DicomSeries) -> str | None:
    """None for an image series; otherwise why not (SEG, SR, presentation states, DICOMDIR... are skipped)."""
    f = series.first
    name = UID(f.sop_class_uid).name if f.sop_class_uid else ""
    if f.sop_class_uid and "Image Storage" not in name:
        return f"not an image series (SOP class {name or f.sop_class_uid})"
    if f.rows is None or f.columns is None:
        return "not an image series (no Rows/Columns)"
    return None


def flair_evidence(series: DicomSeries) -> str | None:
    """Why the series counts as FLAIR (the matching header text), or None."""
    f = series.first
    for keyword, text in (("SeriesDescription", f.series_description), ("ProtocolName", f.protocol_name),
                          ("SequenceName", f.sequence_name)):
        if text and FLAIR_NAME.search(text) and not NOT_FLAIR_NAME.search(text):
            return f"{keyword} '{text}'"
    if (f.inversion_time or 0) >= FLAIR_MIN_TI_MS and (f.echo_time or 0) >= FLAIR_MIN_TE_MS:
        return f"InversionTime {f.inversion_time:g} ms, EchoTime {f.echo_time:g} ms"
    return None


def mixed_identity(series: DicomSeries) -> str | None:
    """Why the files of one SeriesInstanceUID are not one patient's series (None if they are).

    A reused or copied UID can put two patients' (or studies') slices under one series; merged, their
    interleaved positions may even form a regular stack, so the identity is checked before the geometry."""
    groups: dict[tuple[str, str], list[DicomFile]] = {}
    for f in series.files:
        groups.setdefault((f.patient_id, f.study_uid), []).append(f)
    if len(groups) < 2:
        return None
    parts = []
    for (patient, study), files in list(groups.items())[:3]:
        folder = os.path.commonpath([str(f.path.parent) for f in files])
        parts.append(f"PatientID '{patient}' StudyInstanceUID {study or '(none)'} ({len(files)} file(s) in {folder})")
    more = f" and {len(groups) - 3} more" if len(groups) > 3 else ""
    return (f"one SeriesInstanceUID shared by {len(groups)} patients/studies: {' vs '.join(parts)}{more}; "
            "refused rather than merged into one volume (segment each folder on its own with segment-case)")


def not_a_volume(series: DicomSeries) -> str | None:
    """Why the series cannot be a 3D volume, judged from headers alone (None if it may be one)."""
    f = series.first
    n = len(series.files)
    mixed = mixed_identity(series)
    if mixed:
        return mixed
    if "LOCALIZER" in f.image_type:
        return "localizer/scout series, not a 3D volume"
    if any(x.n_frames > 1 for x in series.files):
        return "multi-frame file(s): read with monaiunetseg.io.dicom_volume, not as a stack of single-frame slices"
    if f.samples_per_pixel != 1:
        return f"colour images (SamplesPerPixel {f.samples_per_pixel}), not a greyscale 3D volume"
    if n < 2:
        return f"2D image: a single slice ({f.path.name}), not a 3D volume"
    no_geometry = [x.path.name for x in series.files if x.orientation is None or x.position is None or x.pixel_spacing is None]
    if no_geometry:
        return (f"{len(no_geometry)} file(s) without ImageOrientationPatient/ImagePositionPatient/PixelSpacing "
                f"(e.g. {no_geometry[0]}): no patient geometry")
    positions = {tuple(np.round(x.position, 3)) for x in series.files}
    if len(positions) < n:
        return (f"4D series: {n} images at {len(positions)} distinct positions (several echoes/time points/"
                "acquisitions), expected one image per slice position")
    return None


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        raise ValueError("zero-length direction")
    return v / norm


@dataclass
class SliceStack:
    """Sorted files and the LPS affine of a regular stack."""

    files: list[DicomFile]
    affine_lps: np.ndarray


def sort_slices(series: DicomSeries) -> SliceStack:
    """Sort by position along the normal and check one regular stack: same orientation, size and pixel
    spacing everywhere, no sheared (tilted) stack, uniform spacing (a gap means missing slices)."""
    where = series.label()
    problem = not_a_volume(series)
    if problem:
        raise DicomSeriesError(f"{where}: {problem}")
    files = series.files
    iops = np.array([f.orientation for f in files])
    if np.abs(iops - iops[0]).max() > ORIENTATION_ATOL:
        distinct = np.unique(np.round(iops, 3), axis=0)
        raise DicomSeriesError(f"{where}: mixed orientations: {len(distinct)} different ImageOrientationPatient "
                               f"values (e.g. {distinct[0].tolist()} and {distinct[1].tolist()})")
    sizes = {(f.rows, f.columns) for f in files}
    if len(sizes) > 1:
        raise DicomSeriesError(f"{where}: inconsistent image size (Rows, Columns): {sorted(sizes)}")
    spacings = np.array([f.pixel_spacing for f in files])
    if np.abs(spacings - spacings[0]).max() > 1e-4 * max(1.0, float(spacings[0].max())):
        raise DicomSeriesError(f"{where}: inconsistent PixelSpacing: {np.unique(spacings, axis=0).tolist()}")
    try:
        row_dir, col_dir = _unit(np.array(iops[0][:3])), _unit(np.array(iops[0][3:]))
    except ValueError:
        raise DicomSeriesError(f"{where}: invalid ImageOrientationPatient {list(iops[0])}") from None
    if abs(float(row_dir @ col_dir)) > ORIENTATION_ATOL:
        raise DicomSeriesError(f"{where}: ImageOrientationPatient {list(iops[0])} is not orthogonal")
    normal = np.cross(row_dir, col_dir)
    positions = np.array([f.position for f in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    files = [files[i] for i in order]
    steps = np.diff(along)
    spacing = float(np.median(steps))
    if spacing <= SPACING_ATOL_MM:
        raise DicomSeriesError(f"{where}: slices overlap (median spacing {spacing:.3g} mm along the normal)")
    tol = SPACING_ATOL_MM + SPACING_RTOL * spacing
    bad = np.nonzero(np.abs(steps - spacing) > tol)[0]
    if bad.size:
        i = int(bad[0])
        gap = float(steps[i])
        if gap > spacing + tol:
            missing = int(round(sum(steps[b] / spacing - 1 for b in bad if steps[b] > spacing + tol)))
            raise DicomSeriesError(
                f"{where}: missing slice(s): gap of {gap:.2f} mm between {files[i].path.name} and {files[i + 1].path.name} "
                f"(positions {along[i]:.2f} and {along[i + 1]:.2f} mm along the normal) where the slice spacing is "
                f"{spacing:.2f} mm; about {max(missing, 1)} slice(s) missing")
        raise DicomSeriesError(f"{where}: non-uniform slice spacing ({gap:.2f} mm between {files[i].path.name} and "
                               f"{files[i + 1].path.name}, median {spacing:.2f} mm)")
    offsets = positions - positions[0]
    perpendicular = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if perpendicular.max() > SPACING_ATOL_MM + SPACING_RTOL * np.abs(offsets @ normal).max():
        raise DicomSeriesError(f"{where}: slice positions are not along the slice normal (gantry tilt or sheared "
                               f"stack, up to {perpendicular.max():.2f} mm off); resample the series first")
    spacing = float(along[-1] - along[0]) / (len(files) - 1)  # uniform: the end-to-end mean beats the median
    row_spacing, col_spacing = spacings[0]  # PixelSpacing = (between rows, between columns)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # voxel axis 0 = column index, moves along the row direction
    affine[:3, 1] = col_dir * row_spacing  # voxel axis 1 = row index
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    return SliceStack(files, affine)


def slim_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` without its pixel data and without top-level values over :data:`HEADER_ELEMENT_LIMIT` (deferred
    ones are dropped unread): what a DICOM SEG needs of a source image is small."""
    for tag in list(ds.keys()):
        item = ds.get_item(tag)
        length = getattr(item, "length", None)  # a raw (possibly deferred) element: its length on disk
        if length is None:
            value = item.value
            length = len(value) if isinstance(value, (bytes, bytearray, str)) else 0
        if tag == 0x7FE00010 or (HEADER_ELEMENT_LIMIT < length != 0xFFFFFFFF):
            del ds[tag]
    return ds


def load_series_volume(series: DicomSeries) -> SeriesVolume:
    """Read the pixels of a sorted, checked stack; rescale slope/intercept (modality LUT) applied per slice."""
    stack = sort_slices(series)
    first = stack.files[0]
    affine = check_affine(LPS_TO_RAS @ stack.affine_lps, series.label())
    too_big = voxel_budget_problem((first.columns, first.rows, len(stack.files)))
    if too_big:
        raise DicomSeriesError(f"{series.label()}: {too_big}")
    array = np.empty((first.columns, first.rows, len(stack.files)), dtype=np.float32)
    headers: list[pydicom.Dataset] = []
    for k, f in enumerate(stack.files):
        try:
            # as scanned (files without the preamble are DICOM too); big values stay on disk until asked for
            ds = pydicom.dcmread(f.path, force=True, defer_size=HEADER_ELEMENT_LIMIT)
            pixels = apply_modality_lut(ds.pixel_array, ds)
        except Exception as exc:  # truncated pixel data, unsupported compression, ...
            raise DicomSeriesError(f"{f.path}: cannot read pixel data ({describe(exc)})") from exc
        if pixels.shape != (first.rows, first.columns):
            raise DicomSeriesError(f"{f.path}: pixel array shape {pixels.shape}, expected {(first.rows, first.columns)}")
        array[:, :, k] = pixels.T
        headers.append(slim_header(ds))  # memory stays flat over long series
    return SeriesVolume(array, affine, headers)
