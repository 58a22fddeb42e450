"""DICOM series: header scan, grouping by SeriesInstanceUID, and the header checks of a series (FLAIR, one
patient, one volume); the slice sorting and the volume are in :mod:`monaiunetseg.io.dicom_stack`.

Scanners and PACS exports name and number files arbitrarily, put several series in one folder and
sometimes drop a slice, so nothing here trusts file names or InstanceNumber: slices are ordered by their
position along the slice normal (ImageOrientationPatient x ImagePositionPatient), and the volume is only
built when the positions form one regular stack. Geometry is DICOM's LPS patient frame; the core works in
NIfTI-style RAS, so ``dicom_stack.load_series_volume`` returns a RAS affine.

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
from monaiunetseg.io.guard import ReadLimitExceeded, open_header

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
