"""DICOM SEG output (highdicom, BINARY): the labelmap as an object PACS and viewers attach to its source series.

The segment's name and SNOMED CT coding are defined once, in ``monaiunetseg.labels``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from monaiunetseg import TOOL_NAME, __version__, labels
from monaiunetseg.files import atomic_path
from monaiunetseg.io.dicom_series import ORIENTATION_ATOL

SEGMENT_LABEL = labels.SEGMENT_LABEL
SEGMENT_CATEGORY = Code(labels.CATEGORY.value, labels.CATEGORY.scheme, labels.CATEGORY.meaning)
SEGMENT_TYPE = Code(labels.TYPE.value, labels.TYPE.scheme, labels.TYPE.meaning)
ANATOMIC_REGION = Code(labels.ANATOMIC_REGION.value, labels.ANATOMIC_REGION.scheme, labels.ANATOMIC_REGION.meaning)
SERIES_DESCRIPTION = "FLAIR abnormality (MONAIUNetSeg) - research use only"
CONTENT_DESCRIPTION = "FLAIR abnormality - research use only, not for diagnosis"
CONTENT_LABEL = "FLAIR_ABNORMAL"
SEG_SERIES_NUMBER_OFFSET = 9000  # keeps the SEG next to, but distinct from, its source series in viewers


def segment_description() -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=TOOL_NAME, version=__version__, family=codes.cid7162.ArtificialIntelligence,
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=SEGMENT_CATEGORY,
        segmented_property_type=SEGMENT_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[ANATOMIC_REGION],
    )


# Functional groups highdicom needs shared by all frames of a multi-frame source, and the numbers compared
SHARED_GROUPS = {"PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
                 "PlaneOrientationSequence": ("ImageOrientationPatient",)}


def _numbers(item: pydicom.Dataset, keywords: tuple[str, ...]) -> list[float] | None:
    try:
        out: list[float] = []
        for keyword in keywords:
            value = item.get(keyword)
            if value is not None and value != "":
                out.extend(float(v) for v in (value if isinstance(value, (list, tuple, MultiValue))
                                              else [value]))
        return out
    except (TypeError, ValueError):
        return None


def _agree(values: list[list[float] | None]) -> bool:
    first = values[0]
    return first is not None and all(v is not None and len(v) == len(first) and
                                      np.allclose(v, first, rtol=0, atol=ORIENTATION_ATOL) for v in values)


def seg_sources(datasets: list[pydicom.Dataset], multiframe: bool) -> list[pydicom.Dataset]:
    """Copies of the source headers as highdicom requires them, equal where our reader found them equal.

    Real series differ where highdicom wants identity: orientation cosines jittering by ~1e-8 between slices
    ("Source images must have a shared orientation"), or an enhanced image keeping its pixel measures and
    orientation per frame instead of shared (AttributeError). Values that agree within the reader's tolerance
    are made one (the first slice's or frame's); anything else is left for highdicom to refuse."""
    datasets = [copy.deepcopy(ds) for ds in datasets]
    if not multiframe:
        orientations = [_numbers(ds, ("ImageOrientationPatient",)) for ds in datasets]
        if _agree(orientations):
            for ds in datasets[1:]:
                ds.ImageOrientationPatient = datasets[0].ImageOrientationPatient
        return datasets
    ds = datasets[0]
    if "SharedFunctionalGroupsSequence" not in ds or not ds.SharedFunctionalGroupsSequence:
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    for group, keywords in SHARED_GROUPS.items():
        if group in shared or not frames or not all(group in f and f[group].value for f in frames):
            continue
        if _agree([_numbers(f[group].value[0], keywords) for f in frames]):
            setattr(shared, group, frames[0][group].value)
            for f in frames:
                del f[group]
    return datasets


def write_dicom_seg(labels: np.ndarray, source_datasets: list[pydicom.Dataset], target: str | os.PathLike,
                    frame_slices: list[int] | None = None) -> Path:
    """Write a BINARY SEG of ``labels`` (column, row, slice), atomically, one frame per source image frame.

    ``source_datasets`` are the source headers (pixel data not needed): one per slice in slice order, or, with
    ``frame_slices`` (the slice index of each of its frames), the one multi-frame image the volume came from.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if frame_slices is not None:
        if len(source_datasets) != 1 or int(source_datasets[0].get("NumberOfFrames", 1) or 1) != len(frame_slices):
            raise ValueError(f"{len(frame_slices)} frame slices do not match the multi-frame source image")
        labels = labels[:, :, list(frame_slices)]  # SEG frame i lies on source frame i
    elif labels.ndim != 3 or labels.shape[2] != len(source_datasets):
        raise ValueError(f"labelmap shape {labels.shape} does not match {len(source_datasets)} source images")
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (frame, row, column) as the source frames
    try:
        series_number = int(source_datasets[0].get("SeriesNumber") or 0) + SEG_SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = SEG_SERIES_NUMBER_OFFSET
    seg = hd.seg.Segmentation(
        source_images=seg_sources(source_datasets, frame_slices is not None),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description()],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=TOOL_NAME,  # how a later run knows this file is its own (batch.outdir)
        manufacturer_model_name="MONAIUNetSeg LGG FLAIR U-Net (research use only)",
        software_versions=__version__,
        device_serial_number="0",
        series_description=SERIES_DESCRIPTION,
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        omit_empty_frames=False,  # one frame per source slice: simplest for every reader, tiny when BINARY
    )
    target = Path(target)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    return target
