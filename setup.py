"""MONAIUNetSeg: LGG FLAIR abnormality segmentation (MONAI bundle, batch CLI, 3D Slicer module)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# One version: the package's own ``__version__`` (what ``monaiunetseg --version`` prints).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "MONAIUNetSeg/monaiunetseg/__init__.py").read_text(), re.M).group(1)

setup(
    name="monaiunetseg",
    version=VERSION,
    description="LGG FLAIR abnormality segmentation in brain MRI with a MONAI U-Net (research use only)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # Python 3.9-3.13: 3.9 for the Python of 3D Slicer 5.6/5.8, which imports this core as it is; 3.13 is the
    # newest the pinned PyTorch/MONAI wheels are tested on here.
    python_requires=">=3.9",
    # The Slicer-free core lives inside the Slicer module folder so Slicer finds it beside the module;
    # the bundle (configs + shipped weights) installs as a data package the core locates at run time.
    package_dir={"monaiunetseg": "MONAIUNetSeg/monaiunetseg", "monaiunetseg_bundle": "monai_bundle"},
    packages=["monaiunetseg", *(f"monaiunetseg.{p}" for p in find_packages("MONAIUNetSeg/monaiunetseg")),
              "monaiunetseg_bundle"],
    package_data={"monaiunetseg_bundle": ["configs/*", "models/model.pt", "models/cv/*/model.pt", "models/cv/*/cv_fold.json",
                                          "models/cv_tissue_v1/*/model.pt", "models/cv_tissue_v1/*/cv_fold.json", "docs/*", "LICENSE"],
                  "monaiunetseg.batch": ["run_record.schema.json"]},
    # Every requirement is imported by the core, the bundle configs or the commands (none "just in case"):
    # nibabel NIfTI; SimpleITK NRRD/MetaImage; pydicom + highdicom DICOM, enhanced multi-frame, SEG, SR; pynetdicom
    # the DICOM node; tifffile the Kaggle slices; pytorch-ignite, tensorboard and fire the bundle's training and
    # `python -m monai.bundle`; scipy post-processing and metrics; matplotlib the overlay and the evaluation pictures;
    # tqdm progress.
    install_requires=[
        "torch>=2.1,<2.15",
        "onnxruntime>=1.16",  # the CPU inference backend (without it: torch, slower to start)
        "monai>=1.4,<1.7",
        "pytorch-ignite>=0.4.11",
        "numpy",
        "nibabel>=5",
        "SimpleITK>=2.2",
        "pydicom>=2.4",
        "highdicom>=0.22",
        "pynetdicom>=2.0",  # the DICOM node (`listen`): C-ECHO/C-STORE in, C-STORE of SEG and SR out
        "tifffile>=2023.1",
        "tqdm",
        "fire",
        "tensorboard",
        "matplotlib",
        "scipy",
    ],
    extras_require={
        "test": ["pytest>=7", "jsonschema>=4", "psutil", "onnx>=1.14"],  # onnx: checks the hand-written ONNX graphs
        "slicer": ["slicer-core"],
        # MONAI's ITKReader for the rarer ITK formats (MINC, ITK HDF5, GIPL, VTK): monaiunetseg.io.itk_reader.
        "itk": ["itk>=5.3"],
    },
    entry_points={"console_scripts": ["monaiunetseg=monaiunetseg.cli:main"]},
)
