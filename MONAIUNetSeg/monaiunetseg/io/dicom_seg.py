"""DICOM SEG output (highdicom, BINARY): the labelmap as an object PACS and viewers attach to its source series.

The segment's name and SNOMED CT coding are defined once, in ``monaiunetseg.labels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from monaiunetseg import TOOL_NAME, __version__, labels
from monaiunetseg.files import atomic_path

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
        source_images=source_datasets,
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
