"""DICOM SEG output (highdicom, BINARY): the labelmap as an object PACS and viewers attach to its source series.

Coding of the segment (SNOMED CT, the scheme DICOM CID 7150/7151 draw from):

* category 49755003 "Morphologically abnormal structure": the FLAIR hyperintensity is an abnormal tissue
  region, not an anatomical structure or a device;
* type 4147007 "Mass": the same code the Slicer module gives the segment (3D Slicer's General Anatomy
  terminology), so a SEG and a Slicer segmentation of one scan say the same thing. In the population the model
  is meant for (lower-grade gliomas, TCGA-LGG) the FLAIR abnormality outlines the non-enhancing tumour; "Mass"
  states the finding without claiming a diagnosis the model cannot make.
* anatomic region 12738006 "Brain".
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from . import __version__
from .atomic import atomic_path

SEGMENT_LABEL = "FLAIR abnormality"
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEGMENT_TYPE = codes.SCT.Mass  # 4147007, as in slicer_mrml.TERMINOLOGY_ENTRY
ANATOMIC_REGION = codes.SCT.Brain
SERIES_DESCRIPTION = "FLAIR abnormality (MONAIUNetSeg) - research use only"
CONTENT_DESCRIPTION = "FLAIR abnormality - research use only, not for diagnosis"
CONTENT_LABEL = "FLAIR_ABNORMAL"
SEG_SERIES_NUMBER_OFFSET = 9000  # keeps the SEG next to, but distinct from, its source series in viewers


def segment_description() -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MONAIUNetSeg", version=__version__, family=codes.cid7162.ArtificialIntelligence,
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


def write_dicom_seg(labels: np.ndarray, source_datasets: list[pydicom.Dataset], target: str | os.PathLike) -> Path:
    """Write a BINARY SEG of ``labels`` (column, row, slice), slice k on ``source_datasets[k]``, atomically.

    ``source_datasets`` are the series' headers in slice order (pixel data not needed).
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.ndim != 3 or labels.shape[2] != len(source_datasets):
        raise ValueError(f"labelmap shape {labels.shape} does not match {len(source_datasets)} source images")
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slice, row, column) as the source frames
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
        manufacturer="MONAIUNetSeg",
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
