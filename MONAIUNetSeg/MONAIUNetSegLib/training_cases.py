"""The Slicer loop's data: a scan and its (corrected) segmentation saved as a training pair, in a folder of the
user's choosing, the way ``monaiunetseg prepare-pairs`` reads them (``<case>.nii.gz`` + ``<case>_label.nii.gz``),
with where the pair came from in ``<case>.json`` (the model, when it segmented, whether it was edited since).

Why a fingerprint: "edited or not" is what makes a pair a correction; the module marks each result it makes with
the model and a digest of its mask (node attributes), and the digest of the segment when it is added tells.
Qt-free; Slicer imported inside the functions (runs in Slicer and headless under ``slicer-core``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from monaiunetseg import __version__
from monaiunetseg.batch.naming import safe_name
from monaiunetseg.files import atomic_path, write_text_atomic
from MONAIUNetSegLib.mrml import write_volume_nifti
from MONAIUNetSegLib.segmentations import find_segment_id, labelmap_node_from_array, segment_array_xyz

MODEL_ATTRIBUTE = "MONAIUNetSeg.Model"  # what made the result: "model set 'default'" / "model folder ..."
DIGEST_ATTRIBUTE = "MONAIUNetSeg.MaskDigest"  # the result's mask as it was made
DATE_ATTRIBUTE = "MONAIUNetSeg.Segmented"
INPUT_ATTRIBUTE = "MONAIUNetSeg.InputVolume"  # the input volume node's ID


def mask_digest(mask: np.ndarray) -> str:
    """SHA-1 of a binary mask and its shape: equal exactly when the voxels are."""
    mask = np.asarray(mask) > 0
    return hashlib.sha1(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def mark_result(segmentationNode, segmentId: str, volumeNode, model: str) -> None:
    """Remember on the result what made it and its mask, for a later :func:`add_training_case`."""
    mask = segment_array_xyz(segmentationNode, segmentId, volumeNode)
    segmentationNode.SetAttribute(MODEL_ATTRIBUTE, model)
    segmentationNode.SetAttribute(DIGEST_ATTRIBUTE, mask_digest(mask))
    segmentationNode.SetAttribute(DATE_ATTRIBUTE, time.strftime("%Y-%m-%dT%H:%M:%S"))
    segmentationNode.SetAttribute(INPUT_ATTRIBUTE, volumeNode.GetID())


def result_of(volumeNode):
    """The segmentation node this module made last for ``volumeNode`` (None when there is none)."""
    scene = volumeNode.GetScene()
    found = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        segmentationNode = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        if segmentationNode.GetAttribute(INPUT_ATTRIBUTE) == volumeNode.GetID():
            found = segmentationNode
    return found


def case_segment(segmentationNode) -> str:
    """The segment that is the label: "FLAIR abnormality", else the only segment; else ValueError."""
    segmentId = find_segment_id(segmentationNode)
    if segmentId:
        return segmentId
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 1:
        return segmentation.GetNthSegmentID(0)
    raise ValueError(f"'{segmentationNode.GetName()}' has no 'FLAIR abnormality' segment and "
                     f"{segmentation.GetNumberOfSegments()} others: which one is the label is unclear")


def case_name(folder: Path, name: str) -> str:
    """A file-safe case name that no file in ``folder`` uses yet (never overwrite a pair), and that prepare-pairs
    cannot take for a label (no ``_label``/``_mask``/``_seg`` ending)."""
    from monaiunetseg.training.pairs import label_case  # the core's rule; imported late: nibabel and SimpleITK

    base = safe_name(name, "case")
    if label_case(base):
        base += "_scan"
    taken = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    candidate, n = base, 1
    while any(f"{candidate}{end}" in taken for end in (".nii.gz", "_label.nii.gz", ".json")):
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _write_nifti(volumeNode, target: Path) -> None:
    with atomic_path(target) as tmp:
        write_volume_nifti(volumeNode, tmp)


def add_training_case(volumeNode, segmentationNode, folder: str | os.PathLike) -> dict:
    """Write ``volumeNode`` and its segment (on the volume's grid, world geometry, 0/1) as a training pair into
    ``folder`` with a provenance sidecar; returns the sidecar's content (``case``, ``edited``, ...)."""
    if volumeNode is None or segmentationNode is None:
        raise ValueError("choose the scan and its segmentation to add as a training case")
    text = str(folder).strip() if folder is not None else ""
    if not text or text == ".":
        raise ValueError("choose a folder for the training cases first")
    folder = Path(text).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    segmentId = case_segment(segmentationNode)
    mask = (segment_array_xyz(segmentationNode, segmentId, volumeNode) > 0).astype(np.uint8)
    case = case_name(folder, volumeNode.GetName())
    made = segmentationNode.GetAttribute(DIGEST_ATTRIBUTE)
    _write_nifti(volumeNode, folder / f"{case}.nii.gz")
    labelmapNode = labelmap_node_from_array(mask, volumeNode, name=f"{case} training label")
    try:
        _write_nifti(labelmapNode, folder / f"{case}_label.nii.gz")
    finally:
        volumeNode.GetScene().RemoveNode(labelmapNode)
    provenance = {
        "case": case, "image": f"{case}.nii.gz", "label": f"{case}_label.nii.gz",
        "volume": volumeNode.GetName(), "segmentation": segmentationNode.GetName(),
        "segment": segmentationNode.GetSegmentation().GetSegment(segmentId).GetName(),
        "model": segmentationNode.GetAttribute(MODEL_ATTRIBUTE),  # None: not made by this module (drawn)
        "segmented": segmentationNode.GetAttribute(DATE_ATTRIBUTE),
        "edited": None if made is None else made != mask_digest(mask),
        "foreground_voxels": int(mask.sum()), "added": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tool": f"MONAIUNetSeg {__version__}",
    }
    write_text_atomic(folder / f"{case}.json", json.dumps(provenance, indent=1))
    return provenance
