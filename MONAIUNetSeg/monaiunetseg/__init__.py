"""MONAIUNetSeg core: Slicer-free geometry, I/O and inference for LGG FLAIR abnormality segmentation.

Everything that computes lives here so that the MONAI bundle, the ``monaiunetseg`` CLI and the 3D Slicer
module share one implementation. Importing the package is cheap: subpackages (``io``, ``model``, ``batch``,
``training``) are imported where they are used, never here.
"""

__version__ = "0.5.2"
# The name every output carries (DICOM SEG Manufacturer, overlay PNG Software, report.json "tool"): how a
# later run tells its own files from the user's.
TOOL_NAME = "MONAIUNetSeg"
