"""Enhanced (multi-frame) MR/CT DICOM: one file holding a whole 3D volume, its geometry in functional groups.

Scanners write one enhanced object per acquisition, which may also be a time series, a diffusion series, several
stacks or echoes: only a file whose frames are one regular 3D grid is a volume to segment, and anything else is
refused naming why. The geometry itself (per-frame plane positions, shared plane orientation and pixel measures,
sorting, spacing regularity) is read by highdicom's ``Image.get_volume``, a maintained implementation, not
re-derived here; this module only decides whether the file is one volume and maps frames to slices, so that a
DICOM SEG can reference each source frame.

Arrays follow the core's layout (column, row, slice) with slices ascending along the slice normal, as
:func:`monaiunetseg.io.dicom_stack.load_series_volume` gives for classic series, so the same scan stored either
way yields the same grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from monaiunetseg.geometry import check_affine
from monaiunetseg.io.dicom_series import LPS_TO_RAS, DicomSeries, DicomSeriesError, SeriesVolume
from monaiunetseg.io.guard import voxel_budget_problem

ORIENTATION_DECIMALS = 3  # direction cosines equal to 1e-3 count as one orientation (as for classic series)
# (functional group, attribute, what several distinct values mean): each makes a file more than one 3D volume.
NOT_3D_DIMENSIONS = (
    ("FrameContentSequence", "TemporalPositionIndex", "temporal positions (a time series, 4D)"),
    ("TemporalPositionSequence", "TemporalPositionTimeOffset", "temporal positions (a time series, 4D)"),
    ("MRDiffusionSequence", "DiffusionBValue", "diffusion b-values (a diffusion series, 4D)"),
    ("MREchoSequence", "EffectiveEchoTime", "echo times (a multi-echo series)"),
    ("FrameContentSequence", "StackID", "stacks (StackID)"),
)


def frame_values(ds: pydicom.Dataset, group: str, keyword: str) -> list:
    """``keyword`` of functional group ``group`` for every frame: the per-frame value, else the shared one, else None."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [pydicom.Dataset()] * n_frames
    shared_items = ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    shared_group = shared_items[0].get(group)
    shared = shared_group[0].get(keyword) if shared_group else None
    values = []
    for item in per_frame:
        frame_group = item.get(group)
        value = frame_group[0].get(keyword) if frame_group else shared
        values.append(value)
    return values


def _hashable(value) -> object:
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(round(float(v), ORIENTATION_DECIMALS) for v in value)
    return value


def multiframe_problem(ds: pydicom.Dataset) -> str | None:
    """Why the multi-frame image ``ds`` (header) is not one 3D volume, or None if its frames may form one."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return (f"multi-frame image of {n_frames} frames without per-frame functional groups (no plane position per "
                "frame, e.g. a cine loop or secondary capture), not an enhanced 3D volume")
    if len(ds.PerFrameFunctionalGroupsSequence) != n_frames:
        return (f"{len(ds.PerFrameFunctionalGroupsSequence)} per-frame functional group items for {n_frames} frames "
                "(NumberOfFrames): corrupt multi-frame header")
    for group, keyword, meaning in NOT_3D_DIMENSIONS:
        distinct = {_hashable(v) for v in frame_values(ds, group, keyword) if v is not None}
        if len(distinct) > 1:
            return f"multi-frame image with {len(distinct)} {meaning}, not one 3D volume"
    orientations = frame_values(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
    positions = frame_values(ds, "PlanePositionSequence", "ImagePositionPatient")
    if any(v is None for v in orientations + positions):
        return "multi-frame image without plane position/orientation for every frame: no patient geometry"
    distinct_orientations = {_hashable(v) for v in orientations}
    if len(distinct_orientations) > 1:
        return (f"multi-frame image with mixed orientations ({len(distinct_orientations)} different "
                "ImageOrientationPatient values), not one 3D volume")
    distinct_positions = {_hashable(v) for v in positions}
    if len(distinct_positions) < n_frames:
        return (f"multi-frame image with {n_frames} frames at {len(distinct_positions)} distinct positions (several "
                "images per slice position: echoes, time points or contrasts), not one 3D volume")
    if n_frames < 2:
        return "multi-frame image with a single frame: 2D, not a 3D volume"
    return None


def series_problem(series: DicomSeries) -> str | None:
    """Why a series holding multi-frame files is not one 3D volume (header read again, pixels not), or None."""
    multi = [f for f in series.files if f.n_frames > 1]
    if len(series.files) > 1:
        return (f"{len(multi)} multi-frame and {len(series.files) - len(multi)} other file(s) in one series "
                f"(e.g. {multi[0].path.name}): expected one multi-frame 3D image or single-frame slices")
    if series.first.samples_per_pixel != 1:
        return f"colour images (SamplesPerPixel {series.first.samples_per_pixel}), not a greyscale 3D volume"
    try:
        ds = pydicom.dcmread(series.first.path, stop_before_pixels=True, force=True)
        return multiframe_problem(ds)
    except Exception as exc:  # truncated or garbled functional groups
        return f"{series.first.path.name}: cannot read the multi-frame header ({exc.__class__.__name__}: {exc})"


def _highdicom():
    """highdicom with its volume API (0.24+, which needs Python 3.10+); classic series never need it."""
    try:
        import highdicom
    except ImportError as exc:  # e.g. Slicer's Python
        raise DicomSeriesError("reading enhanced multi-frame DICOM needs highdicom >= 0.24 (pip install "
                               "'highdicom>=0.24'; Python 3.10 or later)") from exc
    if not hasattr(highdicom, "imread"):
        raise DicomSeriesError(f"reading enhanced multi-frame DICOM needs highdicom >= 0.24 (installed: "
                               f"{highdicom.__version__}; 0.24 needs Python 3.10 or later)")
    return highdicom


def _core_grid(affine_lps: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, int, int], bool]:
    """highdicom's (slice, row, column) LPS affine -> the core's (column, row, slice) one, slices ascending along
    the normal; also whether the slice axis had to be reversed for that."""
    affine = affine_lps[:, [2, 1, 0, 3]].copy()
    core_shape = (shape[2], shape[1], shape[0])
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    reverse = float(normal @ affine[:3, 2]) < 0
    if reverse:
        affine[:3, 3] += affine[:3, 2] * (core_shape[2] - 1)
        affine[:3, 2] = -affine[:3, 2]
    return affine, core_shape, reverse


def _geometry_error(path: Path, exc: Exception) -> DicomSeriesError:
    return DicomSeriesError(f"{path}: the frames of this multi-frame image are not one regular 3D grid (missing or "
                            f"unevenly spaced slices, or a tilted stack): {exc}")


def multiframe_grid(series: DicomSeries) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, RAS affine) of the volume from the header only: checks a finished output still fits its input."""
    path = series.first.path
    image = _highdicom().imread(path, lazy_frame_retrieval=True)
    geometry = image.get_volume_geometry(allow_duplicate_positions=False)
    if geometry is None:
        raise _geometry_error(path, ValueError("highdicom found no volume geometry"))
    affine, shape, _ = _core_grid(np.asarray(geometry.affine, dtype=float), tuple(geometry.spatial_shape))
    return shape, LPS_TO_RAS @ affine


def load_multiframe_volume(series: DicomSeries) -> SeriesVolume:
    """Pixels (modality LUT applied) and geometry of a single-file 3D multi-frame series, checked first."""
    where = series.label()
    problem = series_problem(series)
    if problem:
        raise DicomSeriesError(f"{where}: {problem}")
    path = series.first.path
    first = series.first
    too_big = voxel_budget_problem((first.columns or 1, first.rows or 1, first.n_frames))
    if too_big:
        raise DicomSeriesError(f"{where}: {too_big}")
    hd = _highdicom()
    try:
        image = hd.imread(path)
    except Exception as exc:
        raise DicomSeriesError(f"{path}: cannot read multi-frame image ({exc.__class__.__name__}: {exc})") from exc
    try:
        volume = image.get_volume(dtype=np.float32, apply_real_world_transform=False)
    except Exception as exc:  # irregular spacing, missing positions, unsupported compression
        raise _geometry_error(path, exc) from exc
    if volume.channel_shape:
        raise DicomSeriesError(f"{where}: volume with channels {volume.channel_shape}, not a greyscale 3D volume")
    affine, shape, reverse = _core_grid(np.asarray(volume.affine, dtype=float), tuple(volume.spatial_shape))
    ras_affine = check_affine(LPS_TO_RAS @ affine, where)
    array = np.ascontiguousarray(np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0))
    if reverse:
        array = np.ascontiguousarray(array[:, :, ::-1])
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    frame_slices = _frame_slices(header, affine, shape, path)
    return SeriesVolume(array, ras_affine, [header], frame_slices=frame_slices)


def _frame_slices(ds: pydicom.Dataset, affine_lps: np.ndarray, shape: tuple[int, int, int], path: Path) -> list[int]:
    """Slice index (third voxel axis) of every frame, in frame order: where a DICOM SEG frame must be taken from."""
    positions = np.array([[float(v) for v in p] for p in frame_values(ds, "PlanePositionSequence", "ImagePositionPatient")])
    ijk = (np.linalg.inv(affine_lps) @ np.c_[positions, np.ones(len(positions))].T)[:3]
    k = np.rint(ijk[2]).astype(int)
    off_grid = np.abs(ijk[:2]).max() > 1e-2 or np.abs(ijk[2] - k).max() > 1e-2
    if off_grid or k.min() < 0 or k.max() >= shape[2] or len(set(k.tolist())) != len(k):
        raise DicomSeriesError(f"{path}: frame positions do not match the volume's slices one to one")
    return k.tolist()
