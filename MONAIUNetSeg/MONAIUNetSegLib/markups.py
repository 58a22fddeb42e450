"""The RANO diameters of a result as markup lines: "<volume> RANO longest" and "<volume> RANO perpendicular"
(``vtkMRMLMarkupsLineNode``), at the end points the core measured (``measure.shape.measure_labelmap``), so the
figures in the panel are the lines a radiologist sees and can check, not a re-measurement.

The segment is measured on the input's grid with its world affine (a linear parent transform included), so the
millimetres are those shown; the lines are placed in the input's local RAS under the input's parent transform,
so they follow it like the segmentation does. Qt-free; Slicer imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from MONAIUNetSegLib.mrml import ijk_to_ras, place_in_subject_hierarchy, world_affine

LINE_SUFFIXES = {"longest": " RANO longest", "perpendicular": " RANO perpendicular"}
# Node reference roles on the segmentation node: a later run into the same node reuses its lines.
LINE_ROLES = {"longest": "MONAIUNetSeg.RANOLongest", "perpendicular": "MONAIUNetSeg.RANOPerpendicular"}
LINE_COLOURS = {"longest": (0.835, 0.369, 0.0), "perpendicular": (0.0, 0.620, 0.451)}  # as in the overlay PNG
RANO_ATTRIBUTE = "MONAIUNetSeg.RANO"  # segmentation node attribute: the panel's text


def measure_mask(mask_xyz: np.ndarray, volumeNode) -> dict:
    """The core's measurement row of an (i, j, k) mask on ``volumeNode``'s grid, in world millimetres."""
    from monaiunetseg.measure.shape import measure_labelmap

    return measure_labelmap(mask_xyz, world_affine(volumeNode))


def measurement_text(measured: dict) -> str:
    """One line for the panel: ``62.1 x 40.3 mm = 2502 mm² (axial, S 12.0 mm); max 65.0 mm``, or ``-``. The
    slice is given by its S position (world), which is where Slicer's axial view shows it."""
    longest = (measured.get("diameters") or {}).get("longest")
    if not longest:
        return "-"
    s_mm = float(np.mean([point[2] for point in longest["ras"]]))
    return (f"{measured['axial_longest_mm']:.1f} x {measured['axial_perpendicular_mm']:.1f} mm = "
            f"{measured['bidimensional_mm2']:.0f} mm² (axial, S {s_mm:.1f} mm); "
            f"max {measured['max_diameter_mm']:.1f} mm")


def _local_points(ijk: list, volumeNode) -> np.ndarray:
    """Voxel indices -> the input's local RAS (before its parent transform)."""
    affine = ijk_to_ras(volumeNode)
    return np.asarray(ijk, dtype=float) @ affine[:3, :3].T + affine[:3, 3]


def _line_node(segmentationNode, name: str, role: str):
    """The line node this segmentation's previous run made (reused), or a new one."""
    lineNode = segmentationNode.GetNodeReference(role)
    if lineNode is not None and lineNode.IsA("vtkMRMLMarkupsLineNode"):
        lineNode.SetName(name)
        return lineNode
    scene = segmentationNode.GetScene()
    lineNode = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    lineNode.CreateDefaultDisplayNodes()
    segmentationNode.SetNodeReferenceID(role, lineNode.GetID())
    return lineNode


def remove_diameter_lines(segmentationNode) -> None:
    """Remove the lines of a previous run (a result without a measurable lesion has none)."""
    scene = segmentationNode.GetScene()
    for role in LINE_ROLES.values():
        lineNode = segmentationNode.GetNodeReference(role)
        if lineNode is not None:
            scene.RemoveNode(lineNode)
        segmentationNode.SetNodeReferenceID(role, None)


def add_diameter_lines(measured: dict, volumeNode, segmentationNode) -> dict[str, Any]:
    """The two diameters of ``measured`` as locked line nodes named after ``volumeNode``, under its parent
    transform, beside it in the subject hierarchy; ``{"longest": node, "perpendicular": node}`` (empty when
    nothing was measured). The figures go on the segmentation node too (attribute ``MONAIUNetSeg.RANO``)."""
    segmentationNode.SetAttribute(RANO_ATTRIBUTE, measurement_text(measured))
    diameters = measured.get("diameters") or {}
    if not diameters.get("longest") or not diameters.get("perpendicular"):
        remove_diameter_lines(segmentationNode)
        return {}
    transformNodeID = volumeNode.GetTransformNodeID()
    nodes = {}
    for key, suffix in LINE_SUFFIXES.items():
        lineNode = _line_node(segmentationNode, volumeNode.GetName() + suffix, LINE_ROLES[key])
        start, end = _local_points(diameters[key]["ijk"], volumeNode)
        lineNode.SetLocked(False)
        lineNode.RemoveAllControlPoints()
        lineNode.SetAndObserveTransformNodeID(transformNodeID)
        lineNode.SetLineStartPosition(start.tolist())
        lineNode.SetLineEndPosition(end.tolist())
        lineNode.SetLocked(True)  # what was measured: moving an end would no longer match the report
        lineNode.SetDescription(f"RANO {key} axial diameter of '{segmentationNode.GetName()}', "
                                f"{diameters[key]['length_mm']:.1f} mm (MONAIUNetSeg, research use only)")
        lineDisplayNode = lineNode.GetDisplayNode()
        if lineDisplayNode is not None:
            lineDisplayNode.SetSelectedColor(*LINE_COLOURS[key])
        place_in_subject_hierarchy(lineNode, volumeNode)
        nodes[key] = lineNode
    return nodes
