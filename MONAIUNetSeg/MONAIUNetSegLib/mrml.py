"""The MRML side of the 3D Slicer module, volumes: nodes <-> arrays with their IJK-to-RAS geometry, NIfTI
in and out through MRML storage. Segmentation nodes are in ``segmentations``.

Qt-free and free of module-level Slicer imports (``slicer`` / ``vtk`` are imported inside the functions), so the
same code runs inside the Slicer application and headless under ``slicer-core``. Nodes are passed explicitly and
their scene is ``node.GetScene()``: nothing here uses ``slicer.mrmlScene`` or ``slicer.app``.

* volume node -> ``(array_xyz, affine_ras)`` for :class:`monaiunetseg.model.predictor.Segmenter`
* volume node -> NIfTI (the background ``monaiunetseg segment-case`` input) and NIfTI -> labelmap node
* any node placed beside its input in the subject hierarchy (segmentations, labelmaps, the RANO lines)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from monaiunetseg.geometry import voxel_volume_ml as affine_voxel_volume_ml


def _matrix_to_array(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _array_to_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volumeNode) -> np.ndarray:
    """The volume's IJK-to-RAS matrix (4x4), ignoring any parent transform."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrix_to_array(matrix)


def world_affine(volumeNode) -> np.ndarray:
    """IJK -> world RAS, including a linear parent transform; a non-linear one is refused (resample first)."""
    import vtk

    affine = ijk_to_ras(volumeNode)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is None:
        return affine
    if not transformNode.IsTransformToWorldLinear():
        raise ValueError(f"'{volumeNode.GetName()}' is under a non-linear transform: harden or remove it first")
    toWorldMatrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(toWorldMatrix)
    return _matrix_to_array(toWorldMatrix) @ affine


def volume_to_array_affine(volumeNode) -> tuple[np.ndarray, np.ndarray]:
    """``(array_xyz, affine_ras)`` of a scalar volume node: a copy of the voxels, indexed (i, j, k)."""
    import slicer.util

    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None:
        raise ValueError("the input volume has no image data")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"'{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components: "
                         "a single-channel (scalar) FLAIR volume is needed")
    if min(imageData.GetDimensions()) < 1:
        raise ValueError(f"'{volumeNode.GetName()}' is empty")
    array_kji = slicer.util.arrayFromVolume(volumeNode)
    return np.array(array_kji.transpose(2, 1, 0)), world_affine(volumeNode)


def voxel_volume_ml(volumeNode) -> float:
    """Volume of one voxel of ``volumeNode`` in millilitres (|det| of the IJK-to-RAS direction-spacing block)."""
    return affine_voxel_volume_ml(ijk_to_ras(volumeNode))


def scalar_volume_nodes(scene) -> list:
    """Scalar volumes of the scene in load order, without labelmaps (the inputs "Segment all" works on)."""
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        volumeNode = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if volumeNode is not None and not volumeNode.IsA("vtkMRMLLabelMapVolumeNode") and volumeNode.GetImageData() is not None:
            nodes.append(volumeNode)
    return nodes


def latest_scalar_volume(scene):
    """The most recently added scalar volume (the default input), or None."""
    nodes = scalar_volume_nodes(scene)
    return nodes[-1] if nodes else None


def write_volume_nifti(volumeNode, path: str | os.PathLike) -> Path:
    """Write the volume (with a linear parent transform applied to its geometry) as NIfTI via MRML storage."""
    import slicer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proxyVolumeNode = slicer.vtkMRMLScalarVolumeNode()  # in no scene: shares the voxels, carries world geometry
    proxyVolumeNode.SetAndObserveImageData(volumeNode.GetImageData())
    proxyVolumeNode.SetIJKToRASMatrix(_array_to_matrix(world_affine(volumeNode)))
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.SetUseCompression(1)
    if not storageNode.WriteData(proxyVolumeNode):
        raise OSError(f"could not write {path}")
    return path


def read_labelmap_nifti(path: str | os.PathLike, scene, name: str = "labelmap"):
    """Read a NIfTI labelmap into a new ``vtkMRMLLabelMapVolumeNode`` of ``scene``."""
    import slicer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segmentation result not found")
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    if not storageNode.ReadData(labelmapNode):
        scene.RemoveNode(labelmapNode)
        raise OSError(f"could not read {path}")
    return labelmapNode


def load_volume(path: str | os.PathLike, scene, labelmap: bool = False, name: str | None = None):
    """Load an image file as a (label) volume with ``vtkSlicerVolumesLogic`` (headless use and tests)."""
    import slicer

    volumesLogic = slicer.vtkSlicerVolumesLogic()
    volumesLogic.SetMRMLScene(scene)
    path = Path(path)
    name = name or re.sub(r"\.nii(\.gz)?$|\.nrrd$|\.mha$", "", path.name)
    node = volumesLogic.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
    if node is None:
        raise OSError(f"could not load {path}")
    return node


def place_in_subject_hierarchy(node, volumeNode) -> int:
    """Put ``node`` beside the input: under its study when it has one, else under the input's parent item."""
    import slicer

    scene = volumeNode.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    invalid = shNode.GetInvalidItemID()
    parent = shNode.GetSceneItemID()
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if volumeItem != invalid:
        study = shNode.GetItemAncestorAtLevel(volumeItem, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
        parent = study if study != invalid else shNode.GetItemParent(volumeItem)
    item = shNode.GetItemByDataNode(node)
    if item == invalid:  # inside Slicer the subject hierarchy plugins add items; headless we do
        item = shNode.CreateItem(parent, node)
    else:
        shNode.SetItemParent(item, parent)
    return item


def sample_paths() -> tuple[Path, Path]:
    """The bundled sample scan and its reference mask (``Resources/Sample`` beside the module)."""
    sample = Path(__file__).resolve().parents[1] / "Resources" / "Sample"
    return sample / "TCGA_DU_A5TR_19970726_flair.nii.gz", sample / "TCGA_DU_A5TR_19970726_label.nii.gz"


