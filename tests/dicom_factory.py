"""Write real single-frame MR DICOM series from (array, RAS affine) volumes, for the batch-inference tests.

Files get random names and are written in scrambled order with scrambled InstanceNumbers, so that only the
geometry tags can give the slice order, as with real PACS exports.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds_str(values) -> list[str]:
    return [f"{float(v):.10g}" for v in values]


def slice_geometry(affine_ras: np.ndarray, k: int) -> tuple[list[float], list[float], tuple[float, float]]:
    """(ImageOrientationPatient, ImagePositionPatient, PixelSpacing) of slice k of a (col, row, slice) volume."""
    lps = LPS_TO_RAS @ affine_ras
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # voxel axis 0 = DICOM column index, axis 1 = row index
    iop = list(col_step / np.linalg.norm(col_step)) + list(row_step / np.linalg.norm(row_step))
    ipp = list(lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3])
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step)))  # (between rows, between columns)
    return iop, ipp, spacing


def write_series(volume: np.ndarray, affine_ras: np.ndarray, folder: Path, *, description: str = "AX FLAIR",
                 series_number: int = 5, patient_id: str = "LGG-TEST-01", study_uid: str | None = None,
                 series_uid: str | None = None, slope: float = 0.5, intercept: float = -10.0, seed: int = 0,
                 skip_slices: tuple[int, ...] = (), orientation_override: dict[int, list[float]] | None = None,
                 slice_thickness: float | None = None) -> dict:
    """Write ``volume`` (column, row, slice) as one series into ``folder``; returns its UIDs and file paths.

    Stored pixel values are ``(value - intercept) / slope`` (uint16), so RescaleSlope/Intercept give ``value``
    back exactly when ``slope`` is a power of two.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    n = volume.shape[2]
    order = rng.permutation(n)
    instance_numbers = rng.permutation(n) + 1
    stored = np.round((volume.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 65536
    thickness = slice_thickness if slice_thickness is not None else float(np.linalg.norm(affine_ras[:3, 2]))
    paths = []
    for rank, k in enumerate(order):
        if k in skip_slices:
            continue
        iop, ipp, spacing = slice_geometry(affine_ras, int(k))
        if orientation_override and k in orientation_override:
            iop = orientation_override[k]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "LGG^Test", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "19970726", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer = "MR", "TEST"
        ds.SeriesNumber, ds.SeriesDescription, ds.ProtocolName = series_number, description, description
        ds.InstanceNumber = int(instance_numbers[rank])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.ImageOrientationPatient = _ds_str(iop)
        ds.ImagePositionPatient = _ds_str(ipp)
        ds.PixelSpacing = _ds_str(spacing)
        ds.SliceThickness = f"{thickness:.10g}"
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{ipp[2]:.10g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype(np.uint16)).tobytes()
        path = folder / uuid.UUID(bytes=rng.bytes(16)).hex
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return {"study_uid": study_uid, "series_uid": series_uid, "paths": paths}


def write_enhanced(paths: list[Path], target: Path, *, series_number: int = 7, description: str | None = None) -> dict:
    """Convert a classic series (``write_series``'s files, in the scrambled order given) into one Legacy Converted
    Enhanced MR Image with highdicom: per-frame plane positions, shared orientation and pixel measures."""
    import highdicom as hd

    datasets = [pydicom.dcmread(p) for p in paths]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1)
    if description is not None:
        image.SeriesDescription = description
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(target)
    return {"series_uid": image.SeriesInstanceUID, "sop_uid": image.SOPInstanceUID, "path": target,
            "n_frames": int(image.NumberOfFrames)}


def write_time_series(enhanced: Path, target: Path, n_times: int = 2) -> Path:
    """``enhanced``'s frames repeated at ``n_times`` temporal positions (TemporalPositionIndex 1..n in each
    frame's Frame Content): a 4D enhanced image, as a dynamic or perfusion acquisition stores one."""
    import copy

    ds = pydicom.dcmread(enhanced)
    n = int(ds.NumberOfFrames)
    items = []
    for t in range(n_times):
        for item in ds.PerFrameFunctionalGroupsSequence:
            item = copy.deepcopy(item)
            item.FrameContentSequence[0].TemporalPositionIndex = t + 1
            items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    ds.NumberOfFrames = n * n_times
    ds.PixelData = ds.PixelData * n_times
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target
