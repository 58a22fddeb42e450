"""Segmentation nodes of the 3D Slicer module: a labelmap becomes a ``vtkMRMLSegmentationNode`` with one
"FLAIR abnormality" segment (colour, SNOMED-CT terminology from ``monaiunetseg.labels``), the input as reference
geometry, under the input's study in the subject hierarchy, with its 3D surface shown; the tumour volume in
millilitres, an optional labelmap export, and the geometry / Dice checks the self-test uses.

Qt-free, Slicer imported inside the functions (runs in Slicer and headless under ``slicer-core``), like ``mrml``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monaiunetseg import labels
from monaiunetseg.batch.naming import safe_name
from MONAIUNetSegLib import markups
from MONAIUNetSegLib.mrml import (
    ijk_to_ras,
    place_in_subject_hierarchy,
    read_labelmap_nifti,
    volume_to_array_affine,
    voxel_volume_ml,
    world_affine,
    write_volume_nifti,
)

SEGMENT_NAME = labels.SEGMENT_LABEL
SEGMENT_ID = labels.SEGMENT_ID
SEGMENT_COLOR = labels.COLOR


def _term(code: labels.Code, meaning: str | None = None) -> str:
    return f"{code.scheme}^{code.value}^{meaning or code.meaning}"


# Serialized vtkSlicerTerminologyEntry (the format of the segment's "TerminologyEntry" tag in Slicer 5.x):
# context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ region modifier. The category's
# meaning is spelled as in Slicer's General Anatomy list; the codes are the core's (monaiunetseg.labels).
TERMINOLOGY_ENTRY = "~".join([
    "Segmentation category and type - 3D Slicer General Anatomy list",
    _term(labels.CATEGORY, "Morphologically Altered Structure"),
    _term(labels.TYPE),
    "^^",
    "Anatomic codes - DICOM master list",
    _term(labels.ANATOMIC_REGION),
    "^^",
])
OUTPUT_NAME_SUFFIX = " FLAIR abnormality"
VOLUME_ATTRIBUTE = "MONAIUNetSeg.VolumeMl"  # node attribute holding the segment volume (mL) after a run
# The verdict of a run (core ``trust.assessment``): node attributes and segment tags of these names.
CONFIDENCE_ATTRIBUTE, REVIEW_ATTRIBUTE, REASONS_ATTRIBUTE = "MONAIUNetSeg.Confidence", "MONAIUNetSeg.Review", "MONAIUNetSeg.ReviewReasons"
REVIEW_NAME_SUFFIX = " (REVIEW)"  # appended to the segment's name when the result needs a second look


@dataclass
class SegmentationResult:
    """What one run produced: the node, the segment's ID, its volume and, on request, a labelmap node."""

    segmentationNode: Any
    segmentId: str
    volumeMl: float
    labelmapNode: Any = None
    seconds: float = 0.0
    confidence: float | None = None  # 0-1, the Dice the result is expected to have
    review: bool = False  # the result needs a second look (why: ``reviewReasons``)
    reviewReasons: str = ""
    measurements: dict | None = None  # the core's measurement row of the segment (``measure_labelmap``)
    lineNodes: dict = field(default_factory=dict)  # "longest" / "perpendicular" -> vtkMRMLMarkupsLineNode

    def measurementText(self) -> str:
        """The RANO figures for the panel (``-`` when nothing measurable was found)."""
        return markups.measurement_text(self.measurements) if self.measurements else "-"

    def verdictText(self) -> str:
        """One line for the panel: the confidence, and why to review the result when it should be."""
        if self.confidence is None:
            return ""
        if self.review:
            return f"REVIEW (confidence {self.confidence:.2f}): {self.reviewReasons}"
        return f"confidence {self.confidence:.2f}"


# ---------------------------------------------------------------------------------------------------------
# Labelmaps -> segmentation nodes
# ---------------------------------------------------------------------------------------------------------

def _ensure_headless_conversion_rules() -> None:
    """Under slicer-core nobody registers the segmentation conversion rules (Slicer's Segmentations module
    does it at start-up); without them segments cannot be created or shown as surfaces. No-op inside Slicer."""
    import slicer

    if hasattr(slicer, "app"):
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in names:
            factory.RegisterConverterRule(rule)


def labelmap_node_from_array(labels_xyz: np.ndarray, referenceVolume, name: str = "labelmap"):
    """A new labelmap node on ``referenceVolume``'s voxel grid holding ``labels_xyz`` (indexed i, j, k)."""
    import slicer.util

    labels_xyz = np.asarray(labels_xyz)
    dims = tuple(referenceVolume.GetImageData().GetDimensions())
    if labels_xyz.shape != dims:
        raise ValueError(f"label array shape {labels_xyz.shape} != volume dimensions {dims}")
    scene = referenceVolume.GetScene()
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    labelmapNode.CopyOrientation(referenceVolume)
    slicer.util.updateVolumeFromArray(labelmapNode, np.ascontiguousarray(labels_xyz.transpose(2, 1, 0).astype(np.uint8)))
    transformNodeID = referenceVolume.GetTransformNodeID()
    if transformNodeID:
        labelmapNode.SetAndObserveTransformNodeID(transformNodeID)
    return labelmapNode


def _segment_ids(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def style_segment(segment) -> None:
    """Name, colour and SNOMED-CT terminology of the "FLAIR abnormality" segment."""
    import slicer

    segment.SetName(SEGMENT_NAME)
    segment.SetColor(*SEGMENT_COLOR)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), TERMINOLOGY_ENTRY)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)


def new_segmentation_node(referenceVolume, name: str | None = None):
    _ensure_headless_conversion_rules()
    scene = referenceVolume.GetScene()
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or referenceVolume.GetName() + OUTPUT_NAME_SUFFIX)
    segmentationNode.CreateDefaultDisplayNodes()
    return segmentationNode


def set_reference_geometry(segmentationNode, referenceVolume) -> None:
    """The input volume's grid becomes the segmentation's reference geometry (parameter and node reference)."""
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(), referenceVolume.GetID())
    transformNodeID = referenceVolume.GetTransformNodeID()
    if transformNodeID:
        segmentationNode.SetAndObserveTransformNodeID(transformNodeID)


def segmentation_from_labelmap(labelmapNode, referenceVolume, segmentationNode=None) -> tuple[Any, str]:
    """Put label 1 of ``labelmapNode`` into a "FLAIR abnormality" segment; returns ``(node, segmentId)``.

    A new node is created when ``segmentationNode`` is None; in an existing one only a previous
    "FLAIR abnormality" segment is replaced. An empty prediction gives an empty segment, never a missing one.
    """
    import slicer

    _ensure_headless_conversion_rules()
    if segmentationNode is None:
        segmentationNode = new_segmentation_node(referenceVolume)
    elif segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    segmentation = segmentationNode.GetSegmentation()
    for oldId in _segment_ids(segmentationNode):
        if segmentation.GetSegment(oldId).GetName() == SEGMENT_NAME:
            segmentationNode.RemoveSegment(oldId)
    set_reference_geometry(segmentationNode, referenceVolume)

    before = set(_segment_ids(segmentationNode))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode):
        raise RuntimeError("importing the labelmap into the segmentation failed")
    added = [sid for sid in _segment_ids(segmentationNode) if sid not in before]
    if len(added) > 1:  # the model writes 0/1 only; anything else is a broken result
        raise RuntimeError(f"expected one label in the result, found {len(added)}")
    if added:
        segmentId = added[0]
    else:  # nothing found: keep an explicit empty segment
        segmentId = segmentation.AddEmptySegment(SEGMENT_ID if SEGMENT_ID not in before else "", SEGMENT_NAME, list(SEGMENT_COLOR))
        if not segmentId:
            raise RuntimeError("could not add an empty segment")
    style_segment(segmentation.GetSegment(segmentId))
    return segmentationNode, segmentId


def show_in_3d(segmentationNode) -> bool:
    """Build the closed-surface representation so the segment appears in the 3D view."""
    ok = bool(segmentationNode.CreateClosedSurfaceRepresentation())
    displayNode = segmentationNode.GetDisplayNode()
    if displayNode is not None:
        displayNode.SetVisibility(True)
    return ok


# ---------------------------------------------------------------------------------------------------------
# Segmentation nodes -> arrays, volumes, checks
# ---------------------------------------------------------------------------------------------------------

def export_segment_to_labelmap(segmentationNode, segmentId: str, referenceVolume, labelmapNode=None, name: str | None = None):
    """Export one segment onto ``referenceVolume``'s grid (``ExportSegmentsToLabelmapNode``)."""
    import slicer
    import vtk

    scene = referenceVolume.GetScene()
    if labelmapNode is None:
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name or segmentationNode.GetName() + " label")
    segmentIds = vtk.vtkStringArray()
    segmentIds.InsertNextValue(segmentId)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, segmentIds, labelmapNode, referenceVolume):
        raise RuntimeError(f"exporting segment {segmentId!r} to a labelmap failed")
    return labelmapNode


def segment_array_xyz(segmentationNode, segmentId: str, referenceVolume) -> np.ndarray:
    """The segment as a uint8 (i, j, k) mask on ``referenceVolume``'s grid."""
    import slicer.util

    scene = referenceVolume.GetScene()
    labelmapNode = export_segment_to_labelmap(segmentationNode, segmentId, referenceVolume, name="__MONAIUNetSeg_tmp")
    try:
        return (slicer.util.arrayFromVolume(labelmapNode).transpose(2, 1, 0) > 0).astype(np.uint8)
    finally:
        scene.RemoveNode(labelmapNode)


def segment_volume_ml(segmentationNode, segmentId: str, referenceVolume) -> float:
    return float(segment_array_xyz(segmentationNode, segmentId, referenceVolume).sum()) * voxel_volume_ml(referenceVolume)


def find_segment_id(segmentationNode, name: str = SEGMENT_NAME) -> str | None:
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in _segment_ids(segmentationNode):
        if segmentation.GetSegment(segmentId).GetName() in (name, name + REVIEW_NAME_SUFFIX):
            return segmentId
    return None


def reference_geometry_matches(segmentationNode, volumeNode) -> bool:
    """True when the segmentation's reference geometry is ``volumeNode``'s grid (node reference and parameter)."""
    import slicer

    role = segmentationNode.GetReferenceImageGeometryReferenceRole()
    if segmentationNode.GetNodeReferenceID(role) != volumeNode.GetID():
        return False
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volumeNode))
    actual = segmentationNode.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    return _same_geometry_string(actual, expected)


def _same_geometry_string(a: str, b: str, tol: float = 1e-4) -> bool:
    try:
        va = np.array([float(x) for x in a.replace(",", ";").split(";") if x.strip()])
        vb = np.array([float(x) for x in b.replace(",", ";").split(";") if x.strip()])
    except ValueError:
        return a == b
    return va.shape == vb.shape and bool(np.allclose(va, vb, atol=tol))


def labelmap_array_on_grid(labelmapNode, volumeNode) -> np.ndarray:
    """A reference labelmap's (i, j, k) mask, which must lie on ``volumeNode``'s grid."""
    import slicer.util

    if tuple(labelmapNode.GetImageData().GetDimensions()) != tuple(volumeNode.GetImageData().GetDimensions()) or \
            not np.allclose(world_affine(labelmapNode), world_affine(volumeNode), atol=1e-4):
        raise ValueError(f"'{labelmapNode.GetName()}' is not on the grid of '{volumeNode.GetName()}'")
    return (slicer.util.arrayFromVolume(labelmapNode).transpose(2, 1, 0) > 0).astype(np.uint8)


def dice_with_labelmap(segmentationNode, segmentId: str, volumeNode, referenceLabelmapNode) -> float:
    """Dice of the segment against a reference labelmap on the input's grid (the module self-test)."""
    from monaiunetseg.metrics import dice

    return dice(segment_array_xyz(segmentationNode, segmentId, volumeNode), labelmap_array_on_grid(referenceLabelmapNode, volumeNode))


# ---------------------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------------------

def apply_verdict(result: SegmentationResult, confidence: float | None, review: bool, reasons: str) -> SegmentationResult:
    """Show the core's verdict on the result: the segment's name gets " (REVIEW)" when flagged, and the segment
    (tags) and the segmentation node (attributes, description) carry the confidence and the reasons."""
    result.confidence, result.review, result.reviewReasons = confidence, bool(review), reasons or ""
    if confidence is None:
        return result
    segmentationNode = result.segmentationNode
    segment = segmentationNode.GetSegmentation().GetSegment(result.segmentId)
    segment.SetName(SEGMENT_NAME + (REVIEW_NAME_SUFFIX if review else ""))
    values = {CONFIDENCE_ATTRIBUTE: f"{confidence:.4f}", REVIEW_ATTRIBUTE: "yes" if review else "no", REASONS_ATTRIBUTE: result.reviewReasons}
    for key, value in values.items():
        segment.SetTag(key, value)
        segmentationNode.SetAttribute(key, value)
    segmentationNode.SetDescription(result.verdictText())
    return result


def finish_result(labelmapNode, volumeNode, segmentationNode=None, keepLabelmap: bool = False, started: float | None = None) -> SegmentationResult:
    """Labelmap on the input grid -> styled segmentation node placed in the hierarchy, shown in 3D, measured
    (volume, and the RANO diameters as markup lines: ``markups``)."""
    scene = volumeNode.GetScene()
    try:
        segmentationNode, segmentId = segmentation_from_labelmap(labelmapNode, volumeNode, segmentationNode)
    finally:
        if not keepLabelmap:
            scene.RemoveNode(labelmapNode)
    place_in_subject_hierarchy(segmentationNode, volumeNode)
    show_in_3d(segmentationNode)
    exportedLabelmapNode = None
    if keepLabelmap:  # the labelmap the user asked for is the segment exported with the input as reference
        exportedLabelmapNode = export_segment_to_labelmap(segmentationNode, segmentId, volumeNode, labelmapNode=labelmapNode)
        exportedLabelmapNode.SetName(segmentationNode.GetName() + " label")
        place_in_subject_hierarchy(exportedLabelmapNode, volumeNode)
    mask = segment_array_xyz(segmentationNode, segmentId, volumeNode)  # what the segment holds, as shown
    volumeMl = float(mask.sum()) * voxel_volume_ml(volumeNode)
    segmentationNode.SetAttribute(VOLUME_ATTRIBUTE, f"{volumeMl:.3f}")
    measured = markups.measure_mask(mask, volumeNode)
    lineNodes = markups.add_diameter_lines(measured, volumeNode, segmentationNode)
    seconds = time.perf_counter() - started if started is not None else 0.0
    return SegmentationResult(segmentationNode, segmentId, volumeMl, exportedLabelmapNode, seconds,
                              measurements=measured, lineNodes=lineNodes)


def segment_volume_node(volumeNode, segmenter, segmentationNode=None, createLabelmap: bool = False) -> SegmentationResult:
    """In-process run: ``segmenter.segment(array_xyz, affine)`` (a core ``Segmenter``) on the node's voxels."""
    started = time.perf_counter()
    array, affine = volume_to_array_affine(volumeNode)
    labels = segmenter.segment(array, affine)
    verdict = segmenter.assess(array, affine) if hasattr(segmenter, "assess") else None
    labelmapNode = labelmap_node_from_array(labels, volumeNode, name=volumeNode.GetName() + OUTPUT_NAME_SUFFIX + " label")
    result = finish_result(labelmapNode, volumeNode, segmentationNode, keepLabelmap=createLabelmap, started=started)
    if verdict is not None:
        apply_verdict(result, verdict.confidence, verdict.review, verdict.reasons_text)
    return result


def prepare_background_input(volumeNode, workDir: str | os.PathLike) -> Path:
    """Write the input for the background process: ``<workDir>/input/<name>.nii.gz`` (world geometry)."""
    return write_volume_nifti(volumeNode, Path(workDir) / "input" / (safe_name(volumeNode.GetName(), "volume") + ".nii.gz"))


def import_background_result(labelmapPath: str | os.PathLike, volumeNode, segmentationNode=None,
                             createLabelmap: bool = False, started: float | None = None,
                             verdict: tuple[float | None, bool, str] | None = None) -> SegmentationResult:
    """Bring the background process's labelmap (written on the input's grid) into the scene as the result;
    ``verdict``: (confidence, review, reasons) from its result file."""
    labelmapNode = read_labelmap_nifti(labelmapPath, volumeNode.GetScene(), name=volumeNode.GetName() + OUTPUT_NAME_SUFFIX + " label")
    try:
        align_to_input(labelmapNode, volumeNode)
    except ValueError:
        volumeNode.GetScene().RemoveNode(labelmapNode)
        raise
    result = finish_result(labelmapNode, volumeNode, segmentationNode, keepLabelmap=createLabelmap, started=started)
    return apply_verdict(result, *verdict) if verdict is not None else result


def align_to_input(labelmapNode, volumeNode) -> None:
    """Give a result read from file the input's own IJK-to-RAS and parent transform.

    The temporary input was written in world coordinates (parent transform applied), and the core writes its
    result on the input's grid; the result therefore has the input's dimensions and world geometry. It is put
    back into the input's local frame so that it follows the input's transform like the input does.
    """
    same_dims = tuple(labelmapNode.GetImageData().GetDimensions()) == tuple(volumeNode.GetImageData().GetDimensions())
    if same_dims and np.allclose(ijk_to_ras(labelmapNode), world_affine(volumeNode), atol=1e-2):  # NIfTI float32
        labelmapNode.CopyOrientation(volumeNode)
        transformNodeID = volumeNode.GetTransformNodeID()
        if transformNodeID:
            labelmapNode.SetAndObserveTransformNodeID(transformNodeID)
        return
    if volumeNode.GetTransformNodeID():
        raise ValueError(f"the result for '{volumeNode.GetName()}' is not on the input's grid and the input is "
                         "transformed: cannot place it")
    # A result on another grid (not what the core writes) is resampled onto the input grid by the import.
