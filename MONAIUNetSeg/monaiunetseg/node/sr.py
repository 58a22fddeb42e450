"""The objects the node sends besides the SEG: a TID 1500 measurement report (Comprehensive 3D SR) with the
volume, RANO diameters and product, confidence and review reasons, so that a PACS viewer shows the numbers; the
SEG marked ``REVIEW`` when the verdict says so; and optionally the overlay as a secondary capture.

Numbers with a standard code use it (SNOMED CT volume, long axis, perpendicular axis; UCUM units); the RANO product,
the confidence and the review flag have none and use this tool's own coding scheme (``99MONAIUNETSEG``, the
"99" prefix DICOM reserves for private schemes). The reasons go in a TEXT item (DCM 121106 "Comment").
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from monaiunetseg import TOOL_NAME, __version__, labels
from monaiunetseg.batch.report import CaseResult
from monaiunetseg.files import atomic_path

REVIEW = "REVIEW"
PRIVATE_SCHEME = "99MONAIUNETSEG"
SR_SERIES_DESCRIPTION = "FLAIR measurements (MONAIUNetSeg) - research use only"
SC_SERIES_DESCRIPTION = "FLAIR overlay (MONAIUNetSeg) - research use only"
SR_SERIES_OFFSET, SC_SERIES_OFFSET = 9500, 9600  # after the SEG's 9000 + source series number
VOLUME = codes.SCT.Volume
LONG_AXIS = codes.SCT.LongAxis  # RANO: the longest axial diameter
PERPENDICULAR_AXIS = codes.SCT.PerpendicularAxis  # RANO: the longest diameter perpendicular to it
PRODUCT = Code("RANO-PRODUCT", PRIVATE_SCHEME, "RANO bidimensional product")
CONFIDENCE = Code("CONFIDENCE", PRIVATE_SCHEME, "Expected Dice (confidence)")
REVIEW_FLAG = Code("REVIEW", PRIVATE_SCHEME, "Review recommended")
VOXEL_SUM = codes.DCM.SumOfSegmentedVoxelMethodForVolume
MILLILITER, MILLIMETER, SQUARE_MM = Code("ml", "UCUM", "milliliter"), codes.UCUM.Millimeter, codes.UCUM.SquareMillimeter
NO_UNITS = Code("1", "UCUM", "no units")
YES, NO = Code("373066001", "SCT", "Yes"), Code("373067005", "SCT", "No")


def _code(c: labels.Code) -> Code:
    return Code(c.value, c.scheme, c.meaning)


def review_text(text: str) -> str:
    """``REVIEW - text``, within a LO value's 64 characters."""
    return f"{REVIEW} - {text}"[:64]


def mark_review(seg_path: str | os.PathLike, target: str | os.PathLike, result: CaseResult) -> Path:
    """Copy the SEG ``segment --dicom-seg`` wrote to ``target`` (atomically), saying ``REVIEW`` in its Series
    Description and segment label when the verdict flags the case, so that a viewer shows it beside the outline."""
    seg = pydicom.dcmread(seg_path)
    if result.review == "yes":
        seg.SeriesDescription = review_text(str(seg.get("SeriesDescription", "")))
        for item in seg.SegmentSequence:
            item.SegmentLabel = review_text(str(item.SegmentLabel))
    target = Path(target)
    with atomic_path(target) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return target


def _measurements(result: CaseResult, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    found = [hd.sr.Measurement(name=VOLUME, value=float(result.volume_ml or 0.0), unit=MILLILITER, method=VOXEL_SUM,
                               algorithm_id=algorithm)]
    for name, value, unit in ((LONG_AXIS, result.axial_longest_mm, MILLIMETER),
                              (PERPENDICULAR_AXIS, result.axial_perpendicular_mm, MILLIMETER),
                              (PRODUCT, result.bidimensional_mm2, SQUARE_MM),
                              (CONFIDENCE, result.confidence, NO_UNITS)):
        if value is not None and np.isfinite(value):
            found.append(hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm))
    return found


def _series_number(source: pydicom.Dataset, offset: int) -> int:
    try:
        return int(source.get("SeriesNumber") or 0) + offset
    except (TypeError, ValueError):
        return offset


def write_report_sr(seg_path: str | os.PathLike, sources: list[pydicom.Dataset], result: CaseResult,
                    target: str | os.PathLike) -> Path:
    """Write the TID 1500 measurement report of one segmented series (atomically): one volumetric measurement
    group referencing segment 1 of the SEG and the source series; ``sources``: the source headers."""
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    algorithm = hd.sr.AlgorithmIdentification(name=TOOL_NAME, version=__version__)
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
        source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID))
    evaluations = []
    if result.review:
        evaluations.append(hd.sr.QualitativeEvaluation(REVIEW_FLAG, YES if result.review == "yes" else NO))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=labels.SEGMENT_LABEL),
        referenced_segment=referenced, finding_type=_code(labels.TYPE), finding_category=_code(labels.CATEGORY),
        finding_sites=[hd.sr.FindingSite(_code(labels.ANATOMIC_REGION))], algorithm_id=algorithm,
        measurements=_measurements(result, algorithm), qualitative_evaluations=evaluations or None)
    if result.review_reasons:  # free text: the reasons as the report and the overlay give them
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=result.review_reasons[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=TOOL_NAME, model_name=f"{TOOL_NAME} {__version__} (research use only)"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("363679005", "SCT", "Imaging procedure"), imaging_measurements=[group])
    description = SR_SERIES_DESCRIPTION if result.review != "yes" else review_text(SR_SERIES_DESCRIPTION)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report[0], series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0], SR_SERIES_OFFSET), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=TOOL_NAME, series_description=description, is_complete=True)
    target = Path(target)
    with atomic_path(target) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return target


def write_overlay_sc(png: str | os.PathLike, source: pydicom.Dataset, result: CaseResult,
                     target: str | os.PathLike) -> Path:
    """The ``--overlay`` PNG as an RGB secondary capture in the source's study (``--send-overlay``)."""
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(png))[..., :3]
    pixels = np.ascontiguousarray(np.round(rgb * 255 if rgb.dtype.kind == "f" else rgb).astype(np.uint8))
    description = SC_SERIES_DESCRIPTION if result.review != "yes" else review_text(SC_SERIES_DESCRIPTION)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=hd.UID(),
        series_number=_series_number(source, SC_SERIES_OFFSET), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=TOOL_NAME, patient_orientation=("L", "P"), series_description=description,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
    sc.Laterality = ""  # type 2C in the General Series module; the brain is no paired organ: present, empty
    target = Path(target)
    with atomic_path(target) as tmp:
        sc.save_as(tmp, enforce_file_format=True)
    return target
