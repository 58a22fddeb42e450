"""MONAIUNetSeg: LGG FLAIR abnormality segmentation (MONAI bundle, batch CLI, 3D Slicer module)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="monaiunetseg",
    version="0.1.0",
    description="LGG FLAIR abnormality segmentation in brain MRI with a MONAI U-Net (research use only)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # The Slicer-free core lives inside the Slicer module folder so Slicer finds it beside the module;
    # the bundle (configs + shipped weights) installs as a data package the core locates at run time.
    package_dir={"monaiunetseg": "MONAIUNetSeg/monaiunetseg", "monaiunetseg_bundle": "monai_bundle"},
    packages=["monaiunetseg", *(f"monaiunetseg.{p}" for p in find_packages("MONAIUNetSeg/monaiunetseg")),
              "monaiunetseg_bundle"],
    package_data={"monaiunetseg_bundle": ["configs/*", "models/model.pt", "docs/*", "LICENSE"]},
    install_requires=[
        "torch>=2.1,<2.15",
        "onnxruntime>=1.16",  # the CPU inference backend (without it: torch, slower to start)
        "monai>=1.4,<1.7",
        "pytorch-ignite>=0.4.11",
        "numpy",
        "nibabel>=5",
        "SimpleITK>=2.2",
        "pydicom>=2.4",
        "itk>=5.3",
        "highdicom>=0.22",
        "tifffile>=2023.1",
        "tqdm",
        "fire",
        "pyyaml",
        "tensorboard",
        "matplotlib",
        "scipy",
        "psutil",
    ],
    extras_require={
        "test": ["pytest>=7", "jsonschema>=4", "onnx>=1.14"],  # onnx: checks the hand-written ONNX graphs
        "slicer": ["slicer-core"],
    },
    entry_points={"console_scripts": ["monaiunetseg=monaiunetseg.cli:main"]},
)
